"""DPHuBERT / SKILL: hard-concrete gates, the expected size and the Lagrangian, physical pruning (equal outputs,
parameter count on target), teacher copies (HuBERT and WavLM with gated relative position bias), the official DPHuBERT
format, and the whole pipeline (pretrain -> prune -> final distillation -> s3prl's runner)."""

import math
import sys

import pytest
import torch
import yaml

from s3prl_distill.checkpoint import CheckpointError, save_checkpoint
from s3prl_distill.formats.fairseq import teacher_copy_config
from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT, write_random_hubert
from s3prl_distill.formats.s3prl_wavlm import TINY_WAVLM, write_random_wavlm
from s3prl_distill.model import StudentConfig, StudentModel, pruning_student_config
from s3prl_distill.model.gates import STRETCH, TEMPERATURE, HardConcreteGate
from s3prl_distill.model.pruning import (
    SparsityPenalty,
    expected_num_parameters,
    final_num_parameters,
    prune,
)
from s3prl_distill.pretrain.config import StudentInitConfig, TeacherConfig
from s3prl_distill.pretrain.metrics import read_metrics
from s3prl_distill.pretrain.teacher import Teacher, initialise_student

from helpers import featurizer_weights_after_training, gated_student, pretrain, random_waves, torchaudio_reference

# --- gates ----------------------------------------------------------------------------------------------------------

