"""FitHuBERT (Lee et al., Interspeech 2022): a thin, deep student with a time-reduction layer, trained by
hint-based distillation. Every student layer has a head predicting the same teacher layer;

    L = final_weight · MSE(head_12, teacher_12) + hint_weight · Σ_{l in hint_layers} MSE(head_l, teacher_l)

(official config: MSE, final 1.0, hint 0.1 on all 11 intermediate layers, each MSE a mean over B, T, D).
FitW2V2 is the same with a wav2vec 2.0 teacher.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Literal

from pydantic import Field

from s3prl_distill.losses import LossTerm, regression_term
from s3prl_distill.model.config import StrictModel, StudentConfig

from ..method import DistillationBatch, Method, require_head


class FitHuBERTMethodConfig(StrictModel):
    name: Literal["fithubert"] = "fithubert"
    loss_type: Literal["mse", "l1"] = "mse"
    final_weight: float = Field(1.0, ge=0.0)
    hint_weight: float = Field(0.1, ge=0.0)
    # Student layers (1-based) whose heads get the hint loss; the last layer always gets the final loss.
    hint_layers: List[int] = Field(default_factory=lambda: list(range(1, 12)))
    mask_padding: bool = False


class FitHuBERT(Method):
    @classmethod
    def check_student(cls, config: FitHuBERTMethodConfig, student: StudentConfig) -> None:
        require_head(config.name, student, "layerwise", " (a head per layer)")
        last = student.encoder.num_layers
        bad = [layer for layer in config.hint_layers if not 1 <= layer < last]
        if bad:
            raise ValueError(f"method.hint_layers {bad}: hint layers are student layers 1..{last - 1}")

    @classmethod
    def scale_layers(cls, config: FitHuBERTMethodConfig, scale: Callable[[List[int]], List[int]],
                     student: StudentConfig) -> FitHuBERTMethodConfig:
        # Hint layers are student layers, one per teacher layer as the student follows the teacher's depth; the
        # last one takes the final loss instead.
        last = student.encoder.num_layers
        return config.model_copy(update={"hint_layers": [layer for layer in scale(config.hint_layers) if layer < last]})

    def __init__(self, config: FitHuBERTMethodConfig, student: StudentConfig) -> None:
        self.check_student(config, student)
        head = student.prediction_head
        last = student.encoder.num_layers
        self.config = config
        # Which student heads (0-based) and which teacher layers the loss compares, hints first, final last.
        self.prediction_indices: List[int] = [layer - 1 for layer in config.hint_layers] + [last - 1]
        self.target_layers: List[int] = [head.target_layers[i] for i in self.prediction_indices]

    def losses(self, batch: DistillationBatch) -> Dict[str, LossTerm]:
        valid = batch.valid if self.config.mask_padding else None
        kind = "l2" if self.config.loss_type == "mse" else "l1"
        predictions, targets = batch.student.predictions, batch.targets
        terms = {
            "final": regression_term(
                predictions[:, -1:], targets[:, -1:], valid, kind, self.config.final_weight
            ).labelled(self.target_layers[-1:])
        }
        if predictions.shape[1] > 1:
            terms["hint"] = regression_term(
                predictions[:, :-1], targets[:, :-1], valid, kind, self.config.hint_weight, sum_over_targets=True
            ).labelled(self.target_layers[:-1])
        return terms
