"""Progress reporting: the non-terminal log lines, and a SUPERB sweep's step progress read from s3prl's output."""

import io
import logging
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from s3prl_distill.downstream_recipes.superb.experiment_process import PHASE_MARKER
from s3prl_distill.downstream_recipes.superb.progress import StepReader, SweepProgress, overall_steps
from s3prl_distill.downstream_recipes.superb.runner import PhaseSplitter, run_experiment_process
from s3prl_distill.progress import LogProgress, format_duration, progress

from helpers import run_python

DATA = Path(__file__).parent / "data" / "s3prl_output"
COMMAND = str(Path(sys.executable).parent / "s3prl-distill")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_progress_writes_a_line_per_interval_with_rate_and_eta(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="s3prl_distill.progress")
    bar = LogProgress(total=100, desc="distill", unit="step", interval=10.0, clock=clock)
    for _ in range(20):  # 20 steps in 5 s: no line yet
        clock.now += 0.25
        bar.update(1)
    assert caplog.messages == []
    clock.now += 5.0  # 10 s since the start
    bar.set_postfix(loss="0.5")
    assert caplog.messages == ["distill: 20/100 step (20%), 2 step/s, elapsed 0:10, ETA 0:40 | loss=0.5"]
    for _ in range(80):
        clock.now += 0.5
        bar.update(1)
    bar.close()
    bar.close()  # a second close says nothing more
    assert len(caplog.messages) == 6  # at most one line per 10 s over 50 s, and the last one
    assert caplog.messages[-1].startswith("distill: 100/100 step (100%)")
    assert "ETA" not in caplog.messages[-1]  # finished: nothing left to estimate
    assert all("\r" not in message for message in caplog.messages)


def test_log_progress_counts_a_resumed_loop_from_where_it_resumed(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="s3prl_distill.progress")
    bar = LogProgress(total=1000, initial=900, desc="distill", unit="step", interval=0.0, clock=clock)
    clock.now += 50.0
    bar.update(50)  # 1 step/s in this run, 50 to go
    assert caplog.messages == ["distill: 950/1000 step (95%), 1 step/s, elapsed 0:50, ETA 0:50"]


def test_a_short_loop_ends_silently_and_iteration_passes_items_through(caplog):
    caplog.set_level(logging.INFO, logger="s3prl_distill.progress")
    assert list(LogProgress(range(5), desc="headers", interval=30.0)) == [0, 1, 2, 3, 4]
    assert caplog.messages == []
    disabled = LogProgress(total=3, desc="x", interval=0.0, disable=True)
    disabled.update(3)
    disabled.close()
    assert caplog.messages == []


