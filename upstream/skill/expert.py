"""The skill upstream: SKILL students (similarity-grouped layer targets), pruned by ``s3prl-distill prune``."""

from ..pruned_student import PrunedStudentExpert as UpstreamExpert

__all__ = ["UpstreamExpert"]
