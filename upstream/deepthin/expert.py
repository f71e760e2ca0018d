"""The deepthin upstream: Wang et al.'s deep-thin student (12 layers x 480, a head per layer), trained with ``pretrain/asr_distill``."""

from ..asr_student import AsrStudentExpert as UpstreamExpert

__all__ = ["UpstreamExpert"]
