"""Reading and writing checkpoints safely.

Reading uses ``torch.load(weights_only=True)``: no code in a checkpoint runs. The few Python objects s3prl's own
formats pickle are allow-listed: ``argparse.Namespace`` (``Args``) and the learning-rate schedule objects that old
distiller optimizers store (s3prl's own classes when s3prl's optimizers are loaded, else inert placeholders, because
only the model weights are needed). Anything else needs an explicit opt-in: ``trust_checkpoint=True``, or
``S3PRL_DISTILL_TRUST_CHECKPOINTS`` set to ``1``/``true``/``yes``/``on``.

s3prl's own loaders read some files with ``weights_only=False`` (the distiller, mockingjay and roberta experts).
:func:`guard_s3prl_loads` (installed with the compat patches, i.e. whenever s3prl is imported with this package
present) routes every ``torch.load`` made from s3prl's code through the same safe reader and the same opt-in, so no
upstream, ours or s3prl's, unpickles a user's file without consent.

Writing is atomic: a temporary file in the same directory, fsynced, then renamed over the target, so a crash
never leaves a half-written checkpoint where the last good one was. Written files get the permissions the user's
umask gives any new file.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Mapping, Optional, Set, Tuple, Union

import torch

from .atomic import TEMPORARY_SUFFIX, atomic_file
from .errors import UserError
from .pickle_scan import pickle_globals

TRUST_ENV = "S3PRL_DISTILL_TRUST_CHECKPOINTS"
TRUE_VALUES = ("1", "true", "yes", "on")
FALSE_VALUES = ("", "0", "false", "no", "off")

Source = Union[str, Path, IO[bytes]]

# torch.load as torch defines it: our reader calls it directly, never through the guard installed over torch.load.
_original_torch_load: Callable[..., Any] = torch.load


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable, unsafe to unpickle, or of the wrong kind."""


class UnpickledPlaceholder:
    """Stands in for an allow-listed class whose instances are never used (e.g. an optimizer's LR schedule)."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def trust_from_environment() -> bool:
    """Whether :data:`TRUST_ENV` gives consent to full unpickling. Only an explicit yes counts; a value that is
    neither yes nor no is an error rather than a guess."""
    value = os.environ.get(TRUST_ENV, "").strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise CheckpointError(
        f"{TRUST_ENV}={os.environ[TRUST_ENV]!r} is not understood: use one of {', '.join(TRUE_VALUES)} to trust "
        f"checkpoints, or {', '.join(v for v in FALSE_VALUES if v)} (or leave it unset) not to"
    )


def _s3prl_schedule_class(module_name: str, name: str) -> Optional[type]:
    module = sys.modules.get(module_name)
    if module is None or not hasattr(module, "get_optimizer"):  # only s3prl's optimizers module
        return None
    cls = getattr(module, name, None)
    return cls if isinstance(cls, type) else None


# Schedule classes s3prl's BertAdam/Lamb optimizers keep in their param groups, pickled under the module name
# "optimizers" (old checkpoints, scripts run in a checkout) or "s3prl.optimizers".
S3PRL_SCHEDULES = (
    "ConstantLR",
    "WarmupConstantSchedule",
    "WarmupCosineSchedule",
    "WarmupCosineWithHardRestartsSchedule",
    "WarmupCosineWithWarmupRestartsSchedule",
    "WarmupLinearSchedule",
)


def _allowed_globals() -> list:
    """``argparse.Namespace`` and s3prl's schedule classes under both module names they are pickled with. The real
    classes are used when s3prl's optimizers are loaded (a resumed s3prl run needs them); else placeholders."""
    allowed: list = [argparse.Namespace]
    for name in S3PRL_SCHEDULES:
        cls = _s3prl_schedule_class("s3prl.optimizers", name) or _s3prl_schedule_class("optimizers", name)
        allowed += [(cls or UnpickledPlaceholder, f"{module}.{name}") for module in ("optimizers", "s3prl.optimizers")]
    return allowed


