"""student entries: any student checkpoint s3prl-distill reads, whatever its method (``Family``), with the standard
student outputs: ``hidden_states`` = [transformer input, each layer], ``last_hidden_state``, ``pad_mask``.

A method whose students need no outputs of their own registers with ``family="student"`` and is loaded here with
no upstream folder of its own. Gated students are refused (prune them first); FitHuBERT's 40 ms students belong to
``fithubert_local``.
"""

from __future__ import annotations

from typing import Any, Optional

from ..expert import OutputAdapter, StudentExpert, local_entry, url_entry


def student_local(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                  **kwargs: Any) -> StudentExpert:
    """Any s3prl-distill student from a local checkpoint (-k)."""
    return local_entry(OutputAdapter, "student", ckpt, model_config, **kwargs)


def student_url(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                **kwargs: Any) -> StudentExpert:
    """Any s3prl-distill student from a URL (s3prl's download cache) or a local path."""
    return url_entry(OutputAdapter, "student", ckpt, model_config, refresh, **kwargs)
