"""The official DPHuBERT / DPWavLM release format (pyf98/DPHuBERT ``prune.py`` / ``save_final_ckpt.py``):
``{"config": wav2vec2_model(**config) kwargs, "state_dict": torchaudio-style weights[, "distill_linear_projs"]}``.

Their model is torchaudio's wav2vec 2.0 with per-layer head counts, FFN widths and optional removed blocks, and (for
WavLM) the kept heads of each layer; all of it maps onto our backbone. A removed attention / FFN block becomes a
block with 0 heads / units and a zero output bias, which computes the same thing.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import Tensor

from ..model.config import StudentConfig
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


def dphubert_student_config(config: Mapping[str, Any], source: str) -> Tuple[StudentConfig, List[bool], List[bool]]:
    """Our config for their ``config``, and which layers keep their attention / FFN block."""
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
        encoder.update(num_heads=[int(heads) if keep else 0 for heads, keep in
                                  zip(_per_layer(config["encoder_num_heads"], layers), use_attention)],
                       head_dim=int(config.get("encoder_head_dim") or embed_dim // int(
                           _per_layer(config["encoder_num_heads"], layers)[0] or 1)))
    student = StudentConfig.from_dict({
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
    return student, use_attention, use_feed_forward


def dphubert_state_dict(state: Mapping[str, Tensor], student: StudentConfig, use_attention: List[bool],
                        use_feed_forward: List[bool]) -> Dict[str, Tensor]:
    """Their weights under our names; removed blocks become empty projections with a zero output bias."""
    ours = KEYS.to_ours(state)
    embed_dim = student.encoder.embed_dim
    conv_channels = student.feature_extractor.conv_layers[-1][0]
    ours.setdefault("feature_extractor.output_scale", torch.ones(conv_channels))
    for index, (attention, feed_forward) in enumerate(zip(use_attention, use_feed_forward)):
        prefix = f"encoder.layers.{index}."
        if not attention:
            for name in ("q_proj", "k_proj", "v_proj"):
                ours[f"{prefix}attention.{name}.weight"] = torch.zeros(0, embed_dim)
                ours[f"{prefix}attention.{name}.bias"] = torch.zeros(0)
            ours[f"{prefix}attention.out_proj.weight"] = torch.zeros(embed_dim, 0)
            ours[f"{prefix}attention.out_proj.bias"] = torch.zeros(embed_dim)
            if student.encoder.relative_position is not None:
                ours.setdefault(f"{prefix}attention.gate_linear.weight", torch.zeros(8, embed_dim //
                                student.encoder.relative_position.num_heads))
                ours.setdefault(f"{prefix}attention.gate_linear.bias", torch.zeros(8))
                ours.setdefault(f"{prefix}attention.gate_const",
                                torch.ones(1, student.encoder.relative_position.num_heads, 1, 1))
        if not feed_forward:
            ours[f"{prefix}feed_forward.fc1.weight"] = torch.zeros(0, embed_dim)
            ours[f"{prefix}feed_forward.fc1.bias"] = torch.zeros(0)
            ours[f"{prefix}feed_forward.fc2.weight"] = torch.zeros(embed_dim, 0)
            ours[f"{prefix}feed_forward.fc2.bias"] = torch.zeros(embed_dim)
    return ours
