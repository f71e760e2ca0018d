"""The transformer encoder of the student: positional convolution, encoder layers (post-LN or pre-LN, blocks
removable by pruning) and an optional time reduction. Features are ``(batch, frames, channels)`` with explicit
frame ``lengths`` (None: no padding)."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import AttentionMaps, RelativePositionBias, SelfAttention
from .config import EncoderConfig, PruningConfig
from .gates import HardConcreteGate
from .hidden_states import EncoderOutput
from .lengths import lengths_to_padding_mask


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
        if x.is_cuda and torch.is_autocast_enabled("cuda"):
            # cuDNN has no fast half-precision kernel for this grouped 128-tap convolution: on an H100 (DistilHuBERT's
            # 768 channels in 16 groups, 8 x 10 s) it took 12.8 ms in bf16 and 0.64 ms in fp32. So it runs in fp32
            # (TF32 where allowed) under autocast, its output float32 like autocast's LayerNorm's.
            with torch.autocast("cuda", enabled=False):
                y = self.conv(x.transpose(1, 2).float())
        elif x.device.type == "cpu":
            # On CPU, oneDNN runs this grouped convolution about twice as fast as a 2-D one over (B, C, 1, T) in
            # channels-last memory, which is what the frames-first x already is (no copy in, and the output comes
            # back frames-first): 193 -> 91 ms for 768 channels, 71 -> 38 ms for 480 (4 x 10 s, 2-core EPYC).
            weight = self.conv.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
            y = F.conv2d(x.transpose(1, 2).unsqueeze(2), weight, self.conv.bias, padding=(0, self.conv.padding[0]),
                         groups=self.conv.groups).squeeze(2)
        else:
            y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[..., : -self.trim]
        return F.gelu(y).transpose(1, 2)


class FeedForward(nn.Module):
    """fc1 -> activation -> dropout -> (unit gate) -> fc2 -> (block gate). At least one unit: a layer without FFN
    units has no feed-forward module at all (see :class:`EncoderLayer`)."""

    def __init__(
        self, embed_dim: int, ffn_dim: int, activation: str, activation_dropout: float,
        unit_gate_initial_drop: Optional[float] = None, layer_gate_initial_drop: Optional[float] = None,
    ) -> None:
        super().__init__()
        if ffn_dim < 1:
            raise ValueError("a feed-forward block needs at least one unit (a removed block is None)")
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.activation = F.gelu if activation == "gelu" else F.relu
        self.dropout = nn.Dropout(activation_dropout)
        self.unit_gate = (HardConcreteGate(ffn_dim, unit_gate_initial_drop)
                          if unit_gate_initial_drop is not None else None)
        self.layer_gate = (HardConcreteGate(1, layer_gate_initial_drop)
                           if layer_gate_initial_drop is not None else None)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.dropout(self.activation(self.fc1(x)))
        if self.unit_gate is not None:
            hidden = hidden * self.unit_gate().to(hidden.dtype)
        out = self.fc2(hidden)
        if self.layer_gate is not None:
            out = out * self.layer_gate().to(out.dtype)
        return out


# What an older checkpoint of ours holds for a removed block (it kept the block with 0 heads / units): empty
# projections, the output bias, and parameters nothing reads once there are no heads (the WavLM position gate, a
# whole-block gate that only scaled the bias). Named relative to the block.
STAND_IN_OUTPUT_BIAS = {"attention": "out_proj.bias", "feed_forward": "fc2.bias"}
_STAND_IN_EMPTY = {"attention": ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight",
                                 "v_proj.bias", "out_proj.weight"),
                   "feed_forward": ("fc1.weight", "fc1.bias", "fc2.weight")}
_STAND_IN_UNUSED = {"attention": ("gate_linear.weight", "gate_linear.bias", "gate_const", "layer_gate.log_alpha"),
                    "feed_forward": ("layer_gate.log_alpha",)}


class EncoderLayer(nn.Module):
    """Transformer layer, post-LN (BERT / HuBERT Base) or pre-LN (``layer_norm_first``, the Large models).

    ``attention`` / ``feed_forward`` may be None: a block removed by pruning (DPHuBERT's ``use_attention`` /
    ``use_feed_forward`` false). It then has no parameters and computes nothing, as in DPHuBERT: a post-LN layer
    still applies both LayerNorms to its residual stream, a pre-LN layer skips the block with its LayerNorm.
    """

    def __init__(
        self, embed_dim: int, attention: Optional[SelfAttention], feed_forward: Optional[FeedForward],
        layer_norm_first: bool, dropout: float,
    ) -> None:
        super().__init__()
        self.layer_norm_first = layer_norm_first
        # A None block stays a plain attribute, not a registered (None) submodule: then a state dict that still
        # has weights for it fails a strict load as unexpected keys instead of being skipped silently.
        self.attention = attention
        self.attention_norm = nn.LayerNorm(embed_dim)
        self.feed_forward = feed_forward
        self.feed_forward_norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        if attention is None or feed_forward is None:
            self.register_load_state_dict_pre_hook(_drop_removed_block_stand_ins)

    def removed_blocks(self) -> List[str]:
        """Names of the blocks this layer does not have (``attention``, ``feed_forward``)."""
        return [name for name in ("attention", "feed_forward") if getattr(self, name) is None]

    def forward(self, x: Tensor, padding_mask: Optional[Tensor], position_bias: Optional[Tensor] = None,
                maps: Optional[AttentionMaps] = None) -> Tensor:
        """``maps``: the attention maps shared with other layers of this forward (attention-map reuse)."""
        if self.layer_norm_first:
            if self.attention is not None:
                x = x + self.dropout(self.attention(self.attention_norm(x), padding_mask, position_bias, maps))
            if self.feed_forward is not None:
                x = x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))
            return x
        if self.attention is not None:
            x = x + self.dropout(self.attention(x, padding_mask, position_bias, maps))
        x = self.attention_norm(x)
        if self.feed_forward is not None:
            x = x + self.dropout(self.feed_forward(x))
        return self.feed_forward_norm(x)


def _drop_removed_block_stand_ins(layer: EncoderLayer, state_dict: dict, prefix: str, local_metadata: dict,
                                  strict: bool, missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    """Load-time conversion of an older checkpoint of ours, which kept a removed block as a stand-in with 0 heads /
    units. The stand-in computed its output bias alone; when that bias is zero it is the same function as no block,
    and its keys are dropped. A non-zero bias (a stand-in that was trained) is refused, naming the key: dropping it
    would change the outputs, and no other weight can absorb it exactly. Keys of a real (non-empty) block are left
    alone, so that a strict load reports them as unexpected."""
    for name in layer.removed_blocks():
        block = f"{prefix}{name}."
        keys = [key for key in state_dict if key.startswith(block)]
        if not keys:
            continue
        bias_key = block + STAND_IN_OUTPUT_BIAS[name]
        known = {block + part for part in (*_STAND_IN_EMPTY[name], *_STAND_IN_UNUSED[name])} | {bias_key}
        empty = all(state_dict[block + part].numel() == 0 for part in _STAND_IN_EMPTY[name] if block + part in
                    state_dict)
        if bias_key not in state_dict or not set(keys) <= known or not empty:
            continue  # not a stand-in: the strict load names the keys
        bias = state_dict[bias_key]
        if bool((bias != 0).any()):
            error_msgs.append(
                f"{bias_key}: this layer's {name.replace('_', '-')} block is removed (pruned to 0 "
                f"{'heads' if name == 'attention' else 'units'}), but the checkpoint keeps a non-zero stand-in bias "
                f"for it (max |value| {float(bias.abs().max()):.3g}), written by an older s3prl-distill that kept "
                "and trained such biases; dropping it would change the outputs. Prune the gated training checkpoint "
                "again with `s3prl-distill prune` (and rerun the final distillation)")
            continue
        for key in keys:
            del state_dict[key]


class TimeReduction(nn.Module):
    """Strided Conv1d over time (kernel = stride = ``factor``): ``factor`` frames become one."""

    def __init__(self, dim: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv1d(dim, dim, kernel_size=factor, stride=factor)

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """(B, T, C) -> (B, T // factor, C); an output frame is valid when all its input frames were.

        Computed as one GEMM on the frames themselves: kernel = stride, so each output frame reads ``factor``
        consecutive input frames, which in (B, T, C) memory are one row of ``factor * C`` values. The conv on
        ``x.transpose(1, 2)`` needed a channels-first copy in and returned a transposed view out, which every
        projection of the next layer copied again."""
        batch, frames, channels = x.shape
        kept = frames // self.factor
        windows = x[:, : kept * self.factor].reshape(batch, kept, self.factor * channels)
        # Conv1d weight (out, in, kernel) -> (out, kernel * in): the windows' order, frame by frame.
        weight = self.conv.weight.transpose(1, 2).reshape(self.conv.out_channels, self.factor * channels)
        y = F.linear(windows, weight, self.conv.bias)
        return y, (None if lengths is None else torch.div(lengths, self.factor, rounding_mode="floor"))
class TransformerEncoder(nn.Module):
    """Positional convolution, LayerNorm, a stack of :class:`EncoderLayer` and an optional time reduction; with
    ``relative_position``, WavLM's shared relative position bias; with ``pruning``, gates on heads, FFN units and
    (optionally) whole blocks."""

    def __init__(self, config: EncoderConfig, pruning: Optional[PruningConfig] = None) -> None:
        super().__init__()
        self.layer_norm_first = config.layer_norm_first
        self.layer_grad_scale = config.layer_grad_scale
        self.pos_conv = ConvPositionalEmbedding(
            config.embed_dim, config.pos_conv_kernel, config.pos_conv_groups, config.pos_conv_weight_norm
        )
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.relative_position = (RelativePositionBias(config.relative_position)
                                  if config.relative_position is not None else None)

        # Initial drop probability of each kind of gate; None: no gate of that kind.
        head_drop = unit_drop = attention_block_drop = ffn_block_drop = None
        if pruning is not None:
            head_drop = pruning.head_initial_drop if pruning.attention_heads else None
            unit_drop = pruning.ffn_initial_drop if pruning.ffn_units else None
            attention_block_drop = pruning.layer_initial_drop if pruning.attention_layers else None
            ffn_block_drop = pruning.layer_initial_drop if pruning.ffn_layers else None
        layers = []
        sources = config.layer_attention_sources()
        self.reuses_attention = any(source is not None for source in sources)
        for index, (num_heads, ffn_dim, kept) in enumerate(zip(config.layer_num_heads(), config.layer_ffn_dims(),
                                                               config.layer_kept_heads())):
            # 0 heads / units: the block was removed by pruning and does not exist (no gates either).
            attention = SelfAttention(
                config.embed_dim, num_heads, config.layer_head_dim(num_heads), config.attention_dropout,
                config.relative_position, kept, head_drop, attention_block_drop,
                reuses_map=sources[index] is not None, provides_map=index in sources,
            ) if num_heads > 0 else None
            feed_forward = FeedForward(
                config.embed_dim, ffn_dim, config.activation, config.activation_dropout, unit_drop, ffn_block_drop,
            ) if ffn_dim > 0 else None
            layers.append(EncoderLayer(config.embed_dim, attention, feed_forward, config.layer_norm_first,
                                       config.dropout))
        self.layers = nn.ModuleList(layers)
        tr = config.time_reduction
        self.time_reduction_index = tr.index if tr is not None else None
        self.time_reduction = TimeReduction(config.embed_dim, tr.factor) if tr is not None else None
        self.apply(_init_bert_params)

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> EncoderOutput:
        """``x``: (batch, frames, embed_dim); ``lengths``: valid frames per row (None: no padding)."""
        features = x
        padding_mask = lengths_to_padding_mask(lengths, x.shape[1])
        if padding_mask is not None:
            # Padding must look like the zero padding the positional convolution sees at the true end.
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        encoder_input = x
        layer_outputs = []
        position_bias = None
        maps = AttentionMaps() if self.reuses_attention else None
        for index, layer in enumerate(self.layers):
            if index == self.time_reduction_index:
                x, lengths, padding_mask = self._reduce(x, lengths)
            if self.relative_position is not None and (position_bias is None or position_bias.shape[-1] != x.shape[1]):
                position_bias = self.relative_position(x.shape[1])
            x = layer(x, padding_mask, position_bias, maps)
            if self.layer_grad_scale:
                scale = (len(self.layers) - index) / (len(self.layers) - index + 1)
                x = scale_gradient(x, scale)
                layer_outputs.append(scale_gradient(x, 1.0 - scale))
            else:
                layer_outputs.append(x)
        if self.time_reduction_index == len(self.layers):
            x, lengths, padding_mask = self._reduce(x, lengths)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return EncoderOutput(features=features, encoder_input=encoder_input, last_hidden=x,
                             layer_outputs=layer_outputs, lengths=lengths, padding_mask=padding_mask)

    def _reduce(self, x: Tensor, lengths: Optional[Tensor]):
        x, lengths = self.time_reduction(x, lengths)
        return x, lengths, lengths_to_padding_mask(lengths, x.shape[1])


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """``x``'s values, with the gradient flowing back through the result multiplied by ``factor`` (fairseq's
    GradMultiply): a view carries the hook, so other uses of ``x`` keep their own gradient. ``x`` itself where no
    gradient flows or ``factor`` is 1."""
    if factor == 1.0 or not x.requires_grad:
        return x
    y = x.view_as(x)
    y.register_hook(lambda grad: grad * factor)
    return y


def _init_bert_params(module: nn.Module) -> None:
    """BERT initialisation used by fairseq for transformer Linear layers: N(0, 0.02), zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