def file_sha256(path: Union[str, Path]) -> str:
    """SHA-256 of a file's bytes (hex), read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: Union[str, Path], trust_checkpoint: bool = False, what: str = "checkpoint") -> Any:
    """Load ``path`` on the CPU. Errors are :class:`CheckpointError` naming the file and the problem. A safetensors
    student (see :mod:`s3prl_distill.formats.safetensors_format`) comes back as the native checkpoint dict it holds."""
    path = Path(path)
    _require_file(path, f"{what} {path}")
    if is_safetensors_file(path):  # recognised by its header, whatever its name: read with no unpickling at all
        return read_safetensors_student(path, f"{what} {path}")
    return _load(path, "cpu", trust_checkpoint or trust_from_environment(), f"{what} {path}")


# Safetensors students (written by formats.safetensors_format): read here, with the other checkpoints, by content.
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


def read_safetensors_student(path: Union[str, Path], name: str) -> Dict[str, Any]:
    """The native checkpoint dict (``Format``, ``Family``, ``StudentConfig``, ``Student``) in the safetensors file
    ``path``; ``name`` names it in every :class:`CheckpointError`."""
    from safetensors import SafetensorError, safe_open

    from .formats.native import NATIVE_FORMAT

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
    header = _safetensors_header(metadata, name, NATIVE_FORMAT)
    return {**header, "Student": state}


def _safetensors_header(metadata: Mapping[str, str], name: str, native_format: str) -> Dict[str, Any]:
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
    if header["Format"] != native_format or not isinstance(header["Family"], str) \
            or not isinstance(header["StudentConfig"], dict):
        raise CheckpointError(f"{name}: the {METADATA_KEY!r} entry of its safetensors metadata is not an "
                              f"s3prl-distill student header (Format {native_format!r}, a Family string, a "
                              "StudentConfig object)")
    return {key: header[key] for key in ("Format", "Family", "StudentConfig")}


def _require_file(path: Path, name: str) -> None:
    if not path.exists():
        raise CheckpointError(f"{name} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{name} is not a file")


def _load(source: Source, map_location: Any, trust: bool, name: str, **options: Any) -> Any:
    """The one reader behind :func:`load_checkpoint` and the guarded s3prl loads; ``name`` names the file in errors."""
    try:
        if trust:
            with _s3prl_optimizers_alias():
                return _original_torch_load(source, map_location=map_location, weights_only=False, **options)
        with torch.serialization.safe_globals(_allowed_globals()):
            return _original_torch_load(source, map_location=map_location, weights_only=True, **options)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error) and "Weights only" not in str(error):
            raise CheckpointError(f"{name} is corrupt or truncated: {error}") from None
        raise CheckpointError(f"{name} {_why_unsafe_load_failed(source)}") from None
    except Exception as error:  # noqa: BLE001 (torch's readers raise anything on damaged bytes, KeyError included)
        raise CheckpointError(f"{name} {_unreadable(source, error)}") from None


# --- why a safe load failed -----------------------------------------------------------------------------------------

def _read_bytes(source: Source) -> Optional[bytes]:
    try:
        if isinstance(source, (str, Path)):
            return Path(source).read_bytes()
        source.seek(0)
        return source.read()
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None


# torch's legacy (pre-1.6) format starts with its magic number, pickled with protocol 2.
_LEGACY_START = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


def _kind(data: Optional[bytes]) -> str:
    """``zip`` (torch's format since 1.6), ``pickle`` (torch's legacy format) or ``other``."""
    if data is None:
        return "other"
    if data[:4] == b"PK\x03\x04":
        return "zip"
    if data.startswith(_LEGACY_START):
        return "pickle"
    return "other"


def _not_a_checkpoint(data: Optional[bytes]) -> str:
    size = "unreadable" if data is None else f"{len(data)} bytes, starting {data[:8]!r}"
    return (f"is not a PyTorch checkpoint: it is neither a zip archive (torch.save's format) nor a pickle "
            f"({size}). Check that the path names the checkpoint file itself")


def _unreadable(source: Source, error: BaseException) -> str:
    data = _read_bytes(source)
    if _kind(data) == "other":
        return _not_a_checkpoint(data)
    first = _first_line(error)
    if not isinstance(error, (RuntimeError, OSError)):
        first = f"{type(error).__name__}: {first}"
    damaged = isinstance(error, (EOFError, zipfile.BadZipFile)) or any(
        word in first.lower() for word in ("zip", "central directory", "eof", "truncat", "corrupt"))
    return f"is not a readable PyTorch checkpoint{' (truncated or corrupt)' if damaged else ''}: {first}"


def _why_unsafe_load_failed(source: Source) -> str:
    data = _read_bytes(source)
    kind = _kind(data)
    if kind == "other":
        return _not_a_checkpoint(data)
    try:
        found = pickle_globals(data, kind)
    except Exception as error:  # a damaged pickle: the scan stops where unpickling would
        return f"is corrupt or truncated (its pickle cannot be read: {type(error).__name__}: {error})"
    outside = sorted(found - _permitted_global_names())
    if not outside:
        return "is corrupt or truncated (torch's safe unpickler rejected it, but it names no disallowed class)"
    return (f"contains Python objects outside the allow-list: {', '.join(outside)}. Loading it would run code those "
            f"classes choose. Only if you trust this file, set {TRUST_ENV}=1 (or pass trust_checkpoint=True) to "
            "unpickle it fully")


def _permitted_global_names() -> Set[str]:
    """Names torch's weights-only unpickler accepts here: its built-in set, the process-wide allow-list and ours."""
    names: Set[str] = set()
    try:
        from torch import _weights_only_unpickler

        names |= set(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):  # private API: without it, nothing torch-internal is excused by name
        pass
    for entry in [*torch.serialization.get_safe_globals(), *_allowed_globals()]:
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return names


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


