"""skill entries: SKILL students (Zampierin et al., 2024; DPHuBERT-style pruning with similarity-grouped layer
targets), from ``s3prl-distill pretrain`` + ``prune``."""

from __future__ import annotations

from typing import Any, Optional

from ..pruned_student import local_entry, url_entry
from .expert import UpstreamExpert as _UpstreamExpert


def skill_local(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                **kwargs: Any) -> _UpstreamExpert:
    """A SKILL student from a local checkpoint (-k), pruned by s3prl-distill prune."""
    return local_entry("skill", ckpt, model_config, **kwargs)


def skill_url(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
              **kwargs: Any) -> _UpstreamExpert:
    """A SKILL student from a URL (s3prl's download cache) or a local path."""
    return url_entry("skill", ckpt, model_config, refresh, **kwargs)
