"""deepthin entries: Wang et al.'s deep-thin student (12 layers x 480, a head per layer), with HuBERT's CNN front
end or the fbank front end (``_fbank``). Checkpoints come from ``s3prl-distill pretrain`` with the asr_distill
method."""

from __future__ import annotations

from typing import Any, Optional

from ..adapters import AsrStudentOutputs
from ..expert import StudentExpert, local_entry, url_entry


def deepthin_local(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                   **kwargs: Any) -> StudentExpert:
    """The deepthin student with the CNN front end, from a local checkpoint (-k)."""
    return local_entry(AsrStudentOutputs, "deepthin", ckpt, model_config, **kwargs)


def deepthin_url(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                 **kwargs: Any) -> StudentExpert:
    """The deepthin student with the CNN front end, from a URL (s3prl's download cache) or a local path."""
    return url_entry(AsrStudentOutputs, "deepthin", ckpt, model_config, refresh, **kwargs)


def deepthin_fbank_local(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                         **kwargs: Any) -> StudentExpert:
    """The deepthin student with the fbank front end, from a local checkpoint (-k)."""
    return local_entry(AsrStudentOutputs, "deepthin_fbank", ckpt, model_config, **kwargs)


def deepthin_fbank_url(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                       **kwargs: Any) -> StudentExpert:
    """The deepthin student with the fbank front end, from a URL (s3prl's download cache) or a local path."""
    return url_entry(AsrStudentOutputs, "deepthin_fbank", ckpt, model_config, refresh, **kwargs)
