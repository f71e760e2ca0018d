"""Registering our upstream entries in ``s3prl.hub``.

s3prl resolves every upstream name with ``getattr(s3prl.hub, name)`` (downstream runner, ``S3PRLUpstream``,
``hub.options()``), so adding attributes to that module is all registration takes. Our names never replace one of
s3prl's own.
"""

from __future__ import annotations

import importlib
import logging
import types
from typing import Callable, Dict, List, Optional

logger = logging.getLogger(__name__)

# Upstream families: folders under upstream/ with a hubconf.py.
FAMILIES = ("distilhubert", "fithubert", "deepthin", "shallowwide", "dphubert", "skill")


def entries() -> Dict[str, Callable]:
    """Every public entry function of every family's hubconf, by name."""
    found: Dict[str, Callable] = {}
    for family in FAMILIES:
        hubconf = importlib.import_module(f"s3prl_distill.upstream.{family}.hubconf")
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
