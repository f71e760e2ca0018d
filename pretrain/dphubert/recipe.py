"""DPHuBERT (Peng et al., 2023) and SKILL (Zampierin et al., 2024): joint distillation and structured pruning.

The student starts as a copy of the teacher with hard-concrete gates (``student.pruning``) and ``projection`` heads
(``student.prediction_head``): DPHuBERT distils hand-picked layers, each through its group's Linear; SKILL distils
the mean of each group of similar layers (groups from ``s3prl-distill layer-similarity``). The loss is
l1 · L1 − cos · cos (DPHuBERT's, or −log σ(cos)), plus the Lagrangian size penalty while the student has gates.
After training, ``s3prl-distill prune`` removes the gated-off units; a second run of this recipe on the pruned
student (no gates, so no penalty) is DPHuBERT's final distillation.
"""

from __future__ import annotations

from typing import Dict, List, Literal, Mapping, Optional, Union

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from s3prl_distill.losses import (
    LossTerm,
    log_sigmoid_cosine_term,
    negative_cosine_term,
    regression_term,
    scalar_term,
)
from s3prl_distill.model.config import StrictModel, StudentConfig
from s3prl_distill.model.pruning import SparsityPenalty, expected_num_parameters, has_gates
from s3prl_distill.model.student import GATE_SUFFIX, StudentModel

from ..method import DistillationBatch, Method, require_head


class DPHuBERTMethodConfig(StrictModel):
    """``dphubert`` and ``skill`` are the same recipe; the name records which one a run is."""

    name: Literal["dphubert", "skill"] = "dphubert"
    l1_weight: float = Field(1.0, ge=0.0)
    cosine_weight: float = Field(1.0, ge=0.0)
    cosine_type: Literal["raw", "log_sigmoid"] = "raw"  # DPHuBERT: raw (-cos); log_sigmoid: -log σ(cos)
    mask_padding: bool = True  # exclude padded frames (DPHuBERT crops batches to the shortest utterance instead)
    # Fraction of the unpruned student's parameters to remove, reached linearly over the warm-up, then held.
    target_sparsity: float = 0.75
    sparsity_warmup_steps: int = 5000
    gate_lr: float = 0.02  # learning rate of the gates' log_alpha (DPHuBERT's reg_lr)
    lagrangian_lr: float = 0.02  # learning rate of λ1, λ2 (gradient ascent)

    @model_validator(mode="after")
    def _check(self) -> "DPHuBERTMethodConfig":
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError("target_sparsity must be in [0, 1)")
        if self.sparsity_warmup_steps < 0 or self.gate_lr <= 0 or self.lagrangian_lr <= 0:
            raise ValueError("sparsity_warmup_steps >= 0, gate_lr > 0 and lagrangian_lr > 0 are required")
        return self


