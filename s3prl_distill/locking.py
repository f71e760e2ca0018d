"""One process at a time per output: an exclusive lock on a file, held for the life of a run.

POSIX record locks (``fcntl.lockf``) belong to the process that took them: the kernel drops them when that process
ends, however it ends (``kill -9`` included), so a lock is never stale; and forked children (DataLoader workers)
do not inherit them, so a killed run's lingering workers never block its resume. The lock file itself stays
(deleting it would let two processes lock two different files of the same name); it holds the holder's PID, which
the refusal names.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Optional, Set, Type, Union

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks; runs are not protected against each other there
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_NAME = ".s3prl-distill.lock"

# Record locks do not conflict within one process, so this process's own holds are tracked here as well.
_held: Set[str] = set()


class LockedError(UserError, RuntimeError):
    """The output is in use by another run."""


class ExclusiveLock:
    """``with ExclusiveLock(path, what):`` holds ``path`` (created if needed) or raises :class:`LockedError`.

    Args:
        path: the lock file.
        what: how the refusal names the protected output, e.g. ``"experiment directory result/pretrain/x"``.
        hint: appended to the refusal (what the user can do instead).
        wait: block until the holder is gone instead of refusing (logged once).
    """

    def __init__(self, path: Union[str, Path], what: str, hint: str = "", wait: bool = False) -> None:
        self.path = Path(path)
        self.what = what
        self.hint = hint
        self.wait = wait
        self._descriptor: Optional[int] = None

    def acquire(self) -> "ExclusiveLock":
        key = str(self.path.resolve())
        if key in _held:
            raise LockedError(f"{self.what} is already in use by this process (PID {os.getpid()}){self._hint()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            waited = False
            while True:
                try:
                    fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as error:
                    if error.errno not in (errno.EACCES, errno.EAGAIN):
                        os.close(descriptor)
                        raise
                    holder = _read_pid(descriptor)
                    if not self.wait:
                        os.close(descriptor)
                        raise LockedError(
                            f"{self.what} is in use by another process (PID {holder or 'unknown'}, lock file "
                            f"{self.path}){self._hint()}"
                        ) from None
                    if not waited:
                        logger.info("waiting for PID %s to release %s", holder or "unknown", self.what)
                        waited = True
                    time.sleep(0.5)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        self._descriptor = descriptor
        _held.add(key)
        return self

    def release(self) -> None:
        if self._descriptor is None:
            return
        _held.discard(str(self.path.resolve()))
        os.close(self._descriptor)  # closing drops the record lock
        self._descriptor = None

    def _hint(self) -> str:
        return f"; {self.hint}" if self.hint else ""

    def __enter__(self) -> "ExclusiveLock":
        return self.acquire()

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self.release()


def directory_lock(directory: Union[str, Path], what: str, hint: str = "") -> ExclusiveLock:
    """The lock of an output directory: ``DIR/.s3prl-distill.lock``."""
    return ExclusiveLock(Path(directory) / LOCK_NAME, f"{what} {directory}", hint)


def _read_pid(descriptor: int) -> Optional[str]:
    try:
        os.lseek(descriptor, 0, os.SEEK_SET)
        text = os.read(descriptor, 64).decode(errors="replace").strip()
    except OSError:
        return None
    return text or None
