"""Listing the classes a pickle would import, without importing or calling any of them.

When torch's safe reader refuses a checkpoint, :mod:`s3prl_distill.checkpoint` names the classes outside its
allow-list so the user can judge the file before opting into a full unpickle; this scan finds them.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import IO, Any, Set


class _Stub:
    """What the scanning unpickler builds instead of any object: accepts every construction and update."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _GlobalsScanner(pickle.Unpickler):
    """Reads a pickle without importing or calling anything: every global is recorded and replaced by a stub, so
    the names a file would import can be listed safely."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.found: Set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        self.found.add(f"{module}.{name}")
        return type(name, (_Stub,), {})

    def persistent_load(self, pid: Any) -> Any:  # torch's tensor storages
        return None


def pickle_globals(data: bytes, kind: str) -> Set[str]:
    """Every ``module.name`` the checkpoint's pickle(s) refer to, found without running any of it."""
    if kind == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickles = [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
        streams = [io.BytesIO(p) for p in pickles]
    else:
        streams = [io.BytesIO(data)]
    found: Set[str] = set()
    for stream in streams:
        # The legacy format is several pickles in a row (magic number, version, system info, the object, ...).
        while stream.tell() < len(stream.getvalue()):
            scanner = _GlobalsScanner(stream)
            try:
                scanner.load()
            finally:
                found |= scanner.found
            if kind == "zip":
                break
    return found
