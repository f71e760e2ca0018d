"""Distillation for ASR students (Wang et al., "Exploring Effective Distillation of Self-Supervised Speech Models
for ASR"): a deep-thin (12 x 480, a linear head per layer) or shallow-wide (DistilHuBERT-shaped) student, with

    L = L1 + (−log σ(cos))                        over every head and its teacher layer (DistilHuBERT's regression)
      + λ_disc · KL(p_teacher ‖ p_student)        the discriminative loss, per frame over HuBERT's codewords

where p_teacher = softmax(cos(final_proj(h_T), e_c) / τ) over the teacher's label embeddings e_c, and p_student
comes from the student's codeword head on its last layer: ``cosine`` (the authors' ``type1``: a Linear to the
teacher's projection width, scored by cosine against the same frozen embeddings) or ``logits`` (``type2``: a Linear
straight to the codewords); ``use_temperature`` divides the student's logits by τ too (default: cosine yes, logits
no). KL is the authors' ``F.kl_div(..., reduction="batchmean")``: the sum over frames / B·T. With an fbank front end,
the first ``front_end_steps`` steps train the front end alone: L1 (MSE with ``loss_type: l2``) between its head and
the teacher's hidden state 0, a mean over every element. As in the authors' code, every term counts padded frames
too unless ``mask_padding``.
"""

from __future__ import annotations

from typing import Dict, List, Literal, Optional

from pydantic import Field
from torch import Tensor

from s3prl_distill.losses import LossTerm, codeword_logits, kl_divergence_term, regression_term
from s3prl_distill.model.config import StrictModel, StudentConfig
from s3prl_distill.model.student import StudentOutput

from ..distilhubert.recipe import regression_terms
from ..method import DistillationBatch, Method, require_head


class AsrDistillMethodConfig(StrictModel):
    name: Literal["asr_distill"] = "asr_distill"
    loss_type: Literal["l1", "l2"] = "l1"
    regression_weight: float = Field(1.0, ge=0.0)
    cosine_weight: float = Field(1.0, ge=0.0)
    # λ of the discriminative term (the paper sweeps 0.2-0.8); 0 turns it off. Needs student.codeword_head.
    discriminative_weight: float = Field(0.0, ge=0.0)
    # τ of the teacher's codeword distribution (HuBERT's logit_temp) and of the cosine codeword head.
    temperature: float = Field(0.1, gt=0.0)
    # Read the codebook from this HuBERT checkpoint (s3prl-converted or fairseq) instead of the teacher's model,
    # for teachers loaded without it (e.g. a Hugging Face HuBERT).
    codebook_ckpt: Optional[str] = None
    # Length of the front-end stage (steps, counted in runner.total_steps). Needs an fbank front end with a
    # front-end head (student.prediction_head.front_end).
    front_end_steps: int = Field(0, ge=0)
    # Divide the student's codeword logits by τ as well (the authors' use_temperature). None: the head's convention,
    # cosine heads yes (scored like the teacher), logits heads no (the released "type2, no τ" models).
    use_temperature: Optional[bool] = None
    # Every term (regression, discriminative, front end) averages over padded frames too unless true, as the authors'
    # code (s3prl's distiller) does.
    mask_padding: bool = False


class AsrDistill(Method):
    @classmethod
    def check_student(cls, config: AsrDistillMethodConfig, student: StudentConfig) -> None:
        head = require_head(config.name, student)
        if config.discriminative_weight > 0:
            if student.codeword_head is None:
                raise ValueError("method.discriminative_weight > 0 needs a student.codeword_head")
            if student.encoder.time_reduction is not None:
                raise ValueError("the discriminative loss compares frames at the teacher's rate: the student's last "
                                 "layer must not be time-reduced (student.encoder.time_reduction)")
        if config.front_end_steps > 0 and (student.fbank_front_end is None or not head.front_end):
            raise ValueError("method.front_end_steps > 0 needs student.fbank_front_end and "
                             "student.prediction_head.front_end: true")

    def __init__(self, config: AsrDistillMethodConfig, student: StudentConfig) -> None:
        self.check_student(config, student)
        head = student.prediction_head
        self.config = config
        self.target_layers: List[int] = list(head.target_layers)
        self.prediction_indices: List[int] = list(range(len(self.target_layers)))
        self.front_end_steps = config.front_end_steps
        self.uses_codebook = config.discriminative_weight > 0
        self.codebook_temperature = config.temperature
        self.codebook_ckpt = config.codebook_ckpt
        self.codeword_head_type = student.codeword_head.type if student.codeword_head is not None else None
        self.student_temperature = config.use_temperature if config.use_temperature is not None else \
            self.codeword_head_type == "cosine"

    def student_codeword_logits(self, output: Tensor, codewords: Tensor) -> Tensor:
        temperature = self.config.temperature if self.student_temperature else 1.0
        if self.codeword_head_type == "cosine":
            return codeword_logits(output, codewords, temperature)
        return output.float() / temperature

    def losses(self, batch: DistillationBatch) -> Dict[str, LossTerm]:
        config = self.config
        terms = regression_terms(batch, self.target_layers, config.loss_type, config.regression_weight,
                                 config.cosine_weight, config.mask_padding)
        if self.uses_codebook:
            teacher_logits = batch.teacher_codeword_logits
            frames = min(teacher_logits.shape[1], batch.student.codeword_output.shape[1])
            student_logits = self.student_codeword_logits(batch.student.codeword_output[:, :frames],
                                                          batch.codewords)
            valid = None if batch.valid is None or not config.mask_padding else batch.valid[:, :frames]
            terms["discriminative"] = kl_divergence_term(student_logits, teacher_logits[:, :frames], valid,
                                                         config.discriminative_weight)
        return terms

    def front_end_losses(self, student: StudentOutput, target: Tensor, valid: Optional[Tensor]) -> Dict[str, LossTerm]:
        frames = min(student.front_end_prediction.shape[1], target.shape[1])
        prediction = student.front_end_prediction[:, None, :frames]
        valid = None if valid is None or not self.config.mask_padding else valid[:, :frames]
        return {"front_end": regression_term(prediction, target[:, None, :frames], valid, self.config.loss_type)
                .labelled([0])}