def test_progress_is_a_bar_on_a_terminal_only(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("S3PRL_DISTILL_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress(total=3, desc="x"), LogProgress)
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress(total=3, desc="x")
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setenv("S3PRL_DISTILL_PROGRESS", "log")
    assert isinstance(progress(total=3, desc="x"), LogProgress)


def test_format_duration():
    assert [format_duration(s) for s in (0, 31, 61.4, 3600, 3725)] == ["0:00", "0:31", "1:01", "1:00:00", "1:02:05"]


@pytest.mark.parametrize("chunk", [1, 7, 100000])
def test_step_reader_follows_s3prl_overall_bar_in_captured_real_output(chunk):
    """``pr_train.log``: s3prl 0.4.18's runner training PR for 2 steps (its own stdout + stderr, tqdm's ``\\r``
    redraws and cursor moves included), captured from a demo sweep."""
    text = (DATA / "pr_train.log").read_text()
    seen = []
    reader = StepReader(lambda step, total: seen.append((step, total)))
    for start in range(0, len(text), chunk):
        reader.feed(text[start:start + chunk])
    reader.close()
    assert seen == [(0, 2), (1, 2), (2, 2)]  # the inner "train" and "dev" bars are not the run's steps
    assert overall_steps((DATA / "sid_train.log").read_text())[-1] == (2, 2)


def test_step_reader_reads_a_bar_without_percentage_and_a_last_redraw_without_line_end():
    seen = []
    reader = StepReader(lambda step, total: seen.append((step, total)))
    reader.feed("overall: 3/10 [00:01<00:02, 2.0it/s]\r")
    reader.feed("overall:  40%|####      | 4/10 [00:02<00:03,  2.00it/s]")
    assert seen == [(3, 10)]
    reader.close()
    assert seen == [(3, 10), (4, 10)]


def test_sweep_progress_shows_each_running_run_and_the_sweep_eta():
    clock = FakeClock()
    postfixes = []
    sweep = SweepProgress({"pr": 100, "ks": 50, "sid": 0}, postfixes.append, clock=clock)
    sweep.starting("pr")
    sweep.starting("ks")
    assert postfixes[-1] == "pr starting | ks starting"
    sweep.step("pr", 0, 100)
    clock.now += 10.0
    sweep.step("pr", 20, 100)  # 2 steps/s: 80 to go
    sweep.step("ks", 10, 50)  # resumed at 10: no rate yet
    # 20 steps trained in the sweep's 10 s, 120 left over both runs
    assert postfixes[-1] == "pr step 20/100 ETA 0:40 | ks step 10/50 | sweep ETA 1:00"
    clock.now += 40.0
    sweep.step("pr", 100, 100)
    assert postfixes[-1].startswith("pr step 100/100 | ks step 10/50 | sweep ETA")  # no ETA for a finished run
    sweep.evaluating("pr")
    assert postfixes[-1].startswith("pr evaluating | ks step 10/50")
    sweep.done("pr")
    assert "pr" not in postfixes[-1]
    sweep.step("ks", 50, 50)
    assert postfixes[-1] == "ks step 50/50"  # nothing left to train: no sweep ETA (evaluations are not counted)


@pytest.mark.slow
def test_a_real_sweep_logs_the_steps_s3prl_reports(tmp_path):
    """``superb`` with stderr not a terminal: progress as log lines naming the run and s3prl's step, no ``\\r``;
    the s3prl process logs none of the hidden warnings either."""
    data = tmp_path / "data"
    made = run_python([COMMAND, "mini-superb", str(data), "--size", "tiny", "--tasks", "pr"])
    assert made.returncode == 0, made.stderr[-2000:]
    result = run_python([COMMAND, "superb", "-u", "fbank", "--tasks", "pr", "--data-root", str(data), "-n", "fbank",
                         "-p", str(tmp_path / "superb"), "--steps", "3", "--num-workers", "0"],
                        cwd=tmp_path, timeout=900,
                        extra_env={"S3PRL_DISTILL_PROGRESS_INTERVAL": "0", "S3PRL_DISTILL_SHOW_WARNINGS": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "s3prl_distill.progress" in line]
    assert any("SUPERB fbank: 0/1 runs" in line and "pr step 1/3" in line for line in lines), lines
    assert any("pr step 3/3" in line for line in lines), lines
    assert any("sweep ETA" in line for line in lines), lines
    assert "SUPERB fbank: 1/1 runs" in lines[-1]
    train_log = (tmp_path / "superb" / "fbank" / "pr" / "train.log").read_text()
    assert "overall:" in train_log  # s3prl's own bar stays in its log
    assert "ESPnet is not installed" not in train_log
    assert "torch.cuda.amp.autocast" not in train_log


def test_an_experiment_processs_output_splits_into_its_phase_logs_wherever_the_chunks_end():
    """One process trains, then evaluates (``experiment_process``); its stream goes to ``train.log`` up to the marker
    and to ``evaluate.log`` after it, however the pipe cuts it, and only training's text reaches the step reader."""
    training = "$ python -m s3prl.run_downstream -m train\roverall: 1/2 [00:01]\roverall: 2/2 [00:02]\n[Runner] - x"
    evaluation = "$ python -m s3prl.run_downstream -m evaluate\n[Runner] - Resume from dev-best.ckpt\n"
    stream = (training + PHASE_MARKER + evaluation).encode()
    for size in (1, 2, 5, len(PHASE_MARKER) - 1, len(PHASE_MARKER), 64, len(stream)):
        train_log, evaluate_log, ended, followed = io.BytesIO(), io.BytesIO(), [], []
        splitter = PhaseSplitter([train_log, evaluate_log], ended.append,
                                 lambda phase, data: followed.append(data) if phase == 0 else None)
        for start in range(0, len(stream), size):
            splitter.feed(stream[start:start + size])
        splitter.close()
        assert train_log.getvalue().decode() == training, size
        assert evaluate_log.getvalue().decode() == evaluation, size
        assert ended == [0] and b"".join(followed).decode() == training, size
    # An evaluation alone (training had finished before an interruption) is one log; the marker is not looked for.
    only = io.BytesIO()
    splitter = PhaseSplitter([only], ended.append)
    splitter.feed(PHASE_MARKER.encode()[:9])
    assert only.getvalue() == PHASE_MARKER.encode()[:9]  # nothing held back


def test_an_experiment_that_cannot_evaluate_fails_naming_its_log(tmp_path):
    plan = {"train": None, "expdir": str(tmp_path), "best": "dev-best.ckpt", "split": "test", "device": "cpu"}
    with pytest.raises(RuntimeError) as error:
        run_experiment_process(plan, [tmp_path / "evaluate.log"])
    assert f"end of {tmp_path / 'evaluate.log'}" in str(error.value)
    assert f"{tmp_path}: training left no checkpoint to evaluate" in str(error.value)
