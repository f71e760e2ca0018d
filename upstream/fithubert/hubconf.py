"""FitHuBERT entries. ``-k`` takes our checkpoint or the official release (Lightning checkpoint; then ``-g`` is its
training YAML). Each entry honours ``-k`` when given."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from ..expert import StudentExpert, local_entry, url_entry
from .adapter import FitHuBERTOutputs

CKPT_ENV = "S3PRL_DISTILL_FITHUBERT"
CONFIG_ENV = "S3PRL_DISTILL_FITHUBERT_CONFIG"


def _default_location() -> Path:
    """``<s3prl download cache>/fithubert``, i.e. ``~/.cache/s3prl/download/fithubert`` by default."""
    try:
        from s3prl.util.download import get_dir

        return Path(get_dir()) / "fithubert"
    except ImportError:
        return Path.home() / ".cache" / "s3prl" / "download" / "fithubert"


def fithubert_local(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> StudentExpert:
    """FitHuBERT from a local checkpoint: ours, or the official Lightning checkpoint with its YAML as -g."""
    return local_entry(FitHuBERTOutputs, "fithubert", ckpt, model_config, **kwargs)


def fithubert_url(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> StudentExpert:
    """FitHuBERT from a URL (s3prl's download cache; refresh re-downloads); -g may be a URL too."""
    return url_entry(FitHuBERTOutputs, "fithubert", ckpt, model_config, refresh, **kwargs)


def fithubert(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> StudentExpert:
    """FitHuBERT from -k, else $S3PRL_DISTILL_FITHUBERT (+ $S3PRL_DISTILL_FITHUBERT_CONFIG), else
    ~/.cache/s3prl/download/fithubert/FitHuBERT.ckpt (+ FitHuBERT.yaml for the official release)."""
    if ckpt:
        return fithubert_local(ckpt, model_config, refresh, **kwargs)
    folder = _default_location()
    candidates = [(os.environ.get(CKPT_ENV), os.environ.get(CONFIG_ENV))] if os.environ.get(CKPT_ENV) else []
    candidates.append((str(folder / "FitHuBERT.ckpt"), str(folder / "FitHuBERT.yaml")))
    for path, config in candidates:
        if path and Path(path).is_file():
            config = model_config or (config if config and Path(config).is_file() else None)
            return fithubert_local(path, config, refresh, **kwargs)
    raise FileNotFoundError(
        "fithubert: no checkpoint found. Either pass -k CKPT (and -g YAML for the official release), or set "
        f"{CKPT_ENV}=/path/to/checkpoint (and {CONFIG_ENV}=/path/to/training.yaml for the official release), or put "
        f"the checkpoint at {folder / 'FitHuBERT.ckpt'} and, for the official Lightning release (FitHuBERT README, "
        f"Google Drive), its training YAML at {folder / 'FitHuBERT.yaml'}."
    )
