"""Files that are either whole or absent: written to a temporary file beside the target, flushed to disk, then
renamed over it (and the rename flushed), so a kill mid-write leaves the previous version (or nothing), never a
half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional, TextIO, Union


@contextlib.contextmanager
def atomic_text_file(path: Union[str, Path], newline: Optional[str] = None) -> Iterator[TextIO]:
    """A UTF-8 text handle whose contents replace ``path`` when the block ends without an exception; on one, the
    temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False,
                                         newline=newline, encoding="utf-8")
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


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


def write_text_atomically(path: Union[str, Path], text: str) -> None:
    """``Path(path).write_text(text)``, but whole or not at all (see the module docstring)."""
    with atomic_text_file(path) as handle:
        handle.write(text)
