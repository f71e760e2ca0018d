"""Building blocks of the student backbone.

Shapes follow torchaudio's convention: waveforms ``(batch, samples)``, features ``(batch, frames, channels)``, and an
explicit ``lengths`` tensor (valid samples or frames per utterance) instead of implicit padding. ``lengths=None``
means every row is fully valid.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConvLayerSpec, EncoderConfig


def lengths_to_padding_mask(lengths: Optional[Tensor], max_length: int) -> Optional[Tensor]:
    """``(batch, max_length)`` bool mask, True on padded positions; None when ``lengths`` is None."""
    if lengths is None:
        return None
    positions = torch.arange(max_length, device=lengths.device)
    return positions[None, :] >= lengths[:, None]


def conv_output_lengths(lengths: Tensor, kernel_size: int, stride: int) -> Tensor:
    """Frames a valid-padding convolution produces from ``lengths`` inputs (never negative)."""
    return torch.div(lengths - kernel_size, stride, rounding_mode="floor").add(1).clamp(min=0)


def _masked_instance_norm(x: Tensor, lengths: Optional[Tensor], weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """GroupNorm with one group per channel, whose statistics use only the valid frames of each utterance.

    fairseq's GroupNorm also averages over padding, so a waveform's features would depend on what else is in the
    batch; masking the statistics removes that. Computed in fp32 like fairseq's ``Fp32GroupNorm``.
    """
    dtype = x.dtype
    x = x.float()
    if lengths is None:
        y = F.group_norm(x, x.shape[1], weight.float(), bias.float(), eps)
        return y.to(dtype)
    valid = (~lengths_to_padding_mask(lengths, x.shape[-1])).unsqueeze(1).to(x.dtype)  # (B, 1, T)
    count = valid.sum(-1, keepdim=True).clamp(min=1.0)
    mean = (x * valid).sum(-1, keepdim=True) / count
    centred = (x - mean) * valid
    variance = centred.pow(2).sum(-1, keepdim=True) / count
    y = (x - mean) * torch.rsqrt(variance + eps)
    y = y * weight.float()[None, :, None] + bias.float()[None, :, None]
    return y.to(dtype)


class ConvLayerBlock(nn.Module):
    """Conv1d -> dropout -> optional norm (group or layer) -> GELU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        bias: bool,
        norm: Optional[str],
        dropout: float,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.dropout = nn.Dropout(dropout)
        self.norm_type = norm
        if norm == "group_norm":
            self.norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        elif norm == "layer_norm":
            self.norm = nn.LayerNorm(out_channels, elementwise_affine=True)
        elif norm is None:
            self.norm = None
        else:
            raise ValueError(f"unknown conv norm {norm!r}")

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """``x``: (batch, channels, time) -> same layout; ``lengths`` in time steps."""
        x = self.dropout(self.conv(x))
        if lengths is not None:
            lengths = conv_output_lengths(lengths, self.kernel_size, self.stride)
        if self.norm_type == "group_norm":
            x = _masked_instance_norm(x, lengths, self.norm.weight, self.norm.bias, self.norm.eps)
        elif self.norm_type == "layer_norm":
            # fp32 like fairseq's Fp32LayerNorm; per frame, so padding cannot leak in.
            x = F.layer_norm(
                x.transpose(1, 2).float(), self.norm.normalized_shape, self.norm.weight.float(),
                self.norm.bias.float(), self.norm.eps,
            ).transpose(1, 2).to(x.dtype)
        return F.gelu(x), lengths


class ConvFeatureExtractor(nn.Module):
    """Stack of :class:`ConvLayerBlock` turning raw audio into frames."""

    def __init__(self, layers: List[ConvLayerSpec], norm: str, bias: bool, dropout: float) -> None:
        super().__init__()
        blocks = []
        in_channels = 1
        for index, (channels, kernel, stride) in enumerate(layers):
            if norm == "group_norm":
                block_norm = "group_norm" if index == 0 else None
            else:
                block_norm = "layer_norm"
            blocks.append(ConvLayerBlock(in_channels, channels, kernel, stride, bias, block_norm, dropout))
            in_channels = channels
        self.conv_layers = nn.ModuleList(blocks)
        self.out_channels = in_channels
        self.downsample_rate = math.prod(stride for _, _, stride in layers)
        self.receptive_field = self._receptive_field(layers)

    @staticmethod
    def _receptive_field(layers: List[ConvLayerSpec]) -> int:
        field, jump = 1, 1
        for _, kernel, stride in layers:
            field += (kernel - 1) * jump
            jump *= stride
        return field

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for block in self.conv_layers:
            lengths = conv_output_lengths(lengths, block.kernel_size, block.stride)
        return lengths

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """``waveforms``: (batch, samples) -> features (batch, frames, channels), frame lengths."""
        x = waveforms.unsqueeze(1)
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return x.transpose(1, 2), lengths


