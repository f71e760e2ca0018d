"""Valid lengths and padding masks: every module takes explicit ``lengths`` (valid samples or frames per row; None
when every row is fully valid) rather than inferring padding from the values."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def lengths_to_padding_mask(lengths: Optional[Tensor], max_length: int) -> Optional[Tensor]:
    """``(batch, max_length)`` bool mask, True on padded positions; None when ``lengths`` is None."""
    if lengths is None:
        return None
    positions = torch.arange(max_length, device=lengths.device)
    return positions[None, :] >= lengths[:, None]


def conv_output_lengths(lengths: Tensor, kernel_size: int, stride: int) -> Tensor:
    """Frames a valid-padding convolution produces from ``lengths`` inputs (never negative)."""
    return torch.div(lengths - kernel_size, stride, rounding_mode="floor").add(1).clamp(min=0)
