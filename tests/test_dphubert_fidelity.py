"""DPHuBERT / SKILL training step against the official formulation (pyf98/DPHuBERT ``lightning.py``, ``distill.py``,
``wav2vec2/components.py``), rebuilt here from its formulas rather than from our code:

* hidden state 0, for teacher and student, is the feature projection's output before the positional conv;
* L = mean|P(h_S) − h_T| − mean cos(P(h_S), h_T) + λ1 (s − t) + λ2 (s − t)², one mean over (batch, target, frame,
  feature), P the target group's Linear;
* s = 1 − size / (every parameter of the teacher), size = ``Wav2Vec2Model.get_num_params`` from the gates' expected
  L0 norms (CNN with its output scale, feature projection, positional conv, layer norms, attention, FFN; WavLM's
  relative position parameters left out), t = target · step / warm-up;
* AdamW groups: weights (lr, no decay), log α (gate lr), λ (−gate lr: ascent), all scaled by the linear warm-up
  counted from step 1.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from s3prl_distill.formats.fairseq import teacher_copy_config
from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT, write_random_hubert
from s3prl_distill.formats.s3prl_wavlm import TINY_WAVLM, write_random_wavlm
from s3prl_distill.losses import combine
from s3prl_distill.model import PruningConfig, StudentConfig, StudentModel, pruning_student_config
from s3prl_distill.pretrain.config import DataConfig, StudentInitConfig, TeacherConfig
from s3prl_distill.pretrain.dphubert.recipe import DPHuBERTMethodConfig
from s3prl_distill.pretrain.task import DistillationTask
from s3prl_distill.pretrain.teacher import Teacher
from s3prl_distill.pretrain.teacher_cache import cache_key

from helpers import random_waves

# Hard-concrete constants of DPHuBERT's HardConcrete (temperature, stretch limits).
BETA, LOW, HIGH = 2.0 / 3.0, -0.1, 1.1
STEP, SPARSITY_WARMUP, TARGET = 20, 50, 0.6
LAMBDA_1, LAMBDA_2 = 0.3, 0.2
LR, GATE_LR, WARMUP_STEPS = 2e-4, 0.02, 10
# (teacher, target groups, group_target): DPHuBERT's layer 0 + a shared group; SKILL's group means.
CASES = {"dphubert": ("hubert_local", [[0], [1, 2, 3]], "each"), "skill": ("wavlm_local", [[0, 1], [2, 3]], "mean")}
# s3prl's WavLM names for the relative position parameters (the bias table and each layer's gate).
WAVLM_RELATIVE = ("relative_attention_bias", "grep_linear", "grep_a")


def write_random_wav2vec2(path):
    """A tiny randomly initialised wav2vec 2.0 in the converted format s3prl's ``wav2vec2_local`` reads."""
    from s3prl.upstream.utils import merge_with_parent
    from s3prl.upstream.wav2vec2.wav2vec2_model import Wav2Vec2Config, Wav2Vec2Model

    model_cfg = {key: TINY_HUBERT[key] for key in ("extractor_mode", "conv_feature_layers", "encoder_layers",
                                                   "encoder_embed_dim", "encoder_ffn_embed_dim",
                                                   "encoder_attention_heads", "conv_pos", "conv_pos_groups",
                                                   "final_dim", "layer_norm_first")}
    torch.manual_seed(1)
    model = Wav2Vec2Model(merge_with_parent(Wav2Vec2Config, dict(model_cfg)))
    torch.save({"task_cfg": {"sample_rate": 16000, "normalize": False}, "model_cfg": model_cfg,
                "model_weight": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    return {"hubert_local": write_random_hubert(folder / "hubert.ckpt"),
            "wavlm_local": write_random_wavlm(folder / "wavlm.ckpt"),
            "wav2vec2_local": write_random_wav2vec2(folder / "wav2vec2.ckpt")}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).norm() / reference.double().norm().clamp(min=1e-30))


def official_projection(model: torch.nn.Module, waves: torch.Tensor) -> torch.Tensor:
    """The feature projection of an s3prl HuBERT / WavLM model: CNN -> LayerNorm -> post_extract_proj."""
    return model.post_extract_proj(model.layer_norm(model.feature_extractor(waves).transpose(1, 2)))


