"""skill entries: SKILL students (Zampierin et al., 2024; DPHuBERT-style pruning with similarity-grouped layer
targets), from ``s3prl-distill pretrain`` + ``prune``."""

from __future__ import annotations

from typing import Any, Optional

from ..adapters import PrunedStudentOutputs
from ..expert import StudentExpert, local_entry, url_entry


def skill_local(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                **kwargs: Any) -> StudentExpert:
    """A SKILL student from a local checkpoint (-k), pruned by s3prl-distill prune."""
    return local_entry(PrunedStudentOutputs, "skill", ckpt, model_config, **kwargs)


def skill_url(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
              **kwargs: Any) -> StudentExpert:
    """A SKILL student from a URL (s3prl's download cache) or a local path."""
    return url_entry(PrunedStudentOutputs, "skill", ckpt, model_config, refresh, **kwargs)
