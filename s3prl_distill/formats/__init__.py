"""Student checkpoint formats: :func:`read_student` reads every one we support (ours and the official releases);
the modules beside it convert each format both ways, and ``export`` writes ours in another project's layout."""

from .native import NATIVE_FORMAT, describe_checkpoint, export_student, is_native_student
from .reader import ANY_STUDENT, StudentCheckpoint, read_student

__all__ = ["ANY_STUDENT", "NATIVE_FORMAT", "StudentCheckpoint", "describe_checkpoint", "export_student",
           "is_native_student", "read_student"]
