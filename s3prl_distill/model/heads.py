"""Prediction heads that map the student's encoder output to teacher layers (used in training; some upstreams
expose them). Every head takes the encoder's whole output (:class:`EncoderOutput`) and reads what it needs, so the
student runs whichever head its config built without knowing its type."""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hidden_states import EncoderOutput


class PredictionHead(nn.Module):
    """The encoder's output -> predictions ``(batch, num_predictions, frames, out_dim)``."""

    def forward(self, encoded: EncoderOutput) -> Tensor:
        raise NotImplementedError


class ExpandLastHead(PredictionHead):
    """DistilHuBERT's heads on the last layer: one shared expansion Linear + GELU, then one Linear per teacher target
    layer. Last hidden ``(batch, frames, in_dim)`` -> ``(batch, num_targets, frames, out_dim)``."""

    def __init__(self, in_dim: int, inner_dim: int, out_dim: int, num_targets: int) -> None:
        super().__init__()
        self.num_targets = num_targets
        self.expand = nn.Linear(in_dim, inner_dim * num_targets)
        self.projections = nn.ModuleList(nn.Linear(inner_dim, out_dim) for _ in range(num_targets))

    def forward(self, encoded: EncoderOutput) -> Tensor:
        chunks = F.gelu(self.expand(encoded.last_hidden)).chunk(self.num_targets, dim=-1)
        return torch.stack([projection(chunk) for projection, chunk in zip(self.projections, chunks)], dim=1)


class HintHead(nn.Module):
    """FitHuBERT's per-layer head: ConvTranspose1d back to the input rate (layers after a time reduction), then a
    Linear to the teacher width when it differs. (batch, frames, in_dim) -> (batch, frames * upsample, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, upsample: int) -> None:
        super().__init__()
        self.upsampler = nn.ConvTranspose1d(in_dim, in_dim, upsample, stride=upsample) if upsample > 1 else None
        self.projection = nn.Linear(in_dim, out_dim) if in_dim != out_dim else None

    def upsample(self, x: Tensor) -> Tensor:
        return x if self.upsampler is None else self.upsampler(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.upsample(x)
        return x if self.projection is None else self.projection(x)


class LayerwiseHeads(PredictionHead):
    """One :class:`HintHead` per encoder layer; outputs stacked to (batch, num_layers, frames, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, upsample_factors: List[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(HintHead(in_dim, out_dim, factor) for factor in upsample_factors)

    def forward(self, encoded: EncoderOutput) -> Tensor:
        outputs = [head(x) for head, x in zip(self.heads, encoded.layer_outputs)]
        frames = min(o.shape[1] for o in outputs)  # layers before/after a time reduction may differ by a frame
        return torch.stack([o[:, :frames] for o in outputs], dim=1)


class GroupProjectionHeads(PredictionHead):
    """DPHuBERT / SKILL heads: per prediction, the student's hidden states at its indices (s3prl indexing, hidden
    state 0 chosen by ``layer_zero``), averaged, through its group's Linear (identity-initialised with zero bias
    when the widths match, so training starts from the copied teacher's own states)."""

    def __init__(self, in_dim: int, out_dim: int, sources: List[List[int]], projection_of: List[int],
                 num_groups: int, layer_zero: str) -> None:
        super().__init__()
        self.sources = [list(indices) for indices in sources]
        self.projection_of = list(projection_of)
        self.layer_zero = layer_zero
        self.projections = nn.ModuleList(nn.Linear(in_dim, out_dim) for _ in range(num_groups))
        if in_dim == out_dim:
            for projection in self.projections:
                nn.init.eye_(projection.weight)
                nn.init.zeros_(projection.bias)

    def forward(self, encoded: EncoderOutput) -> Tensor:
        hidden_states = encoded.hidden_states(self.layer_zero)
        outputs = []
        for indices, group in zip(self.sources, self.projection_of):
            source = hidden_states[indices[0]] if len(indices) == 1 else \
                torch.stack([hidden_states[i] for i in indices]).mean(0)
            outputs.append(self.projections[group](source))
        return torch.stack(outputs, dim=1)
