"""Prediction heads that map student features to teacher layers (used in training; some upstreams expose them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ExpandLastHead(nn.Module):
    """DistilHuBERT's heads: one shared expansion Linear + GELU, then one Linear per teacher target layer.

    Input ``(batch, frames, in_dim)`` -> output ``(batch, num_targets, frames, out_dim)``.
    """

    def __init__(self, in_dim: int, inner_dim: int, out_dim: int, num_targets: int) -> None:
        super().__init__()
        self.num_targets = num_targets
        self.expand = nn.Linear(in_dim, inner_dim * num_targets)
        self.projections = nn.ModuleList(nn.Linear(inner_dim, out_dim) for _ in range(num_targets))

    def forward(self, x: Tensor) -> Tensor:
        chunks = F.gelu(self.expand(x)).chunk(self.num_targets, dim=-1)
        return torch.stack([projection(chunk) for projection, chunk in zip(self.projections, chunks)], dim=1)
