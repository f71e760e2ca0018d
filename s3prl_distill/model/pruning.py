"""Structured pruning of a gated student (DPHuBERT): its expected size under the hard-concrete gates, the size
penalty, and physical pruning to a compact dense :class:`StudentModel` without gates.

Expected size follows DPHuBERT's ``get_num_params`` (``wav2vec2/components.py``) per block: attention
``a * ((E + 1) * h * d * 3 + (h * d + 1) * E)``, FFN ``f * ((E + 1) * u + (u + 1) * E)``, with ``h`` / ``u`` the
expected number of kept heads / units and ``a`` / ``f`` the whole-block gate's expected L0 (1 without one); every
other parameter of the model is a constant. The output bias is thus counted while ``h`` (or ``u``) tends to 0, as in
DPHuBERT, although pruning then removes the whole block. With every gate fully open this equals
``StudentModel.num_parameters()``.

The final count (:func:`final_num_parameters`) is the pruned model's real size: the same formula at the final
masks' unit counts, except that a block with no head / unit left (or whose block gate is 0) is removed with all its
parameters (output bias, WavLM position gate), as DPHuBERT's ``prune`` does.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from .config import StudentConfig
from .gates import HardConcreteGate
from .student import GATE_SUFFIX, StudentModel

Count = Union[int, Tensor]


class UnitCounts(NamedTuple):
    """How many units of each prunable kind there are (ints) or are expected to stay (tensors)."""

    conv_channels: List[Count]
    heads: List[Count]
    ffn_units: List[Count]
    attention_blocks: List[Count]  # 1 (kept), 0 (removed), or a keep probability
    ffn_blocks: List[Count]


def _gate_count(gate: Optional[HardConcreteGate], full: int, expected: bool) -> Count:
    if gate is None:
        return full
    return gate.expected_kept() if expected else int(gate.final_mask().count_nonzero())


def unit_counts(model: StudentModel, expected: bool) -> UnitCounts:
    """The units each gate keeps: the expected L0 norms (differentiable) or the final masks' non-zero counts. A block
    the model does not have (removed by an earlier pruning) counts 0 units and 0 blocks."""
    channels = []
    if model.feature_extractor is not None:
        channels = [_gate_count(block.gate, block.conv.out_channels, expected)
                    for block in model.feature_extractor.conv_layers]
    heads, units, attention_blocks, ffn_blocks = [], [], [], []
    for layer in model.encoder.layers:
        attention, feed_forward = layer.attention, layer.feed_forward
        heads.append(0 if attention is None else _gate_count(attention.head_gate, attention.num_heads, expected))
        attention_blocks.append(0 if attention is None else _gate_count(attention.layer_gate, 1, expected))
        units.append(0 if feed_forward is None else
                     _gate_count(feed_forward.unit_gate, feed_forward.fc1.out_features, expected))
        ffn_blocks.append(0 if feed_forward is None else _gate_count(feed_forward.layer_gate, 1, expected))
    return UnitCounts(channels, heads, units, attention_blocks, ffn_blocks)


def full_counts(model: StudentModel) -> UnitCounts:
    """Every unit kept (the model as built; a removed block counts 0)."""
    channels = [] if model.feature_extractor is None else \
        [block.conv.out_channels for block in model.feature_extractor.conv_layers]
    layers = model.encoder.layers
    return UnitCounts(
        channels,
        [0 if layer.attention is None else layer.attention.num_heads for layer in layers],
        [0 if layer.feed_forward is None else layer.feed_forward.fc1.out_features for layer in layers],
        [int(layer.attention is not None) for layer in layers],
        [int(layer.feed_forward is not None) for layer in layers],
    )


def _attention_size(embed_dim: int, inner: Count) -> Count:
    """DPHuBERT's attention size: q, k, v (weights + biases) and out_proj (weight + bias)."""
    return (embed_dim + 1) * inner * 3 + (inner + 1) * embed_dim


