"""The official releases of sungnyun/ARMHuBERT <-> our :class:`StudentModel`: ARMHuBERT / ARMwavLM (attention-map
reuse), MaskHuBERT (the same model without reuse) and STaRHuBERT / STaRWavLM (no heads, no mask embedding).

Like FitHuBERT's (whose code base they extend), a release is a PyTorch Lightning checkpoint whose ``state_dict``
holds ``student_model.*`` weights, plus the training YAML whose ``distiller`` section is the official
``CustomStudentModelConfig``. Module names are fairseq's; beyond them:

- ``mask_emb`` (ARMHuBERT / MaskHuBERT) is our ``mask_embedding``;
- a layer that reuses the previous attention map has no ``self_attn.q_proj`` / ``k_proj``; the YAML's
  ``reuse_pattern`` lists, per layer, True for a layer that *computes* its map (ours, ``attention_reuse``, is the
  negation);
- ``proj_head.<i>.lin_proj`` are the 12 layer-wise heads (480 -> 768; no upsampler: these models have no time
  reduction);
- a STaRHuBERT checkpoint may hold a ``final_proj`` Linear its official upstream deletes before loading: so do we.

The official code evaluates ``reuse_pattern`` and ``conv_feature_layers`` with ``eval``; we parse both as literals.
The official config classes reject unknown fields, and so does this reader (naming them).
"""

from __future__ import annotations

import ast
from typing import Any, Dict, List, Mapping, Optional, Tuple

from torch import Tensor

from ..model.config import LayerwiseHeadConfig, StudentConfig
from .fairseq import fairseq_keys
from .fithubert import STUDENT_PREFIX, is_lightning_checkpoint, official_backbone, official_backbone_fields

# Fields of the official configs (models/armhubert/model.py; maskhubert's lacks reuse_pattern).
_COMMON_FIELDS = frozenset({
    "extractor_mode", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
    "activation_fn", "layer_type", "dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop",
    "dropout_input", "final_dim", "layer_norm_first", "conv_feature_layers", "conv_bias", "feature_grad_mult",
    "conv_pos", "conv_pos_groups", "pos_conv_depth", "max_positions", "checkpoint_activations",
    "required_seq_len_multiple", "crop_seq_to_multiple", "init_conv_layers", "init_encoder_layers",
    "layer_grad_scale", "_teacher_task_agnostic", "_cnn_weight",
})
ARMHUBERT_FIELDS = _COMMON_FIELDS | {
    "freeze_student_mask", "update_teacher_mask", "depthwise_conv_kernel_size", "attn_type", "pos_enc_type", "fp16",
    "pred_head_inter_dim", "pred_head_final_dim", "pred_layer_id", "layerwise_proj", "enable_tr_layer",
    "tr_reduce_factor", "tr_layer_type", "tr_conv1d_kernel", "tr_layer_index", "reuse_pattern",
}
STARHUBERT_FIELDS = _COMMON_FIELDS  # models/starhubert/model.py

MASK_KEY = "mask_emb"
_HEAD_RULES = [("proj_head.{n}.lin_proj.", "prediction_head.heads.{n}.projection."), (MASK_KEY, "mask_embedding")]
# Heads of FitHuBERT-style models (FitHuBERT keeps proj_head; after _disable_projection_heads, final_proj.*).
_LAYERWISE_HEAD_PREFIXES = ("proj_head.", "final_proj.lin_proj.", "final_proj.upsampler.")
_STAR_UNUSED_PREFIX = "final_proj."


def _student_keys(checkpoint: Mapping[str, Any]) -> List[str]:
    return [key[len(STUDENT_PREFIX):] for key in checkpoint["state_dict"] if str(key).startswith(STUDENT_PREFIX)]


def is_armhubert_lightning(checkpoint: Any) -> bool:
    """An official ARMHuBERT / MaskHuBERT release: a Lightning checkpoint whose student has ``mask_emb``."""
    return is_lightning_checkpoint(checkpoint) and MASK_KEY in _student_keys(checkpoint)


def is_starhubert_lightning(checkpoint: Any) -> bool:
    """An official STaRHuBERT release: a Lightning student without ``mask_emb`` and without layer-wise heads."""
    if not is_lightning_checkpoint(checkpoint):
        return False
    keys = _student_keys(checkpoint)
    return MASK_KEY not in keys and not any(key.startswith(_LAYERWISE_HEAD_PREFIXES) for key in keys)


