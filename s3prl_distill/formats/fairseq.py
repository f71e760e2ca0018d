"""fairseq's module names (wav2vec 2.0 / HuBERT, as in s3prl's model code) <-> ours."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Tuple

from ..model.config import (
    EncoderConfig,
    FeatureExtractorConfig,
    RelativePositionConfig,
    StudentConfig,
    TimeReductionConfig,
)
from .keymap import KeyMap

_ENCODER_RULES = [
    # WavLM (s3prl's WavLM.py): the relative position bias lives in layer 0 and is shared; every layer has gates.
    ("encoder.layers.0.self_attn.relative_attention_bias.", "encoder.relative_position.embedding."),
    ("encoder.layers.{n}.self_attn.grep_linear.", "encoder.layers.{n}.attention.gate_linear."),
    ("encoder.layers.{n}.self_attn.grep_a", "encoder.layers.{n}.attention.gate_const"),
    ("post_extract_proj.", "feature_projection."),
    ("encoder.pos_conv.0.weight_g", "encoder.pos_conv.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv.0.weight_v", "encoder.pos_conv.conv.parametrizations.weight.original1"),
    ("encoder.pos_conv.0.", "encoder.pos_conv.conv."),
    ("encoder.layers.{n}.self_attn.", "encoder.layers.{n}.attention."),
    ("encoder.layers.{n}.self_attn_layer_norm.", "encoder.layers.{n}.attention_norm."),
    ("encoder.layers.{n}.fc1.", "encoder.layers.{n}.feed_forward.fc1."),
    ("encoder.layers.{n}.fc2.", "encoder.layers.{n}.feed_forward.fc2."),
    ("encoder.layers.{n}.final_layer_norm.", "encoder.layers.{n}.feed_forward_norm."),
    ("encoder.layer_norm.", "encoder.layer_norm."),
    # The LayerNorm on the CNN output (HuBERT, FitHuBERT; absent in DistilHuBERT).
    ("layer_norm.", "feature_norm."),
]


def fairseq_keys(config: StudentConfig, extra: Iterable[Tuple[str, str]] = ()) -> KeyMap:
    """The key map for a backbone of ``config``'s CNN norm mode, plus ``extra`` (theirs, ours) prefix rules."""
    # fairseq conv blocks are Sequential(conv, dropout, norm, gelu); layer-norm mode wraps the norm in
    # Sequential(transpose, norm, transpose).
    norm_prefix = "2.1." if config.feature_extractor.norm == "layer_norm" else "2."
    return KeyMap(
        [
            ("feature_extractor.conv_layers.{n}.0.", "feature_extractor.conv_layers.{n}.conv."),
            ("feature_extractor.conv_layers.{n}." + norm_prefix, "feature_extractor.conv_layers.{n}.norm."),
            *_ENCODER_RULES,
            *extra,
        ]
    )


def fairseq_encoder_config(
    cfg: Mapping[str, Any], num_layers: int, activation_dropout: float,
    time_reduction: Optional[TimeReductionConfig] = None,
) -> EncoderConfig:
    """Our encoder config from fairseq-named fields (wav2vec 2.0 / HuBERT / s3prl distiller / FitHuBERT configs);
    ``activation_dropout`` is the default of the source's own config class when the field is absent."""
    return EncoderConfig(
        num_layers=num_layers,
        embed_dim=int(cfg.get("encoder_embed_dim", 768)),
        ffn_dim=int(cfg.get("encoder_ffn_embed_dim", 3072)),
        num_heads=int(cfg.get("encoder_attention_heads", 12)),
        layer_norm_first=bool(cfg.get("layer_norm_first", False)),
        activation=str(cfg.get("activation_fn", "gelu")),
        dropout=float(cfg.get("dropout", 0.1)),
        attention_dropout=float(cfg.get("attention_dropout", 0.1)),
        activation_dropout=float(cfg.get("activation_dropout", activation_dropout)),
        pos_conv_kernel=int(cfg.get("conv_pos", 128)),
        pos_conv_groups=int(cfg.get("conv_pos_groups", 16)),
        time_reduction=time_reduction,
    )


def fairseq_encoder_fields(encoder: EncoderConfig) -> dict:
    """The inverse of :func:`fairseq_encoder_config`: fairseq-named encoder fields (uniform widths only)."""
    return {
        "conv_pos": encoder.pos_conv_kernel,
        "conv_pos_groups": encoder.pos_conv_groups,
        "encoder_layers": encoder.num_layers,
        "encoder_embed_dim": encoder.embed_dim,
        "encoder_ffn_embed_dim": encoder.ffn_dim,
        "encoder_attention_heads": encoder.num_heads,
        "activation_fn": encoder.activation,
        "layer_norm_first": encoder.layer_norm_first,
        "dropout": encoder.dropout,
        "attention_dropout": encoder.attention_dropout,
        "activation_dropout": encoder.activation_dropout,
        "encoder_layerdrop": 0.0,
    }


def teacher_copy_config(cfg: Mapping[str, Any]) -> StudentConfig:
    """The student that is an exact copy of a fairseq-style HuBERT / wav2vec 2.0 / WavLM model (s3prl's
    ``model_cfg`` / WavLM ``cfg`` fields): DPHuBERT's starting point, before gates are added."""
    if cfg.get("normalize", False):
        raise ValueError("the teacher normalises its waveform input (normalize: true); the student backbone "
                         "has no waveform normalisation, so it cannot be an exact copy")
    return fairseq_backbone_config(cfg)


def fairseq_backbone_config(cfg: Mapping[str, Any]) -> StudentConfig:
    """The backbone of a fairseq-style model as our config (its shape: what a student following it takes), whether
    or not it normalises its input."""
    relative_position = None
    if cfg.get("relative_position_embedding", False):
        relative_position = RelativePositionConfig(
            num_buckets=int(cfg.get("num_buckets", 320)), max_distance=int(cfg.get("max_distance", 1280)),
            num_heads=int(cfg.get("encoder_attention_heads", 12)), gated=bool(cfg.get("gru_rel_pos", False)),
        )
    encoder = fairseq_encoder_config(cfg, int(cfg.get("encoder_layers", 12)), activation_dropout=0.0)
    encoder = encoder.model_copy(update={"relative_position": relative_position})
    return StudentConfig(
        feature_extractor=FeatureExtractorConfig(
            conv_layers=cfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"),
            norm="layer_norm" if cfg.get("extractor_mode", "default") == "layer_norm" else "group_norm",
            bias=bool(cfg.get("conv_bias", False)),
        ),
        feature_layer_norm=True,
        feature_dropout=float(cfg.get("dropout_input", 0.0)),
        encoder=EncoderConfig.model_validate(encoder.model_dump()),
    )
