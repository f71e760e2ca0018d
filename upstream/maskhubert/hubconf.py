"""MaskHuBERT entries (sungnyun/ARMHuBERT). ``-k`` takes our maskhubert checkpoint or the official release (a Lightning
checkpoint; then ``-g`` is its training YAML). Outputs: see ``upstream/armhubert/adapter.py``."""

from __future__ import annotations

from typing import Any, Optional

from ..expert import StudentExpert, default_entry, local_entry, url_entry
from ..armhubert.adapter import ARMHuBERTOutputs


def maskhubert_local(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> StudentExpert:
    """MaskHuBERT from a local checkpoint: ours, or the official Lightning
    checkpoint with its YAML as -g."""
    return local_entry(ARMHuBERTOutputs, "maskhubert", ckpt, model_config, **kwargs)


def maskhubert_url(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> StudentExpert:
    """MaskHuBERT from a URL (s3prl's download cache; refresh re-downloads); -g may be a URL too."""
    return url_entry(ARMHuBERTOutputs, "maskhubert", ckpt, model_config, refresh, **kwargs)


def maskhubert(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> StudentExpert:
    """MaskHuBERT from -k, else $S3PRL_DISTILL_MASKHUBERT (+ $S3PRL_DISTILL_MASKHUBERT_CONFIG), else
    ~/.cache/s3prl/download/maskhubert/MaskHuBERT.ckpt (+ MaskHuBERT.yaml for the official release: Hugging Face sungnyun/ARMHuBERT)."""
    return default_entry(ARMHuBERTOutputs, "maskhubert", "MaskHuBERT", ckpt, model_config, **kwargs)