@pytest.mark.parametrize("name", ["hubert_local", "wavlm_local", "wav2vec2_local"])
def test_teacher_layer_zero_is_the_projection_before_the_positional_conv(teachers, name):
    teacher = Teacher(TeacherConfig(name=name, ckpt=str(teachers[name])))
    waves = torch.stack(random_waves([6000, 6000]))
    lengths = torch.tensor([6000, 6000])
    s3prl_indexing = teacher(waves, lengths)
    dphubert_indexing = teacher(waves, lengths, "feature_projection")
    with torch.no_grad():
        expected = official_projection(teacher.upstream.model, waves)
    assert relative_error(dphubert_indexing[0], expected) < 1e-6
    assert relative_error(s3prl_indexing[0], expected) > 0.1  # s3prl's hidden state 0 is another tensor
    assert all(torch.equal(a, b) for a, b in zip(dphubert_indexing[1:], s3prl_indexing[1:]))


def test_a_teacher_without_a_fairseq_encoder_is_refused_with_the_fix(session_distiller_ckpt):
    teacher = Teacher(TeacherConfig(name="distiller_local", ckpt=str(session_distiller_ckpt)))
    with pytest.raises(ValueError, match="layer_zero: transformer_input"):
        teacher(torch.zeros(1, 4000), torch.tensor([4000]), "feature_projection")


@pytest.mark.parametrize("layer_zero", ["feature_projection", "transformer_input"])
def test_student_projection_head_reads_the_chosen_layer_zero(layer_zero):
    config = pruning_student_config(teacher_copy_config(TINY_HUBERT), target_groups=[[0], [1, 2, 3]],
                                    pruning=PruningConfig())
    head = config.prediction_head.model_copy(update={"layer_zero": layer_zero})
    student = StudentModel(config.model_copy(update={"prediction_head": head})).eval()
    waves = torch.stack(random_waves([6000, 6000]))
    with torch.no_grad():
        out = student(waves)
        cnn, _ = student.feature_extractor(waves)
        projected = student.feature_projection(student.feature_norm(cnn))
        source = projected if layer_zero == "feature_projection" else out.encoder_input
        linear = student.prediction_head.projections[0]
        assert relative_error(out.predictions[:, 0], linear(source)) < 1e-6
    assert relative_error(out.encoder_input, projected) > 0.1
    # The upstream's hidden_states keep s3prl's indexing whatever the head reads.
    assert out.hidden_states()[0] is out.encoder_input


def test_cache_key_names_layer_zero_only_where_it_changes_the_targets(tmp_path):
    teacher = TeacherConfig(name="hubert_local")
    data = DataConfig(root=str(tmp_path), bucket_dir=str(tmp_path), sets=["train"])
    assert "layer_zero" not in cache_key(teacher, data, [], [0, 4], 320)  # older caches stay valid
    assert cache_key(teacher, data, [], [0, 4], 320, "feature_projection")["layer_zero"] == "feature_projection"
    assert "layer_zero" not in cache_key(teacher, data, [], [4, 8], 320, "feature_projection")


def test_a_run_saved_before_layer_zero_resumes_with_the_layer_zero_it_trained_with(tmp_path):
    from s3prl_distill.pretrain.runner import _keep_layer_zero

    saved = {"student": {"prediction_head": {"type": "projection", "target_groups": [[0], [1, 2]]}}}
    resumed = _keep_layer_zero(saved, tmp_path / "states-10.ckpt")
    assert resumed["student"]["prediction_head"]["layer_zero"] == "transformer_input"
    assert "layer_zero" not in saved["student"]["prediction_head"]  # the checkpoint's dict is not changed
    current = {"student": {"prediction_head": {"type": "projection", "layer_zero": "feature_projection"}}}
    assert _keep_layer_zero(current, tmp_path) is current


# --- the training step -------------------------------------------------------------------------------------------

