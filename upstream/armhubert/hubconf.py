"""ARMHuBERT / ARMwavLM (-S) entries (sungnyun/ARMHuBERT). ``-k`` takes our armhubert checkpoint or the official release
(a Lightning checkpoint; then ``-g`` is its training YAML). Outputs: see ``upstream/armhubert/adapter.py``."""

from __future__ import annotations

from typing import Any, Optional

from ..expert import StudentExpert, default_entry, local_entry, url_entry
from .adapter import ARMHuBERTOutputs


def armhubert_local(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> StudentExpert:
    """ARMHuBERT / ARMwavLM (-S) from a local checkpoint: ours, or the official Lightning
    checkpoint with its YAML as -g."""
    return local_entry(ARMHuBERTOutputs, "armhubert", ckpt, model_config, **kwargs)


def armhubert_url(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> StudentExpert:
    """ARMHuBERT / ARMwavLM (-S) from a URL (s3prl's download cache; refresh re-downloads); -g may be a URL too."""
    return url_entry(ARMHuBERTOutputs, "armhubert", ckpt, model_config, refresh, **kwargs)


def armhubert(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> StudentExpert:
    """ARMHuBERT / ARMwavLM (-S) from -k, else $S3PRL_DISTILL_ARMHUBERT (+ $S3PRL_DISTILL_ARMHUBERT_CONFIG), else
    ~/.cache/s3prl/download/armhubert/ARMHuBERT.ckpt (+ ARMHuBERT.yaml for the official release: Hugging Face sungnyun/ARMHuBERT)."""
    return default_entry(ARMHuBERTOutputs, "armhubert", "ARMHuBERT", ckpt, model_config, **kwargs)