def _ffn_size(embed_dim: int, units: Count) -> Count:
    """DPHuBERT's FFN size: fc1 and fc2, weights and biases."""
    return (embed_dim + 1) * units + (units + 1) * embed_dim


def _own_parameters(module: nn.Module) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if not name.endswith(GATE_SUFFIX))


def _variable_parameters(model: StudentModel, counts: UnitCounts, final: bool = False) -> Count:
    """The parameters that depend on the unit counts (the rest of the model is a constant). ``final``: integer
    counts at the final masks, where a block left with no unit is removed, taking along the parameters the formula
    does not count (e.g. WavLM's position gate) - hence the negative term."""
    total: Count = 0
    extractor = model.feature_extractor
    if extractor is not None:
        previous: Count = 1
        for block, channels in zip(extractor.conv_layers, counts.conv_channels):
            total = total + previous * channels * block.kernel_size
            if block.conv.bias is not None:
                total = total + channels
            if block.norm is not None:
                total = total + 2 * channels
            previous = channels
        if model.feature_norm is not None:
            total = total + 2 * previous
        if model.feature_projection is not None:
            total = total + previous * model.feature_projection.out_features
    embed_dim = model.config.encoder.embed_dim
    for layer, heads, units, attention_block, ffn_block in zip(
            model.encoder.layers, counts.heads, counts.ffn_units, counts.attention_blocks, counts.ffn_blocks):
        attention, feed_forward = layer.attention, layer.feed_forward
        if attention is not None:
            if final and (heads == 0 or attention_block == 0):
                total = total - (_own_parameters(attention) - _attention_size(embed_dim, attention.num_heads *
                                                                              attention.head_dim))
            else:
                total = total + attention_block * _attention_size(embed_dim, heads * attention.head_dim)
        if feed_forward is not None:
            if final and (units == 0 or ffn_block == 0):
                total = total - (_own_parameters(feed_forward) - _ffn_size(embed_dim, feed_forward.fc1.out_features))
            else:
                total = total + ffn_block * _ffn_size(embed_dim, units)
    return total


def expected_num_parameters(model: StudentModel) -> Tensor:
    """The backbone's expected parameter count under its gates (differentiable in the gates' log_alpha)."""
    constant = model.num_parameters() - _variable_parameters(model, full_counts(model))
    expected = _variable_parameters(model, unit_counts(model, expected=True))
    return constant + torch.as_tensor(expected, dtype=torch.float32)


def final_num_parameters(model: StudentModel) -> int:
    """The backbone's parameter count once pruned at the final masks (blocks left with no unit removed)."""
    constant = model.num_parameters() - _variable_parameters(model, full_counts(model))
    return int(constant + _variable_parameters(model, unit_counts(model, expected=False), final=True))


