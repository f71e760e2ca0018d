"""DistilHuBERT entries. Each honours ``-k`` / ``ckpt`` when given (unlike s3prl's named entries)."""

from __future__ import annotations

from typing import Any, Optional

from ..interfaces import resolve_checkpoint, resolve_local_checkpoint
from .expert import UpstreamExpert as _UpstreamExpert

# The checkpoint of the DistilHuBERT paper (LibriSpeech 960 h, heads on layers 4, 8, 12), as s3prl distributes it.
PAPER_CHECKPOINT_URL = (
    "https://huggingface.co/leo19941227/distilhubert/resolve/main/distilhubert_ls960_4-8-12.ckpt"
)


def distilhubert_local(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> _UpstreamExpert:
    """DistilHuBERT from a local checkpoint in s3prl's distiller format (ours or s3prl's). ``ckpt``: path."""
    return _UpstreamExpert(resolve_local_checkpoint(ckpt, "distilhubert_local"), model_config, **kwargs)


def distilhubert_url(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> _UpstreamExpert:
    """DistilHuBERT from a URL, cached by s3prl's downloader (``refresh`` re-downloads); a local path also works."""
    if ckpt is None:
        raise ValueError("distilhubert_url needs the checkpoint URL: pass it with -k or ckpt=")
    return _UpstreamExpert(resolve_checkpoint(ckpt, refresh, "distilhubert_url"), model_config, **kwargs)


def distilhubert_ls960(
    ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs: Any
) -> _UpstreamExpert:
    """The DistilHuBERT paper checkpoint (downloaded once into s3prl's cache), or ``-k`` if given."""
    source = ckpt if ckpt else PAPER_CHECKPOINT_URL
    return _UpstreamExpert(resolve_checkpoint(source, refresh, "distilhubert_ls960"), model_config, **kwargs)
