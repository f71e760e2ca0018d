"""s3prl's distiller (DistilHuBERT) checkpoint format <-> our :class:`StudentModel`.

The format is what s3prl's ``distiller_local`` reads: ``{"Distiller": state_dict, "Config": {"distiller": {...}}}``
(pretraining runs add ``Optimizer``, ``Step``, ``Args`` and more ``Config`` sections). Module names are fairseq's;
the expand-last heads are one ``SplitLinear`` holding every target's weights in a single tensor.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch
from torch import Tensor

from ..model.config import (
    ExpandLastHeadConfig,
    FeatureExtractorConfig,
    StudentConfig,
    format_conv_layers,
    parse_conv_layers,
)
from .fairseq import fairseq_encoder_config, fairseq_encoder_fields, fairseq_keys

# Fields of s3prl's DistillerConfig we read; anything else in a checkpoint's config is reported, not ignored.
_SUPPORTED_TASK_EMB = {"expand-last", "none"}


def _distiller_keys(config: StudentConfig):
    # The expand-last heads' shared Linear is index 0 of s3prl's output_layer Sequential.
    return fairseq_keys(config, extra=[("output_layer.0.", "prediction_head.expand.")])


def is_distiller_checkpoint(checkpoint: Any) -> bool:
    return (
        isinstance(checkpoint, Mapping)
        and "Distiller" in checkpoint
        and isinstance(checkpoint.get("Config"), Mapping)
        and "distiller" in checkpoint["Config"]
    )


def config_from_distiller(cfg: Mapping[str, Any]) -> StudentConfig:
    """Our config from s3prl's ``Config["distiller"]`` dict (s3prl's code defaults for missing keys)."""
    task_emb = str(cfg.get("task_emb_type", "expand-last"))
    out_layer = str(cfg.get("out_layer_type", "expand-last"))
    attention = str(cfg.get("attention_type", "original"))
    if task_emb not in _SUPPORTED_TASK_EMB or out_layer not in {"expand-last", "none"} or attention != "original":
        raise ValueError(
            f"unsupported distiller variant (task_emb_type={task_emb!r}, out_layer_type={out_layer!r}, "
            f"attention_type={attention!r}); supported: expand-last or none heads with original attention"
        )
    if float(cfg.get("encoder_layerdrop", 0.0)) != 0.0:
        raise ValueError("distiller configs with encoder_layerdrop > 0 are not supported")
    n_tasks = int(cfg.get("n_tasks", 12))
    embed_dim = int(cfg.get("encoder_embed_dim", 768))
    head = None
    if out_layer == "expand-last":
        inter_dim = int(cfg.get("out_layer_inter_dim", -1))
        head = ExpandLastHeadConfig(
            target_layers=[int(i) for i in cfg.get("pred_layer_id", range(1, n_tasks + 1))],
            inner_dim=inter_dim if inter_dim > 0 else embed_dim,
            out_dim=int(cfg.get("final_dim", 768)),
        )
        if len(head.target_layers) != n_tasks:
            raise ValueError(f"distiller config: n_tasks={n_tasks} but pred_layer_id has {len(head.target_layers)}")
    return StudentConfig(
        feature_extractor=FeatureExtractorConfig(
            conv_layers=parse_conv_layers(
                str(cfg.get("extractor_conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"))
            ),
            norm="layer_norm" if cfg.get("extractor_mode", "default") == "layer_norm" else "group_norm",
            bias=False,
            dropout=float(cfg.get("extractor_dropout", 0.0)),
            grad_mult=float(cfg.get("feature_grad_mult", 1.0)),
        ),
        feature_layer_norm=False,
        encoder=fairseq_encoder_config(cfg, int(cfg.get("encoder_layers", 1)), activation_dropout=0.1),
        prediction_head=head,
    )


def config_to_distiller(config: StudentConfig) -> Dict[str, Any]:
    """s3prl's ``Config["distiller"]`` for a DistilHuBERT-shaped config, with every key written out (s3prl's code
    defaults differ from its YAML, so nothing is left to them)."""
    problems = []
    if config.feature_layer_norm:
        problems.append("feature_layer_norm")
    if config.feature_dropout:
        problems.append("feature_dropout")
    if config.feature_extractor.bias:
        problems.append("feature_extractor.bias")
    if not config.encoder.pos_conv_weight_norm:
        problems.append("encoder.pos_conv_weight_norm=false")
    enc = config.encoder
    if isinstance(enc.ffn_dim, list) or isinstance(enc.num_heads, list) or enc.head_dim is not None:
        problems.append("per-layer widths / head_dim")
    if problems:
        raise ValueError(f"s3prl's distiller cannot represent this student ({', '.join(problems)})")
    head = config.prediction_head
    targets = head.target_layers if head is not None else []
    return {
        "extractor_mode": "layer_norm" if config.feature_extractor.norm == "layer_norm" else "default",
        "extractor_conv_feature_layers": format_conv_layers(config.feature_extractor.conv_layers),
        "extractor_dropout": config.feature_extractor.dropout,
        "feature_grad_mult": config.feature_extractor.grad_mult,
        **fairseq_encoder_fields(enc),
        "attention_type": "original",
        "final_dim": head.out_dim if head is not None else enc.embed_dim,
        "out_layer_type": "expand-last" if head is not None else "none",
        "out_layer_inter_dim": (head.inner_dim or enc.embed_dim) if head is not None else -1,
        "n_tasks": len(targets) if head is not None else 1,
        "task_emb_type": "expand-last" if head is not None else "none",
        "task_emb_size": 0,
        "layer_emb_size": 0,
        "loss_type": "l1",
        "feat_pen_loss": 0.0,
        "cosine_loss": 1.0,
        "pred_layer_id": list(targets),
        "init_teacher_conv_layers": False,
        "init_teacher_encoder_layers": False,
    }


def state_dict_from_distiller(state: Mapping[str, Tensor], config: StudentConfig) -> Dict[str, Tensor]:
    """Rename s3prl distiller weights to ours and split the ``SplitLinear`` heads per target."""
    head_state = {k: v for k, v in state.items() if k.startswith("output_layer.2.")}
    ours = _distiller_keys(config).to_ours({k: v for k, v in state.items() if k not in head_state})
    if head_state:
        num_targets = len(config.prediction_head.target_layers)
        if "output_layer.2.layer.weight" in head_state:  # SplitLinear with one target is a plain Linear
            ours["prediction_head.projections.0.weight"] = head_state["output_layer.2.layer.weight"]
            ours["prediction_head.projections.0.bias"] = head_state["output_layer.2.layer.bias"]
        else:
            weight = head_state["output_layer.2.weight"]  # (targets, in, out)
            bias = head_state["output_layer.2.bias"].reshape(num_targets, -1)  # stored as (1, 1, targets, out)
            for n in range(num_targets):
                ours[f"prediction_head.projections.{n}.weight"] = weight[n].t().contiguous()
                ours[f"prediction_head.projections.{n}.bias"] = bias[n].clone()
    return ours


def state_dict_to_distiller(state: Mapping[str, Tensor], config: StudentConfig) -> Dict[str, Tensor]:
    """The inverse of :func:`state_dict_from_distiller`."""
    projections = {k: v for k, v in state.items() if k.startswith("prediction_head.projections.")}
    theirs = _distiller_keys(config).to_theirs({k: v for k, v in state.items() if k not in projections})
    if projections:
        num_targets = len(config.prediction_head.target_layers)
        if num_targets == 1:
            theirs["output_layer.2.layer.weight"] = projections["prediction_head.projections.0.weight"]
            theirs["output_layer.2.layer.bias"] = projections["prediction_head.projections.0.bias"]
        else:
            theirs["output_layer.2.weight"] = torch.stack(
                [projections[f"prediction_head.projections.{n}.weight"].t() for n in range(num_targets)]
            ).contiguous()
            theirs["output_layer.2.bias"] = torch.stack(
                [projections[f"prediction_head.projections.{n}.bias"] for n in range(num_targets)]
            ).reshape(1, 1, num_targets, -1)
    return theirs


def import_distiller(checkpoint: Mapping[str, Any]) -> Tuple[StudentConfig, Dict[str, Tensor]]:
    """(config, our state dict) from a loaded distiller checkpoint."""
    config = config_from_distiller(checkpoint["Config"]["distiller"])
    return config, state_dict_from_distiller(checkpoint["Distiller"], config)


def export_distiller(config: StudentConfig, state: Mapping[str, Tensor]) -> Dict[str, Any]:
    """A checkpoint dict that s3prl's stock ``distiller_local`` loads as is."""
    return {
        "Config": {"distiller": config_to_distiller(config)},
        "Distiller": state_dict_to_distiller(state, config),
    }
