"""The experiment server of SUPERB sweeps: one process imports s3prl's hub, each experiment is a child forked from it
with its own output pipe and exit status; concurrent experiments stay apart; a server that dies is reported."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from s3prl_distill.downstream_recipes.superb.runner import ExperimentServer, run_experiment_process


def failing_plan(expdir: Path) -> dict:
    """An evaluation with no checkpoint: the child imports nothing new and exits 1 naming ``expdir``."""
    expdir.mkdir(parents=True, exist_ok=True)
    return {"train": None, "expdir": str(expdir), "best": "dev-best.ckpt", "split": "test", "device": "cpu"}


def test_concurrent_experiments_are_separate_children_of_one_server(tmp_path):
    with ExperimentServer() as server:
        outputs, codes, pids = {}, {}, {}

        def run(name: str) -> None:
            experiment = server.start(failing_plan(tmp_path / name))
            outputs[name] = experiment.stdout.read().decode()
            experiment.stdout.close()
            codes[name] = experiment.wait()
            pids[name] = experiment.pid

        threads = [threading.Thread(target=run, args=(name,)) for name in ("first", "second", "third")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert codes == {"first": 1, "second": 1, "third": 1}
        for name, output in outputs.items():  # each child's output on its own pipe, nothing of the others'
            assert f"{tmp_path / name}: training left no checkpoint to evaluate" in output
            assert all(str(tmp_path / other) not in output for other in outputs if other != name)
        assert len(set(pids.values())) == 3 and server.process.pid not in pids.values()
        assert server.process.poll() is None  # the server stays up for the next experiment
        # The sweep's own entry point runs through the same server: the phase log gets the child's output.
        with pytest.raises(RuntimeError, match="training left no checkpoint to evaluate"):
            run_experiment_process(failing_plan(tmp_path / "fourth"), [tmp_path / "fourth.log"], server=server)
        assert "training left no checkpoint" in (tmp_path / "fourth.log").read_text()
    assert server.process.returncode == 0  # closing the control socket ends it


def test_a_server_that_dies_fails_the_experiments_with_its_output(tmp_path):
    server = ExperimentServer()
    try:
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        with pytest.raises(RuntimeError, match=r"the process that runs s3prl's experiments ended \(exit -9\)"):
            server.start(failing_plan(tmp_path / "late")).wait()
    finally:
        server.close()
