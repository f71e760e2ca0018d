"""Teacher + student + method: one distillation step's computation, shared by our runner and by the
``pretrain_expert.py`` files that plug the same code into s3prl's ``run_pretrain.py``."""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from torch import Tensor, nn

from s3prl_distill.losses import LossTerm
from s3prl_distill.model import StudentConfig, StudentModel

from .config import StudentInitConfig, TeacherConfig
from .distilhubert.recipe import DistilHuBERT, DistilHuBERTMethodConfig
from .fithubert.recipe import FitHuBERT, FitHuBERTMethodConfig
from .teacher import Teacher, initialise_student

METHODS = {
    "distilhubert": (DistilHuBERTMethodConfig, DistilHuBERT),
    "fithubert": (FitHuBERTMethodConfig, FitHuBERT),
}


def build_method(config, student: StudentConfig):
    return METHODS[config.name][1](config, student)


class DistillationTask:
    """Not an ``nn.Module`` on purpose: the teacher must stay out of the student's state dict and optimizer."""

    def __init__(
        self,
        teacher: TeacherConfig,
        student: StudentConfig,
        student_init: StudentInitConfig,
        method,
        device: torch.device,
    ) -> None:
        self.teacher = Teacher(teacher).to(device)
        self.student_config = student
        self.student = StudentModel(student)
        initialise_student(self.student, self.teacher, student_init)
        self.student.to(device)
        self.method = build_method(method, student)

    def losses(self, student: nn.Module, waveforms: Tensor, lengths: Tensor) -> Dict[str, LossTerm]:
        """Teacher targets, student forward (through ``student``, which may be DDP-wrapped), the method's loss."""
        hidden_states = self.teacher(waveforms, lengths)
        missing = [i for i in self.method.target_layers if i >= len(hidden_states)]
        if missing:
            raise ValueError(
                f"target layers {missing} do not exist: teacher {self.teacher.name!r} has hidden states 0..{len(hidden_states) - 1}"
            )
        output = student(waveforms, lengths)
        # Teacher and student CNNs may differ by a frame at the end; compare the common frames.
        frames = min(output.predictions.shape[2], hidden_states[0].shape[1])
        targets = torch.stack([hidden_states[i][:, :frames] for i in self.method.target_layers], dim=1)
        output = output._replace(predictions=output.predictions[:, self.method.prediction_indices, :frames])
        valid = None
        if output.lengths is not None:
            valid = torch.arange(frames, device=waveforms.device)[None, :] < output.lengths[:, None]
        return self.method.losses(output, targets, valid)

    def student_state(self, checkpoint: Mapping) -> Dict[str, Tensor]:
        """The student's weights (our layout) from a checkpoint the method exported."""
        return self.method.student_state(checkpoint, self.student_config)

    def export(self, state: Optional[Mapping[str, Tensor]] = None) -> dict:
        """The method's checkpoint layout for the student's weights."""
        return self.method.export(self.student_config, self.student.state_dict() if state is None else state)
