"""Masking distillation of MaskHuBERT and ARMHuBERT (Jang, Kim et al., Interspeech 2023; sungnyun/ARMHuBERT): the
FitHuBERT loss -- a head per student layer predicting the same teacher layer -- on a student whose transformer input
is span-masked (its own learned mask embedding on the masked frames). The teacher runs twice: unmasked, and with the
same frames replaced by *its* mask embedding. Masked frames of the student are compared with the unmasked teacher
(reconstruct what is hidden), unmasked frames with the masked teacher (behave like the teacher under the same mask):

    L = final_weight · E(12) + hint_weight · Σ_{l in hint_layers} E(l),
    E(l) = Σ_{b,t} mean_d err(head_l, T_l)[b, t, d] / (B·T),   T_l = unmasked teacher on masked frames, else masked

(err = squared or absolute error; official config: MSE, final 1.0, hint 0.1 on layers 1..11, as FitHuBERT). The
division is by all B·T frames, not by the masked or unmasked ones: that is FitHuBERT's loss with the mixed target,
so the recipe is FitHuBERT's with a mask.
"""

from __future__ import annotations

from typing import Dict, Literal, Optional

import torch
import torch.distributed as dist
from pydantic import Field
from torch import Tensor

from s3prl_distill.losses import LossTerm
from s3prl_distill.model.config import StrictModel, StudentConfig

from ..fithubert.recipe import FitHuBERT, FitHuBERTMethodConfig
from ..method import DistillationBatch
from .masking import mask_rng, span_mask


class MaskProbSchedule(StrictModel):
    """mask_prob moves linearly from ``method.mask_prob`` (step 0) to ``end`` (step ``steps``), then stays there.
    The official ``mask_prob_schedule: "[start, end]"`` steps once per epoch, ``linspace(start, end, epochs + 1)``
    (its last value is never used): with ``steps`` = the run's total steps, epoch e's value is ours at its first
    step, e · steps / epochs."""

    end: float = Field(ge=0.0, le=1.0)
    steps: int = Field(ge=1)


class MaskDistillMethodConfig(FitHuBERTMethodConfig):
    name: Literal["maskhubert", "armhubert"] = "maskhubert"
    # The teacher's masking in the official configs (its `teacher:` section, fairseq HuBERT's mask options).
    mask_prob: float = Field(0.8, ge=0.0, le=1.0)
    mask_length: int = Field(10, ge=1)
    # static: every span mask_length frames; uniform: 0..2·mask_length (fairseq's "uniform", the official choice).
    mask_selection: Literal["static", "uniform"] = "uniform"
    no_overlap: bool = True
    min_space: int = Field(1, ge=0)  # unmasked frames between spans (with no_overlap)
    mask_prob_schedule: Optional[MaskProbSchedule] = None


class MaskDistill(FitHuBERT):
    masks_frames = True

    @classmethod
    def check_student(cls, config: MaskDistillMethodConfig, student: StudentConfig) -> None:
        super().check_student(config, student)
        if not student.mask_embedding:
            raise ValueError(f"the {config.name} method masks the student's transformer input: it needs "
                             "student.mask_embedding: true")

    def __init__(self, config: MaskDistillMethodConfig, student: StudentConfig) -> None:
        super().__init__(config, student)
        # Masks drawn at the current step (one per micro-batch): a resume starts at a step boundary, so counting them
        # here keeps draws reproducible without checkpoint state.
        self._step: Optional[int] = None
        self._draws = 0
        self._logged: Dict[str, float] = {}

    def mask_prob(self, step: int) -> float:
        schedule = self.config.mask_prob_schedule
        if schedule is None:
            return self.config.mask_prob
        return self.config.mask_prob + (schedule.end - self.config.mask_prob) * min(step / schedule.steps, 1.0)

    def frame_mask(self, frame_lengths: Tensor, frames: int, step: int, seed: int) -> Tensor:
        if step != self._step:
            self._step, self._draws = step, 0
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        rng = mask_rng(seed, step, rank, self._draws)
        self._draws += 1
        valid = frame_lengths.clamp(max=frames).tolist()
        probability = self.mask_prob(step)
        mask = span_mask(valid, frames, probability, self.config.mask_length, rng, self.config.mask_selection,
                         self.config.no_overlap, self.config.min_space)
        self._logged = {"mask_prob": probability, "masked_fraction": int(mask.sum()) / max(sum(valid), 1)}
        return mask

    def scalars(self) -> Dict[str, float]:
        return dict(self._logged)

    def losses(self, batch: DistillationBatch) -> Dict[str, LossTerm]:
        if batch.frame_mask is None or batch.masked_targets is None:
            raise ValueError(f"the {self.config.name} method needs the batch's frame mask and masked-teacher targets")
        masked = batch.frame_mask[:, None, :, None].to(batch.targets.device)
        return super().losses(batch._replace(targets=torch.where(masked, batch.targets, batch.masked_targets)))
