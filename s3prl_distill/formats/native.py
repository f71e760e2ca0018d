"""Our own checkpoint layout, for students s3prl has no format for (everything but DistilHuBERT), and a short
description of any loaded checkpoint for error messages.

A native checkpoint is ``{"Format": NATIVE_FORMAT, "Family": <method family>, "StudentConfig": dict, "Student":
state dict}`` (training runs add their own keys beside these). Plain dicts and tensors only, so the safe reader
loads it.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

NATIVE_FORMAT = "s3prl_distill.student/1"


def export_student(family: str, config: Any, state: Mapping[str, Any]) -> dict:
    """``{"Format", "Family", "StudentConfig", "Student"}``: plain dicts and tensors only."""
    return {"Format": NATIVE_FORMAT, "Family": family, "StudentConfig": config.to_dict(), "Student": dict(state)}


def is_native_student(checkpoint: Any) -> bool:
    return isinstance(checkpoint, Mapping) and checkpoint.get("Format") == NATIVE_FORMAT


def describe_checkpoint(checkpoint: Any) -> str:
    """A short human description of a loaded checkpoint's format, for error messages."""
    if not isinstance(checkpoint, Mapping):
        return f"a {type(checkpoint).__name__}, not a checkpoint dict"
    if is_native_student(checkpoint):
        return f"an s3prl-distill {checkpoint.get('Family')} student checkpoint"
    keys = set(checkpoint)
    if "Distiller" in keys:
        return "an s3prl distiller (DistilHuBERT) checkpoint"
    if {"model_cfg", "model_weight"} <= keys:
        return "an s3prl converted HuBERT/wav2vec 2.0 checkpoint (hubert_local / wav2vec2_local format)"
    if {"cfg", "model"} <= keys or {"args", "model"} <= keys:
        return "a fairseq checkpoint"
    if "Downstream" in keys or "Featurizer" in keys:
        return "an s3prl downstream-runner checkpoint (it holds a downstream model, not an upstream)"
    if "state_dict" in keys and "pytorch-lightning_version" in keys:
        return "a PyTorch Lightning checkpoint"
    if {"config", "state_dict"} <= keys:
        return "a DPHuBERT-style {config, state_dict} checkpoint"
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return "a bare state dict (weights without a config)"
    shown = sorted(str(k) for k in keys)[:8]
    return f"a dict with keys {shown}"
