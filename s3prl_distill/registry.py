"""Registering our upstream entries in ``s3prl.hub``.

s3prl resolves every upstream name with ``getattr(s3prl.hub, name)`` (downstream runner, ``S3PRLUpstream``,
``hub.options()``), so adding attributes to that module is all registration takes. Our names never replace one of
s3prl's own.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pkgutil
import types
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

UPSTREAM_PACKAGE = "s3prl_distill.upstream"


def families() -> List[str]:
    """Upstream families: the subpackages of ``s3prl_distill.upstream`` with a ``hubconf`` module, found on the
    package's path (a new family is a folder, nothing to list). Sorted, so registration order is stable."""
    package = importlib.import_module(UPSTREAM_PACKAGE)
    return sorted({info.name for info in pkgutil.iter_modules(package.__path__)
                   if info.ispkg and importlib.util.find_spec(f"{UPSTREAM_PACKAGE}.{info.name}.hubconf") is not None})


def entries() -> Dict[str, Callable]:
    """Every public entry function of every family's hubconf, by name."""
    found: Dict[str, Callable] = {}
    for family in families():
        hubconf = importlib.import_module(f"{UPSTREAM_PACKAGE}.{family}.hubconf")
        for name, value in vars(hubconf).items():
            if not name.startswith("_") and callable(value) and getattr(value, "__module__", None) == hubconf.__name__:
                found[name] = value
    return found


def upstream_names() -> List[str]:
    return sorted(entries())


def register(hub_module: Optional[types.ModuleType] = None) -> List[str]:
    """Apply the compat patches and add our entries to ``s3prl.hub``; returns the names now registered."""
    from . import compat

    compat.apply()
    if hub_module is None:
        import s3prl.hub as hub_module
    registered = []
    for name, function in entries().items():
        existing = getattr(hub_module, name, None)
        if existing is not None and existing is not function:
            if not str(getattr(existing, "__module__", "")).startswith("s3prl_distill."):
                logger.warning("not registering %r: s3prl already has an upstream of that name", name)
                continue
        setattr(hub_module, name, function)
        registered.append(name)
    return registered


def check_upstream_names(names: Sequence[str], what: str = "upstream") -> None:
    """Raise :class:`UnknownUpstreamError` naming the first of ``names`` that ``s3prl.hub`` lacks, with its close
    matches (our upstreams registered first)."""
    import difflib

    from .errors import UnknownUpstreamError

    register()
    import s3prl.hub as hub

    options = hub.options()
    for name in names:
        if name not in options:
            close = difflib.get_close_matches(name, options, n=5)
            raise UnknownUpstreamError(f"{what} {name!r} is not an s3prl upstream (close matches: {close}); "
                                       "`s3prl-distill upstreams` lists ours")


def build_upstream(name: str, ckpt: Optional[str] = None, model_config: Optional[str] = None,
                   refresh: bool = False, what: str = "upstream") -> "torch.nn.Module":
    """``getattr(s3prl.hub, name)(ckpt=..., model_config=..., refresh=...)`` as s3prl's runner calls it, with our
    upstreams registered and the mistakes s3prl reports as a bare ``AssertionError`` named first: an unknown name
    (with close matches) and a ``*_local`` checkpoint or a config file that does not exist. ``what`` names the
    upstream in errors (e.g. ``teacher``, ``-u``)."""
    import os

    from .checkpoint import CheckpointError
    from .errors import ConfigError

    check_upstream_names([name], what)
    import s3prl.hub as hub

    if name.endswith("_local"):
        if ckpt is None:
            raise CheckpointError(f"{what} {name!r} reads a local checkpoint: give its path")
        if not os.path.exists(os.path.expanduser(ckpt)):  # a file, or a folder for some (roberta_local)
            raise CheckpointError(f"{what} {name!r}: checkpoint {ckpt} does not exist")
    if model_config and "://" not in model_config and not os.path.isfile(model_config):
        raise ConfigError(f"{what} {name!r}: upstream config {model_config} does not exist")
    kwargs = {"refresh": refresh}
    if ckpt is not None:
        kwargs["ckpt"] = ckpt
    if model_config is not None:
        kwargs["model_config"] = model_config
    return getattr(hub, name)(**kwargs)
