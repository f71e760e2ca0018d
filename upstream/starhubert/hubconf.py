"""STaRHuBERT (-L/-S/-XS) / STaRWavLM entries (sungnyun/ARMHuBERT). ``-k`` takes our starhubert checkpoint or the
official release (a Lightning checkpoint; then ``-g`` is its training YAML). Outputs: see
``upstream/armhubert/adapter.py``."""

from __future__ import annotations

from typing import Any, Optional

from ..expert import StudentExpert, default_entry, local_entry, url_entry
from ..armhubert.adapter import STaRHuBERTOutputs


def starhubert_local(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> StudentExpert:
    """STaRHuBERT (-L/-S/-XS) / STaRWavLM from a local checkpoint: ours, or the official Lightning
    checkpoint with its YAML as -g."""
    return local_entry(STaRHuBERTOutputs, "starhubert", ckpt, model_config, **kwargs)


def starhubert_url(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> StudentExpert:
    """STaRHuBERT (-L/-S/-XS) / STaRWavLM from a URL (s3prl's download cache; refresh re-downloads); -g may be a
    URL too."""
    return url_entry(STaRHuBERTOutputs, "starhubert", ckpt, model_config, refresh, **kwargs)


def starhubert(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> StudentExpert:
    """STaRHuBERT from -k, else $S3PRL_DISTILL_STARHUBERT (+ $S3PRL_DISTILL_STARHUBERT_CONFIG), else
    ~/.cache/s3prl/download/starhubert/STaRHuBERT.ckpt (+ STaRHuBERT.yaml for the official release: Google Drive, STaR README)."""
    return default_entry(STaRHuBERTOutputs, "starhubert", "STaRHuBERT", ckpt, model_config, **kwargs)