class DPHuBERT(Method):
    @classmethod
    def check_student(cls, config: DPHuBERTMethodConfig, student: StudentConfig) -> None:
        require_head(config.name, student, "projection", " (target_groups)")

    def __init__(self, config: DPHuBERTMethodConfig, student: StudentConfig) -> None:
        self.check_student(config, student)
        head = student.prediction_head
        self.config = config
        self.targets: List[List[int]] = head.projection_targets()
        self.teacher_layer_zero = head.layer_zero  # the student's head reads the same tensor (StudentModel)
        self.target_layers = sorted({layer for target in self.targets for layer in target})
        self.prediction_indices = list(range(len(self.targets)))
        self.penalty = SparsityPenalty()
        self.full_parameters: Optional[int] = None  # DPHuBERT's size of the unpruned student, set by bind()
        self.last_scalars: Dict[str, Union[Tensor, float]] = {}

    def bind(self, student: StudentModel) -> None:
        """Called once with the student: its unpruned size is the reference of the sparsity."""
        # DPHuBERT's reference is every parameter of the teacher it copies (the student before pruning): the
        # backbone, plus its CNN's fixed output scale (a parameter there, a buffer here).
        self.full_parameters = student.num_parameters() + _output_scale_size(student, expected=False)
        self.pruning = has_gates(student)
        self.penalty.to(next(student.parameters()).device)

    def target_stack(self, hidden_states: List[Tensor], frames: int) -> Tensor:
        """(B, N, T, D): each target's teacher state, or the mean of its group's states (SKILL)."""
        stacked = []
        for layers in self.targets:
            states = [hidden_states[i][:, :frames] for i in layers]
            stacked.append(states[0] if len(states) == 1 else torch.stack(states).mean(0))
        return torch.stack(stacked, dim=1)

    def target_sparsity(self, step: int) -> float:
        warmup = self.config.sparsity_warmup_steps
        return self.config.target_sparsity * (min(1.0, step / warmup) if warmup else 1.0)

    def losses(self, batch: DistillationBatch) -> Dict[str, LossTerm]:
        valid = batch.valid if self.config.mask_padding else None
        predictions = batch.student.predictions
        labels = ["+".join(map(str, layers)) for layers in self.targets]
        cosine = negative_cosine_term if self.config.cosine_type == "raw" else log_sigmoid_cosine_term
        return {
            "l1": regression_term(predictions, batch.targets, valid, "l1", self.config.l1_weight).labelled(labels),
            "cosine": cosine(predictions, batch.targets, valid, self.config.cosine_weight).labelled(labels),
        }

    def regularisers(self, student: StudentModel, step: int) -> Dict[str, LossTerm]:
        """The Lagrangian size penalty (while the student has gates)."""
        if not self.pruning:
            return {}
        expected = dphubert_expected_size(student)
        sparsity = 1.0 - expected / self.full_parameters
        target = self.target_sparsity(step)
        # Kept as tensors, read only when logged: a float() here would make every step wait for the GPU.
        self.last_scalars = {
            "expected_params": expected.detach(), "expected_sparsity": sparsity.detach(),
            "target_sparsity": target, "lambda1": self.penalty.lambda_1.detach(),
            "lambda2": self.penalty.lambda_2.detach(),
        }
        return {"sparsity_penalty": scalar_term(self.penalty(sparsity, target))}

    def parameter_groups(self, student: nn.Module, weight_decay: float) -> List[dict]:
        """Student weights (weight decay except biases), the gates (gate_lr, no decay) and λ (lagrangian_lr)."""
        named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if not n.endswith(GATE_SUFFIX) and not n.endswith("bias")],
             "weight_decay": weight_decay},
            {"params": [p for n, p in named if not n.endswith(GATE_SUFFIX) and n.endswith("bias")],
             "weight_decay": 0.0},
        ]
        if self.pruning:
            groups.append({"params": [p for n, p in named if n.endswith(GATE_SUFFIX)], "weight_decay": 0.0,
                           "lr": self.config.gate_lr})
            groups.append({"params": list(self.penalty.parameters()), "weight_decay": 0.0,
                           "lr": self.config.lagrangian_lr})
        return groups

    def scalars(self) -> Dict[str, float]:
        return {name: float(value) for name, value in self.last_scalars.items()}

    def state_dict(self) -> dict:
        return {"penalty": self.penalty.state_dict(), "full_parameters": self.full_parameters}

    def load_state_dict(self, state: Mapping) -> None:
        if state:
            self.penalty.load_state_dict(state["penalty"])
            self.full_parameters = state["full_parameters"]


def _output_scale_size(student: StudentModel, expected: bool) -> Union[int, Tensor]:
    """The CNN's output scale (DPHuBERT's ``dummy_weight``, one value per last conv channel): kept or expected."""
    if student.feature_extractor is None:
        return 0
    last = student.feature_extractor.conv_layers[-1]
    return last.gate.expected_kept() if expected and last.gate is not None else last.conv.out_channels


def dphubert_expected_size(student: StudentModel) -> Tensor:
    """The size DPHuBERT's sparsity is measured with (``Wav2Vec2Model.get_num_params``): our expected backbone size,
    plus the CNN output scale, minus WavLM's relative position parameters (the bias table and every layer's gate,
    which that count leaves out while its reference, the teacher's full count, includes them)."""
    relative = sum(p.numel() for name, p in student.encoder.named_parameters()
                   if name.startswith("relative_position.") or ".attention.gate_" in name)
    return expected_num_parameters(student) + _output_scale_size(student, expected=True) - relative
