"""STaR (Jang, Kim, Kim, ICASSP 2024, arXiv 2312.09040): distil the temporal relations between speech frames.

A temporal Gram matrix (TGM) relates every pair of frames of an utterance through their channel vectors (T x T), so
student and teacher compare it whatever their widths: no projection heads. Two TGMs per student layer l, mapped to
teacher hidden state t(l) (``teacher_layers``; t(0) = 0, both transformer inputs):

    layer-wise   G(h_l)          against G(teacher h_t(l))                        (the layer's output with itself)
    intra-layer  G(h_(l-1), h_l) against G(teacher h_t(l-1), teacher h_t(l))     (the layer's input with its output)

    L = layer_wise_weight · mean over layers of D(G_S, G_T) + intra_layer_weight · (the same for intra-layer TGMs)

Facts from the paper and its README: the two TGMs (layer-wise on every transformer layer; intra-layer between a
layer's input and output) are the final loss, chosen among three objectives (the third, a head-averaged attention
map loss, is not part of it); no extra parameters. Not published, so options here with documented defaults: the
Gram's normalisation (``width``: inner products / D, as the FSP matrix averages over its summed axis), the distance
(MSE over the matrix entries), equal weights, and, for a student shallower than its teacher, the intra-layer pairs
(the teacher's block between the layers mapped to the student layer's input and output). Pairs with a padded frame
never count.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from s3prl_distill.losses import LossTerm, temporal_gram_term
from s3prl_distill.model.config import StrictModel, StudentConfig

from ..method import DistillationBatch, Method, take


class STaRMethodConfig(StrictModel):
    name: Literal["star"] = "star"
    # The teacher hidden state (s3prl index) each student layer 1..L is compared with, one per layer, increasing.
    teacher_layers: List[int] = Field(default_factory=lambda: list(range(1, 13)))
    layer_wise_weight: float = Field(1.0, ge=0.0)
    intra_layer_weight: float = Field(1.0, ge=0.0)
    normalisation: Literal["width", "cosine", "none"] = "width"
    distance: Literal["mse", "l1"] = "mse"

    @field_validator("teacher_layers")
    @classmethod
    def _increasing_layers(cls, layers: List[int]) -> List[int]:
        # Each student layer's intra-layer TGM spans the teacher's block from the previous entry (0 for the first).
        if not layers or layers[0] < 1 or any(later <= earlier for earlier, later in zip(layers, layers[1:])):
            raise ValueError(f"must be teacher layers >= 1 in increasing order, one per student layer; got {layers}")
        return layers

    @model_validator(mode="after")
    def _some_loss(self) -> "STaRMethodConfig":
        if self.layer_wise_weight == 0 and self.intra_layer_weight == 0:
            raise ValueError("layer_wise_weight and intra_layer_weight are both 0: no loss to train with")
        return self


class STaR(Method):
    @classmethod
    def check_student(cls, config: STaRMethodConfig, student: StudentConfig) -> None:
        depth = student.encoder.num_layers
        if len(config.teacher_layers) != depth:
            teacher = max(depth, 12)  # an example: HuBERT Base, or a teacher as deep as the student
            spread = [-(-layer * teacher // depth) for layer in range(1, depth + 1)]
            raise ValueError(f"method.teacher_layers lists {len(config.teacher_layers)} teacher layers for a student "
                             f"of {depth}: give one per student layer (e.g. {spread} for a {teacher}-layer teacher)")
        if student.encoder.time_reduction is not None:
            raise ValueError("the star method relates the student's frames to the teacher's one to one: a student "
                             "with student.encoder.time_reduction has half as many; set it to null")
        unused = [key for key, present in (("student.prediction_head", student.prediction_head is not None),
                                           ("student.codeword_head", student.codeword_head is not None),
                                           ("student.mask_embedding", student.mask_embedding)) if present]
        if unused:
            raise ValueError(f"the star method trains no heads (the Gram matrices need none), so {', '.join(unused)} "
                             "would be parameters without gradients; remove them from the student (a "
                             "student_init.checkpoint that has them, e.g. a pruned student, then gives its backbone)")

    @classmethod
    def scale_layers(cls, config: STaRMethodConfig, scale: Callable[[List[int]], List[int]],
                     student: StudentConfig) -> STaRMethodConfig:
        written, depth = config.teacher_layers, student.encoder.num_layers
        if len(written) != depth and written == list(range(1, len(written) + 1)):
            # One student layer per teacher layer, the student now as deep as this teacher: the same at its depth
            # (rescaling 1..12 to a deeper teacher would skip layers and leave student layers without one).
            return config.model_copy(update={"teacher_layers": list(range(1, depth + 1))})
        return config.model_copy(update={"teacher_layers": scale(written)})

    def __init__(self, config: STaRMethodConfig, student: StudentConfig) -> None:
        self.check_student(config, student)
        self.config = config
        self.prediction_indices: List[int] = []  # no heads: the losses read the student's hidden states
        # Teacher hidden state at each student layer's input and output.
        self.teacher_inputs = [0, *config.teacher_layers[:-1]]
        self.teacher_outputs = list(config.teacher_layers)
        needed = set(self.teacher_outputs)
        if config.intra_layer_weight > 0:
            needed.update(self.teacher_inputs)
        self.target_layers: List[int] = sorted(needed)

    def losses(self, batch: DistillationBatch) -> Dict[str, LossTerm]:
        frames = batch.targets.shape[2]
        student = batch.student.hidden_states()  # [transformer input, layer 1, ..., layer L]
        depth = len(self.teacher_outputs)

        def student_stack(first: int) -> Tensor:  # hidden states first..first+L-1, (B, L, T, D_student)
            return torch.stack([state[:, :frames] for state in student[first:first + depth]], dim=1)

        def teacher_stack(layers: List[int]) -> Tensor:  # (B, L, T, D_teacher)
            return take(batch.targets, 1, [self.target_layers.index(layer) for layer in layers])

        config = self.config
        outputs, teacher_outputs = student_stack(1), teacher_stack(self.teacher_outputs)
        terms = {}
        if config.layer_wise_weight > 0:
            terms["layer_wise"] = temporal_gram_term(
                (outputs, outputs), (teacher_outputs, teacher_outputs), batch.valid, config.normalisation,
                config.distance, config.layer_wise_weight).labelled(self.teacher_outputs)
        if config.intra_layer_weight > 0:
            terms["intra_layer"] = temporal_gram_term(
                (student_stack(0), outputs), (teacher_stack(self.teacher_inputs), teacher_outputs), batch.valid,
                config.normalisation, config.distance, config.intra_layer_weight).labelled(self.teacher_outputs)
        return terms
