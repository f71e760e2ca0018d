"""The experiment server of SUPERB sweeps: one process imports s3prl's hub, each experiment is a child forked from it
with its own output pipe and exit status; concurrent experiments stay apart; a server that dies is reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from s3prl_distill.downstream_recipes.superb.runner import ExperimentServer, run_experiment_process


def failing_plan(expdir: Path) -> dict:
    """An evaluation with no checkpoint: the child imports nothing new and exits 1 naming ``expdir``."""
    expdir.mkdir(parents=True, exist_ok=True)
    return {"train": None, "expdir": str(expdir), "best": "dev-best.ckpt", "split": "test", "device": "cpu"}


def hanging_plan(expdir: Path) -> dict:
    """A training that blocks until killed: s3prl reads its config from a FIFO nobody writes to."""
    expdir.mkdir(parents=True, exist_ok=True)
    os.mkfifo(expdir / "config.yaml")
    train = ["-m", "train", "-u", "fbank", "-d", "example", "-c", str(expdir / "config.yaml"), "-p", str(expdir)]
    return {"train": train, "expdir": str(expdir), "best": "dev-best.ckpt", "split": "test", "device": "cpu"}


def running(pid: int) -> bool:
    """``pid`` exists and has not ended (a zombie waiting for a parent that does not reap it has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until_ended(pids: list, seconds: float = 30) -> list:
    """The pids still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(running(pid) for pid in pids):
        time.sleep(0.2)
    return [pid for pid in pids if running(pid)]


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


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")


@linux_only
def test_experiments_end_with_a_server_killed_by_sigkill(tmp_path):
    server = ExperimentServer()
    experiment = None
    try:
        experiment = server.start(hanging_plan(tmp_path / "hangs"))
        experiment._started.wait(timeout=120)
        time.sleep(1)
        assert running(experiment.pid)  # blocked in s3prl's reading of the FIFO
        os.kill(server.process.pid, signal.SIGKILL)  # no chance to kill its children itself
        server.process.wait()
        assert wait_until_ended([experiment.pid]) == []
        with pytest.raises(RuntimeError, match=r"ended \(exit -9\)"):
            experiment.wait()
    finally:
        server.close()
        # the failure this test looks for would leave the experiment running
        if experiment is not None and experiment.pid is not None and running(experiment.pid):
            os.kill(experiment.pid, signal.SIGKILL)


@linux_only
def test_a_killed_sweep_leaves_no_experiment_behind_even_if_a_fork_of_it_holds_the_socket(tmp_path):
    """A sweep that forked (a data loader's workers do) and is then killed: the fork keeps the sweep's end of the
    control socket open, so the server must also notice that its parent is gone."""
    sweep = textwrap.dedent(f"""
        import json, os, time
        from s3prl_distill.downstream_recipes.superb.runner import ExperimentServer
        from tests.test_experiment_server import hanging_plan
        from pathlib import Path
        server = ExperimentServer()
        experiment = server.start(hanging_plan(Path({str(tmp_path / "hangs")!r})))
        experiment._started.wait(timeout=120)
        holder = os.fork()
        if holder == 0:  # holds every descriptor of the sweep, the control socket included
            time.sleep(300)
            os._exit(0)
        print(json.dumps({{"server": server.process.pid, "experiment": experiment.pid, "holder": holder}}), flush=True)
        time.sleep(300)
    """)
    process = subprocess.Popen([sys.executable, "-c", sweep], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
    pids = {}
    try:
        pids = json.loads(process.stdout.readline())
        time.sleep(1)
        assert running(pids["server"]) and running(pids["experiment"]) and running(pids["holder"])
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert wait_until_ended([pids["server"], pids["experiment"]]) == []
        assert running(pids["holder"])  # the socket stayed open all along
    finally:
        process.kill()
        process.wait()
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
