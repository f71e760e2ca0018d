"""DistilHuBERT entries: s3prl's distiller checkpoint format (ours or s3prl's). Each honours ``-k`` / ``ckpt`` when
given (unlike s3prl's named entries)."""

from __future__ import annotations

from typing import Any, Optional

from ..adapters import DistilHuBERTOutputs
from ..expert import StudentExpert, local_entry, url_entry
from ..interfaces import resolve_checkpoint

# The checkpoint of the DistilHuBERT paper (LibriSpeech 960 h, heads on layers 4, 8, 12), as s3prl distributes it.
PAPER_CHECKPOINT_URL = (
    "https://huggingface.co/leo19941227/distilhubert/resolve/main/distilhubert_ls960_4-8-12.ckpt"
)


def distilhubert_local(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                       **kwargs: Any) -> StudentExpert:
    """DistilHuBERT from a local checkpoint in s3prl's distiller format (ours or s3prl's). ``ckpt``: path."""
    return local_entry(DistilHuBERTOutputs, "distilhubert", ckpt, model_config, **kwargs)


def distilhubert_url(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                     **kwargs: Any) -> StudentExpert:
    """DistilHuBERT from a URL, cached by s3prl's downloader (``refresh`` re-downloads); a local path also works."""
    return url_entry(DistilHuBERTOutputs, "distilhubert", ckpt, model_config, refresh, **kwargs)


def distilhubert_ls960(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                       **kwargs: Any) -> StudentExpert:
    """The DistilHuBERT paper checkpoint (downloaded once into s3prl's cache), or ``-k`` if given."""
    path = resolve_checkpoint(ckpt or PAPER_CHECKPOINT_URL, refresh, "distilhubert_ls960")
    return StudentExpert(path, "distilhubert", model_config, adapter=DistilHuBERTOutputs, **kwargs)