def build_task(teachers, recipe: str) -> DistillationTask:
    name, groups, mode = CASES[recipe]
    copy = teacher_copy_config(TINY_HUBERT if name == "hubert_local" else TINY_WAVLM).to_dict()
    copy["feature_dropout"] = 0.0  # dropout off, as the comparison needs
    copy["encoder"].update(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    student = pruning_student_config(StudentConfig.from_dict(copy), target_groups=groups, group_target=mode,
                                     pruning=PruningConfig())
    method = DPHuBERTMethodConfig(name=recipe, target_sparsity=TARGET, sparsity_warmup_steps=SPARSITY_WARMUP,
                                  gate_lr=GATE_LR, lagrangian_lr=GATE_LR)
    task = DistillationTask(TeacherConfig(name=name, ckpt=str(teachers[name])), student,
                            StudentInitConfig(whole=True), method, torch.device("cpu"))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter_name, parameter in task.student.named_parameters():
            if parameter_name.endswith("log_alpha"):  # spread the gates so expected sizes are far from full
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 2.0 + 1.0)
            elif parameter_name.startswith("prediction_head."):  # the heads start as identities: make them differ
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        task.method.penalty.lambda_1.fill_(LAMBDA_1)
        task.method.penalty.lambda_2.fill_(LAMBDA_2)
    task.student.train()
    return task