def test_gate_expectation_samples_and_final_mask():
    gate = HardConcreteGate(6, initial_drop=0.01)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-8.0, -3.0, -0.5, 0.5, 3.0, 8.0]))
    # P(z > 0) = sigmoid(log_alpha - beta * log(-l / r)), l = -0.1, r = 1.1
    expected = torch.sigmoid(gate.log_alpha - TEMPERATURE * math.log(STRETCH / (1 + STRETCH))).sum()
    assert float(gate.expected_kept()) == pytest.approx(float(expected), rel=1e-6)
    gate.train()
    samples = torch.stack([gate() for _ in range(2000)])
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    # Exact zeros and ones occur (the stretch), and the empirical keep rate follows the expectation.
    assert (samples == 0).any() and (samples == 1).any()
    assert float((samples > 0).float().sum(1).mean()) == pytest.approx(float(expected), abs=0.1)
    gate.eval()
    mask = gate()
    zeros = round(6 - float(expected))
    assert int((mask == 0).sum()) == zeros
    assert mask[:zeros].eq(0).all()  # the least likely units go first
    kept = mask[zeros:]
    assert torch.allclose(kept, torch.sigmoid(gate.log_alpha[zeros:] * 0.8 / TEMPERATURE))
    # Initialisation: log_alpha around log((1 - m) / m).
    assert float(HardConcreteGate(1000, 0.5).log_alpha.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(HardConcreteGate(1000, 0.01).log_alpha.mean()) == pytest.approx(math.log(99), abs=0.01)


def test_lagrangian_lambdas_ascend_and_gates_descend():
    penalty = SparsityPenalty()
    with torch.no_grad():
        penalty.lambda_1.fill_(0.5)
        penalty.lambda_2.fill_(0.25)
    sparsity = torch.tensor(0.2, requires_grad=True)
    value = penalty(sparsity, 0.5)
    assert float(value) == pytest.approx(0.5 * -0.3 + 0.25 * 0.09)
    value.backward()
    # λ gradients are negated (ascent); the sparsity's is the ordinary derivative λ1 + 2 λ2 (s - t).
    assert float(penalty.lambda_1.grad) == pytest.approx(0.3)
    assert float(penalty.lambda_2.grad) == pytest.approx(-0.09)
    assert float(sparsity.grad) == pytest.approx(0.5 + 2 * 0.25 * -0.3)


@pytest.mark.parametrize("wavlm", [False, True])
def test_expected_size_is_exact_bookkeeping(wavlm):
    model = gated_student(wavlm)
    final = final_num_parameters(model)
    assert final < model.num_parameters()
    pruned = prune(model.eval())
    assert pruned.num_parameters() == final
    assert not any(name.endswith("log_alpha") for name, _ in pruned.named_parameters())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("log_alpha"):
                parameter.fill_(50.0)  # every gate open
    assert float(expected_num_parameters(model)) == pytest.approx(model.num_parameters(), rel=1e-6)
    assert final_num_parameters(model) == model.num_parameters()


@pytest.mark.parametrize("wavlm", [False, True])
def test_pruned_model_computes_what_the_gated_model_computes(wavlm):
    model = gated_student(wavlm).eval()
    pruned = prune(model).eval()
    config = pruned.config.encoder
    assert 0 in config.layer_num_heads() or min(config.layer_ffn_dims()) < 96  # something was removed
    assert pruned.config.feature_extractor.conv_layers[-1][0] < 32
    waves = random_waves([16000, 11000])
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    lengths = torch.tensor([16000, 11000])
    gated_out, pruned_out = model(padded, lengths), pruned(padded, lengths)
    for ours, theirs in zip(gated_out.hidden_states(), pruned_out.hidden_states()):
        assert (ours - theirs).abs().max() < 1e-4
    assert (gated_out.predictions - pruned_out.predictions).abs().max() < 1e-4
    # The pruned config round-trips through YAML.
    assert StudentConfig.from_dict(yaml.safe_load(yaml.safe_dump(pruned.config.to_dict()))) == pruned.config


def test_gates_and_lagrangian_reach_the_target_size_within_one_percent():
    """Only the size constraint (no data): gates and λ trained as in the recipe (separate learning rates, linear
    decay); the pruned count lands on target. Widths fine enough that one head or unit is well under 1 %."""
    cfg = dict(TINY_HUBERT, encoder_attention_heads=12, encoder_ffn_embed_dim=384,
               conv_feature_layers="[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2")
    torch.manual_seed(0)
    model = StudentModel(pruning_student_config(teacher_copy_config(cfg), target_groups=[[0], [1, 2, 3]]))
    full = model.num_parameters()
    penalty = SparsityPenalty()
    gates = [p for n, p in model.named_parameters() if n.endswith("log_alpha")]
    steps, target = 500, 0.4
    optimizer = torch.optim.AdamW([{"params": gates, "lr": 0.1}, {"params": penalty.parameters(), "lr": 0.1}],
                                  weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for step in range(steps):
        sparsity = 1.0 - expected_num_parameters(model) / full
        loss = penalty(sparsity, target * min(1.0, step / 100))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    assert float(penalty.lambda_1) != 0.0
    pruned = prune(model.eval())
    assert pruned.num_parameters() == pytest.approx((1 - target) * full, rel=0.01)
    assert pruned.num_parameters() == final_num_parameters(model)


# --- teacher copies and the official format -------------------------------------------------------------------------

@pytest.mark.parametrize("name, writer, cfg", [("hubert_local", write_random_hubert, TINY_HUBERT),
                                               ("wavlm_local", write_random_wavlm, TINY_WAVLM)])
def test_a_teacher_copy_computes_the_teachers_hidden_states(tmp_path, name, writer, cfg):
    teacher = Teacher(TeacherConfig(name=name, ckpt=str(writer(tmp_path / "teacher.ckpt"))))
    student = StudentModel(teacher_copy_config(cfg)).eval()
    assert initialise_student(student, teacher, StudentInitConfig(whole=True)) == ["the whole backbone"]
    wave = random_waves([16000])[0]
    theirs = teacher(wave[None], torch.tensor([16000]))
    ours = student(wave[None]).hidden_states()
    assert len(theirs) == len(ours) == 4
    for a, b in zip(theirs, ours):
        assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("wavlm", [False, True])
def test_official_dphubert_checkpoints_load_with_equal_outputs(tmp_path, wavlm):
    import s3prl.hub as hub

    reference, checkpoint = torchaudio_reference(wavlm)
    path = save_checkpoint(checkpoint, tmp_path / "pruned_hubert_base.pth")
    upstream = hub.dphubert_local(ckpt=str(path)).eval()
    wave = random_waves([16000])[0]
    with torch.no_grad():
        theirs, _ = reference.extract_features(wave[None])  # stock torchaudio: the layer outputs only
        their_projection = reference.encoder.feature_projection(reference.feature_extractor(wave[None], None)[0])
        ours = upstream([wave])["hidden_states"]
        projected = upstream.model(wave[None]).features  # DPHuBERT's index 0: the feature projection's output
    assert (projected - their_projection).abs().max() < 1e-4
    assert len(theirs) == len(ours) - 1 == 3
    for a, b in zip(theirs, ours[1:]):
        assert (a - b).abs().max() < 1e-4


def test_official_format_errors_name_the_problem(tmp_path):
    import s3prl.hub as hub

    _, checkpoint = torchaudio_reference(False)
    checkpoint["config"]["encoder_prune_attention_heads"] = True
    path = save_checkpoint(checkpoint, tmp_path / "gated.pth")
    with pytest.raises(CheckpointError, match="gated.pth.*pruning gates"):
        hub.dphubert_local(ckpt=str(path))
    with pytest.raises(CheckpointError, match="skill expects"):
        hub.skill_local(ckpt=str(path))


# --- the whole pipeline ---------------------------------------------------------------------------------------------

def test_pipeline_pretrain_prune_final_distill_and_s3prl_runner(setup, tmp_path, emotion_setup):
    config = yaml.safe_load(setup["config"].read_text())
    student = pruning_student_config(teacher_copy_config(TINY_HUBERT), target_groups=[[0], [1, 2, 3]])
    config.update(
        student=student.to_dict(), student_init={"whole": True},
        method={"name": "dphubert", "target_sparsity": 0.3, "sparsity_warmup_steps": 4},
        optimizer={"lr": 2.0e-4, "weight_decay": 0.0}, scheduler={"name": "constant"},
    )
    config["runner"].update(total_steps=8, save_step=4)
    path = tmp_path / "dphubert.yaml"
    path.write_text(yaml.safe_dump(config))
    result = pretrain(["-g", str(path), "-n", "run", "-p", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(tmp_path / "run")
    assert any("expected_params" in r and "lambda1" in r for r in records)
    # Resume keeps λ: the checkpoint carries the method state.
    from s3prl_distill.checkpoint import load_checkpoint

    saved = load_checkpoint(tmp_path / "run" / "states-8.ckpt")
    assert float(saved["MethodState"]["penalty"]["lambda_1"]) != 0.0

    from s3prl_distill.cli import main

    main(["prune", str(tmp_path / "run"), "--output", str(tmp_path / "pruned"), "--final-steps", "3"])
    summary = yaml.safe_load((tmp_path / "pruned" / "pruning.yaml").read_text())
    assert summary["params_pruned"] <= summary["params_unpruned"] and summary["step"] == 8
    final = pretrain(["-g", str(tmp_path / "pruned" / "final_distill.yaml"), "-n", "final", "-p", str(tmp_path)],
                     cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    assert not any("sparsity_penalty" in key for r in read_metrics(tmp_path / "final") for key in r)  # no gates
    # The final student (still gate-free) goes through prune's sibling path: our upstream in s3prl's runner.
    final_ckpt = tmp_path / "final" / "states-3.ckpt"
    weights = featurizer_weights_after_training("dphubert_local", final_ckpt, emotion_setup, tmp_path)
    assert weights.shape == (4,) and torch.isfinite(weights).all()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_shipped_configs_validate_and_a_groups_snippet_merges_in(tmp_path):
    from pathlib import Path

    from s3prl_distill.pretrain.config import load_config

    root = Path(__file__).resolve().parent.parent / "pretrain" / "dphubert"
    dphubert = load_config(root / "config.yaml")
    assert dphubert.student.prediction_head.target_groups == [[0], [4, 8, 12]]
    assert dphubert.student.pruning is not None and dphubert.student_init.whole
    snippet = tmp_path / "skill_groups.yaml"
    snippet.write_text("# layer-similarity: linear_cka\nstudent:\n  prediction_head:\n    type: projection\n"
                       "    target_groups: [[0, 1], [2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]\n    group_target: mean\n")
    skill = load_config([root / "config_skill.yaml", snippet])
    head = skill.student.prediction_head
    assert head.target_groups == [[0, 1], [2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]] and head.group_target == "mean"
    assert skill.method.name == "skill" and skill.student.encoder.relative_position.num_heads == 12
