"""The dphubert upstream: DPHuBERT / DPWavLM students (ours from ``s3prl-distill prune``, or the official release)."""

from ..pruned_student import PrunedStudentExpert as UpstreamExpert

__all__ = ["UpstreamExpert"]