def expected_l0(log_alpha: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(log_alpha - BETA * math.log(-LOW / HIGH)).sum()


def official_size(student: StudentModel, expected: bool) -> torch.Tensor:
    """``Wav2Vec2Model.get_num_params`` of DPHuBERT, from its formula: conv in·out·k (+ bias, + 2·out for a norm),
    the output scale (one per last channel), feature projection 2·C + (C + 1)·E, positional conv, encoder LayerNorm,
    and per layer 4·E (two LayerNorms) + (E + 1)·h·d·3 + (h·d + 1)·E + (E + 1)·I + (I + 1)·E."""
    def units(gate, full):
        return expected_l0(gate.log_alpha) if expected else torch.tensor(float(full))

    size, previous = torch.tensor(0.0), torch.tensor(1.0)
    for block in student.feature_extractor.conv_layers:
        out = units(block.gate, block.conv.out_channels)
        size = size + previous * out * block.conv.kernel_size[0] + (out if block.conv.bias is not None else 0) + \
            (2 * out if block.norm is not None else 0)
        previous = out
    embed = student.config.encoder.embed_dim
    size = size + previous + previous * 2 + (previous + 1) * embed
    size = size + sum(p.numel() for p in student.encoder.pos_conv.parameters()) + 2 * embed
    for layer in student.encoder.layers:
        heads = units(layer.attention.head_gate, layer.attention.num_heads)
        inner = heads * layer.attention.head_dim
        ffn = units(layer.feed_forward.unit_gate, layer.feed_forward.fc1.out_features)
        size = size + 4 * embed + (embed + 1) * inner * 3 + (inner + 1) * embed + (embed + 1) * ffn + (ffn + 1) * embed
    return size


def reference_loss(task: DistillationTask, waves: torch.Tensor, out, lambdas):
    """The official objective from the student's raw tensors and the s3prl teacher's own modules."""
    _, groups, mode = CASES[task.method.config.name]
    expert = task.teacher.upstream
    with torch.no_grad():
        teacher_states = [official_projection(expert.model, waves),
                          *expert([wave for wave in waves])["hidden_states"][1:]]
    student_states = [out.features, *out.layer_outputs]
    projections = task.student.prediction_head.projections
    predictions, targets = [], []
    for group_index, group in enumerate(groups):
        linear = projections[group_index]
        if mode == "each":
            predictions += [F.linear(student_states[i], linear.weight, linear.bias) for i in group]
            targets += [teacher_states[i] for i in group]
        else:
            predictions.append(F.linear(torch.stack([student_states[i] for i in group]).mean(0), linear.weight,
                                        linear.bias))
            targets.append(torch.stack([teacher_states[i] for i in group]).mean(0))
    frames = min(min(p.shape[1] for p in predictions), min(t.shape[1] for t in targets))
    prediction = torch.stack([p[:, :frames] for p in predictions], dim=1)
    target = torch.stack([t[:, :frames] for t in targets], dim=1)
    distill = (prediction - target).abs().mean() - F.cosine_similarity(prediction, target, dim=-1).mean()
    teacher_total = sum(p.numel() for p in expert.model.parameters()) - \
        sum(p.numel() for n, p in expert.model.named_parameters()
            if n.startswith(("final_proj", "label_embs", "mask_emb")))  # the torchaudio-style teacher has none
    teacher_total += task.student.feature_extractor.out_channels  # its CNN output scale (``dummy_weight``)
    sparsity = 1.0 - official_size(task.student, expected=True) / teacher_total
    gap = sparsity - TARGET * STEP / SPARSITY_WARMUP
    return distill + lambdas[0] * gap + lambdas[1] * gap ** 2


def official_adamw_step(parameter: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """torch.optim.AdamW's first step (weight decay 0, betas (0.9, 0.999), eps 1e-8), in float64."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    grad = grad.double()
    m_hat = (1 - beta1) * grad / (1 - beta1)
    v_hat = (1 - beta2) * grad * grad / (1 - beta2)
    return (parameter.double() - lr * m_hat / (v_hat.sqrt() + eps)).float()


@pytest.mark.parametrize("recipe", list(CASES))
def test_loss_gradients_and_one_step_equal_the_official_formulation(teachers, recipe):
    task = build_task(teachers, recipe)
    waves = torch.stack(random_waves([7000, 7000], seed=5))
    lengths = torch.tensor([7000, 7000])
    parameters = dict(task.student.named_parameters())
    before = {name: p.detach().clone() for name, p in parameters.items()}
    lambdas = list(task.method.penalty.parameters())

    torch.manual_seed(11)  # the gates' samples
    ours = combine(task.losses(task.student, waves, lengths, STEP))
    ours.backward()
    our_grads = {name: p.grad.clone() for name, p in parameters.items() if p.grad is not None}
    our_lambda_grads = [p.grad.clone() for p in lambdas]

    task.student.zero_grad(set_to_none=True)
    reference_lambdas = [torch.tensor(LAMBDA_1, requires_grad=True), torch.tensor(LAMBDA_2, requires_grad=True)]
    torch.manual_seed(11)
    reference = reference_loss(task, waves, task.student(waves, predict=False), reference_lambdas)
    reference.backward()

    assert abs(float(ours) - float(reference)) <= 1e-5 * abs(float(reference))
    reference_grads = {name: p.grad for name, p in parameters.items() if p.grad is not None}
    assert set(our_grads) == set(reference_grads)
    assert any(name.endswith("log_alpha") for name in reference_grads)  # the size term reached the gates
    for name, grad in reference_grads.items():
        assert relative_error(our_grads[name], grad) < 1e-5, name
    # λ ascend: the official optimizer steps them with a negative learning rate, ours with the negated gradient.
    for ours_grad, reference_lambda in zip(our_lambda_grads, reference_lambdas):
        assert float(ours_grad) == pytest.approx(-float(reference_lambda.grad), rel=1e-5)

    # One step with the recipe's optimizer groups and the warm-up's first factor (1 / warm-up steps).
    for name, p in parameters.items():
        p.grad = our_grads.get(name)
    for p, grad in zip(lambdas, our_lambda_grads):
        p.grad = grad
    factor = 1.0 / WARMUP_STEPS
    groups = task.method.parameter_groups(task.student, 0.0)
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    for group in optimizer.param_groups:
        group["lr"] *= factor
    lambda_before = [float(p) for p in lambdas]
    optimizer.step()
    for name, p in parameters.items():
        if name not in reference_grads:
            continue
        lr = (GATE_LR if name.endswith("log_alpha") else LR) * factor
        expected = official_adamw_step(before[name], reference_grads[name], lr)
        assert relative_error(p.detach(), expected) < 1e-6, name
    for value, p, reference_lambda in zip(lambda_before, lambdas, reference_lambdas):
        expected = official_adamw_step(torch.tensor(value), reference_lambda.grad, -GATE_LR * factor)
        assert float(p) == pytest.approx(float(expected), rel=1e-6)
