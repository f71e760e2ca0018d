"""Reading pretrain config files into one mapping, before the schema (``config.py``) validates it.

* Several files (``-g a.yaml -g b.yaml``) deep-merge in order: mappings merge key by key, anything else (lists
  included) replaces.
* A variant is an overlay holding only what differs from its base. Two reserved top-level keys, read here and never
  seen by the schema: ``extends: config.yaml`` (the base, relative to the overlay's own folder; a base may extend
  another) and ``remove: [student.feature_extractor, ...]`` (dotted keys deleted from the base before the overlay
  merges in -- a section the variant does not have at all, which no merged value could express).
* ``-o`` overrides use s3prl's syntax (``config.runner.total_steps=10,,config.optimizer.lr=1e-4``); values are parsed
  as YAML, never ``eval``.

This module knows nothing of the schema, so the s3prl expert and ``link-pretrain`` read configs the same way.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from s3prl_distill.errors import ConfigError

PathLike = Union[str, Path]
EXTENDS = "extends"
REMOVE = "remove"


def config_paths(path: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """One path or several, as a list."""
    return [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]


def merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """``update`` deep-merged into a copy of ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def _read_yaml(path: Path, missing: str) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(missing)
    try:
        with path.open() as file:
            loaded = yaml.safe_load(file)
    except yaml.YAMLError as error:
        raise ConfigError(f"pretrain config {path} is not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"pretrain config {path} must be a YAML mapping")
    return loaded


def _check_removals(keys: Any, path: Path) -> List[str]:
    if not isinstance(keys, list) or not all(isinstance(key, str) and key for key in keys):
        raise ConfigError(f"pretrain config {path}: {REMOVE} must be a list of dotted keys, e.g. "
                          f"[student.feature_extractor]")
    return keys


def _remove(data: Dict[str, Any], keys: Sequence[str], path: Optional[Path] = None) -> Dict[str, Any]:
    """``data`` without the dotted ``keys``. Against an overlay's own base (``path`` given) each key must exist, so a
    stale ``remove`` entry is noticed; against files merged before it (``-g a.yaml -g overlay.yaml``), absent keys
    are fine."""
    data = copy.deepcopy(data)
    for key in keys:
        *sections, last = key.split(".")
        target = data
        for section in sections:
            target = target.get(section) if isinstance(target, dict) else None
        if isinstance(target, dict) and last in target:
            del target[last]
        elif path is not None:
            raise ConfigError(f"pretrain config {path}: {REMOVE} names {key}, which its base does not have")
    return data


def _resolve(path: Path, seen: Tuple[Path, ...]) -> Tuple[Dict[str, Any], List[str]]:
    """A file's mapping with its ``extends`` chain resolved, and every key its chain removes."""
    real = path.resolve()
    if real in seen:
        chain = " -> ".join(str(p) for p in (*seen, real))
        raise ConfigError(f"pretrain config {path}: {EXTENDS} forms a cycle ({chain})")
    missing = f"pretrain config {seen[-1]}: its {EXTENDS} base {path} does not exist" if seen \
        else f"pretrain config {path} does not exist"
    data = _read_yaml(path, missing)
    base_name = data.pop(EXTENDS, None)
    removed = data.pop(REMOVE, None)
    if base_name is None:
        if removed is not None:
            raise ConfigError(f"pretrain config {path}: {REMOVE} needs an {EXTENDS} base to remove keys from")
        return data, []
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(f"pretrain config {path}: {EXTENDS} must be a file name (relative to {real.parent})")
    base, removals = _resolve(real.parent / base_name, (*seen, real))
    if removed is not None:
        base = _remove(base, _check_removals(removed, path), path)
        removals = [*removals, *removed]
    return merge(base, data), removals


def read_config(path: PathLike) -> Dict[str, Any]:
    """One config file as a mapping, its ``extends`` chain resolved (without the reserved keys)."""
    return _resolve(Path(path), ())[0]


def read_configs(paths: Sequence[PathLike]) -> Dict[str, Any]:
    """Several config files deep-merged in order, each with its ``extends`` chain resolved; what an overlay removes
    from its base is removed from the files before it too (``-g config.yaml -g config_fbank.yaml`` reads as
    ``-g config_fbank.yaml``)."""
    data: Dict[str, Any] = {}
    for path in paths:
        loaded, removals = _resolve(Path(path), ())
        data = merge(_remove(data, removals), loaded)
    return data


def parse_overrides(overrides: Optional[str]) -> List[Tuple[List[str], Any]]:
    """``config.a.b=V,,config.c=W`` -> [(["a", "b"], V), (["c"], W)]; values are YAML scalars/lists."""
    parsed = []
    for option in (overrides or "").split(",,"):
        option = option.strip()
        if not option:
            continue
        key, separator, value = option.partition("=")
        if not separator:
            raise ConfigError(f"override {option!r} is not of the form config.section.key=value")
        path = key.strip().split(".")
        if path[0] != "config" or len(path) < 2:
            raise ConfigError(f"override {option!r}: keys start with 'config.' (e.g. config.runner.total_steps=10)")
        try:
            parsed.append((path[1:], yaml.safe_load(value.strip())))
        except yaml.YAMLError as error:
            raise ConfigError(f"override {option!r}: value is not valid YAML ({error})") from None
    return parsed


def apply_overrides(data: Dict[str, Any], overrides: Optional[str]) -> Dict[str, Any]:
    """A copy of ``data`` with the ``-o`` overrides set (missing sections are created)."""
    data = copy.deepcopy(data)
    for path, value in parse_overrides(overrides):
        target = data
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override config.{'.'.join(path)}: {part} is not a section")
        target[path[-1]] = value
    return data
