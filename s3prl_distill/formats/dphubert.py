"""The official DPHuBERT / DPWavLM release format (pyf98/DPHuBERT ``prune.py`` / ``save_final_ckpt.py``):
``{"config": wav2vec2_model(**config) kwargs, "state_dict": torchaudio-style weights[, "distill_linear_projs"]}``.

Their model is torchaudio's wav2vec 2.0 with per-layer head counts, FFN widths and optional removed blocks, and (for
WavLM) the kept heads of each layer; all of it maps onto our backbone both ways. A removed attention / FFN block
(``encoder_use_attention[i]`` / ``encoder_use_feed_forward[i]`` false) is a layer with 0 heads / 0 FFN units in our
config, which has no module and no parameters for it, exactly like theirs.

Export (:func:`dphubert_checkpoint`) writes that layout from one of our gate-free students. One thing of ours has no
direct counterpart: after pruning CNN channels in front of the feature LayerNorm we keep the pruned channels in its
statistics as zeros (``feature_layer_norm_pruned``; DPHuBERT's own prune drops them, which changes the outputs).
The export keeps the outputs exact by writing those channels back as CNN channels that the ``dummy_weight`` scales
to 0, so the exported model has that many more CNN channels (and parameters) than ours.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

import torch
from torch import Tensor

from ..model.config import StudentConfig
from ..model.student import GATE_SUFFIX, HEAD_PREFIXES
from .keymap import KeyMap

PRUNING_FLAGS = (
    "extractor_prune_conv_channels", "encoder_prune_attention_heads", "encoder_prune_attention_layer",
    "encoder_prune_feed_forward_intermediate", "encoder_prune_feed_forward_layer",
)

KEYS = KeyMap([
    ("feature_extractor.conv_layers.{n}.conv.", "feature_extractor.conv_layers.{n}.conv."),
    ("feature_extractor.conv_layers.{n}.layer_norm.", "feature_extractor.conv_layers.{n}.norm."),
    ("feature_extractor.dummy_weight", "feature_extractor.output_scale"),
    ("encoder.feature_projection.layer_norm.", "feature_norm."),
    ("encoder.feature_projection.projection.", "feature_projection."),
    # Old-style weight norm (torch.nn.utils.weight_norm) and the parametrization torchaudio now uses.
    ("encoder.transformer.pos_conv_embed.conv.weight_g", "encoder.pos_conv.conv.parametrizations.weight.original0"),
    ("encoder.transformer.pos_conv_embed.conv.weight_v", "encoder.pos_conv.conv.parametrizations.weight.original1"),
    ("encoder.transformer.pos_conv_embed.conv.", "encoder.pos_conv.conv."),
    ("encoder.transformer.layer_norm.", "encoder.layer_norm."),
    ("encoder.transformer.layers.0.attention.rel_attn_embed.", "encoder.relative_position.embedding."),
    ("encoder.transformer.layers.{n}.attention.gru_rel_pos_linear.", "encoder.layers.{n}.attention.gate_linear."),
    ("encoder.transformer.layers.{n}.attention.gru_rel_pos_const", "encoder.layers.{n}.attention.gate_const"),
    ("encoder.transformer.layers.{n}.attention.", "encoder.layers.{n}.attention."),
    ("encoder.transformer.layers.{n}.layer_norm.", "encoder.layers.{n}.attention_norm."),
    ("encoder.transformer.layers.{n}.feed_forward.intermediate_dense.", "encoder.layers.{n}.feed_forward.fc1."),
    ("encoder.transformer.layers.{n}.feed_forward.output_dense.", "encoder.layers.{n}.feed_forward.fc2."),
    ("encoder.transformer.layers.{n}.final_layer_norm.", "encoder.layers.{n}.feed_forward_norm."),
])


def is_dphubert_checkpoint(checkpoint: Any) -> bool:
    return isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("config"), Mapping) and \
        isinstance(checkpoint.get("state_dict"), Mapping) and "extractor_conv_layer_config" in checkpoint["config"]


def _per_layer(value: Any, layers: int) -> List[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * layers


def dphubert_student_config(config: Mapping[str, Any], source: str) -> StudentConfig:
    """Our config for their ``config``; a removed block becomes 0 heads / 0 FFN units."""
    gated = [flag for flag in PRUNING_FLAGS if config.get(flag)]
    if gated:
        raise ValueError(f"{source} still has pruning gates ({', '.join(gated)}); load the pruned checkpoint that "
                         "DPHuBERT's prune.py writes")
    if config.get("normalize_waveform"):
        raise ValueError(f"{source}: normalize_waveform is not supported")
    if config.get("aux_num_out") is not None:
        raise ValueError(f"{source} is a fine-tuned model (aux_num_out); only the pretrained encoder is supported")
    layers = int(config["encoder_num_layers"])
    embed_dim = int(config["encoder_embed_dim"])
    use_attention = _per_layer(config.get("encoder_use_attention", True), layers)
    use_feed_forward = _per_layer(config.get("encoder_use_feed_forward", True), layers)
    wavlm = "encoder_remaining_heads" in config
    encoder: Dict[str, Any] = {
        "num_layers": layers, "embed_dim": embed_dim,
        "ffn_dim": [int(units) if keep else 0 for units, keep in
                    zip(_per_layer(config["encoder_ff_interm_features"], layers), use_feed_forward)],
        "layer_norm_first": bool(config["encoder_layer_norm_first"]),
        "dropout": float(config["encoder_dropout"]),
        "attention_dropout": float(config["encoder_attention_dropout"]),
        "activation_dropout": float(config["encoder_ff_interm_dropout"]),
        "pos_conv_kernel": int(config["encoder_pos_conv_kernel"]),
        "pos_conv_groups": int(config["encoder_pos_conv_groups"]),
    }
    if wavlm:
        total = set(_per_layer(config["encoder_total_num_heads"], layers))
        if len(total) != 1:
            raise ValueError(f"{source}: layers with different total head counts are not supported")
        total_heads = total.pop()
        if not use_attention[0]:
            raise ValueError(f"{source}: layer 0 holds WavLM's relative position bias but has no attention block")
        kept = [list(heads) if keep else [] for heads, keep in zip(config["encoder_remaining_heads"], use_attention)]
        encoder.update(num_heads=[len(heads) for heads in kept], kept_heads=kept, head_dim=embed_dim // total_heads,
                       relative_position={"num_buckets": int(config["encoder_num_buckets"]),
                                          "max_distance": int(config["encoder_max_distance"]),
                                          "num_heads": total_heads, "gated": True})
    else:
        heads = [int(count) if keep else 0 for count, keep in
                 zip(_per_layer(config["encoder_num_heads"], layers), use_attention)]
        default_width = embed_dim // max([count for count in heads if count > 0], default=1)
        encoder.update(num_heads=heads, head_dim=int(config.get("encoder_head_dim") or default_width))
    return StudentConfig.from_dict({
        "feature_extractor": {
            "conv_layers": [list(layer) for layer in config["extractor_conv_layer_config"]],
            "norm": "layer_norm" if config["extractor_mode"] == "layer_norm" else "group_norm",
            "bias": bool(config["extractor_conv_bias"]),
            "output_scale": True,
        },
        "feature_layer_norm": True,
        "feature_dropout": float(config["encoder_projection_dropout"]),
        "encoder": encoder,
    }, f"{source} (config)")


def dphubert_state_dict(state: Mapping[str, Tensor], student: StudentConfig) -> Dict[str, Tensor]:
    """Their weights under our names (a removed block has none on either side)."""
    ours = KEYS.to_ours(state)
    conv_channels = student.feature_extractor.conv_layers[-1][0]
    ours.setdefault("feature_extractor.output_scale", torch.ones(conv_channels))
    return ours


# --- export ---------------------------------------------------------------------------------------------------------

def _exportable(student: StudentConfig, source: str) -> None:
    """Refuse, naming the setting, what the official layout cannot express."""
    encoder = student.encoder
    problems = []
    if student.pruning is not None:
        problems.append("it still has pruning gates (run `s3prl-distill prune` first)")
    if student.fbank_front_end is not None:
        problems.append("fbank_front_end (their front end is the CNN)")
    else:
        if not student.feature_layer_norm:
            problems.append("feature_layer_norm: false (their CNN output always has a LayerNorm)")
        if student.feature_extractor.conv_layers[-1][0] == encoder.embed_dim:
            problems.append("no feature projection (CNN width = embed_dim; theirs always projects)")
        if student.feature_layer_norm_pruned and student.feature_extractor.norm == "layer_norm":
            # The pruned channels come back as zero channels, which a per-layer LayerNorm in the CNN would count.
            problems.append("feature_layer_norm_pruned > 0 with feature_extractor.norm: layer_norm (restoring the "
                            "pruned CNN channels would change the last conv layer's LayerNorm statistics)")
    if encoder.time_reduction is not None:
        problems.append("encoder.time_reduction")
    if encoder.activation != "gelu":
        problems.append(f"encoder.activation: {encoder.activation} (theirs is GELU)")
    if not encoder.pos_conv_weight_norm:
        problems.append("encoder.pos_conv_weight_norm: false (theirs has weight norm)")
    position = encoder.relative_position
    if position is not None:
        if not position.gated:
            problems.append("relative_position.gated: false (DPWavLM's position bias is gated)")
        if encoder.layer_head_dim(position.num_heads) != encoder.embed_dim // position.num_heads:
            problems.append("head_dim differs from embed_dim // relative_position.num_heads")
    elif len({encoder.layer_head_dim(h) for h in encoder.layer_num_heads() if h > 0}) > 1:
        problems.append("layers with different head widths (theirs have one encoder_head_dim)")
    if problems:
        raise ValueError(f"{source} cannot be written in the DPHuBERT layout: {'; '.join(problems)}")


def dphubert_config(student: StudentConfig) -> Dict[str, Any]:
    """``wav2vec2_model(**config)`` kwargs of DPHuBERT's code for ``student`` (checked by :func:`_exportable`);
    CNN channels count the ones :func:`dphubert_checkpoint` restores for ``feature_layer_norm_pruned``."""
    encoder = student.encoder
    heads, units = encoder.layer_num_heads(), encoder.layer_ffn_dims()
    conv_layers = [tuple(layer) for layer in student.feature_extractor.conv_layers]
    channels, kernel, stride = conv_layers[-1]
    conv_layers[-1] = (channels + student.feature_layer_norm_pruned, kernel, stride)
    config: Dict[str, Any] = {
        "extractor_mode": student.feature_extractor.norm,
        "extractor_conv_layer_config": conv_layers,
        "extractor_conv_bias": student.feature_extractor.bias,
        "encoder_embed_dim": encoder.embed_dim,
        "encoder_projection_dropout": student.feature_dropout,
        "encoder_pos_conv_kernel": encoder.pos_conv_kernel,
        "encoder_pos_conv_groups": encoder.pos_conv_groups,
        "encoder_num_layers": encoder.num_layers,
        "encoder_use_attention": [count > 0 for count in heads],
        "encoder_use_feed_forward": [count > 0 for count in units],
        "encoder_attention_dropout": encoder.attention_dropout,
        "encoder_ff_interm_features": list(units),
        "encoder_ff_interm_dropout": encoder.activation_dropout,
        "encoder_dropout": encoder.dropout,
        "encoder_layer_norm_first": encoder.layer_norm_first,
        "encoder_layer_drop": 0.0,
        "aux_num_out": None,
        "normalize_waveform": False,
        **{flag: False for flag in PRUNING_FLAGS},
    }
    position = encoder.relative_position
    if position is not None:
        config.update(encoder_total_num_heads=[position.num_heads] * encoder.num_layers,
                      encoder_remaining_heads=encoder.layer_kept_heads(),
                      encoder_num_buckets=position.num_buckets, encoder_max_distance=position.max_distance)
    else:
        widths = [encoder.layer_head_dim(h) for h in heads if h > 0]
        config.update(encoder_num_heads=list(heads),
                      encoder_head_dim=widths[0] if widths else encoder.head_dim or encoder.embed_dim)
    return config


def _restore_pruned_channels(state: Dict[str, Tensor], student: StudentConfig) -> None:
    """Write the CNN channels that ``feature_layer_norm_pruned`` still counts back as real channels: zero conv
    weights and a 0 ``dummy_weight`` make them 0 in front of the LayerNorm, as they were; LayerNorm weight 1 / bias 0
    on the first of them and the ``pruned_channel_direction`` as its projection column give back what that buffer
    added (``- mean * rstd * direction``); the others get weight 0 and a zero column."""
    pruned = student.feature_layer_norm_pruned
    direction = state.pop("pruned_channel_direction", None)
    if not pruned:
        return
    last = len(student.feature_extractor.conv_layers) - 1
    prefix = f"feature_extractor.conv_layers.{last}."

    def grow(key: str, dim: int, fill: float = 0.0) -> None:
        value = state[key]
        shape = list(value.shape)
        shape[dim] = pruned
        state[key] = torch.cat([value, torch.full(shape, fill, dtype=value.dtype)], dim=dim)

    for key in (prefix + "conv.weight", prefix + "conv.bias", prefix + "norm.weight", prefix + "norm.bias",
                "feature_extractor.output_scale", "feature_norm.weight", "feature_norm.bias"):
        if key in state:
            grow(key, 0)
    grow("feature_projection.weight", 1)
    kept = student.feature_extractor.conv_layers[-1][0]
    state["feature_norm.weight"][kept] = 1.0
    if direction is not None:
        state["feature_projection.weight"][:, kept] = direction


def dphubert_checkpoint(student: StudentConfig, state: Mapping[str, Tensor], source: str) -> Dict[str, Any]:
    """``{"config", "state_dict"}`` in DPHuBERT's layout for our gate-free ``student`` and its weights (training
    heads are left out); DPHuBERT's ``wav2vec2_model(**config)`` loads it strictly. ``source`` names it in errors."""
    _exportable(student, source)
    ours = {key: value.detach().clone() for key, value in state.items()
            if not key.startswith(HEAD_PREFIXES) and not key.endswith(GATE_SUFFIX)}
    channels = student.feature_extractor.conv_layers[-1][0]
    ours.setdefault("feature_extractor.output_scale", torch.ones(channels))
    _restore_pruned_channels(ours, student)
    try:
        theirs = KEYS.to_theirs(ours)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    return {"config": dphubert_config(student), "state_dict": theirs}