class SparsityPenalty(nn.Module):
    """DPHuBERT's Lagrangian size constraint: λ1·(s − t) + λ2·(s − t)² with s the expected sparsity and t the target.

    λ1, λ2 start at 0 and are trained by gradient *ascent* (their gradient is negated on the way back), so an
    ordinary optimizer raises them while the constraint is violated, and the gates are pushed toward the target.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lambda_1 = nn.Parameter(torch.zeros(()))
        self.lambda_2 = nn.Parameter(torch.zeros(()))
        for parameter in (self.lambda_1, self.lambda_2):
            parameter.register_hook(torch.neg)

    def forward(self, expected_sparsity: Tensor, target_sparsity: float) -> Tensor:
        gap = expected_sparsity - target_sparsity
        return self.lambda_1 * gap + self.lambda_2 * gap * gap


def has_gates(model: nn.Module) -> bool:
    return any(isinstance(module, HardConcreteGate) for module in model.modules())


def gate_parameter_names(model: nn.Module) -> List[str]:
    return [name for name, _ in model.named_parameters() if name.endswith(GATE_SUFFIX)]


def _kept(mask: Tensor) -> Tensor:
    return mask.nonzero().squeeze(-1)


def _mask(gate: Optional[HardConcreteGate], size: int) -> Tensor:
    return gate.final_mask() if gate is not None else torch.ones(size)


@torch.no_grad()
def prune(model: StudentModel) -> StudentModel:
    """A compact dense copy of ``model`` at its gates' final masks: units whose mask is 0 are removed, the survivors'
    soft mask values are folded into the weights that read them (the next conv's input channels, ``out_proj``'s
    and ``fc2``'s input columns; for the last conv layer the CNN's ``output_scale`` when a LayerNorm follows, else
    the projection), so the result computes what the gated model computes in eval mode. Heads stay attached.

    An attention / FFN block left with no head / unit (or whose whole-block gate is 0) is removed entirely, as
    DPHuBERT's ``prune`` does: its output bias goes with it, so the pruned model differs from the gated one by that
    bias (which the gated model still added) unless the block gate was 0."""
    if not has_gates(model):
        raise ValueError("the model has no pruning gates (student.pruning is not set)")
    state: Dict[str, Tensor] = {key: value.detach().clone() for key, value in model.state_dict().items()
                                if not key.endswith(GATE_SUFFIX)}
    config = model.config.model_copy(deep=True)
    data = config.to_dict()
    data["pruning"] = None
    if model.feature_extractor is not None and any(b.gate is not None for b in model.feature_extractor.conv_layers):
        extractor_update, removed_channels = _prune_conv(model, state)
        data["feature_extractor"].update(extractor_update)
        if model.feature_norm is not None:
            data["feature_layer_norm_pruned"] = config.feature_layer_norm_pruned + removed_channels
    if not data.get("feature_layer_norm_pruned"):
        state.pop("pruned_channel_direction", None)
    data["encoder"].update(_prune_encoder(model, state))
    pruned = StudentModel(StudentConfig.from_dict(data, "pruned student config"))
    pruned.load_state_dict(state, strict=True)
    return pruned.train(model.training)


def _prune_conv(model: StudentModel, state: Dict[str, Tensor]) -> dict:
    blocks = model.feature_extractor.conv_layers
    layers = []
    for index, block in enumerate(blocks):
        prefix = f"feature_extractor.conv_layers.{index}."
        mask = _mask(block.gate, block.conv.out_channels)
        kept = _kept(mask)
        if kept.numel() == 0:
            raise ValueError(f"pruning removed every channel of conv layer {index}; lower the target sparsity")
        for key in (prefix + "conv.weight", prefix + "conv.bias", prefix + "norm.weight", prefix + "norm.bias"):
            if key in state:
                state[key] = state[key].index_select(0, kept)
        scale = mask.index_select(0, kept)
        if index + 1 < len(blocks):
            key = f"feature_extractor.conv_layers.{index + 1}.conv.weight"
            state[key] = state[key].index_select(1, kept) * scale[None, :, None]
        else:
            if "feature_extractor.output_scale" in state:
                scale = scale * state["feature_extractor.output_scale"].index_select(0, kept)
            if "feature_projection.weight" not in state:
                raise ValueError("pruning conv channels needs a feature projection after the CNN")
            weight = state["feature_projection.weight"]
            projection = weight.index_select(1, kept)
            if model.feature_norm is not None:
                # A LayerNorm reads the scaled channels: the scale has to stay in front of it. The removed channels
                # (0 before the LayerNorm) still gave it bias - mean * rstd * weight: fold the constant part into the
                # projection's bias and keep the part that varies with each frame's statistics as a direction.
                state["feature_extractor.output_scale"] = scale
                removed = _kept(mask == 0)
                norm_weight, norm_bias = model.feature_norm.weight.detach(), model.feature_norm.bias.detach()
                removed_columns = weight.index_select(1, removed)
                state["feature_projection.bias"] = state["feature_projection.bias"] + \
                    removed_columns @ norm_bias.index_select(0, removed)
                state["pruned_channel_direction"] = state.get("pruned_channel_direction", 0) + \
                    removed_columns @ norm_weight.index_select(0, removed)
                for key in ("feature_norm.weight", "feature_norm.bias"):
                    state[key] = state[key].index_select(0, kept)
            else:
                state.pop("feature_extractor.output_scale", None)
                projection = projection * scale
            state["feature_projection.weight"] = projection
        layers.append((int(kept.numel()), block.kernel_size, block.stride))
    return {"conv_layers": layers, "output_scale": model.feature_norm is not None or
            model.config.feature_extractor.output_scale}, blocks[-1].conv.out_channels - layers[-1][0]


def _remove_block(state: Dict[str, Tensor], prefix: str) -> None:
    for key in [key for key in state if key.startswith(prefix)]:
        del state[key]


def _head_dim(model: StudentModel) -> Optional[int]:
    """The one head width of the model's attention blocks (the pruned config states it explicitly, since the
    default, embed_dim // heads, changes with the head count)."""
    widths = {layer.attention.head_dim for layer in model.encoder.layers if layer.attention is not None}
    if len(widths) > 1:
        raise ValueError(f"the attention layers have different head widths {sorted(widths)}; pruning needs one")
    return widths.pop() if widths else model.config.encoder.head_dim


