"""``s3prl-distill export CKPT --to FORMAT OUT``: a trained student of ours in another project's layout.

Formats:

- ``dphubert``: the official DPHuBERT / DPWavLM release layout ``{"config", "state_dict"}``
  (:func:`s3prl_distill.formats.dphubert.dphubert_checkpoint`), from a gate-free ``dphubert`` / ``skill`` student:
  ``pruned.ckpt`` from ``s3prl-distill prune``, or a ``states-<step>.ckpt`` of the final distillation (or its run
  directory: the latest step). DPHuBERT's ``wav2vec2_model(**config)`` and our ``dphubert`` upstream both load it.
- ``safetensors``: any student we read, weights as tensors and config in the metadata
  (:mod:`s3prl_distill.formats.safetensors_format`); read back by content, with no unpickling.
- ``hf``: a transformers directory (``config.json`` + ``model.safetensors``): a stock ``HubertModel`` / ``WavLMModel``
  for the students a ``HubertConfig`` / ``WavLMConfig`` can express, our own registered class
  (:mod:`s3prl_distill.hf_model`) for the others (:mod:`s3prl_distill.formats.huggingface`).
- ``onnx``: the upstream's hidden states and frame lengths, dynamic batch and length
  (:mod:`s3prl_distill.formats.onnx_export`).
- ``lightning``: the official release layout of a ``fithubert``, ``armhubert``, ``maskhubert`` or ``starhubert``
  student: a Lightning checkpoint with ``student_model.*`` weights, and beside it (``OUT`` with suffix ``.yaml``)
  the training YAML whose ``distiller`` section the official model code and upstream read
  (:mod:`s3prl_distill.formats.fithubert`, :mod:`s3prl_distill.formats.armhubert`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

from ..checkpoint import (CheckpointError, checkpoint_or_latest, latest_step_checkpoint, load_checkpoint,
                          save_checkpoint)
from ..model.config import StudentConfig
from ..options import EXPORT_FORMATS
from .huggingface import export_huggingface
from .native import describe_checkpoint, is_native_student
from .onnx_export import export_onnx
from .safetensors_format import export_safetensors

logger = logging.getLogger(__name__)

DPHUBERT_FAMILIES = ("dphubert", "skill")


def export_dphubert(path: Path, output: Path) -> Dict[str, Any]:
    """Write the student of ``path`` to ``output`` in the DPHuBERT layout; returns a summary."""
    from .dphubert import dphubert_checkpoint
    from ..model.student import HEAD_PREFIXES, StudentModel

    path = checkpoint_or_latest(path)
    checkpoint = load_checkpoint(path, what="checkpoint to export")
    if not is_native_student(checkpoint) or checkpoint.get("Family") not in DPHUBERT_FAMILIES:
        raise CheckpointError(f"{path} is {describe_checkpoint(checkpoint)}; --to dphubert exports a "
                              f"{' or '.join(DPHUBERT_FAMILIES)} student (pruned.ckpt from s3prl-distill prune, or "
                              "a final-distillation checkpoint)")
    try:
        config = StudentConfig.from_dict(checkpoint["StudentConfig"], f"{path} (StudentConfig)")
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    if config.pruning is not None:
        raise CheckpointError(f"{path} still has its pruning gates: run `s3prl-distill prune {path} --output DIR` "
                              "and export DIR/pruned.ckpt (or the final distillation's checkpoint)")
    # Build our model first: its strict load checks the weights (and converts an older checkpoint's removed-block
    # stand-ins) before anything is written.
    model = StudentModel(config.model_copy(update={"prediction_head": None, "codeword_head": None,
                                                   "mask_embedding": False}))
    backbone = {key: value for key, value in checkpoint["Student"].items() if not key.startswith(HEAD_PREFIXES)}
    try:
        model.load_state_dict(backbone, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match its StudentConfig: {error}") from None
    try:
        exported = dphubert_checkpoint(config, model.state_dict(), str(path))
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    save_checkpoint(exported, output)
    # Every tensor of their layout is a parameter of their model (dummy_weight too, which our count leaves out).
    parameters = sum(value.numel() for value in exported["state_dict"].values())
    summary = {"source": str(path), "output": str(output), "format": "dphubert", "family": checkpoint["Family"],
               "params": model.num_parameters(), "params_exported": parameters,
               "removed_attention_blocks": [i for i, keep in enumerate(exported["config"]["encoder_use_attention"])
                                            if not keep],
               "removed_feed_forward_blocks": [i for i, keep in
                                               enumerate(exported["config"]["encoder_use_feed_forward"]) if not keep]}
    if config.feature_layer_norm_pruned:
        summary["restored_cnn_channels"] = config.feature_layer_norm_pruned
        logger.info("%d pruned CNN channels that the feature LayerNorm still counts are written back as channels "
                    "scaled to 0 (the DPHuBERT layout has no other way to keep the outputs exact)",
                    config.feature_layer_norm_pruned)
    logger.info("exported %s -> %s (DPHuBERT layout; load with DPHuBERT's wav2vec2_model(**ckpt['config']) or "
                "-u dphubert_local -k %s)", path, output, output)
    return summary


LIGHTNING_FAMILIES = ("fithubert", "armhubert", "maskhubert", "starhubert")


def export_lightning_release(path: Path, output: Path) -> Dict[str, Any]:
    """``--to lightning``: our student of a family with an official Lightning release, in that layout (OUT and the
    training YAML beside it)."""
    import yaml

    from . import armhubert, fithubert
    from .reader import read_student

    path = checkpoint_or_latest(path)
    checkpoint = load_checkpoint(path, what="checkpoint to export")
    wanted = (f"--to lightning exports our {', '.join(LIGHTNING_FAMILIES)} students (the official releases are "
              "already in that layout)")
    if not is_native_student(checkpoint):
        raise CheckpointError(f"{path} is {describe_checkpoint(checkpoint)}; {wanted}")
    student = read_student(checkpoint, str(path), families=LIGHTNING_FAMILIES, wanted=wanted)
    try:
        if student.family == "fithubert":
            exported, training_yaml = fithubert.export_lightning(student.config, student.state)
        else:
            exported, training_yaml = armhubert.export_lightning(student.config, student.state, student.family)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    output = Path(output)
    save_checkpoint(exported, output)
    yaml_path = output.with_suffix(".yaml")
    yaml_path.write_text(yaml.safe_dump(training_yaml, sort_keys=False))
    logger.info("exported %s -> %s + %s (the official %s layout; -u %s_local -k %s -g %s)", path, output, yaml_path,
                student.family, student.family, output, yaml_path)
    return {"source": str(path), "output": str(output), "yaml": str(yaml_path), "format": "lightning",
            "family": student.family}


# One exporter per name of EXPORT_FORMATS (the choices of --to, kept in the torch-free options module for the command
# line; tests/test_cli.py holds the two to the same names).
EXPORTERS = {
    "dphubert": export_dphubert,
    "safetensors": export_safetensors,
    "onnx": export_onnx,
    "hf": export_huggingface,  # a directory: transformers' HuBERT (formats/huggingface.py)
    "lightning": export_lightning_release,
}


def export_checkpoint(path: Path, to: str, output: Path) -> Dict[str, Any]:
    """``s3prl-distill export``: dispatch on ``to`` (one of :data:`EXPORT_FORMATS`)."""
    if to not in EXPORTERS:
        raise ValueError(f"--to {to!r}: unknown format; choose from {', '.join(EXPORT_FORMATS)}")
    source, output = Path(path), Path(output)
    if source.is_dir():  # a run directory is read as its latest checkpoint (checkpoint_or_latest); other folders as is
        source = latest_step_checkpoint(source) or source
    if output.resolve() == source.resolve():  # it would be replaced by its own export: the training state lost
        raise CheckpointError(f"--output {output} is the checkpoint being exported: exporting there would replace "
                              "it (and the optimizer and training state a resume needs); choose another output")
    return EXPORTERS[to](Path(path), output)
