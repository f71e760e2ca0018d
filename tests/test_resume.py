"""What a resume builds: a finished run is recognised from its checkpoint alone (no teacher, student or audio
check), and a resumed student takes every weight from the checkpoint, never copying the teacher's first (issue 18)."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml

from s3prl_distill.checkpoint import load_checkpoint
from s3prl_distill.formats.fairseq import teacher_copy_config
from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT
from s3prl_distill.model import pruning_student_config
from s3prl_distill.pretrain import runner
from s3prl_distill.pretrain.config import validate_config
from s3prl_distill.pretrain.runner import Trainer, run
from s3prl_distill.pretrain.teacher_cache import build_teacher_cache

from helpers import make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def refuse(*args, **kwargs):
    raise AssertionError("built on a resume that should not build it")


@pytest.fixture
def run_log_closed():
    """``run`` adds the run's ``train.log`` handler to the root logger; take it off after the test."""
    yield
    if runner._run_log_handler is not None:
        logging.getLogger().removeHandler(runner._run_log_handler)
        runner._run_log_handler.close()
        runner._run_log_handler = None


def messages(caplog) -> list:
    return [record.getMessage() for record in caplog.records]


def assert_same_weights(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_a_finished_run_says_so_before_building_anything(setup, tmp_path, monkeypatch, caplog, run_log_closed):
    make_trainer(setup, tmp_path / "run", "config.runner.total_steps=1,,config.runner.save_step=1").train()
    for heavy in ("s3prl_distill.pretrain.runner.Trainer", "s3prl_distill.pretrain.trainer.DistillationTask",
                  "s3prl_distill.pretrain.task.Teacher", "s3prl_distill.pretrain.task.StudentModel",
                  "s3prl_distill.pretrain.loader.read_length_csvs",
                  "s3prl_distill.pretrain.loader.check_audio_files"):
        monkeypatch.setattr(heavy, refuse)
    caplog.set_level(logging.INFO)
    for rank in ("1", "0"):  # a torchrun rank other than 0 stops as early, without the directory lock
        monkeypatch.setenv("RANK", rank)
        assert run(None, None, resume=str(tmp_path / "run")) == tmp_path / "run"
    said = f"{tmp_path / 'run' / 'states-1.ckpt'}: this run already finished at step 1 (runner.total_steps 1)"
    assert sum(said in message for message in messages(caplog)) == 2
    assert not (tmp_path / "run" / "states-2.ckpt").exists()


def test_a_resumed_student_comes_from_the_checkpoint_and_the_log_says_so_first(setup, tmp_path, monkeypatch,
                                                                             caplog):
    full = make_trainer(setup, tmp_path / "run", "config.runner.total_steps=4,,config.runner.save_step=2")
    full.train()
    expected = load_checkpoint(tmp_path / "run" / "states-4.ckpt")["Distiller"]
    # Copying the teacher's weights into a student that the checkpoint overwrites would be wasted and misleading.
    monkeypatch.setattr("s3prl_distill.pretrain.task.initialise_student", refuse)
    monkeypatch.setattr("s3prl_distill.pretrain.task.load_student_checkpoint", refuse)
    caplog.set_level(logging.INFO)
    caplog.clear()  # only the resumed run's records (whether the first run's were kept depends on earlier tests)
    path = tmp_path / "run" / "states-2.ckpt"
    Trainer(full.config, tmp_path / "run", load_checkpoint(path), path).train()
    # Exact resume: the uninterrupted run's weights.
    assert_same_weights(expected, load_checkpoint(tmp_path / "run" / "states-4.ckpt")["Distiller"])
    logged = messages(caplog)
    first_step = next(index for index, message in enumerate(logged) if message.startswith("step "))
    assert logged.index(f"resumed from {path} at step 2 (epoch 0, batch 2)") < first_step
    assert not any("initialised from" in message for message in logged)


def test_a_resumed_dphubert_run_on_a_teacher_cache_loads_no_teacher(setup, tmp_path, monkeypatch, caplog):
    """DPHuBERT copies the whole teacher (``student_init.whole``); with targets from a cache, the teacher is loaded
    for that copy only, so a resume needs no teacher at all."""
    config = yaml.safe_load(setup["config"].read_text())
    student = pruning_student_config(teacher_copy_config(TINY_HUBERT), target_groups=[[0], [1, 2, 3]])
    config.update(student=student.to_dict(), student_init={"whole": True},
                  method={"name": "dphubert", "target_sparsity": 0.3, "sparsity_warmup_steps": 2},
                  optimizer={"lr": 2.0e-4, "weight_decay": 0.0}, scheduler={"name": "constant"})
    config["runner"].update(total_steps=4, save_step=2)
    cache = tmp_path / "targets"
    build_teacher_cache(validate_config(config, "test config"), cache, batch_size=4, progress=False)
    config["data"]["teacher_cache"] = str(cache)
    validated = validate_config(config, "test config")
    full = Trainer(validated, tmp_path / "run")
    full.train()
    expected = load_checkpoint(tmp_path / "run" / "states-4.ckpt")

    monkeypatch.setattr("s3prl_distill.pretrain.task.Teacher", refuse)
    caplog.set_level(logging.INFO)
    path = tmp_path / "run" / "states-2.ckpt"
    resumed = Trainer(validated, tmp_path / "run", load_checkpoint(path), path)
    assert resumed.task.teacher is None
    resumed.train()
    actual = load_checkpoint(tmp_path / "run" / "states-4.ckpt")
    assert_same_weights(expected["Student"], actual["Student"])
    assert torch.equal(expected["MethodState"]["penalty"]["lambda_1"], actual["MethodState"]["penalty"]["lambda_1"])
    assert f"resumed from {path} at step 2 (epoch 0, batch 2)" in messages(caplog)

