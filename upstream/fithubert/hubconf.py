"""FitHuBERT entries. ``-k`` takes our checkpoint or the official release (Lightning checkpoint; then ``-g`` is its
training YAML). Each entry honours ``-k`` when given."""

from __future__ import annotations

from typing import Any, Optional

from ..expert import StudentExpert, default_entry, local_entry, url_entry
from .adapter import FitHuBERTOutputs


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
    ~/.cache/s3prl/download/fithubert/FitHuBERT.ckpt (+ FitHuBERT.yaml for the official release: FitHuBERT README,
    Google Drive)."""
    return default_entry(FitHuBERTOutputs, "fithubert", "FitHuBERT", ckpt, model_config, **kwargs)
