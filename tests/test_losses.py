"""Loss terms on hand-computed tiny tensors."""

import math

import torch

from s3prl_distill.losses import combine, log_sigmoid_cosine_term, regression_term


def test_l1_and_l2_terms():
    prediction = torch.zeros(1, 2, 2, 2)  # (B, N, T, D)
    target = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 4.0]]]])
    l1 = regression_term(prediction, target, None)
    assert l1.sums.tolist() == [4.0, 4.0] and l1.counts.tolist() == [4.0, 4.0]
    assert l1.per_target().tolist() == [1.0, 1.0]
    l2 = regression_term(prediction, target, None, kind="l2")
    assert l2.sums.tolist() == [6.0, 16.0]
    # Only the first frame counts: layer 0 |1| + |-1| = 2 over 2 elements, layer 1 nothing.
    masked = regression_term(prediction, target, torch.tensor([[True, False]]))
    assert masked.sums.tolist() == [2.0, 0.0] and masked.counts.tolist() == [2.0, 2.0]


def test_log_sigmoid_cosine_term():
    prediction = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # (1, 1, 2, 2)
    target = torch.tensor([[[[2.0, 0.0], [0.0, 3.0]]]])  # cos = 1, then 0
    term = log_sigmoid_cosine_term(prediction, target, None)
    expected = math.log(1 + math.exp(-1.0)) + math.log(2.0)
    assert math.isclose(term.sums.item(), expected, rel_tol=1e-6) and term.counts.tolist() == [2.0]


def test_combine_normalises_by_the_global_count():
    a = regression_term(torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2), None, weight=1.0)  # sum 2, count 2
    b = log_sigmoid_cosine_term(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2), None, weight=0.5)
    total = combine({"a": a, "b": b})
    assert math.isclose(total.item(), 1.0 + 0.5 * math.log(1 + math.exp(-1.0)), rel_tol=1e-6)
    # A count reduced over (here: pretend) two ranks halves each term.
    doubled = combine({"a": a, "b": b}, reduce_counts=lambda count: 2 * count)
    assert math.isclose(doubled.item(), total.item() / 2, rel_tol=1e-6)


def test_sum_over_targets_adds_per_layer_means():
    # Layer 0: mean |1| = 1 over 2 elements; layer 1: mean |3| = 3 over 4 frames' worth (2 frames, D=2).
    prediction = torch.zeros(1, 2, 2, 2)
    target = torch.stack([torch.ones(2, 2), 3 * torch.ones(2, 2)])[None]
    pooled = regression_term(prediction, target, None)
    summed = regression_term(prediction, target, None, sum_over_targets=True)
    assert math.isclose(combine({"t": pooled}).item(), 2.0)  # (4 + 12) / 8
    assert math.isclose(combine({"t": summed}).item(), 4.0)  # 1 + 3


def test_distilhubert_loss_is_s3prls_formula():
    """s3prl's DistillerForPretrain: L1 mean over (B, N, T, D) + λ · mean over (B, N, T) of −log σ(cos)."""
    from s3prl_distill.model import StudentOutput, distilhubert_config
    from s3prl_distill.pretrain.distilhubert.recipe import DistilHuBERT, DistilHuBERTMethodConfig
    from s3prl_distill.pretrain.method import DistillationBatch

    torch.manual_seed(0)
    prediction, target = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    method = DistilHuBERT(DistilHuBERTMethodConfig(cosine_weight=0.7), distilhubert_config())
    output = StudentOutput(None, [], None, prediction, None, None)
    ours = combine(method.losses(DistillationBatch(output, target, torch.ones(2, 5, dtype=torch.bool), [])))
    cosine = torch.nn.functional.cosine_similarity(prediction, target, dim=-1)
    reference = (prediction - target).abs().mean() - 0.7 * torch.nn.functional.logsigmoid(cosine).mean()
    assert torch.allclose(ours, reference, atol=1e-6)
