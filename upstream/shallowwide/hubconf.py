"""shallowwide entries: Wang et al.'s shallow-wide student (DistilHuBERT-shaped: 2 layers x 768), with HuBERT's CNN
front end or the fbank front end (``_fbank``). Checkpoints come from ``s3prl-distill pretrain`` with the asr_distill
method."""

from __future__ import annotations

from typing import Any, Optional

from ..adapters import AsrStudentOutputs
from ..expert import StudentExpert, local_entry, url_entry


def shallowwide_local(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                      **kwargs: Any) -> StudentExpert:
    """The shallowwide student with the CNN front end, from a local checkpoint (-k)."""
    return local_entry(AsrStudentOutputs, "shallowwide", ckpt, model_config, **kwargs)


def shallowwide_url(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                    **kwargs: Any) -> StudentExpert:
    """The shallowwide student with the CNN front end, from a URL (s3prl's download cache) or a local path."""
    return url_entry(AsrStudentOutputs, "shallowwide", ckpt, model_config, refresh, **kwargs)


def shallowwide_fbank_local(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                            **kwargs: Any) -> StudentExpert:
    """The shallowwide student with the fbank front end, from a local checkpoint (-k)."""
    return local_entry(AsrStudentOutputs, "shallowwide_fbank", ckpt, model_config, **kwargs)


def shallowwide_fbank_url(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False,
                          **kwargs: Any) -> StudentExpert:
    """The shallowwide student with the fbank front end, from a URL (s3prl's download cache) or a local path."""
    return url_entry(AsrStudentOutputs, "shallowwide_fbank", ckpt, model_config, refresh, **kwargs)
