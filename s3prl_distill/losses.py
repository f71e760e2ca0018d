"""Distillation loss terms, shared by the methods.

Each term is returned as per-target-layer *sums* and *counts* rather than means, so the runner can normalise by
the count over the whole global batch (all DDP ranks): a 2-process run then optimises exactly what a 1-process run
with the same global batch does, and excluding padded frames is just a different count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossTerm:
    sums: Tensor  # (num_targets,) summed loss per target layer
    counts: Tensor  # (num_targets,) number of elements each sum covers
    weight: float
    # False: one mean over every target's elements (DistilHuBERT); True: the sum of per-target means (FitHuBERT's
    # "MSE(layer 12) + 0.1 * sum over hint layers of MSE").
    sum_over_targets: bool = False
    layers: Optional[List[int]] = None  # teacher layer of each target, for logging

    def labelled(self, layers: List[int]) -> "LossTerm":
        self.layers = list(layers)
        return self

    def per_target(self) -> Tensor:
        """Mean per target layer (local to this process; for logging)."""
        return self.sums.detach() / self.counts.clamp(min=1)


def _frame_mask(valid: Optional[Tensor], prediction: Tensor) -> Tensor:
    """(B, 1, T, 1) float mask of frames that count; all ones when ``valid`` is None."""
    if valid is None:
        return prediction.new_ones(prediction.shape[0], 1, prediction.shape[2], 1)
    return valid[:, None, :, None].to(prediction.dtype)


def regression_term(
    prediction: Tensor, target: Tensor, valid: Optional[Tensor], kind: str = "l1", weight: float = 1.0,
    sum_over_targets: bool = False,
) -> LossTerm:
    """L1 (or squared error with ``kind="l2"``) per element; ``prediction``/``target``: (B, N, T, D),
    ``valid``: (B, T) bool of frames that count (None: every frame, padding included, as s3prl does)."""
    difference = prediction.float() - target.float()
    per_element = difference.abs() if kind == "l1" else difference.pow(2)
    mask = _frame_mask(valid, prediction)
    sums = (per_element * mask).sum(dim=(0, 2, 3))
    counts = mask.sum(dim=(0, 2, 3)) * prediction.shape[-1]
    return LossTerm(sums, counts.expand_as(sums).clone(), weight, sum_over_targets)


def log_sigmoid_cosine_term(
    prediction: Tensor, target: Tensor, valid: Optional[Tensor], weight: float = 1.0
) -> LossTerm:
    """DistilHuBERT's similarity term: -log(sigmoid(cos(prediction, target))) per frame."""
    cosine = F.cosine_similarity(prediction.float(), target.float(), dim=-1)  # (B, N, T)
    per_frame = -F.logsigmoid(cosine)
    mask = _frame_mask(valid, prediction).squeeze(-1)
    sums = (per_frame * mask).sum(dim=(0, 2))
    counts = mask.sum(dim=(0, 2))
    return LossTerm(sums, counts.expand_as(sums).clone(), weight)


def negative_cosine_term(
    prediction: Tensor, target: Tensor, valid: Optional[Tensor], weight: float = 1.0
) -> LossTerm:
    """DPHuBERT's similarity term: -cos(prediction, target) per frame."""
    cosine = F.cosine_similarity(prediction.float(), target.float(), dim=-1)  # (B, N, T)
    mask = _frame_mask(valid, prediction).squeeze(-1)
    sums = (-cosine * mask).sum(dim=(0, 2))
    counts = mask.sum(dim=(0, 2))
    return LossTerm(sums, counts.expand_as(sums).clone(), weight)


