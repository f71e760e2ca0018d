"""What every distillation method (recipe) provides to the shared training step.

A method says which teacher layers it needs (``target_layers``) and which student heads predict them
(``prediction_indices``), turns one batch into named loss terms, and writes/reads the trained student's checkpoint.
Optional abilities default to off: a front-end-only first stage (``front_end_steps``) and the teacher's codeword
distribution (``uses_codebook``).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Optional

from torch import Tensor

from s3prl_distill.losses import LossTerm
from s3prl_distill.model.config import StudentConfig
from s3prl_distill.model.student import StudentOutput


class DistillationBatch(NamedTuple):
    student: StudentOutput  # predictions already reduced to ``prediction_indices`` and the common frames
    targets: Tensor  # (B, N, T, D) teacher hidden states ``target_layers``, aligned with the predictions
    valid: Optional[Tensor]  # (B, T) True on frames of real audio; None when the batch has no padding
    teacher_hidden: List[Tensor]  # every teacher hidden state (s3prl indexing), each (B, T_teacher, D)
    teacher_codeword_logits: Optional[Tensor] = None  # (B, T, C) when the method uses the teacher's codebook
    codewords: Optional[Tensor] = None  # (C, final_dim) the teacher's label embeddings, idem


class Method:
    target_layers: List[int]
    prediction_indices: List[int]
    front_end_steps: int = 0  # steps at the start that train only the student's front end
    uses_codebook: bool = False
    codebook_temperature: float = 1.0
    codebook_ckpt: Optional[str] = None  # where to read the codebook when the teacher model lacks it

    def losses(self, batch: DistillationBatch) -> Dict[str, LossTerm]:
        raise NotImplementedError

    def front_end_losses(self, student: StudentOutput, target: Tensor, valid: Optional[Tensor]) -> Dict[str, LossTerm]:
        """Loss of the front-end stage: ``student.front_end_prediction`` against teacher hidden state 0."""
        raise NotImplementedError(f"{type(self).__name__} has no front-end stage")

    @staticmethod
    def export(student: StudentConfig, state: Mapping[str, Tensor]) -> dict:
        raise NotImplementedError

    @staticmethod
    def student_state(checkpoint: Mapping, student: StudentConfig) -> Dict[str, Tensor]:
        raise NotImplementedError
