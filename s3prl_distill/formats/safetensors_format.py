"""Students as safetensors files: weights with no pickle, the rest of a native checkpoint in the header.

A safetensors student holds the ``Student`` state dict of a native checkpoint (:mod:`.native`) as its tensors, and
its string metadata carries the rest as JSON:

- ``format``: :data:`SAFETENSORS_FORMAT` (what the file is);
- ``s3prl_distill``: ``{"Format": NATIVE_FORMAT, "Family": <method family>, "StudentConfig": <config dict>}``.

Buffers (the fbank front end's normalisation statistics, DPHuBERT's pruning leftovers, ...) are tensors of the state
dict, so they travel with the weights. :func:`s3prl_distill.checkpoint.load_checkpoint` recognises the file by its
header (not its name) and returns the native checkpoint dict it holds, so every reader of our format, and every
``*_local`` upstream, takes it unchanged; nothing in it is unpickled.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import IO, Any, Dict, Mapping, Union

from torch import Tensor

from ..checkpoint import CheckpointError, checkpoint_or_latest, save_checkpoint
from .native import NATIVE_FORMAT

logger = logging.getLogger(__name__)

SAFETENSORS_FORMAT = "s3prl_distill.student.safetensors/1"
METADATA_KEY = "s3prl_distill"  # the JSON of the checkpoint's non-tensor entries
# safetensors' layout: an 8-byte little-endian header size, then the JSON header (which starts with "{").
_HEADER_SIZE = struct.Struct("<Q")
_MAX_HEADER = 100 * 2 ** 20  # safetensors' own limit on the header


def is_safetensors_file(path: Union[str, Path]) -> bool:
    """Whether ``path`` starts like a safetensors file: a header size that fits the file, then a JSON object."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            start = file.read(_HEADER_SIZE.size + 1)
        size = path.stat().st_size
    except OSError:
        return False
    if len(start) < _HEADER_SIZE.size + 1:
        return False
    (header,) = _HEADER_SIZE.unpack(start[:_HEADER_SIZE.size])
    return 2 <= header <= min(_MAX_HEADER, size - _HEADER_SIZE.size) and start[-1:] == b"{"


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


def read_safetensors_student(path: Union[str, Path], name: str) -> Dict[str, Any]:
    """The native checkpoint dict (``Format``, ``Family``, ``StudentConfig``, ``Student``) in the safetensors file
    ``path``; ``name`` names it in every :class:`CheckpointError`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            fmt = metadata.get("format")
            if fmt != SAFETENSORS_FORMAT:
                found = "no 'format' entry" if fmt is None else f"format {fmt!r}"
                raise CheckpointError(f"{name} is a safetensors file with {found} in its metadata, not an "
                                      f"s3prl-distill student ({SAFETENSORS_FORMAT!r}, written by `s3prl-distill "
                                      "export CKPT --to safetensors FILE`); a bare safetensors state dict has no "
                                      "config to build the student from")
            state = {key: file.get_tensor(key) for key in file.keys()}
    except SafetensorError as error:
        raise CheckpointError(f"{name} is not a readable safetensors file (truncated or corrupt): {error}") from None
    header = _header(metadata, name)
    return {**header, "Student": state}


def _header(metadata: Mapping[str, str], name: str) -> Dict[str, Any]:
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise CheckpointError(f"{name}: its safetensors metadata has no {METADATA_KEY!r} entry (the student's "
                              "family and config); the file is damaged or was not written by s3prl-distill")
    try:
        header = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{name}: the {METADATA_KEY!r} entry of its safetensors metadata is not valid JSON: "
                              f"{error}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name}: the {METADATA_KEY!r} entry of its safetensors metadata is a "
                              f"{type(header).__name__}, not a JSON object")
    missing = [key for key in ("Format", "Family", "StudentConfig") if key not in header]
    if missing:
        raise CheckpointError(f"{name}: the {METADATA_KEY!r} entry of its safetensors metadata lacks "
                              f"{', '.join(missing)}")
    if header["Format"] != NATIVE_FORMAT or not isinstance(header["Family"], str) \
            or not isinstance(header["StudentConfig"], dict):
        raise CheckpointError(f"{name}: the {METADATA_KEY!r} entry of its safetensors metadata is not an "
                              f"s3prl-distill student header (Format {NATIVE_FORMAT!r}, a Family string, a "
                              "StudentConfig object)")
    return {key: header[key] for key in ("Format", "Family", "StudentConfig")}


def export_safetensors(path: Path, output: Path) -> Dict[str, Any]:
    """``s3prl-distill export CKPT --to safetensors FILE``: the student of ``path`` (any format :func:`read_student`
    reads without a training YAML, or a run directory: its latest step) as a safetensors student; returns a summary."""
    from ..checkpoint import load_checkpoint
    from .reader import read_student

    path = checkpoint_or_latest(path)
    student = read_student(load_checkpoint(path, what="checkpoint to export"), str(path))
    save_safetensors_student(student.family, student.config, student.state, output)
    logger.info("exported %s -> %s (safetensors; every *_local upstream of its family loads it with -k %s)", path,
                output, output)
    return {"source": str(path), "output": str(output), "format": "safetensors", "family": student.family,
            "source_format": student.format, "tensors": len(student.state),
            "params_and_buffers": sum(value.numel() for value in student.state.values())}
