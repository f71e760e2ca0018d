"""Masking distillation (ARMHuBERT / MaskHuBERT): the span-mask sampler, the loss against the official formula, the
masked teacher pass against the teacher's own fairseq masking, training, exact resume, the teacher cache, export."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from s3prl_distill.checkpoint import load_checkpoint
from s3prl_distill.errors import ConfigError
from s3prl_distill.losses import combine
from s3prl_distill.model import StudentConfig, armhubert_config, maskhubert_config
from s3prl_distill.model.student import StudentOutput
from s3prl_distill.pretrain.armhubert.masking import MIN_SPANS, mask_rng, span_mask
from s3prl_distill.pretrain.armhubert.recipe import MaskDistillMethodConfig
from s3prl_distill.pretrain.config import StudentInitConfig, TeacherConfig, load_config, validate_config
from s3prl_distill.pretrain.method import DistillationBatch
from s3prl_distill.pretrain.methods import build_method
from s3prl_distill.pretrain.metrics import metric_values, read_metrics
from s3prl_distill.pretrain.runner import Trainer

from helpers import online_and_cached_tasks, random_waves, run_python, tiny_armhubert

pytestmark = pytest.mark.usefixtures("one_thread")

def runner_config(setup, name: str = "maskhubert", **method) -> dict:
    config = yaml.safe_load(setup["config"].read_text())
    config.update(student=tiny_armhubert(reuse=name == "armhubert").to_dict(), student_init={},
                  method={"name": name, "hint_layers": [1, 2], "mask_length": 3, **method})
    return config


# --- the mask sampler ----------------------------------------------------------------------------------------------

def spans_of(row: torch.Tensor) -> list:
    """(start, end) of each run of True."""
    padded = F.pad(row.to(torch.int8), (1, 1))
    edges = (padded[1:] - padded[:-1]).nonzero().flatten().tolist()
    return list(zip(edges[::2], edges[1::2]))


def test_static_spans_cover_mask_prob_apart_and_never_the_padding():
    valid = [200, 137, 60, 0]
    fractions = []
    for draw in range(40):
        mask = span_mask(valid, 210, 0.3, 5, mask_rng(1, draw, 0, 0), "static", no_overlap=True, min_space=2)
        assert mask.shape == (4, 210) and mask.dtype == torch.bool
        for row, length in enumerate(valid):
            assert not mask[row, length:].any()  # nothing beyond the valid frames
            spans = spans_of(mask[row])
            # Each run is one span of 5 (runs cannot merge: min_space 2 keeps them apart).
            assert all(end - start == 5 for start, end in spans)
            assert all(b_start - a_end >= 2 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
            if length:
                assert len(spans) >= MIN_SPANS
                fractions.append(mask[row, :length].float().mean().item())
    assert abs(np.mean(fractions) - 0.3) < 0.02  # random rounding of 0.3 * n / 5 spans: mask_prob in expectation


def test_uniform_lengths_and_overlapping_spans():
    lengths = []
    for draw in range(30):
        mask = span_mask([300], 300, 0.4, 10, mask_rng(2, draw, 0, 0), "uniform", no_overlap=True, min_space=1)
        lengths += [end - start for start, end in spans_of(mask[0])]
    # Span lengths 0..20 (fairseq's uniform with mask_other 0), zero-length ones mask nothing.
    assert min(lengths) >= 1 and max(lengths) <= 20 and 8 < np.mean(lengths) < 13 and len(set(lengths)) > 10
    # Without no_overlap, spans may overlap (merged runs longer than a span) and still stay within the valid frames.
    overlapping = torch.stack([span_mask([50, 80], 90, 0.9, 6, mask_rng(3, draw, 0, 0), "static")
                               for draw in range(20)])
    assert not overlapping[:, 0, 50:].any() and not overlapping[:, 1, 80:].any()
    assert max(end - start for mask in overlapping for start, end in spans_of(mask[1])) > 6
    assert overlapping[:, 1, :80].float().mean() < 0.9  # overlaps cover less than mask_prob
    assert not span_mask([50], 50, 0.0, 6, mask_rng(4, 0, 0, 0), "static").any()  # mask_prob 0: no minimum spans


def test_masks_are_a_function_of_seed_step_rank_and_draw():
    def draw(*key):
        return span_mask([120, 90], 120, 0.5, 4, mask_rng(*key), "uniform", no_overlap=True, min_space=1)

    assert torch.equal(draw(7, 3, 0, 0), draw(7, 3, 0, 0))
    for other in [(8, 3, 0, 0), (7, 4, 0, 0), (7, 3, 1, 0), (7, 3, 0, 1)]:
        assert not torch.equal(draw(7, 3, 0, 0), draw(*other)), other
    assert isinstance(mask_rng(0, 0, 0, 0), random.Random)


def test_method_draws_one_mask_per_micro_batch_and_follows_the_schedule():
    config = MaskDistillMethodConfig(hint_layers=[1, 2], mask_length=3,
                                     mask_prob_schedule={"end": 0.2, "steps": 100})
    method = build_method(config, tiny_armhubert())
    lengths = torch.tensor([100, 70])
    first, second = method.frame_mask(lengths, 100, 5, seed=1), method.frame_mask(lengths, 100, 5, seed=1)
    assert not torch.equal(first, second)  # two micro-batches of step 5
    again = build_method(config, tiny_armhubert())  # a resumed run: a new method, same step
    assert torch.equal(again.frame_mask(lengths, 100, 5, seed=1), first)
    assert [method.mask_prob(step) for step in (0, 50, 100, 400)] == pytest.approx([0.8, 0.5, 0.2, 0.2])
    assert method.scalars()["mask_prob"] == pytest.approx(0.77)
    assert method.scalars()["masked_fraction"] == pytest.approx(second.sum().item() / 170)


# --- the loss --------------------------------------------------------------------------------------------------------

def official_loss(pred, target, m_target, mask, kind, hint_weight, final_weight):
    """sungnyun/ARMHuBERT train.py calculate_loss, restated: masked frames against the unmasked teacher, the others
    against the masked one; each element loss averaged over D, summed, divided by B and T."""
    error = F.mse_loss if kind == "mse" else F.l1_loss
    B, N, T, D = target.shape
    mask_n = mask.unsqueeze(1).repeat_interleave(N - 1, dim=1)
    mask_hint = error(pred[:, :N - 1][mask_n], target[:, :N - 1][mask_n], reduction="none").mean(-1).sum() / B / T
    unmask_hint = error(pred[:, :N - 1][~mask_n], m_target[:, :N - 1][~mask_n], reduction="none").mean(-1).sum() / B / T
    mask_rec = error(pred[:, -1][mask], target[:, -1][mask], reduction="none").mean(-1).sum() / B / T
    unmask_rec = error(pred[:, -1][~mask], m_target[:, -1][~mask], reduction="none").mean(-1).sum() / B / T
    return (mask_hint + unmask_hint) * hint_weight + (mask_rec + unmask_rec) * final_weight


def hand_built_batch(valid=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    B, N, T, D = 3, 3, 11, 5
    pred, target, m_target = (torch.randn(B, N, T, D, generator=generator) for _ in range(3))
    mask = torch.rand(B, T, generator=generator) < 0.4
    output = StudentOutput(None, [], None, pred, None, None)
    return DistillationBatch(output, target, valid, [], frame_mask=mask, masked_targets=m_target)


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_loss_is_the_official_formula(kind):
    config = MaskDistillMethodConfig(hint_layers=[1, 2], loss_type=kind, hint_weight=0.3, final_weight=0.7)
    method = build_method(config, tiny_armhubert())
    batch = hand_built_batch()
    expected = official_loss(batch.student.predictions, batch.targets, batch.masked_targets, batch.frame_mask, kind,
                             0.3, 0.7)
    assert torch.allclose(combine(method.losses(batch)), expected, rtol=1e-5)
    # Hint and final weights scale their own terms only.
    terms = method.losses(batch)
    assert terms["hint"].layers == [1, 2] and terms["final"].layers == [3]
    no_hint = build_method(config.model_copy(update={"hint_weight": 0.0}), tiny_armhubert())
    only_final = official_loss(batch.student.predictions, batch.targets, batch.masked_targets, batch.frame_mask,
                               kind, 0.0, 0.7)
    assert torch.allclose(combine(no_hint.losses(batch)), only_final, rtol=1e-5)


def test_padding_counts_as_official_unless_masked_out():
    valid = torch.ones(3, 11, dtype=torch.bool)
    valid[1, 7:] = False
    valid[2, 4:] = False
    batch = hand_built_batch(valid, seed=1)
    batch = batch._replace(frame_mask=batch.frame_mask & valid)  # masks are drawn within the valid frames
    official = build_method(MaskDistillMethodConfig(hint_layers=[1, 2]), tiny_armhubert())
    expected = official_loss(batch.student.predictions, batch.targets, batch.masked_targets, batch.frame_mask, "mse",
                             0.1, 1.0)
    assert torch.allclose(combine(official.losses(batch)), expected, rtol=1e-5)  # padded frames counted, / B·T
    # mask_padding: padded frames neither summed nor counted -- the formula over the valid frames, / their number.
    masked = build_method(MaskDistillMethodConfig(hint_layers=[1, 2], mask_padding=True), tiny_armhubert())
    mixed = torch.where(batch.frame_mask[:, None, :, None], batch.targets, batch.masked_targets)
    per_frame = (batch.student.predictions - mixed).pow(2).mean(-1)  # (B, N, T)
    per_layer = (per_frame * valid[:, None]).sum((0, 2)) / valid.sum()
    assert torch.allclose(combine(masked.losses(batch)), 0.1 * per_layer[:2].sum() + per_layer[2], rtol=1e-5)


def test_config_refusals(setup):
    no_mask = tiny_armhubert().model_copy(update={"mask_embedding": False})
    config = runner_config(setup)
    config["student"] = no_mask.to_dict()
    with pytest.raises(ConfigError, match="student.mask_embedding: true"):
        validate_config(config, "test config")
    config = runner_config(setup, mask_selection="normal")
    with pytest.raises(ConfigError, match="mask_selection"):
        validate_config(config, "test config")
    config = runner_config(setup, mask_prob_schedule={"end": 0.4})
    with pytest.raises(ConfigError, match="steps"):
        validate_config(config, "test config")


# --- the masked teacher pass ---------------------------------------------------------------------------------------

def test_masked_teacher_pass_is_the_teachers_own_masking(setup, monkeypatch):
    """Our masked pass (mask_emb substituted at the encoder's input) equals the teacher's fairseq code masking the
    same frames itself (``extract_features(mask=True)`` with its mask drawing replaced by ours), padding included."""
    import s3prl.upstream.hubert.hubert_model as hubert_model

    from s3prl_distill.pretrain.teacher import Teacher

    teacher = Teacher(TeacherConfig(name="hubert_local", ckpt=str(setup["teacher"])))
    waves = random_waves([8000, 6000, 4800], seed=3)
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    lengths = torch.tensor([w.numel() for w in waves])
    plain = teacher(padded, lengths)
    frames = plain[0].shape[1]  # 24; the rows have 24, 18 and 14 valid frames
    mask = span_mask([24, 18, 14], frames, 0.5, 3, mask_rng(0, 0, 0, 0), "static", no_overlap=True, min_space=1)
    masked = teacher(padded, lengths, frame_mask=mask[:, :frames - 1])  # a shorter mask is padded unmasked
    assert len(masked) == len(plain) == 4
    model = teacher.upstream.model
    monkeypatch.setattr(model, "mask_prob", 0.5)
    ours = np.pad(mask[:, :frames - 1].numpy(), ((0, 0), (0, 1)))

    def our_mask(shape, *args, **kwargs):
        assert tuple(shape) == ours.shape
        return ours

    monkeypatch.setattr(hubert_model, "compute_mask_indices", our_mask)
    padding = torch.arange(padded.shape[1])[None] >= lengths[:, None]
    with torch.no_grad():
        reference, _ = model.extract_features(padded, padding_mask=padding, mask=True)
    assert torch.allclose(masked[-1], reference, atol=1e-5)
    # The mask changed the outputs, and the hook is gone afterwards.
    assert (masked[-1] - plain[-1]).abs().max() > 1e-2
    assert all(torch.equal(a, b) for a, b in zip(teacher(padded, lengths), plain))
    # Hidden state 0 (the first layer's input) differs at least where the mask embedding went in.
    changed = (masked[0] - plain[0]).abs().amax(-1) > 1e-6
    assert changed[torch.from_numpy(ours)].all()


@pytest.mark.parametrize("last_conv, difference", [("(24,4,2)", -1), ("(24,1,2)", 1)])
def test_student_and_teacher_may_differ_by_a_frame(setup, monkeypatch, last_conv, difference):
    """The mask covers the frames both CNNs have, within each row's valid frames; the student's extra frame and the
    teacher's stay unmasked, and the loss compares the common frames."""
    from s3prl_distill.pretrain.task import DistillationTask

    data = tiny_armhubert().to_dict()
    data["feature_extractor"]["conv_layers"] = f"[(16,10,5)] + [(16,1,1)] + [(16,3,2)]*4 + [(24,1,1)] + [(24,2,2)] + " \
                                               f"[{last_conv}]"
    teacher = TeacherConfig(name="hubert_local", ckpt=str(setup["teacher"]))
    task = DistillationTask(teacher, StudentConfig.from_dict(data), StudentInitConfig(),
                            MaskDistillMethodConfig(hint_layers=[1, 2], mask_length=3), torch.device("cpu"))
    seen = {}
    monkeypatch.setattr(task.method, "losses", lambda batch: seen.setdefault("batch", batch) and {})
    waves = torch.nn.utils.rnn.pad_sequence(random_waves([8000, 5000], seed=4), batch_first=True)
    lengths = torch.tensor([8000, 5000])
    task.losses(task.student, waves, lengths)
    batch = seen["batch"]
    student_frames = task.student.frame_lengths(lengths).tolist()
    assert student_frames[0] == 24 + difference  # the teacher's: 24 and 15
    common = min(24, 24 + difference)
    assert batch.frame_mask.shape == (2, common) and batch.masked_targets.shape == batch.targets.shape
    assert batch.targets.shape[2] == common
    assert batch.frame_mask.any() and not batch.frame_mask[1, min(student_frames[1], 15):].any()
    changed = (batch.masked_targets - batch.targets).abs().amax(-1)[:, 0] > 1e-6  # teacher layer 1
    assert changed[batch.frame_mask].all()


def test_a_teacher_without_a_mask_embedding_is_refused_at_construction():
    from s3prl_distill.pretrain.task import DistillationTask

    method = MaskDistillMethodConfig(hint_layers=[1, 2])
    with pytest.raises(ValueError, match="mask embedding .*model.mask_emb"):
        DistillationTask(TeacherConfig(name="fbank"), tiny_armhubert(out_dim=80), StudentInitConfig(), method,
                         torch.device("cpu"))


# --- training ------------------------------------------------------------------------------------------------------

def test_training_resume_and_export(setup, tmp_path):
    """A few steps with our runner (finite, decreasing loss; masks logged), an exact resume from the middle, and the
    exported student in armhubert_local and the official Lightning layout."""
    from s3prl_distill.formats.export import export_checkpoint
    from s3prl_distill.upstream.armhubert.hubconf import armhubert_local

    config = runner_config(setup, "armhubert")
    config["runner"].update(total_steps=6, save_step=3, gradient_accumulate_steps=2)
    validated = validate_config(config, "test config")
    (tmp_path / "run").mkdir()
    full = Trainer(validated, tmp_path / "run")
    full.train()
    records = read_metrics(tmp_path / "run")
    losses = metric_values(records, "loss")
    assert len(losses) == 6 and all(np.isfinite(losses)) and np.mean(losses[-2:]) < np.mean(losses[:2])
    assert all(0.3 < r["masked_fraction"] < 0.9 and r["mask_prob"] == 0.8 for r in records)
    expected = load_checkpoint(tmp_path / "run" / "states-6.ckpt")
    assert expected["Family"] == "armhubert"

    path = tmp_path / "run" / "states-3.ckpt"
    Trainer(validated, tmp_path / "run", load_checkpoint(path), path).train()
    actual = load_checkpoint(tmp_path / "run" / "states-6.ckpt")
    assert expected["Student"].keys() == actual["Student"].keys()
    assert all(torch.equal(expected["Student"][k], actual["Student"][k]) for k in expected["Student"])

    upstream = armhubert_local(ckpt=str(path)).eval()
    with torch.no_grad():
        assert len(upstream(random_waves([8000]))["hidden_states"]) == 3  # the heads' outputs
    summary = export_checkpoint(path, "lightning", tmp_path / "release.ckpt")
    assert summary["family"] == "armhubert"
    assert "student_model.mask_emb" in load_checkpoint(tmp_path / "release.ckpt")["state_dict"]


def test_cache_supplies_the_unmasked_targets_and_the_teacher_the_masked_pass(setup, tmp_path):
    from s3prl_distill.pretrain.loader import build_data
    from s3prl_distill.pretrain.teacher_cache import TeacherCache, build_teacher_cache

    config = validate_config(runner_config(setup), "test config")
    build_teacher_cache(config, tmp_path / "cache", batch_size=4, progress=False)
    cache = TeacherCache(tmp_path / "cache")
    assert cache.layers == [1, 2, 3]
    data = config.data.model_copy(update={"teacher_cache": str(tmp_path / "cache"), "num_workers": 0})
    _, _, loader = build_data(data, seed=3, progress=False)
    online, offline = online_and_cached_tasks(config, tmp_path / "cache", seed=5)
    assert offline.teacher is not None  # the masked pass runs live
    runs = {"online": 0, "offline": 0}
    for name, task in (("online", online), ("offline", offline)):
        task.teacher.upstream.model.encoder.register_forward_pre_hook(
            lambda module, args, name=name: runs.update({name: runs[name] + 1}))
    compared = 0
    for waveforms, lengths, targets in loader:
        if int(lengths.min()) != int(lengths.max()):
            continue  # cached targets come from unpadded windows
        with torch.no_grad():
            a = combine(online.losses(online.student, waveforms, lengths, compared))
            b = combine(offline.losses(offline.student, waveforms, lengths, compared, targets))
        assert torch.allclose(a, b, rtol=2e-3), (a, b)  # same masks (seed, step, draw), fp16-cached targets
        compared += 1
    assert compared > 0
    assert runs == {"online": 2 * compared, "offline": compared}  # from the cache: the masked pass only


def test_shipped_configs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pretrain" / "armhubert"
    arm, mask = load_config(root / "config.yaml"), load_config(root / "config_maskhubert.yaml")
    small, small_100h = load_config(root / "config_small.yaml"), load_config(root / "config_small_100h.yaml")
    assert arm.student == armhubert_config() and mask.student == maskhubert_config()
    assert small.student == small_100h.student == armhubert_config(small=True)
    assert load_config(root / "config_armwavlm_small.yaml").teacher.name == "wavlm_local"
    assert (arm.method.name, mask.method.name) == ("armhubert", "maskhubert")
    assert arm.method.hint_layers == list(range(1, 12)) and arm.method.hint_weight == 0.1
    assert (arm.method.mask_prob, arm.method.mask_length, arm.method.mask_selection, arm.method.min_space) == \
        (0.8, 10, "uniform", 1) and small_100h.method.mask_prob == 0.4
    assert (arm.optimizer.lr, mask.optimizer.lr) == (5.0e-3, 5.0e-4)
    assert arm.data.train_batch_size * arm.runner.gradient_accumulate_steps == 144
    assert small_100h.data.train_batch_size * small_100h.runner.gradient_accumulate_steps == 36


def test_the_s3prl_pretrain_expert_trains_with_masks(setup, tmp_path):
    """``run_pretrain.py -u armhubert``'s expert: the same task, its mask seed from run_pretrain's --seed."""
    from s3prl_distill.pretrain.armhubert.pretrain_expert import UpstreamPretrainExpert

    config = runner_config(setup, "maskhubert")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    torch.manual_seed(11)  # what run_pretrain.py --seed 11 does
    expert = UpstreamPretrainExpert({**config["data"], "num_workers": 0}, str(path), device="cpu")
    assert expert.task.seed == 11 and expert.task.teacher is not None
    batch = next(iter(expert.get_train_dataloader()))
    loss, records = expert(batch, global_step=1, log_step=1)
    loss.backward()
    assert torch.isfinite(loss) and set(records) == {"final/layer3", "hint/layer1", "hint/layer2"}
    assert expert.model.mask_embedding.grad.abs().sum() > 0  # masked frames reached the student
    assert expert.add_state_to_save({})["Family"] == "maskhubert"  # maskhubert_local loads what it saves


def test_masking_distillation_on_a_pruned_student_starts_from_its_backbone(setup, tmp_path):
    """Recipes compose through the config: a DPHuBERT-pruned student (its checkpoint has DPHuBERT's heads) trained by
    masking distillation, with layer-wise heads and a mask embedding of its own, starts from the pruned backbone."""
    from s3prl_distill.checkpoint import save_checkpoint
    from s3prl_distill.formats.native import export_student
    from s3prl_distill.model.pruning import prune
    from s3prl_distill.model.student import HEAD_PREFIXES
    from s3prl_distill.pretrain.task import DistillationTask

    from helpers import gated_student

    pruned = prune(gated_student(wavlm=False))
    assert pruned.config.prediction_head.type != "layerwise"  # DPHuBERT's heads, not the ones this recipe trains
    path = save_checkpoint(export_student("dphubert", pruned.config, pruned.state_dict()), tmp_path / "pruned.ckpt")
    layers = pruned.config.encoder.num_layers
    student = pruned.config.to_dict()
    student.update(mask_embedding=True, prediction_head={"type": "layerwise", "target_layers": list(range(1, layers + 1)),
                                                         "out_dim": 48})
    config = runner_config(setup)
    config.update(student=student, student_init={"checkpoint": str(path)},
                  method={"name": "maskhubert", "hint_layers": list(range(1, layers)), "mask_length": 3})
    validated = validate_config(config, "run.yaml")
    task = DistillationTask(validated.teacher, validated.student, validated.student_init, validated.method,
                            torch.device("cpu"), seed=3)
    loaded, backbone = task.student.state_dict(), pruned.state_dict()
    shared = [key for key in backbone if not key.startswith(HEAD_PREFIXES)]
    assert shared and all(torch.equal(loaded[key], backbone[key]) for key in shared)
    assert task.student.mask_embedding is not None and len(task.student.prediction_head.heads) == layers
    waves = random_waves([9000, 6000], seed=2)
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    loss = combine(task.losses(task.student, batch, torch.tensor([9000, 6000])))
    loss.backward()
    assert torch.isfinite(loss) and task.student.mask_embedding.grad is not None
    # Another backbone is refused, naming the file.
    other = {**student, "feature_dropout": 0.3}
    with pytest.raises(ValueError, match=r"pruned.ckpt holds a student whose config differs .* the same or other heads"):
        validated = validate_config({**config, "student": other}, "run.yaml")
        DistillationTask(validated.teacher, validated.student, validated.student_init, validated.method,
                         torch.device("cpu"))


def test_two_process_ddp_trains_with_a_mask_per_rank(setup, tmp_path):
    """torchrun, 2 processes: the rank-keyed masks (see test_masks_are_a_function_of_seed_step_rank_and_draw) and
    each rank's masked teacher pass under DDP; the run trains, rank 0 logs once per step, and the checkpoint loads
    in maskhubert_local."""
    from s3prl_distill.upstream.maskhubert.hubconf import maskhubert_local

    config = runner_config(setup)
    config["runner"].update(total_steps=2, save_step=2, log_step=1)
    config["data"]["max_length"] = 8000
    path = tmp_path / "mask.yaml"
    path.write_text(yaml.safe_dump(config))
    ddp = run_python(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m",
                      "s3prl_distill.pretrain", "-g", str(path), "-n", "ddp", "-p", str(tmp_path)],
                     cwd=tmp_path, timeout=600, extra_env={"OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    records = read_metrics(tmp_path / "ddp")
    assert [record["step"] for record in records] == [1, 2]
    assert all(np.isfinite(record["loss"]) and 0.3 < record["masked_fraction"] < 0.95 for record in records)
    with torch.no_grad():
        outputs = maskhubert_local(ckpt=str(tmp_path / "ddp" / "states-2.ckpt")).eval()(random_waves([8000]))
    assert len(outputs["hidden_states"]) == 3 and torch.isfinite(outputs["hidden_states"][-1]).all()