def is_fithubert_lightning(checkpoint: Any) -> bool:
    """Any other official Lightning student (FitHuBERT's layout; see ``formats.fithubert``)."""
    return is_lightning_checkpoint(checkpoint) and not is_armhubert_lightning(checkpoint) \
        and not is_starhubert_lightning(checkpoint)


def armhubert_family(checkpoint: Mapping[str, Any]) -> str:
    """``armhubert`` when some layer reuses an attention map (it has no ``q_proj``), else ``maskhubert``."""
    keys = set(_student_keys(checkpoint))
    layers = {key.split(".")[2] for key in keys if key.startswith("encoder.layers.") and ".self_attn." in key}
    reuses = any(f"encoder.layers.{layer}.self_attn.q_proj.weight" not in keys for layer in layers)
    return "armhubert" if reuses else "maskhubert"


def _check_fields(distiller: Mapping[str, Any], allowed: frozenset, what: str) -> None:
    unknown = sorted(str(key) for key in distiller if key not in allowed)
    if unknown:
        raise ValueError(f"the {what} training YAML's distiller section has fields the official {what} config does "
                         f"not have: {', '.join(unknown)}")


def _reuse_pattern(value: Any, layers: int) -> Optional[List[bool]]:
    """``reuse_pattern`` (True: the layer computes its map) -> our ``attention_reuse`` (True: it reuses one)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"reuse_pattern {value!r} is not a list of true/false literals") from None
    if not isinstance(value, (list, tuple)) or len(value) != layers or not all(isinstance(v, bool) for v in value):
        raise ValueError(f"reuse_pattern must list {layers} booleans (one per layer), got {value!r}")
    if not value[0]:
        raise ValueError("reuse_pattern[0] must be True: the first layer computes its attention map")
    reuse = [not computes for computes in value]
    return reuse if any(reuse) else None


def _backbone(distiller: Mapping[str, Any], problems: List[str]) -> Dict[str, Any]:
    """FitHuBERT's backbone fields plus the layer gradient scaling both of these model codes add."""
    backbone = official_backbone(distiller, problems)
    backbone["encoder"] = backbone["encoder"].model_copy(
        update={"layer_grad_scale": bool(distiller.get("layer_grad_scale", False))})
    return backbone


def _backbone_fields(config: StudentConfig) -> Dict[str, Any]:
    return {**official_backbone_fields(config), "layer_grad_scale": config.encoder.layer_grad_scale}


def armhubert_config_from_official(distiller: Mapping[str, Any]) -> StudentConfig:
    """Our config from an ARMHuBERT / MaskHuBERT YAML's ``distiller`` section; unsupported variants (time
    reduction, DistilHuBERT-style heads, conformer) are reported, not ignored. ``required_seq_len_multiple`` pads the
    encoder input with masked frames: without a time reduction no real frame changes, so any value reads the same."""
    _check_fields(distiller, ARMHUBERT_FIELDS, "ARMHuBERT")
    problems: List[str] = []
    backbone = _backbone(distiller, problems)
    if not distiller.get("layerwise_proj", False):
        problems.append("layerwise_proj=false (DistilHuBERT-style heads)")
    if distiller.get("enable_tr_layer", True):
        problems.append("enable_tr_layer=true (a time reduction; the official default: set it false)")
    if problems:
        raise ValueError(f"unsupported ARMHuBERT variant: {', '.join(problems)}")
    layers = backbone["encoder"].num_layers
    encoder = backbone["encoder"].model_copy(
        update={"attention_reuse": _reuse_pattern(distiller.get("reuse_pattern"), layers)})
    backbone["encoder"] = type(encoder).model_validate(encoder.model_dump())
    return StudentConfig(
        **backbone,
        prediction_head=LayerwiseHeadConfig(target_layers=list(range(1, layers + 1)),
                                            out_dim=int(distiller.get("pred_head_final_dim", 768))),
        mask_embedding=True,
    )


