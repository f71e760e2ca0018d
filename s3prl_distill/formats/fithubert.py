"""The official FitHuBERT release format (glory20h/FitHuBERT) <-> our :class:`StudentModel`.

A release is a PyTorch Lightning checkpoint whose ``state_dict`` holds ``student_model.*`` (and ``teacher_model.*``)
keys, plus the training YAML whose ``distiller`` section configures ``CustomStudentModel``. Module names are fairseq's,
with two differences that need more than renaming: the time-reduction Conv1d sits *inside* ``encoder.layers`` at
``tr_layer_index`` (so transformer layers after it are shifted by one), and the per-layer hint heads are
``proj_head.<i>.{upsampler,lin_proj}``. The top-level ``upsampler`` is unused by the released model and dropped.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from torch import Tensor

from ..model.config import (
    FeatureExtractorConfig,
    LayerwiseHeadConfig,
    StudentConfig,
    TimeReductionConfig,
    format_conv_layers,
    parse_conv_layers,
)
from .fairseq import fairseq_encoder_config, fairseq_encoder_fields, fairseq_keys

STUDENT_PREFIX = "student_model."
_HEAD_RULES = [("proj_head.{n}.upsampler.", "prediction_head.heads.{n}.upsampler."),
               ("proj_head.{n}.lin_proj.", "prediction_head.heads.{n}.projection.")]
# Parameters of the official model that its released upstream never uses.
_UNUSED_PREFIXES = ("upsampler.", "cnn_proj_head.")
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.(.*)$")


def is_lightning_checkpoint(checkpoint: Any) -> bool:
    return (
        isinstance(checkpoint, Mapping)
        and isinstance(checkpoint.get("state_dict"), Mapping)
        and any(str(key).startswith(STUDENT_PREFIX) for key in checkpoint["state_dict"])
    )


def official_backbone(distiller: Mapping[str, Any], problems: List[str],
                      time_reduction: Optional[TimeReductionConfig] = None) -> Dict[str, Any]:
    """The :class:`StudentConfig` fields of the CNN, its LayerNorm, the input dropout and the encoder from a
    ``distiller`` section of FitHuBERT's code base or its descendants (sungnyun/ARMHuBERT's models), which share these
    fields. Unsupported values (conformer layers, a deeper positional conv, cropping) are appended to ``problems``."""
    if distiller.get("layer_type", "transformer") != "transformer":
        problems.append(f"layer_type={distiller.get('layer_type')!r}")
    if int(distiller.get("pos_conv_depth", 1)) != 1:
        problems.append("pos_conv_depth != 1")
    if int(distiller.get("crop_seq_to_multiple", 1)) != 1:
        problems.append("crop_seq_to_multiple != 1")
    if "conv_feature_layers" not in distiller:
        problems.append("no conv_feature_layers (the official default is HuBERT's CNN; spell it out)")
    layers = int(distiller.get("encoder_layers", 12))
    return {
        "feature_extractor": FeatureExtractorConfig(
            conv_layers=parse_conv_layers(str(distiller.get("conv_feature_layers", "[(512,10,5)]"))),
            norm="layer_norm" if distiller.get("extractor_mode", "default") == "layer_norm" else "group_norm",
            bias=bool(distiller.get("conv_bias", False)),
            grad_mult=float(distiller.get("feature_grad_mult", 1.0)),
        ),
        "feature_layer_norm": True,
        "feature_dropout": float(distiller.get("dropout_input", 0.0)),
        "encoder": fairseq_encoder_config(distiller, layers, activation_dropout=0.0, time_reduction=time_reduction),
    }


def official_backbone_fields(config: StudentConfig) -> Dict[str, Any]:
    """The inverse of :func:`official_backbone`: the ``distiller`` fields of the CNN and the encoder."""
    return {
        "extractor_mode": "layer_norm" if config.feature_extractor.norm == "layer_norm" else "default",
        "conv_feature_layers": format_conv_layers(config.feature_extractor.conv_layers),
        "feature_grad_mult": config.feature_extractor.grad_mult,
        "conv_bias": config.feature_extractor.bias,
        **fairseq_encoder_fields(config.encoder),
        "pos_conv_depth": 1,
        "layer_type": "transformer",
        "dropout_input": config.feature_dropout,
        "init_conv_layers": False,
        "init_encoder_layers": 0,
        "required_seq_len_multiple": 1,
        "crop_seq_to_multiple": 1,
    }


def config_from_official(distiller: Mapping[str, Any]) -> StudentConfig:
    """Our config from the YAML's ``distiller`` section (``CustomStudentModelConfig``); unsupported variants
    (mel front end, conformer, fc time reduction, DistilHuBERT-style heads) are reported, not ignored."""
    problems: List[str] = []
    if int(distiller.get("n_mels", 0)) > 0:
        problems.append("n_mels > 0 (mel-spectrogram front end)")
    if not distiller.get("layerwise_proj", False):
        problems.append("layerwise_proj=false (DistilHuBERT-style heads)")
    tr_enabled = bool(distiller.get("enable_tr_layer", True))
    if tr_enabled and distiller.get("tr_layer_type", "fc1") != "conv1d":
        problems.append(f"tr_layer_type={distiller.get('tr_layer_type', 'fc1')!r} (only conv1d is supported)")
    # Padding to a multiple of 2 before a 2x reduction changes no real frame; other multiples would.
    if int(distiller.get("required_seq_len_multiple", 2)) not in (1, 2):
        problems.append("required_seq_len_multiple > 2")
    time_reduction = None
    if tr_enabled:
        time_reduction = TimeReductionConfig(
            index=int(distiller.get("tr_layer_index", 1)), factor=int(distiller.get("tr_reduce_factor", 2))
        )
    backbone = official_backbone(distiller, problems, time_reduction)
    if problems:
        raise ValueError(f"unsupported FitHuBERT variant: {', '.join(problems)}")
    return StudentConfig(
        **backbone,
        prediction_head=LayerwiseHeadConfig(
            target_layers=list(range(1, backbone["encoder"].num_layers + 1)),
            out_dim=int(distiller.get("pred_head_final_dim", 768)),
        ),
    )


def config_to_official(config: StudentConfig) -> Dict[str, Any]:
    """The ``distiller`` section for a FitHuBERT-shaped config (every key the official loader needs)."""
    enc, tr = config.encoder, config.encoder.time_reduction
    return {
        **official_backbone_fields(config),
        "n_mels": 0,
        "enable_log_mel": False,
        "final_dim": 256,
        "pred_head_final_dim": config.prediction_head.out_dim,
        "pred_head_inter_dim": 0,
        "layerwise_proj": True,
        "pred_layer_id": f"[{enc.num_layers - 1}]",
        "enable_tr_layer": tr is not None,
        "tr_conv1d_kernel": tr.factor if tr else 2,
        "tr_layer_index": tr.index if tr else 0,
        "tr_reduce_factor": tr.factor if tr else 2,
        "tr_layer_type": "conv1d",
        "checkpoint_activations": False,
    }


def _shift_layers(state: Mapping[str, Tensor], config: StudentConfig, to_ours: bool) -> Dict[str, Tensor]:
    """Move the time-reduction conv in or out of ``encoder.layers`` and renumber the transformer layers."""
    tr = config.encoder.time_reduction
    if tr is None:
        return dict(state)
    shifted = {}
    for key, value in state.items():
        if to_ours:
            match = _LAYER_KEY.match(key)
            if match and int(match.group(1)) == tr.index:
                shifted[f"encoder.time_reduction.conv.{match.group(2)}"] = value
            elif match and int(match.group(1)) > tr.index:
                shifted[f"encoder.layers.{int(match.group(1)) - 1}.{match.group(2)}"] = value
            else:
                shifted[key] = value
        else:
            match = _LAYER_KEY.match(key)
            if key.startswith("encoder.time_reduction.conv."):
                shifted[f"encoder.layers.{tr.index}.{key[len('encoder.time_reduction.conv.'):]}"] = value
            elif match and int(match.group(1)) >= tr.index:
                shifted[f"encoder.layers.{int(match.group(1)) + 1}.{match.group(2)}"] = value
            else:
                shifted[key] = value
    return shifted


def _keys(config: StudentConfig):
    return fairseq_keys(config, extra=_HEAD_RULES + [("encoder.time_reduction.", "encoder.time_reduction.")])


def state_dict_from_official(student_state: Mapping[str, Tensor], config: StudentConfig) -> Dict[str, Tensor]:
    """Official ``CustomStudentModel`` weights (``student_model.`` prefix already removed) -> ours."""
    state = {k: v for k, v in student_state.items() if not k.startswith(_UNUSED_PREFIXES)}
    last = config.encoder.num_layers - 1
    # A checkpoint saved after _disable_projection_heads() keeps only the last head, as final_proj.
    state = {(f"proj_head.{last}." + k[len("final_proj."):] if k.startswith("final_proj.") else k): v
             for k, v in state.items()}
    return _keys(config).to_ours(_shift_layers(state, config, to_ours=True))


def state_dict_to_official(state: Mapping[str, Tensor], config: StudentConfig) -> Dict[str, Tensor]:
    return _shift_layers(_keys(config).to_theirs(state), config, to_ours=False)


def import_lightning(checkpoint: Mapping[str, Any], training_yaml: Mapping[str, Any]) -> Tuple[StudentConfig, Dict[str, Tensor]]:
    """(config, our state dict) from a loaded official Lightning checkpoint and its training YAML."""
    if not isinstance(training_yaml, Mapping) or "distiller" not in training_yaml:
        raise ValueError("the FitHuBERT training YAML has no 'distiller' section")
    config = config_from_official(training_yaml["distiller"])
    student = {k[len(STUDENT_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(STUDENT_PREFIX)}
    return config, state_dict_from_official(student, config)


def export_lightning(config: StudentConfig, state: Mapping[str, Tensor]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(Lightning checkpoint, training YAML) in the official layout, for the official upstream or training code."""
    official = state_dict_to_official(state, config)
    tr = config.encoder.time_reduction
    if tr is not None:
        # The official model always builds this ConvTranspose1d (never used with layer-wise heads) and loads
        # strictly, so it must be present; its values do not matter.
        width = config.encoder.embed_dim
        reference = next(iter(state.values()))
        official["upsampler.weight"] = reference.new_zeros(width, width, tr.factor)
        official["upsampler.bias"] = reference.new_zeros(width)
    checkpoint = {
        "state_dict": {STUDENT_PREFIX + k: v for k, v in official.items()},
        "pytorch-lightning_version": "1.9.0",
        "epoch": 0,
        "global_step": 0,
    }
    return checkpoint, {"distiller": config_to_official(config)}
