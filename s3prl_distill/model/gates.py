"""Hard-concrete (L0) gates for structured pruning (Louizos et al., 2018; the FLOP / CoFi / DPHuBERT form).

A gate holds one learnable ``log_alpha`` per prunable unit (a conv channel, an attention head, an FFN unit, a whole
block). In training it samples a stretched, clipped concrete mask in [0, 1]; its expected L0 norm (how many units
are expected to stay) is differentiable, so a size penalty can train ``log_alpha``. In eval mode it gives the
deterministic mask pruning uses: the ``round(n - L0)`` least likely units set to 0, the others keeping their soft
value, which physical pruning folds into the next layer's weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# DPHuBERT's constants (from CoFi): temperature beta, stretch interval (l, r) = (-0.1, 1.1), uniform noise clip.
TEMPERATURE = 2.0 / 3.0
STRETCH = 0.1
EPSILON = 1e-6
# The deterministic mask's soft value sigma(0.8 * log_alpha / beta): the empirical factor FLOP/DPHuBERT use.
EVAL_SHARPNESS = 0.8


class HardConcreteGate(nn.Module):
    """``size`` gates; ``initial_drop`` m initialises log_alpha ~ N(log((1 - m) / m), 0.01)."""

    def __init__(self, size: int, initial_drop: float) -> None:
        super().__init__()
        if size < 1:
            raise ValueError("a gate needs at least one unit")
        if not 0.0 < initial_drop < 1.0:
            raise ValueError(f"initial_drop must be in (0, 1), got {initial_drop}")
        self.size = size
        self.initial_drop = initial_drop
        self.log_alpha = nn.Parameter(torch.empty(size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        mean = math.log(1.0 - self.initial_drop) - math.log(self.initial_drop)
        with torch.no_grad():
            self.log_alpha.normal_(mean, 0.01)

    def keep_probabilities(self) -> Tensor:
        """P(gate > 0) per unit: sigma(log_alpha - beta * log(-l / r))."""
        shift = TEMPERATURE * math.log(STRETCH / (1.0 + STRETCH))
        return torch.sigmoid(self.log_alpha - shift)

    def expected_kept(self) -> Tensor:
        """Expected L0 norm: the expected number of units kept (differentiable)."""
        return self.keep_probabilities().sum()

    def sample(self) -> Tensor:
        """One training-time mask sample in [0, 1]."""
        noise = torch.empty_like(self.log_alpha).uniform_(EPSILON, 1.0 - EPSILON)
        soft = torch.sigmoid((torch.log(noise) - torch.log1p(-noise) + self.log_alpha) / TEMPERATURE)
        return (soft * (1.0 + 2.0 * STRETCH) - STRETCH).clamp(0.0, 1.0)

    @torch.no_grad()
    def final_mask(self) -> Tensor:
        """The deterministic mask: the ``round(size - L0)`` lowest units zeroed, the rest at their soft value."""
        zeros = round(self.size - float(self.expected_kept()))
        mask = torch.sigmoid(self.log_alpha.detach() * (EVAL_SHARPNESS / TEMPERATURE))
        if zeros > 0:
            mask[torch.topk(mask, k=zeros, largest=False).indices] = 0.0
        return mask

    def forward(self) -> Tensor:
        return self.sample() if self.training else self.final_mask()

    def extra_repr(self) -> str:
        return f"size={self.size}, initial_drop={self.initial_drop}"