def starhubert_config_from_official(distiller: Mapping[str, Any]) -> StudentConfig:
    """Our config from a STaRHuBERT YAML's ``distiller`` section (the backbone only: no heads, no mask)."""
    _check_fields(distiller, STARHUBERT_FIELDS, "STaRHuBERT")
    problems: List[str] = []
    backbone = _backbone(distiller, problems)
    if problems:
        raise ValueError(f"unsupported STaRHuBERT variant: {', '.join(problems)}")
    return StudentConfig(**backbone)


def armhubert_config_to_official(config: StudentConfig) -> Dict[str, Any]:
    """The ``distiller`` section for an ARMHuBERT / MaskHuBERT-shaped config (``reuse_pattern`` only where a layer
    reuses a map: MaskHuBERT's own config class has no such field)."""
    reuse = config.encoder.attention_reuse or []
    pattern = {"reuse_pattern": str([not reused for reused in reuse])} if any(reuse) else {}
    return {
        **_backbone_fields(config),
        "final_dim": 256,
        "pred_head_final_dim": config.prediction_head.out_dim,
        "pred_head_inter_dim": 0,
        "layerwise_proj": True,
        "pred_layer_id": f"[{config.encoder.num_layers - 1}]",
        "enable_tr_layer": False,
        **pattern,
    }


def check_official_shape(config: StudentConfig, family: str) -> None:
    """Raise ``ValueError`` unless ``config`` fits the official layout of ``family``."""
    arm = family in ("armhubert", "maskhubert")
    ok = config.fbank_front_end is None and config.encoder.time_reduction is None and config.pruning is None \
        and isinstance(config.encoder.ffn_dim, int) and isinstance(config.encoder.num_heads, int) \
        and config.encoder.relative_position is None and config.codeword_head is None
    if arm:
        ok = ok and config.mask_embedding and config.prediction_head is not None \
            and config.prediction_head.type == "layerwise"
    else:
        ok = ok and not config.mask_embedding and not any(config.encoder.attention_reuse or [])
    if not ok:
        raise ValueError(f"not a {family}-shaped student: the official layout needs the CNN front end, uniform "
                         "layers without time reduction, pruning or relative positions"
                         + (", layer-wise heads and a mask embedding" if arm else ", no attention reuse and no mask "
                            "embedding"))


def state_dict_from_official(student_state: Mapping[str, Tensor], config: StudentConfig) -> Dict[str, Tensor]:
    """Official weights (``student_model.`` prefix removed) -> ours. A STaRHuBERT ``final_proj`` is dropped."""
    if config.prediction_head is None:
        student_state = {k: v for k, v in student_state.items() if not k.startswith(_STAR_UNUSED_PREFIX)}
    return fairseq_keys(config, extra=_HEAD_RULES).to_ours(student_state)


def import_lightning(checkpoint: Mapping[str, Any], training_yaml: Mapping[str, Any],
                     star: bool) -> Tuple[StudentConfig, Dict[str, Tensor]]:
    """(config, our state dict) from a loaded official Lightning checkpoint and its training YAML."""
    what = "STaRHuBERT" if star else "ARMHuBERT"
    if not isinstance(training_yaml, Mapping) or not isinstance(training_yaml.get("distiller"), Mapping):
        raise ValueError(f"the {what} training YAML has no 'distiller' section")
    distiller = training_yaml["distiller"]
    config = starhubert_config_from_official(distiller) if star else armhubert_config_from_official(distiller)
    student = {k[len(STUDENT_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(STUDENT_PREFIX)}
    return config, state_dict_from_official(student, config)


def export_lightning(config: StudentConfig, state: Mapping[str, Tensor],
                     family: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(Lightning checkpoint, training YAML) in the official layout of ``family`` (``armhubert``, ``maskhubert`` or
    ``starhubert``), which the official upstream of that model loads strictly."""
    check_official_shape(config, family)
    official = fairseq_keys(config, extra=_HEAD_RULES).to_theirs(state)
    distiller = armhubert_config_to_official(config) if family != "starhubert" else _backbone_fields(config)
    checkpoint = {
        "state_dict": {STUDENT_PREFIX + k: v for k, v in official.items()},
        "pytorch-lightning_version": "1.7.7",
        "epoch": 0,
        "global_step": 0,
    }
    return checkpoint, {"distiller": distiller}