# --- s3prl's own torch.load calls -----------------------------------------------------------------------------------

def _s3prl_roots() -> List[str]:
    """Folders holding s3prl's code: the package, and a checkout's scripts folder when they run as top-level
    modules (``optimizers``, ``pretrain.runner``)."""
    roots = []
    package = sys.modules.get("s3prl")
    for folder in getattr(package, "__path__", None) or []:
        roots.append(os.path.realpath(folder))
    optimizers = sys.modules.get("optimizers")
    if optimizers is not None and hasattr(optimizers, "get_optimizer") and getattr(optimizers, "__file__", None):
        roots.append(os.path.dirname(os.path.realpath(optimizers.__file__)))
    return [root + os.sep for root in roots]


@functools.lru_cache(maxsize=4096)
def _real_path(filename: str) -> str:
    return os.path.realpath(filename)


def _s3prl_caller() -> Optional[str]:
    """The s3prl file (relative to its package) of the innermost s3prl frame on the stack, or None."""
    roots = _s3prl_roots()
    if not roots:
        return None
    frame = sys._getframe(2)
    while frame is not None:
        filename = _real_path(frame.f_code.co_filename)
        for root in roots:
            if filename.startswith(root):
                return f"{os.path.basename(root.rstrip(os.sep))}/{filename[len(root):]}:{frame.f_lineno}"
        frame = frame.f_back
    return None


@functools.wraps(_original_torch_load)
def _guarded_torch_load(f: Any, map_location: Any = None, pickle_module: Any = None, *, weights_only: Any = None,
                        mmap: Any = None, **pickle_load_args: Any) -> Any:
    caller = _s3prl_caller()
    if caller is None:  # not s3prl's code: torch.load exactly as it was
        return _original_torch_load(f, map_location, pickle_module, weights_only=weights_only, mmap=mmap,
                                    **pickle_load_args)
    name = f"checkpoint {f} (read by {caller})" if isinstance(f, (str, Path)) else f"checkpoint (read by {caller})"
    if isinstance(f, (str, Path)):
        _require_file(Path(f), name)
    options = {} if mmap is None else {"mmap": mmap}
    return _load(f, map_location, trust_from_environment(), name, **options)


def guard_s3prl_loads() -> bool:
    """Route every ``torch.load`` made from s3prl's code through :func:`load_checkpoint`'s safe reader and opt-in,
    whatever ``weights_only`` s3prl asks for. Other callers of ``torch.load`` are unaffected. Idempotent; returns
    whether it was installed now."""
    if torch.load is _guarded_torch_load:
        return False
    torch.load = _guarded_torch_load
    return True


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


def checkpoint_or_latest(path: Union[str, Path]) -> Path:
    """``path``, or the latest ``states-<step>.ckpt`` of the run directory ``path`` (what ``export`` reads)."""
    path = Path(path)
    if path.is_dir():
        latest = latest_step_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path} is a directory without states-<step>.ckpt; give the checkpoint file")
        return latest
    return path


def save_checkpoint(obj: Any, path: Union[str, Path], write: Optional[Callable[[Any, IO[bytes]], None]] = None) -> Path:
    """Write ``obj`` to ``path`` atomically (:func:`~.atomic.atomic_file`: temporary file, fsync, rename, the folder
    synced), with the permissions the umask gives any new file. ``write(obj, file)`` serialises it (default
    ``torch.save``; the safetensors writer passes its own). A failed write (e.g. a full disk) leaves ``path`` as it was
    and raises :class:`CheckpointError` naming the file and the free space. The folder sync makes the rename reach the
    disk before anyone (keep_last) deletes the checkpoint it replaces as the newest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path, binary=True) as file:
            (write or torch.save)(obj, file)
    except (OSError, RuntimeError) as error:
        raise CheckpointError(f"could not write checkpoint {path}: {_first_line(error)} "
                              f"({_free_space(path.parent)}); the previous file, if any, is unchanged") from error
    return path


def remove_temporary_files(folder: Union[str, Path]) -> List[Path]:
    """Delete the temporary files that interrupted :func:`save_checkpoint` calls left in ``folder`` for step
    checkpoints (``.states-<step>.ckpt.<random>.tmp``). Call it only while holding the folder's lock (no writer can be
    active)."""
    folder = Path(folder)
    removed = []
    for candidate in folder.glob(f".states-*.ckpt.*{TEMPORARY_SUFFIX}") if folder.is_dir() else []:
        if candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2 ** 20:.1f} MiB free on the file system of {folder}"
