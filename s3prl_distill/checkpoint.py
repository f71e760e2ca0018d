"""Reading and writing checkpoints safely.

Reading uses ``torch.load(weights_only=True)``: no code in a checkpoint runs. The few Python objects s3prl's own
formats pickle are allow-listed: ``argparse.Namespace`` (``Args``) and the learning-rate schedule objects that old
distiller optimizers store, which load as inert placeholders because only the model weights are needed. Anything
else needs an explicit opt-in (``trust_checkpoint=True`` or ``S3PRL_DISTILL_TRUST_CHECKPOINTS=1``).

Writing is atomic: a temporary file in the same directory, fsynced, then renamed over the target, so a crash
never leaves a half-written checkpoint where the last good one was.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional, Tuple, Union

import torch

from .compat import S3PRL_SCHEDULES

TRUST_ENV = "S3PRL_DISTILL_TRUST_CHECKPOINTS"



class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe to unpickle, or of the wrong kind."""


class UnpickledPlaceholder:
    """Stands in for an allow-listed class whose instances are never used (e.g. an optimizer's LR schedule)."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _allowed_globals() -> list:
    allowed: list = [argparse.Namespace]
    for module in ("optimizers", "s3prl.optimizers"):
        allowed += [(UnpickledPlaceholder, f"{module}.{name}") for name in S3PRL_SCHEDULES]
    return allowed


def load_checkpoint(path: Union[str, Path], trust_checkpoint: bool = False, what: str = "checkpoint") -> Any:
    """Load ``path`` on the CPU. Errors are :class:`CheckpointError` naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a file")
    trust = trust_checkpoint or os.environ.get(TRUST_ENV, "") not in ("", "0")
    try:
        if trust:
            with _s3prl_optimizers_alias():
                return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        if "Weights only load failed" in message or "weights_only" in message:
            culprit = _unpickler_complaint(message)
            raise CheckpointError(
                f"{what} {path} contains Python objects that cannot be loaded safely ({culprit.strip()}). "
                f"Only if you trust this file, set {TRUST_ENV}=1 (or pass trust_checkpoint=True) to unpickle it fully."
            ) from None
        raise CheckpointError(f"{what} {path} is corrupt or truncated: {message}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"{what} {path} is not a readable PyTorch checkpoint (truncated or corrupt?): {error}"
        ) from None


def _unpickler_complaint(message: str) -> str:
    """The informative part of torch's weights-only error (e.g. "Unsupported global: GLOBAL foo.Bar")."""
    _, _, detail = message.partition("WeightsUnpickler error:")
    detail = detail.split("Check the documentation")[0].strip()
    return " ".join(detail.split()) if detail else message.splitlines()[0]


@contextmanager
def _s3prl_optimizers_alias() -> Iterator[None]:
    """Old distiller checkpoints pickle classes from a top-level module ``optimizers`` that is now
    ``s3prl.optimizers``; full unpickling needs the alias."""
    previous = sys.modules.get("optimizers")
    try:
        import s3prl.optimizers

        sys.modules["optimizers"] = s3prl.optimizers
    except ImportError:  # no s3prl: nothing to alias
        pass
    try:
        yield
    finally:
        if previous is None:
            sys.modules.pop("optimizers", None)
        else:
            sys.modules["optimizers"] = previous


STATES_PATTERN = re.compile(r"^states-(\d+)\.ckpt$")  # what s3prl's runners and ours name step checkpoints


def step_checkpoints(folder: Union[str, Path]) -> List[Tuple[int, Path]]:
    """``(step, path)`` of every ``states-<step>.ckpt`` in ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := STATES_PATTERN.match(p.name)))


def latest_step_checkpoint(folder: Union[str, Path]) -> Optional[Path]:
    found = step_checkpoints(folder)
    return found[-1][1] if found else None


def save_checkpoint(obj: Any, path: Union[str, Path]) -> Path:
    """Write ``obj`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


# Our own checkpoint layout for students s3prl has no format for (everything but DistilHuBERT).
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
