"""fairseq's module names (wav2vec 2.0 / HuBERT, as in s3prl's model code) <-> ours."""

from __future__ import annotations

from typing import Iterable, Tuple

from ..model.config import StudentConfig
from .keymap import KeyMap

_ENCODER_RULES = [
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
