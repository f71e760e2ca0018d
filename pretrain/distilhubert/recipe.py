"""DistilHuBERT (Chang et al., 2022): the student's expand-last heads predict teacher layers; loss
L1 + λ · (−log σ(cos)) over every target layer, means over all elements as in s3prl's distiller.

The recipe is the method's whole difference from the others: which teacher layers, which student outputs, which
loss, and how the trained student is written (s3prl's distiller format, so stock ``distiller_local`` loads it).
"""

from __future__ import annotations

from typing import Dict, List, Literal, Mapping

from pydantic import Field
from torch import Tensor

from s3prl_distill.formats.s3prl_distiller import export_distiller, state_dict_from_distiller
from s3prl_distill.losses import LossTerm, log_sigmoid_cosine_term, regression_term
from s3prl_distill.model.config import StrictModel, StudentConfig

from ..method import DistillationBatch, Method, require_head


class DistilHuBERTMethodConfig(StrictModel):
    name: Literal["distilhubert"] = "distilhubert"
    loss_type: Literal["l1", "l2"] = "l1"
    regression_weight: float = Field(1.0, ge=0.0)
    cosine_weight: float = Field(1.0, ge=0.0)  # λ of the −log σ(cos) term
    # s3prl averages over padded frames too; true excludes them.
    mask_padding: bool = False


def regression_terms(batch: DistillationBatch, layers: List[int], loss_type: str, regression_weight: float,
                     cosine_weight: float, mask_padding: bool) -> Dict[str, LossTerm]:
    """DistilHuBERT's L1 (or L2) + λ · (−log σ(cos)) of every prediction against its teacher layer."""
    valid = batch.valid if mask_padding else None
    predictions = batch.student.predictions
    return {
        "regression": regression_term(predictions, batch.targets, valid, loss_type, regression_weight).labelled(layers),
        "cosine": log_sigmoid_cosine_term(predictions, batch.targets, valid, cosine_weight).labelled(layers),
    }


class DistilHuBERT(Method):
    """Targets are the student's ``prediction_head.target_layers`` (s3prl hidden-state indices of the teacher)."""

    @classmethod
    def check_student(cls, config: DistilHuBERTMethodConfig, student: StudentConfig) -> None:
        require_head(config.name, student, "expand_last")

    def __init__(self, config: DistilHuBERTMethodConfig, student: StudentConfig) -> None:
        self.check_student(config, student)
        self.config = config
        self.target_layers: List[int] = list(student.prediction_head.target_layers)
        self.prediction_indices: List[int] = list(range(len(self.target_layers)))

    def losses(self, batch: DistillationBatch) -> Dict[str, LossTerm]:
        return regression_terms(batch, self.target_layers, self.config.loss_type, self.config.regression_weight,
                                self.config.cosine_weight, self.config.mask_padding)

    @staticmethod
    def export(student: StudentConfig, state: Mapping[str, Tensor]) -> dict:
        """Checkpoint keys that make the file loadable by s3prl's ``distiller_local`` and ours."""
        return export_distiller(student, state)

    @staticmethod
    def student_state(checkpoint: Mapping, student: StudentConfig) -> Dict[str, Tensor]:
        """The inverse of :meth:`export`."""
        return state_dict_from_distiller(checkpoint["Distiller"], student)
