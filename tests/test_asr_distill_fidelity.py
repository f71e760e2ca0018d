"""Wang et al.'s (asr_distill) training fidelity against the authors' code: the regression + discriminative KL loss
and its gradients, the fbank front end's stage, and two optimizer steps across the stage boundary (the shared
machinery and the sources read: recipe_fidelity.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s3prl_distill.losses import combine

from recipe_fidelity import (
    assert_steps_match_s3prl,
    batch,
    build,
    cached,
    official_regression,
    ours_and_reference,
    random_codebook,
    runner_config,
    shipped,
    student_lengths,
    teacher_targets,
    tiny_deepthin,
)

# Tiny models: one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


# --- Wang et al.: deep-thin regression + discriminative KL ----------------------------------------------------------

def official_teacher_logits(hidden_last: torch.Tensor, codebook: dict, temperature: float) -> torch.Tensor:
    """(B*T, C): cos(final_proj(h_T^last), label_embs_concat) / temperature, as the authors' compute_loss."""
    embedded = F.linear(hidden_last, codebook["projection_weight"], codebook["projection_bias"])
    rows = embedded.reshape(-1, 1, embedded.shape[-1])
    return F.cosine_similarity(rows, codebook["embeddings"][None], dim=-1) / temperature


def official_asr_distill_loss(student, out, hidden, codebook, method, projection_type: str, use_temperature: bool):
    """The authors' compute_loss: rec + cos (layer-wise heads: one Linear per layer) + embedding_loss x KL, KL =
    F.kl_div(log_softmax(student), log_softmax(teacher), log_target, batchmean) over the B*T rows."""
    pred = torch.stack([F.linear(x, head.projection.weight, head.projection.bias)
                        for x, head in zip(out.layer_outputs, student.prediction_head.heads)], dim=1)
    loss = official_regression(pred, teacher_targets(hidden, [1, 2, 3]), method.loss_type, method.cosine_weight)
    teacher = official_teacher_logits(hidden[-1], codebook, method.temperature)
    embedded = F.linear(out.last_hidden, student.codeword_head.weight, student.codeword_head.bias)
    if projection_type == "type1":  # Linear(D -> 256), scored by cosine against the teacher's label embeddings
        rows = embedded.reshape(-1, 1, embedded.shape[-1])
        logits = F.cosine_similarity(rows, codebook["embeddings"][None], dim=-1)
    else:  # type2: Linear(D -> 504) logits
        logits = embedded.reshape(-1, embedded.shape[-1])
    if use_temperature:
        logits = logits / method.temperature
    kl = F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True,
                  reduction="batchmean")
    return loss + method.discriminative_weight * kl


@pytest.mark.parametrize("head, use_temperature, padded", [
    ("logits", None, False),  # type2 without tau: the released models
    ("logits", True, True),  # type2 with tau
    ("cosine", None, True),  # type1 with tau (our cosine head's default)
    ("cosine", False, False),  # type1 without tau (the authors' use_temperature: False)
])
def test_asr_distill_loss_and_gradients_match_the_authors_code(tmp_path, head, use_temperature, padded):
    method = shipped("asr_distill").method.model_copy(update={"use_temperature": use_temperature})
    assert method.discriminative_weight > 0 and not method.mask_padding
    codebook = random_codebook()
    task, layers = build(tmp_path, tiny_deepthin(head), method, codebook)
    waveforms, lengths, hidden = batch(padded, frames=13)
    projection_type = "type1" if head == "cosine" else "type2"
    divide = use_temperature if use_temperature is not None else head == "cosine"

    def reference(student):
        out = student(waveforms, student_lengths(lengths), predict=False)
        return official_asr_distill_loss(student, out, hidden, codebook, method, projection_type, divide)

    ours_and_reference(task, waveforms, lengths, hidden, layers, reference)


# --- Wang et al.: the fbank front end's stage ------------------------------------------------------------------------

@pytest.mark.parametrize("loss_type, padded", [("l1", False), ("l2", True)])
def test_fbank_front_end_stage_matches_the_authors_code(tmp_path, loss_type, padded):
    """Stage 1 (the first ``front_end_steps`` steps): nn.L1Loss / nn.MSELoss (mean over every element, padded frames
    included) between the teacher's hidden_states[0] (s3prl: the first layer's input) and frontend_proj(front end);
    nothing else gets a gradient. Then the normal loss."""
    method = shipped("asr_distill", "config_fbank.yaml").method.model_copy(
        update={"front_end_steps": 2, "loss_type": loss_type})
    task, layers = build(tmp_path, tiny_deepthin(fbank=True), method, random_codebook())
    assert 0 in layers
    assert [task.in_front_end_stage(step) for step in range(4)] == [True, True, False, False]
    waveforms, lengths, hidden = batch(padded, frames=13)

    def reference(student):
        # (Our front end's output is zero on padded frames before the head; the authors' is not: a forward
        # difference outside this loss, so both sides here use our front end's output.)
        out = student(waveforms, student_lengths(lengths), front_end_only=True)
        head = student.front_end_head
        prediction = F.linear(out.features, head.weight, head.bias)
        loss = F.l1_loss if loss_type == "l1" else F.mse_loss
        return loss(hidden[0], prediction, reduction="mean")

    ours_and_reference(task, waveforms, lengths, hidden, layers, reference, step=1)
    # Only the front end and its head train in this stage.
    combine(task.losses(task.student, waveforms, lengths, 1, cached(hidden, layers))).backward()
    trained = sorted({name.split(".")[0] for name, p in task.student.named_parameters() if p.grad is not None})
    assert trained == ["fbank", "front_end_head"]


def test_fbank_two_stage_optimizer_steps_match_the_authors_code(tmp_path):
    """Step 1 trains the front end only: the encoder and heads have no gradient, so s3prl's optimizer leaves them
    alone and their step counters at 0. Step 2 (the second stage) is their first update: t = 1, their own warm-up,
    while the front end's parameters are at t = 2."""
    config = runner_config("asr_distill", "config_fbank.yaml", clip=0.05)
    method = shipped("asr_distill", "config_fbank.yaml").method.model_copy(update={"front_end_steps": 1})
    task, layers = build(tmp_path, tiny_deepthin(fbank=True), method, random_codebook())
    waves, lengths, hidden = batch(False, frames=13)
    waves2, lengths2, hidden2 = batch(True, frames=13, seed=2)
    steps = [(waves, lengths, cached(hidden, layers), 0), (waves2, lengths2, cached(hidden2, layers), 1)]
    assert_steps_match_s3prl(task, config, steps, max_norm=0.05, our_clip=0.05)
