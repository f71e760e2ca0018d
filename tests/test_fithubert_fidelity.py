"""FitHuBERT's training fidelity against the official code: loss and gradients (equal-length and padded batch), and
two optimizer steps without clipping (the shared machinery and the sources read: recipe_fidelity.py)."""

from __future__ import annotations

from typing import List

import pytest
import torch
import torch.nn.functional as F

from recipe_fidelity import (
    assert_steps_match_s3prl,
    batch,
    build,
    cached,
    ours_and_reference,
    runner_config,
    shipped,
    student_lengths,
    teacher_targets,
    tiny_fithubert,
)

# Tiny models: one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def official_fithubert_loss(student, layer_outputs: List[torch.Tensor], hidden: List[torch.Tensor],
                            hint_layers: List[int], hint_weight: float) -> torch.Tensor:
    """FitHuBERT's calculate_loss (rec_loss_type mse, distil_random_layer = the hint layers, random_layer_weight):
    LayerWiseProjHead per layer (ConvTranspose1d k = s = 2, then Linear), target cut to the prediction's length,
    hint rows x weight, then the per-layer means over (B, T, D) summed."""
    chosen = [layer - 1 for layer in hint_layers] + [len(layer_outputs) - 1]
    predictions = []
    for index in chosen:
        head = student.prediction_head.heads[index]
        up = F.conv_transpose1d(layer_outputs[index].transpose(1, 2), head.upsampler.weight, head.upsampler.bias,
                                stride=2).transpose(1, 2)
        predictions.append(F.linear(up, head.projection.weight, head.projection.bias))
    pred = torch.stack(predictions, dim=1)
    target = teacher_targets(hidden, [index + 1 for index in chosen]).narrow(2, 0, pred.shape[2])
    rec = F.mse_loss(pred, target, reduction="none")
    weights = torch.ones(len(chosen), 1, 1)
    weights[:-1] = hint_weight
    return (rec * weights).mean((0, 2, 3)).sum()


@pytest.mark.parametrize("padded", [False, True], ids=["equal_length", "padded"])
def test_fithubert_loss_and_gradients_match_the_official_code(tmp_path, padded):
    method = shipped("fithubert").method.model_copy(update={"hint_layers": [1, 2]})
    assert method.loss_type == "mse" and method.final_weight == 1.0 and not method.mask_padding
    task, layers = build(tmp_path, tiny_fithubert(), method)
    waveforms, lengths, hidden = batch(padded, frames=13)  # 13 teacher frames, 12 predicted after 2x reduction

    def reference(student):
        out = student(waveforms, student_lengths(lengths), predict=False)
        return official_fithubert_loss(student, out.layer_outputs, hidden, method.hint_layers, method.hint_weight)

    ours_and_reference(task, waveforms, lengths, hidden, layers, reference)


def test_fithubert_optimizer_steps_match_the_official_run(tmp_path):
    config = runner_config("fithubert")
    method = shipped("fithubert").method.model_copy(update={"hint_layers": [1, 2]})
    task, layers = build(tmp_path, tiny_fithubert(), method)
    waves, lengths, hidden = batch(False, frames=13)
    waves2, lengths2, hidden2 = batch(True, frames=13, seed=2)
    steps = [(waves, lengths, cached(hidden, layers), 0), (waves2, lengths2, cached(hidden2, layers), 1)]
    # The official Lightning run does not clip, and neither does the shipped config (gradient_clipping: null).
    assert config.runner.gradient_clipping is None
    assert_steps_match_s3prl(task, config, steps, max_norm=None, our_clip=config.runner.gradient_clipping)