def temporal_gram(left: Tensor, right: Tensor, valid: Optional[Tensor], normalisation: str = "width") -> Tensor:
    """STaR's temporal Gram matrix: entry (i, j) relates frame i of ``left`` to frame j of ``right`` through their
    channel vectors, (B, N, T, D) x (B, N, T, D) -> (B, N, T, T); ``left`` is ``right`` for the layer-wise TGM, a
    layer's input for the intra-layer one. ``normalisation``: ``width`` divides the inner products by D, ``cosine``
    takes them between L2-normalised frames, ``none`` keeps them raw. Frames beyond ``valid`` (B, T) are zeroed
    first, so their rows and columns are 0. Computed in fp32 with autocast off: autocast would run the product in
    bf16/fp16, which loses the small entries of sums over hundreds of channels."""
    with torch.autocast(device_type=left.device.type, enabled=False):
        left, right = left.float(), right.float()
        if normalisation == "cosine":
            left, right = F.normalize(left, dim=-1), F.normalize(right, dim=-1)
        elif normalisation not in ("width", "none"):
            raise ValueError(f"normalisation must be width, cosine or none, not {normalisation!r}")
        if valid is not None:
            mask = valid[:, None, :, None].to(left.dtype)
            left, right = left * mask, right * mask
        gram = torch.einsum("bntd,bnsd->bnts", left, right)
        return gram / left.shape[-1] if normalisation == "width" else gram


def temporal_gram_term(
    student: Tuple[Tensor, Tensor], teacher: Tuple[Tensor, Tensor], valid: Optional[Tensor],
    normalisation: str = "width", distance: str = "mse", weight: float = 1.0,
) -> LossTerm:
    """Squared (``distance="mse"``) or absolute (``"l1"``) difference between the student's and the teacher's
    temporal Gram matrices (:func:`temporal_gram` of each (left, right) pair, (B, N, T, D_student / D_teacher)),
    per target; each target counts the valid frame pairs, Σ_b T_b² (pairs with a padded frame are excluded)."""
    difference = temporal_gram(*student, valid, normalisation) - temporal_gram(*teacher, valid, normalisation)
    per_element = difference.pow(2) if distance == "mse" else difference.abs()
    sums = per_element.sum(dim=(0, 2, 3))
    batch, frames = student[0].shape[0], student[0].shape[2]
    per_row = valid.sum(dim=1) if valid is not None else torch.full((batch,), frames, device=sums.device)
    count = per_row.to(sums.dtype).pow(2).sum()
    return LossTerm(sums, count.expand_as(sums).clone(), weight)


def scalar_term(value: Tensor, weight: float = 1.0) -> LossTerm:
    """A loss that is already one number, identical on every rank (a penalty on shared parameters): counted once
    per rank, so :func:`combine`'s global normalisation and DDP's averaging leave its gradient unscaled."""
    return LossTerm(value.reshape(1), torch.ones(1, device=value.device), weight)


def combine(terms: dict, reduce_counts=None) -> Tensor:
    """Σ_term weight · (Σ sums / Σ counts, or Σ per-target sums / counts), with the counts summed over DDP ranks by
    ``reduce_counts`` (all terms' counts in one collective)."""
    counts = torch.cat([term.counts.detach().reshape(-1) for term in terms.values()])
    if reduce_counts is not None:
        counts = reduce_counts(counts)
    total, offset = None, 0
    for term in terms.values():
        count = counts[offset: offset + term.counts.numel()].clamp(min=1)
        offset += term.counts.numel()
        value = (term.sums / count).sum() if term.sum_over_targets else term.sums.sum() / count.sum()
        value = term.weight * value
        total = value if total is None else total + value
    return total


def codeword_logits(embeddings: Tensor, codewords: Tensor, temperature: float) -> Tensor:
    """HuBERT's codeword scores: cos(embedding, codeword) / temperature; (..., D) x (C, D) -> (..., C)."""
    return F.normalize(embeddings.float(), dim=-1) @ F.normalize(codewords.float(), dim=-1).t() / temperature


def kl_divergence_term(
    student_logits: Tensor, teacher_logits: Tensor, valid: Optional[Tensor], weight: float = 1.0
) -> LossTerm:
    """KL(p_teacher ‖ p_student) per frame over the codewords, p = softmax(logits); logits (B, T, C), ``valid``
    (B, T) bool of frames that count (None: all)."""
    teacher_log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    student_log_p = F.log_softmax(student_logits.float(), dim=-1)
    per_frame = (teacher_log_p.exp() * (teacher_log_p - student_log_p)).sum(-1)  # (B, T)
    mask = per_frame.new_ones(per_frame.shape) if valid is None else valid.to(per_frame.dtype)
    return LossTerm((per_frame * mask).sum().reshape(1), mask.sum().reshape(1), weight)
