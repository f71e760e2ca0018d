"""What the encoder hands its heads and callers, and which tensor is "hidden state 0".

s3prl indexes a HuBERT-like model's hidden states as [transformer input, output of layer 1, ..., layer L], where
the transformer input is taken after the positional convolution (and, post-LN, the encoder's LayerNorm). DPHuBERT
and SKILL call layer 0 something else: the feature projection's output, before the positional convolution. Both
conventions are handled here, once, for the student and the teacher alike (their names, ``LayerZero``, live in the
torch-free :mod:`s3prl_distill.options`, which the command line reads for ``--layer-zero``).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

from torch import Tensor

from ..options import LAYER_ZERO_CHOICES


def hidden_state_zero(layer_zero: str, features: Tensor, transformer_input: Tensor) -> Tensor:
    """Hidden state 0 under ``layer_zero``: ``features`` (the projected front-end output, i.e. the transformer's
    input before its positional convolution) or ``transformer_input`` (what the first layer sees)."""
    if layer_zero == "feature_projection":
        return features
    if layer_zero == "transformer_input":
        return transformer_input
    raise ValueError(f"layer_zero must be one of {LAYER_ZERO_CHOICES}, not {layer_zero!r}")


class EncoderOutput(NamedTuple):
    """One forward of :class:`~s3prl_distill.model.encoder.TransformerEncoder`; every prediction head reads this."""

    features: Tensor  # the encoder's input: the projected front-end output, before the positional convolution
    encoder_input: Tensor  # what the first layer sees: features + positional conv (+ LayerNorm when post-LN)
    last_hidden: Tensor  # last layer's output (+ final LayerNorm when pre-LN), at the encoder's output rate
    layer_outputs: List[Tensor]  # raw output of every layer, each at its own rate
    lengths: Optional[Tensor]  # valid frames at the output rate (None: no padding)
    padding_mask: Optional[Tensor]  # (B, T_out), True on padding

    def hidden_states(self, layer_zero: str = "transformer_input") -> List[Tensor]:
        """[hidden state 0 (see :func:`hidden_state_zero`), output of layer 1, ..., layer L]."""
        return [hidden_state_zero(layer_zero, self.features, self.encoder_input), *self.layer_outputs]
