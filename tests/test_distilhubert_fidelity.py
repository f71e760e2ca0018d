"""DistilHuBERT's training fidelity against s3prl's distiller: loss and gradients (equal-length and padded batch),
and two optimizer steps with clipping (the shared machinery and the sources read: recipe_fidelity.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recipe_fidelity import (
    assert_steps_match_s3prl,
    batch,
    build,
    cached,
    official_regression,
    ours_and_reference,
    runner_config,
    shipped,
    student_lengths,
    teacher_targets,
    tiny_distilhubert,
)

# Tiny models: one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def official_expand_last(head, last: torch.Tensor) -> torch.Tensor:
    """DistillerModel.output_layer: Linear(D -> N * I) -> GELU -> SplitLinear (N blocks of I -> O, weight (N, I, O),
    bias (1, 1, N, O)), the B x T x N*O output read as B x N x T x O."""
    n = head.num_targets
    inner = F.gelu(F.linear(last, head.expand.weight, head.expand.bias))
    b, t, _ = inner.shape
    split_weight = torch.stack([linear.weight.t() for linear in head.projections])  # (N, I, O)
    split_bias = torch.stack([linear.bias for linear in head.projections])[None, None]  # (1, 1, N, O)
    blocks = torch.einsum("btni,nio->btno", inner.reshape(b, t, n, -1), split_weight) + split_bias
    return blocks.reshape(b, t, -1).reshape(b, t, n, -1).permute(0, 2, 1, 3)


@pytest.mark.parametrize("padded", [False, True], ids=["equal_length", "padded"])
def test_distilhubert_loss_and_gradients_match_s3prl(tmp_path, padded):
    method = shipped("distilhubert").method
    assert not method.mask_padding  # s3prl's distiller averages over padded frames too
    task, layers = build(tmp_path, tiny_distilhubert(), method)
    waveforms, lengths, hidden = batch(padded, frames=13)

    def reference(student):
        out = student(waveforms, student_lengths(lengths), predict=False)
        pred = official_expand_last(student.prediction_head, out.last_hidden)
        return official_regression(pred, teacher_targets(hidden, [1, 2, 3]), method.loss_type, method.cosine_weight)

    ours_and_reference(task, waveforms, lengths, hidden, layers, reference)


def test_distilhubert_optimizer_steps_match_s3prl(tmp_path):
    # s3prl's runner clips at runner.gradient_clipping (5.0); a smaller value here makes clipping act on this batch.
    config = runner_config("distilhubert", clip=0.05)
    task, layers = build(tmp_path, tiny_distilhubert(), shipped("distilhubert").method)
    waves, lengths, hidden = batch(False, frames=13)
    waves2, lengths2, hidden2 = batch(True, frames=13, seed=2)
    steps = [(waves, lengths, cached(hidden, layers), 0), (waves2, lengths2, cached(hidden2, layers), 1)]
    assert_steps_match_s3prl(task, config, steps, max_norm=0.05, our_clip=0.05)
