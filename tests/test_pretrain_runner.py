"""The pretrain runner end to end: a tiny hubert_local teacher, generated audio, DistilHuBERT distillation."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from s3prl_distill.checkpoint import load_checkpoint
from s3prl_distill.pretrain.config import load_config
from s3prl_distill.pretrain.metrics import metric_values, read_metrics

from helpers import pretrain, python_env, random_waves, run_python

def student_weights(path: Path) -> dict:
    return load_checkpoint(path)["Distiller"]


def test_distillation_reduces_the_loss_and_checkpoints_load_everywhere(setup, tmp_path):
    result = pretrain(["-g", str(setup["config"]), "-n", "run", "-p", str(tmp_path),
                       "-o", "config.runner.total_steps=30,,config.runner.save_step=15"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expdir = tmp_path / "run"
    losses = metric_values(read_metrics(expdir), "loss")
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses
    assert sorted(p.name for p in expdir.glob("states-*.ckpt")) == ["states-15.ckpt", "states-30.ckpt"]
    assert yaml.safe_load((expdir / "config.yaml").read_text())["runner"]["total_steps"] == 30
    assert list(expdir.glob("events.out.tfevents.*"))
    # The checkpoint is an s3prl distiller checkpoint: ours and s3prl's stock loader read it, with equal features.
    import s3prl.hub as hub

    ckpt = str(expdir / "states-30.ckpt")
    ours, theirs = hub.distilhubert_local(ckpt=ckpt).eval(), hub.distiller_local(ckpt=ckpt).eval()
    waves = random_waves([16000])
    with torch.no_grad():
        a, b = ours(waves)["hidden_states"], theirs(waves)["hidden_states"]
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) <= 1e-4


def test_student_is_initialised_from_the_teacher(setup):
    from s3prl_distill.pretrain.task import DistillationTask

    config = load_config(setup["config"])
    task = DistillationTask(config.teacher, config.student, config.student_init, config.method, torch.device("cpu"))
    teacher = task.teacher.upstream.model
    assert torch.equal(task.student.feature_extractor.conv_layers[3].conv.weight,
                       teacher.feature_extractor.conv_layers[3][0].weight)
    assert torch.equal(task.student.encoder.layers[1].attention.q_proj.weight,
                       teacher.encoder.layers[1].self_attn.q_proj.weight)
    assert torch.equal(task.student.feature_projection.bias, teacher.post_extract_proj.bias)


def test_kill_and_resume_is_bit_identical(setup, tmp_path):
    overrides = ("config.runner.total_steps=40,,config.runner.save_step=4,,config.runner.keep_last=20,,"
                 "config.data.num_workers=2")
    full = pretrain(["-g", str(setup["config"]), "-n", "full", "-p", str(tmp_path), "-o", overrides], cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    # The same run, killed with SIGKILL as soon as its step-4 checkpoint exists, then resumed from it.
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "s3prl_distill.pretrain", "-g", str(setup["config"]), "-n", "killed", "-p",
         str(tmp_path), "-o", overrides],
        cwd=tmp_path, env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed_dir / "states-4.ckpt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed_dir / "states-4.ckpt").exists()
    assert not (killed_dir / "states-40.ckpt").exists()  # it really died mid-run
    resumed = pretrain(["-e", str(killed_dir / "states-4.ckpt")], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The checkpoint holds every student weight: nothing is copied from the teacher first, and the log says where
    # the run resumed from before its first step line.
    assert "initialised from" not in resumed.stderr
    said = resumed.stderr.index(f"resumed from {killed_dir / 'states-4.ckpt'} at step 4")
    assert said < resumed.stderr.index("step 5:")

    full_ckpt, resumed_ckpt = load_checkpoint(tmp_path / "full" / "states-40.ckpt"), load_checkpoint(killed_dir / "states-40.ckpt")
    expected, actual = full_ckpt["Distiller"], resumed_ckpt["Distiller"]
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert full_ckpt["TrainingState"]["epoch"] == resumed_ckpt["TrainingState"]["epoch"] >= 2  # crossed epochs
    for x, y in zip(full_ckpt["Optimizer"]["state"].values(), resumed_ckpt["Optimizer"]["state"].values()):
        assert torch.equal(x["exp_avg"], y["exp_avg"]) and torch.equal(x["exp_avg_sq"], y["exp_avg_sq"])

    # metrics.jsonl: each step once; those after the kill are the resumed run's, equal to the uninterrupted run's.
    records = read_metrics(killed_dir)
    assert [record["step"] for record in records] == list(range(1, 41))
    assert metric_values(records, "loss") == pytest.approx(metric_values(read_metrics(tmp_path / "full"), "loss"),
                                                           rel=1e-6)

    finished = pretrain(["-e", str(killed_dir)], cwd=tmp_path)
    assert finished.returncode == 0 and "already finished at step 40" in finished.stderr
    assert f"{killed_dir / 'states-40.ckpt'}: this run already finished" in finished.stderr


def test_two_process_ddp_equals_one_process(setup, tmp_path):
    # No dropout: per-rank dropout masks cannot match one process's; everything else must.
    overrides = ("config.runner.total_steps=3,,config.runner.save_step=3,,config.student.encoder.dropout=0.0,,"
                 "config.student.encoder.attention_dropout=0.0,,config.student.encoder.activation_dropout=0.0,,"
                 "config.data.max_length=8000")
    single = pretrain(["-g", str(setup["config"]), "-n", "single", "-p", str(tmp_path), "-o", overrides], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    # The production runner (python -m s3prl_distill.pretrain), wrapped to count DDP wrappers at teardown.
    probe = Path(__file__).with_name("ddp_teardown_probe.py")
    ddp = run_python(
        ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", str(probe),
         "-g", str(setup["config"]), "-n", "ddp", "-p", str(tmp_path), "-o", overrides],
        cwd=tmp_path, timeout=600, extra_env={"OMP_NUM_THREADS": "1"},
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # Each rank frees its DDP wrapper (which holds the process group) before destroying the group, so gloo is not
    # left to the interpreter's teardown (where rank 1 sometimes died of SIGABRT after a finished run).
    for rank in (0, 1):
        assert f"rank {rank}: 0 DDP wrapper(s) alive at destroy_process_group" in ddp.stderr, ddp.stderr[-3000:]
    assert [record["step"] for record in read_metrics(tmp_path / "ddp")] == [1, 2, 3]  # rank 0 writes, once
    one, two = student_weights(tmp_path / "single" / "states-3.ckpt"), student_weights(tmp_path / "ddp" / "states-3.ckpt")
    moved = max((one[k] - load_initial(setup, k)).abs().max().item() for k in one if k.startswith("encoder.layers"))
    assert moved > 1e-4  # training happened
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)


def load_initial(setup, key):
    """The single run's student weights before training are the teacher's for encoder layers."""
    weights = load_checkpoint(setup["teacher"])["model_weight"]
    return weights[key]


def test_bad_audio_file_is_reported_by_path_before_training(setup, tmp_path):
    audio = tmp_path / "audio"
    shutil.copytree(setup["audio"], audio)
    bad = sorted(audio.rglob("*.flac"))[3]
    soundfile.write(bad, np.zeros(8000, dtype=np.float32), 8000)  # 8 kHz, still listed as 16 kHz in the CSV
    overrides = f"config.data.root={audio}"
    result = pretrain(["-g", str(setup["config"]), "-n", "bad", "-p", str(tmp_path), "-o", overrides], cwd=tmp_path)
    assert result.returncode != 0
    assert str(bad) in result.stderr and "16000" in result.stderr
    assert not list((tmp_path / "bad").glob("states-*.ckpt"))
    skipped = pretrain(["-g", str(setup["config"]), "-n", "skip", "-p", str(tmp_path), "-o",
                        overrides + ",,config.data.on_bad_file=skip,,config.runner.total_steps=1"], cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert str(bad) in skipped.stderr


def test_config_errors_name_the_key(setup, tmp_path):
    result = pretrain(["-g", str(setup["config"]), "-n", "x", "-p", str(tmp_path), "-o", "config.runner.totl_steps=3"],
                      cwd=tmp_path)
    assert result.returncode != 0 and "runner.totl_steps: unknown key" in result.stderr
    result = pretrain(["-g", str(setup["config"]), "-n", "x", "-p", str(tmp_path), "-o",
                       "config.teacher.name=hubert_lokal"], cwd=tmp_path)
    assert result.returncode != 0 and "'hubert_lokal' is not an s3prl upstream" in result.stderr
    assert "hubert_local" in result.stderr


def test_shipped_configs_agree():
    from s3prl_distill.pretrain.s3prl_link import generate_configs  # s3prl's config_model/config_runner.yaml

    root = Path(__file__).resolve().parents[1] / "pretrain" / "distilhubert"
    full = yaml.safe_load((root / "config.yaml").read_text())
    generated = generate_configs(root / "config.yaml")
    model, runner = (yaml.safe_load(generated[name]) for name in ("config_model.yaml", "config_runner.yaml"))
    assert model == {k: full[k] for k in ("teacher", "student", "student_init", "follow_teacher", "method")}
    assert runner["pretrain_expert"]["datarc"] == full["data"]
    for ours, theirs in (("total_steps", "total_steps"), ("gradient_clipping", "gradient_clipping"),
                         ("save_step", "save_step"), ("log_step", "log_step")):
        assert full["runner"][ours] == runner["runner"][theirs]
    assert runner["optimizer"]["lr"] == full["optimizer"]["lr"] == 2.0e-4
    # The paper's setting, not s3prl's repository default [4, 12].
    config = load_config(root / "config.yaml")
    assert config.student.prediction_head.target_layers == [4, 8, 12]
    assert (config.data.train_batch_size, config.data.max_length, config.runner.total_steps) == (24, 250000, 200000)
    assert config.scheduler.warmup_proportion == 0.07 and config.runner.gradient_clipping == 5.0


def test_keep_last_rotates_old_checkpoints_and_accumulation_runs(setup, tmp_path):
    """Also --format safetensors: each step's student beside its .ckpt, rotated with it."""
    overrides = ("config.runner.total_steps=4,,config.runner.save_step=1,,config.runner.keep_last=2,,"
                 "config.runner.gradient_accumulate_steps=2,,config.runner.log_step=2")
    result = pretrain(["-g", str(setup["config"]), "-n", "rotate", "-p", str(tmp_path), "-o", overrides,
                       "--format", "safetensors"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "rotate").glob("states-*.ckpt")) == ["states-3.ckpt", "states-4.ckpt"]
    assert sorted(p.name for p in (tmp_path / "rotate").glob("states-*.safetensors")) == \
        ["states-3.safetensors", "states-4.safetensors"]
    assert not list((tmp_path / "rotate").glob(".states-*"))  # no temporary files left
    # The shared student reads back through the normal loading path (our layout: the run wrote s3prl's distiller
    # format) as the pickled one: the same features from distilhubert_local.
    from s3prl_distill.upstream.distilhubert.hubconf import distilhubert_local

    from s3prl_distill.formats import read_student

    shared = load_checkpoint(tmp_path / "rotate" / "states-4.safetensors")
    pickled = read_student(load_checkpoint(tmp_path / "rotate" / "states-4.ckpt"), "states-4.ckpt")
    assert shared["Family"] == pickled.family == "distilhubert" and shared["Student"].keys() == pickled.state.keys()
    assert all(torch.equal(shared["Student"][key], value) for key, value in pickled.state.items())
    waves = random_waves([16000, 9000])
    with torch.no_grad():
        a = distilhubert_local(ckpt=str(tmp_path / "rotate" / "states-4.safetensors")).eval()(waves)
        b = distilhubert_local(ckpt=str(tmp_path / "rotate" / "states-4.ckpt")).eval()(waves)
    torch.testing.assert_close(a["hidden_states"], b["hidden_states"], atol=0, rtol=0)
    state = load_checkpoint(tmp_path / "rotate" / "states-4.ckpt")["TrainingState"]
    assert state["step"] == 4 and state["epoch"] * 4 + state["batch_index"] == 8  # 4 batches per epoch, 2 per step
    # Resumed without --format, the run keeps sharing its students as safetensors.
    result = pretrain(["-e", str(tmp_path / "rotate"), "-o", "config.runner.total_steps=5"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "rotate").glob("states-*.safetensors")) == \
        ["states-4.safetensors", "states-5.safetensors"]
    assert "saving its students as safetensors too: resuming so" in (tmp_path / "rotate" / "train.log").read_text()