def _prune_encoder(model: StudentModel, state: Dict[str, Tensor]) -> dict:
    heads, units, kept_heads = [], [], []
    relative = model.config.encoder.relative_position is not None
    for index, layer in enumerate(model.encoder.layers):
        prefix = f"encoder.layers.{index}."
        attention, feed_forward = layer.attention, layer.feed_forward
        if attention is None:
            heads.append(0)
            kept_heads.append([])
        else:
            block = _mask(attention.layer_gate, 1)
            head_mask = _mask(attention.head_gate, attention.num_heads) * block
            kept = _kept(head_mask)
            if kept.numel() == 0:
                if relative and index == 0:
                    raise ValueError("pruning removed every attention head of layer 0, which holds the relative "
                                     "position embedding (WavLM); lower the target sparsity")
                _remove_block(state, prefix + "attention.")  # the whole block, bias and position gate included
            else:
                rows = (kept[:, None] * attention.head_dim + torch.arange(attention.head_dim)).reshape(-1)
                for name in ("q_proj", "k_proj", "v_proj"):
                    for part in ("weight", "bias"):
                        key = f"{prefix}attention.{name}.{part}"
                        state[key] = state[key].index_select(0, rows)
                column_scale = head_mask.index_select(0, kept).repeat_interleave(attention.head_dim)
                key = prefix + "attention.out_proj.weight"
                state[key] = state[key].index_select(1, rows) * column_scale
                state[prefix + "attention.out_proj.bias"] = state[prefix + "attention.out_proj.bias"] * block
            heads.append(int(kept.numel()))
            if attention.position_heads:
                kept_heads.append([int(attention.kept_heads[h]) for h in kept.tolist()])

        if feed_forward is None:
            units.append(0)
            continue
        block = _mask(feed_forward.layer_gate, 1)
        unit_mask = _mask(feed_forward.unit_gate, feed_forward.fc1.out_features) * block
        kept = _kept(unit_mask)
        if kept.numel() == 0:
            _remove_block(state, prefix + "feed_forward.")
        else:
            for part in ("weight", "bias"):
                key = f"{prefix}feed_forward.fc1.{part}"
                state[key] = state[key].index_select(0, kept)
            key = prefix + "feed_forward.fc2.weight"
            state[key] = state[key].index_select(1, kept) * unit_mask.index_select(0, kept)
            state[prefix + "feed_forward.fc2.bias"] = state[prefix + "feed_forward.fc2.bias"] * block
        units.append(int(kept.numel()))
    update = {"num_heads": heads, "ffn_dim": units, "head_dim": _head_dim(model)}
    if relative:
        update["kept_heads"] = kept_heads
    return update
