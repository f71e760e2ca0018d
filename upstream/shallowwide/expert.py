"""The shallowwide upstream: Wang et al.'s shallow-wide student (DistilHuBERT-shaped: 2 layers x 768), trained with ``pretrain/asr_distill``."""

from ..asr_student import AsrStudentExpert as UpstreamExpert

__all__ = ["UpstreamExpert"]
