"""dphubert entries: students jointly distilled and structurally pruned (Peng et al., 2023), from
``s3prl-distill pretrain`` + ``prune`` or the official DPHuBERT / DPWavLM ``{config, state_dict}`` checkpoints."""

from __future__ import annotations

from typing import Any, Optional

from ..adapters import PrunedStudentOutputs
from ..expert import StudentExpert, local_entry, url_entry


def dphubert_local(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                   **kwargs: Any) -> StudentExpert:
    """A DPHuBERT / DPWavLM student from a local checkpoint (-k): ours after prune, or the official release."""
    return local_entry(PrunedStudentOutputs, "dphubert", ckpt, model_config, **kwargs)


def dphubert_url(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                 **kwargs: Any) -> StudentExpert:
    """A DPHuBERT / DPWavLM student from a URL (s3prl's download cache) or a local path."""
    return url_entry(PrunedStudentOutputs, "dphubert", ckpt, model_config, refresh, **kwargs)
