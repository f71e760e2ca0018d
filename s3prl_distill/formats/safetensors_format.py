"""Students as safetensors files: weights with no pickle, the rest of a native checkpoint in the header.

A safetensors student holds the ``Student`` state dict of a native checkpoint (:mod:`.native`) as its tensors, and
its string metadata carries the rest as JSON:

- ``format``: :data:`s3prl_distill.checkpoint.SAFETENSORS_FORMAT` (what the file is);
- ``s3prl_distill``: ``{"Format": NATIVE_FORMAT, "Family": <method family>, "StudentConfig": <config dict>}``.

Buffers (the fbank front end's normalisation statistics, DPHuBERT's pruning leftovers, ...) are tensors of the state
dict, so they travel with the weights. :func:`s3prl_distill.checkpoint.load_checkpoint` recognises the file by its
header (not its name) and reads it (:func:`s3prl_distill.checkpoint.read_safetensors_student`), returning the
native checkpoint dict it holds, so every reader of our format, and every
``*_local`` upstream, takes it unchanged; nothing in it is unpickled.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Dict, Mapping, Union

from torch import Tensor

# The reading side (and the constants both sides share) lives in checkpoint.py, beside load_checkpoint.
from ..checkpoint import METADATA_KEY, SAFETENSORS_FORMAT, CheckpointError, checkpoint_or_latest, save_checkpoint
from .native import NATIVE_FORMAT

if TYPE_CHECKING:
    from .reader import StudentCheckpoint

logger = logging.getLogger(__name__)


def _write(tensors_and_metadata: Any, file: IO[bytes]) -> None:
    from safetensors.torch import save

    tensors, metadata = tensors_and_metadata
    file.write(save(tensors, metadata=metadata))


def save_safetensors_student(family: str, config: Any, state: Mapping[str, Tensor], path: Union[str, Path]) -> Path:
    """Write a student (its method ``family``, :class:`StudentConfig` and state dict) to ``path`` atomically."""
    tensors: Dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"cannot write {path} as safetensors: state entry {key!r} is a "
                                  f"{type(value).__name__}, not a tensor")
        # Own, contiguous storage each: safetensors refuses tensors that share memory (tied or viewed weights).
        tensors[key] = value.detach().cpu().contiguous().clone()
    header = {"Format": NATIVE_FORMAT, "Family": family, "StudentConfig": config.to_dict()}
    metadata = {"format": SAFETENSORS_FORMAT, METADATA_KEY: json.dumps(header, sort_keys=True)}
    return save_checkpoint((tensors, metadata), path, write=_write)


def save_student_checkpoint_as_safetensors(checkpoint: Mapping[str, Any], source: Union[str, Path],
                                           output: Union[str, Path]) -> "StudentCheckpoint":
    """Write the student of a loaded ``checkpoint`` (any format :func:`read_student` reads without a training YAML;
    ``source`` names it in errors) to ``output`` as a safetensors student; returns what was read. What the trainer
    uses for ``--format safetensors``, and ``export --to safetensors`` (``prune`` has its student in hand and calls
    :func:`save_safetensors_student`)."""
    from .reader import read_student

    student = read_student(checkpoint, str(source))
    save_safetensors_student(student.family, student.config, student.state, output)
    return student


def export_safetensors(path: Path, output: Path) -> Dict[str, Any]:
    """``s3prl-distill export CKPT --to safetensors FILE``: the student of ``path`` (any format :func:`read_student`
    reads without a training YAML, or a run directory: its latest step) as a safetensors student; returns a summary."""
    from ..checkpoint import load_checkpoint

    path = checkpoint_or_latest(path)
    student = save_student_checkpoint_as_safetensors(load_checkpoint(path, what="checkpoint to export"), path, output)
    logger.info("exported %s -> %s (safetensors; every *_local upstream of its family loads it with -k %s)", path,
                output, output)
    return {"source": str(path), "output": str(output), "format": "safetensors", "family": student.family,
            "source_format": student.format, "tensors": len(student.state),
            "params_and_buffers": sum(value.numel() for value in student.state.values())}