class ConvPositionalEmbedding(nn.Module):
    """Grouped convolution over time whose output is added to its input (wav2vec 2.0's relative positions)."""

    def __init__(self, embed_dim: int, kernel_size: int, groups: int, weight_norm: bool) -> None:
        super().__init__()
        conv = nn.Conv1d(embed_dim, embed_dim, kernel_size, padding=kernel_size // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel_size * embed_dim)))
        nn.init.zeros_(conv.bias)
        if weight_norm:
            conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.conv = conv
        # An even kernel with padding k//2 yields one extra frame; dropping the last keeps the length.
        self.trim = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (batch, frames, channels), padded frames already zeroed."""
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[..., : -self.trim]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``; the head count and width may be pruned."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner_dim = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner_dim)
        self.k_proj = nn.Linear(embed_dim, inner_dim)
        self.v_proj = nn.Linear(embed_dim, inner_dim)
        self.out_proj = nn.Linear(inner_dim, embed_dim)
        self.dropout = dropout

    def forward(self, x: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
        batch, frames, _ = x.shape

        def split_heads(t: Tensor) -> Tensor:
            return t.view(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = split_heads(self.q_proj(x)), split_heads(self.k_proj(x)), split_heads(self.v_proj(x))
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(batch, frames, self.num_heads * self.head_dim)
        return self.out_proj(out)


class FeedForward(nn.Module):
    def __init__(self, embed_dim: int, ffn_dim: int, activation: str, activation_dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.activation = F.gelu if activation == "gelu" else F.relu
        self.dropout = nn.Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))


class EncoderLayer(nn.Module):
    """Transformer layer, post-LN (BERT / HuBERT Base) or pre-LN (``layer_norm_first``, the Large models)."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        ffn_dim: int,
        layer_norm_first: bool,
        activation: str,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
    ) -> None:
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.attention = SelfAttention(embed_dim, num_heads, head_dim, attention_dropout)
        self.attention_norm = nn.LayerNorm(embed_dim)
        self.feed_forward = FeedForward(embed_dim, ffn_dim, activation, activation_dropout)
        self.feed_forward_norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.attention(self.attention_norm(x), padding_mask))
            return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attention(x, padding_mask)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))


class TimeReduction(nn.Module):
    """Strided Conv1d over time (kernel = stride = ``factor``): ``factor`` frames become one."""

    def __init__(self, dim: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv1d(dim, dim, kernel_size=factor, stride=factor)

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """(B, T, C) -> (B, T // factor, C); an output frame is valid when all its input frames were."""
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return y, (None if lengths is None else torch.div(lengths, self.factor, rounding_mode="floor"))


class EncoderOutput(NamedTuple):
    last_hidden: Tensor  # last layer's output (+ final LayerNorm when pre-LN), at the encoder's output rate
    layer_outputs: List[Tensor]  # raw output of every layer, each at its own rate
    lengths: Optional[Tensor]  # valid frames at the output rate (None: no padding)
    padding_mask: Optional[Tensor]  # (B, T_out), True on padding


class TransformerEncoder(nn.Module):
    """Positional convolution, LayerNorm, a stack of :class:`EncoderLayer` and an optional time reduction."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.layer_norm_first = config.layer_norm_first
        self.pos_conv = ConvPositionalEmbedding(
            config.embed_dim, config.pos_conv_kernel, config.pos_conv_groups, config.pos_conv_weight_norm
        )
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(
                config.embed_dim,
                num_heads,
                config.layer_head_dim(num_heads),
                ffn_dim,
                config.layer_norm_first,
                config.activation,
                config.dropout,
                config.attention_dropout,
                config.activation_dropout,
            )
            for num_heads, ffn_dim in zip(config.layer_num_heads(), config.layer_ffn_dims())
        )
        tr = config.time_reduction
        self.time_reduction_index = tr.index if tr is not None else None
        self.time_reduction = TimeReduction(config.embed_dim, tr.factor) if tr is not None else None
        self.apply(_init_bert_params)

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> EncoderOutput:
        """``x``: (batch, frames, embed_dim); ``lengths``: valid frames per row (None: no padding)."""
        padding_mask = lengths_to_padding_mask(lengths, x.shape[1])
        if padding_mask is not None:
            # Padding must look like the zero padding the positional convolution sees at the true end.
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        layer_outputs = []
        for index, layer in enumerate(self.layers):
            if index == self.time_reduction_index:
                x, lengths, padding_mask = self._reduce(x, lengths)
            x = layer(x, padding_mask)
            layer_outputs.append(x)
        if self.time_reduction_index == len(self.layers):
            x, lengths, padding_mask = self._reduce(x, lengths)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return EncoderOutput(x, layer_outputs, lengths, padding_mask)

    def _reduce(self, x: Tensor, lengths: Optional[Tensor]):
        x, lengths = self.time_reduction(x, lengths)
        return x, lengths, lengths_to_padding_mask(lengths, x.shape[1])


def _init_bert_params(module: nn.Module) -> None:
    """BERT initialisation used by fairseq for transformer Linear layers: N(0, 0.02), zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
