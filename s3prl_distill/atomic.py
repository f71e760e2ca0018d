"""Files that are either whole or absent: written to a temporary file beside the target (``.<name>.<random>.tmp``),
flushed to disk, then renamed over it (and the rename flushed), so a kill mid-write leaves the previous version (or
nothing), never a half-written file. New files get the permissions the umask gives any file (as ``open`` would), not
the temporary file's 0600. Checkpoints (``checkpoint.save_checkpoint``), the SUPERB sweep's records and the length
CSVs are written this way."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union

TEMPORARY_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_file(path: Union[str, Path], binary: bool = False, newline: Optional[str] = None) -> Iterator[IO[Any]]:
    """A handle (UTF-8 text, or bytes with ``binary``) whose contents replace ``path`` when the block ends without an
    exception; on one, the temporary file is removed, ``path`` is left as it was, and the exception propagates."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        os.fchmod(descriptor, 0o666 & ~umask())
        with (os.fdopen(descriptor, "wb") if binary else
              os.fdopen(descriptor, "w", encoding="utf-8", newline=newline)) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def write_text_atomically(path: Union[str, Path], text: str) -> None:
    """``Path(path).write_text(text)``, but whole or not at all (see the module docstring)."""
    with atomic_file(path) as handle:
        handle.write(text)


def sync_directory(folder: Union[str, Path]) -> None:
    """Flush ``folder``'s entries to disk, so that a rename into it survives a power loss (the renamed file's data
    is flushed by its writer). Where the file system cannot sync a folder (some network ones), nothing happens."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux), else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current
