"""``s3prl-distill superb``: train and evaluate an upstream on SUPERB tasks through s3prl's own downstream runner.

Each task (each ER fold) is one experiment directory ``EXPROOT/NAME/<task>[_<fold>]`` holding the resolved config,
s3prl's checkpoints and prediction files, ``train.log``/``evaluate.log`` and ``done.json``. Re-running the same
command skips finished experiments and resumes an interrupted training from its last checkpoint (s3prl's ``-e``),
so a half-finished sweep continues where it stopped.

A sweep holds ``NAME/.s3prl-distill.lock`` while it runs (a second sweep on the same directory stops naming the
holder's PID), and refuses a directory whose ``sweep.json`` names another upstream, checkpoint, config, feature or
downstream seed: its finished experiments would otherwise be reported as this upstream's.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from contextlib import ExitStack
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple

from s3prl_distill.atomic import write_text_atomically
from s3prl_distill.checkpoint import latest_step_checkpoint
from s3prl_distill.errors import UserError
from s3prl_distill.locking import ExclusiveLock, directory_lock
from s3prl_distill.options import default_num_workers, usable_cpus
from s3prl_distill.progress import progress as show_progress

from .experiment_process import PHASE_MARKER, checkpoint_to_evaluate
from .metrics import task_metric
from .progress import StepReader, SweepProgress
from .report import write_report
from .tasks import TASKS, Task, data_values, experiment_name, parse_settings, render_config, write_config

logger = logging.getLogger(__name__)

@dataclass
class SweepSpec:
    upstream: str
    data_root: str
    name: str
    tasks: List[str]
    ckpt: Optional[str] = None
    model_config: Optional[str] = None
    feature: Optional[str] = None  # s3prl's -s; None = its default (hidden_states)
    exproot: str = "result/superb"
    device: str = "cpu"
    steps: Optional[int] = None  # shorten every task (smoke runs); None = SUPERB's steps
    task_steps: Dict[str, int] = field(default_factory=dict)  # per-task step counts, overriding ``steps``
    learning_rates: Dict[str, float] = field(default_factory=dict)
    settings: List[str] = field(default_factory=list)  # TASK:dotted.key=VALUE config overrides
    num_workers: int = field(default_factory=default_num_workers)  # data-loader workers of each experiment
    label: Optional[str] = None  # row name in tables
    folds: Optional[List[str]] = None  # ER folds to run (None = all five, SUPERB's protocol)
    seed: Optional[int] = None  # s3prl's --seed for the downstream training; None = s3prl's default (1337)


# What makes two sweeps the same experiment: results in a run directory belong to exactly this.
IDENTITY = ("upstream", "ckpt", "model_config", "feature", "seed")


class SweepExistsError(UserError, FileExistsError):
    """A run directory that holds another upstream's sweep."""


def check_same_sweep(spec: SweepSpec, run_dir: Path) -> None:
    """Refuse ``run_dir`` if its ``sweep.json`` was written for another upstream (or checkpoint, config, feature)."""
    saved_path = run_dir / "sweep.json"
    if not saved_path.is_file():
        return
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError) as error:
        raise SweepExistsError(f"{saved_path} is unreadable ({error}); choose another -n NAME") from None
    differences = [f"{key}: {saved.get(key)!r} there, {getattr(spec, key)!r} now" for key in IDENTITY
                   if saved.get(key) != getattr(spec, key)]
    if differences:
        raise SweepExistsError(f"{run_dir} holds the sweep of another upstream ({'; '.join(differences)}); its "
                               "results would be mixed with this one's: choose another -n NAME")


def count_parameters(spec: SweepSpec) -> int:
    from s3prl_distill.registry import build_upstream

    model = build_upstream(spec.upstream, spec.ckpt, spec.model_config, what="-u")
    return sum(p.numel() for p in model.parameters())


def clear_voxceleb1_cache() -> None:
    """s3prl caches VoxCeleb1 file lists inside its package and silently reuses them for another dataset."""
    spec = importlib.util.find_spec("s3prl")
    if spec is None or spec.origin is None:
        return
    cache = Path(spec.origin).parent / "downstream" / "voxceleb1" / ".cache"
    if cache.exists():
        shutil.rmtree(cache)
        logger.info("removed s3prl's stale VoxCeleb1 file-list cache %s", cache)


def _voxceleb1_cache_lock() -> ExclusiveLock:
    """Held while an SID experiment uses s3prl's shared VoxCeleb1 cache (waits for another sweep's)."""
    spec = importlib.util.find_spec("s3prl")
    folder = Path(spec.origin).parent if spec is not None and spec.origin else Path.home() / ".cache" / "s3prl"
    return ExclusiveLock(folder / "downstream" / "voxceleb1" / ".s3prl-distill-sid.lock",
                         "s3prl's VoxCeleb1 file-list cache", wait=True)


class PhaseSplitter:
    """Writes an experiment process's output to each phase's log in turn: everything before
    :data:`PHASE_MARKER` to the first, the rest to the second, and hands it to ``on_output(phase, data)``. Fed
    arbitrary chunks; only a chunk's tail that could begin the marker waits for the next one."""

    def __init__(self, logs: List[BinaryIO], on_phase_end: Callable[[int], None],
                 on_output: Optional[Callable[[int, bytes], None]] = None) -> None:
        self.logs = logs
        self.phase = 0
        self.on_phase_end = on_phase_end
        self.on_output = on_output
        self._marker = PHASE_MARKER.encode()
        self._held = b""

    def feed(self, chunk: bytes) -> None:
        data = self._held + chunk
        self._held = b""
        if self.phase + 1 < len(self.logs):
            cut = data.find(self._marker)
            if cut >= 0:
                before, after = data[:cut], data[cut + len(self._marker):]
                self._write(before)
                self.on_phase_end(self.phase)
                self.phase += 1
                self.feed(after)
                return
            keep = next((size for size in range(min(len(data), len(self._marker) - 1), 0, -1)
                         if self._marker.startswith(data[-size:])), 0)
            data, self._held = data[:len(data) - keep], data[len(data) - keep:]
        self._write(data)

    def close(self) -> None:
        self._write(self._held)
        self._held = b""

    def _write(self, data: bytes) -> None:
        if data:
            self.logs[self.phase].write(data)
            self.logs[self.phase].flush()  # the log is complete at every moment, as when s3prl wrote it directly
            if self.on_output is not None:
                self.on_output(self.phase, data)


SERVER_MODULE = "s3prl_distill.downstream_recipes.superb.experiment_process"


class Experiment:
    """One experiment the server runs: its output (``stdout``, to EOF), ``wait()`` for its exit status, ``kill()``."""

    def __init__(self, server: "ExperimentServer", stdout: BinaryIO) -> None:
        self.server = server
        self.stdout = stdout
        self.pid: Optional[int] = None
        self.returncode: Optional[int] = None
        self.error: Optional[str] = None
        self._started = threading.Event()
        self._ended = threading.Event()

    def wait(self) -> int:
        self._ended.wait()
        if self.error is not None:
            raise RuntimeError(self.error)
        return self.returncode

    def kill(self) -> None:
        self._started.wait(timeout=30)
        if self.pid is not None and not self._ended.is_set():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:  # it had just ended
                pass


class ExperimentServer:
    """A process that imports s3prl's hub once and forks a child per experiment (``experiment_process.serve``):
    each experiment is still its own process, without paying the import (about 11 s of CPU here) again. Use as a
    context manager; ``environment`` is the experiments' (the server's) environment. Thread-safe."""

    def __init__(self, environment: Optional[Dict[str, str]] = None) -> None:
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # The server's own output (s3prl's import-time warnings; a traceback if it cannot start) goes here.
        self._log = tempfile.TemporaryFile()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", SERVER_MODULE, "--serve", str(theirs.fileno())], pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=environment)
        self._lock = threading.Lock()
        self._experiments: Dict[int, Experiment] = {}
        self._next_id = 0
        self._reader = threading.Thread(target=self._read_replies, name="experiment-server", daemon=True)
        self._reader.start()

    def start(self, plan: dict) -> Experiment:
        """Run :func:`experiment_process.main` on ``plan`` in a new child of the server."""
        read_end, write_end = os.pipe()
        experiment = Experiment(self, open(read_end, "rb"))
        try:
            with self._lock:
                request = self._next_id
                self._next_id += 1
                try:
                    if self.process.poll() is not None:
                        raise OSError("ended")
                    socket.send_fds(self._control, [json.dumps({"id": request, "plan": plan}).encode()],
                                    [write_end])
                except OSError:
                    self.process.wait()
                    raise RuntimeError(self._died()) from None
                self._experiments[request] = experiment
        except BaseException:
            experiment.stdout.close()
            raise
        finally:
            os.close(write_end)  # the child has its copy: the output ends when the experiment does
        return experiment

    def _read_replies(self) -> None:
        while True:
            try:
                message = self._control.recv(65536)
            except OSError:  # closed by close()
                message = b""
            if not message:
                break
            reply = json.loads(message)
            with self._lock:
                experiment = self._experiments[reply["id"]]
                if "pid" in reply:
                    experiment.pid = reply["pid"]
                    experiment._started.set()
                    continue
                del self._experiments[reply["id"]]
            if "exit" in reply:
                experiment.returncode = reply["exit"]
            else:
                experiment.error = f"s3prl's experiment server: {reply['error']}"
            experiment._started.set()
            experiment._ended.set()
        with self._lock:  # the server is gone: nothing pending will hear from it again
            for experiment in self._experiments.values():
                experiment.error = self._died()
                experiment._started.set()
                experiment._ended.set()
            self._experiments.clear()

    def _died(self) -> str:
        try:  # its socket closes as it ends: give it the moment to end, so that its exit status can be told
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.seek(0)
        tail = "\n".join(self._log.read().decode(errors="replace").splitlines()[-25:])
        return f"the process that runs s3prl's experiments ended (exit {self.process.poll()}); its output:\n{tail}"

    def close(self) -> None:
        """Stop the server (it kills experiments still running: nobody reads their output any more)."""
        try:
            self._control.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._control.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        self._log.close()

    def __enter__(self) -> "ExperimentServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_experiment_process(plan: dict, logs: List[Path], environment: Optional[Dict[str, str]] = None,
                           on_step: Optional[Callable[[int, int], None]] = None,
                           on_trained: Optional[Callable[[], None]] = None,
                           server: Optional[ExperimentServer] = None) -> List[float]:
    """Run :mod:`.experiment_process` on ``plan``: s3prl's runner trains (when ``plan["train"]`` is set) and
    evaluates in one process, a child of ``server`` (by default one started for this experiment, with
    ``environment``). Its output goes to ``logs`` (one per phase, appended); ``on_step(step, total)`` follows
    s3prl's ``overall`` bar while it trains (see :mod:`.progress`); ``on_trained()`` is called as soon as training
    has ended well. Returns each phase's wall time in seconds."""
    if server is None:
        with ExperimentServer(environment) as own:
            return run_experiment_process(plan, logs, environment, on_step, on_trained, own)
    reader = StepReader(on_step) if on_step is not None else None
    times = [time.perf_counter()]

    def phase_ended(phase: int) -> None:
        times.append(time.perf_counter())
        if reader is not None:
            reader.close()
        if on_trained is not None:
            on_trained()

    with ExitStack() as stack:
        handles = [stack.enter_context(log.open("ab")) for log in logs]

        def follow_training(phase: int, data: bytes) -> None:
            if reader is not None and phase == 0 and len(logs) > 1:
                reader.feed(data.decode("utf-8", errors="replace"))

        splitter = PhaseSplitter(handles, phase_ended, follow_training)
        experiment = server.start(plan)
        try:
            while True:
                chunk = experiment.stdout.read1(65536)
                if not chunk:
                    break
                splitter.feed(chunk)
            splitter.close()
            returncode = experiment.wait()
        except BaseException:  # our side failed (e.g. the log's disk is full): s3prl must not train on unattended
            experiment.kill()
            raise
        finally:
            experiment.stdout.close()
    times.append(time.perf_counter())
    if returncode != 0 or splitter.phase + 1 < len(logs):
        log = logs[splitter.phase]
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        why = f"exit {returncode}" if returncode != 0 else "it ended before evaluating"
        raise RuntimeError(f"s3prl's runner failed ({why}); end of {log}:\n{tail}")
    return [later - earlier for earlier, later in zip(times, times[1:])]


def run_unit(spec: SweepSpec, task: Task, fold: Optional[str], values: dict, expdir: Path,
             environment: Optional[Dict[str, str]] = None, progress: Optional[SweepProgress] = None,
             run_name: Optional[str] = None, server: Optional[ExperimentServer] = None) -> dict:
    """Train and evaluate one experiment (or return its ``done.json``); ``progress`` hears of its phases and of
    s3prl's steps under ``run_name``; ``server`` runs it (see :class:`ExperimentServer`)."""
    done = expdir / "done.json"
    if done.is_file():
        try:
            return json.loads(done.read_text())
        except ValueError as error:  # cut short by a kill before it was written atomically: evaluate again
            logger.warning("%s is unreadable (%s): evaluating %s again", done, error, expdir)
    on_step: Optional[Callable[[int, int], None]] = None
    if progress is not None and run_name is not None:
        progress.starting(run_name)
        on_step = functools.partial(progress.step, run_name)
    expdir.mkdir(parents=True, exist_ok=True)
    config_path = expdir / "config.yaml"
    write_config(config_path, task, values, fold, *_unit_options(spec, task))
    if task.key == "sid":
        clear_voxceleb1_cache()
    trained = expdir / "train.done"
    plan = {"train": None, "expdir": str(expdir), "best": task.best_checkpoint, "split": task.evaluate_split,
            "device": spec.device}
    if not trained.is_file():
        previous = latest_whole_step_checkpoint(expdir)
        if previous is not None:  # interrupted: s3prl resumes from the checkpoint's saved arguments
            plan["train"] = ["-m", "train", "-e", str(previous), "--device", spec.device]
        else:
            plan["train"] = ["-m", "train", "-u", spec.upstream, "-d", task.downstream, "-c", str(config_path),
                             "-p", str(expdir), "--device", spec.device]
            plan["train"] += ["-k", spec.ckpt] if spec.ckpt else []
            plan["train"] += ["-g", spec.model_config] if spec.model_config else []
            plan["train"] += ["-s", spec.feature] if spec.feature else []
            plan["train"] += ["--seed", str(spec.seed)] if spec.seed is not None else []

    def trained_well() -> None:
        trained.write_text("")
        if on_step is not None:
            progress.evaluating(run_name)

    if plan["train"] is None and on_step is not None:
        progress.evaluating(run_name)
    logs = ([expdir / "train.log"] if plan["train"] is not None else []) + [expdir / "evaluate.log"]
    phase_times = run_experiment_process(plan, logs, environment, on_step, trained_well, server)
    record = {"task": task.key, "fold": fold}
    if plan["train"] is not None:
        record["train_s"] = round(phase_times[0], 1)
    record["evaluated_checkpoint"] = checkpoint_to_evaluate(expdir, task.best_checkpoint).name
    record["evaluate_s"] = round(phase_times[-1], 1)
    record["value"] = task_metric(task, expdir, fold)
    write_text_atomically(done, json.dumps(record, indent=2))
    return record


def latest_whole_step_checkpoint(expdir: Path) -> Optional[Path]:
    """The newest ``states-<step>.ckpt`` of ``expdir`` that is a whole file. s3prl's runner deletes its older
    checkpoints and then writes the new one in place (not atomically): a sweep stopped during that write leaves a
    truncated file, which resuming with ``-e`` would fail on every time. Such a file (no zip directory at its end)
    is set aside as ``<name>.unreadable`` and the next newest whole one is used, if any."""
    while True:
        latest = latest_step_checkpoint(expdir)
        if latest is None or zipfile.is_zipfile(latest):
            return latest
        aside = latest.with_name(latest.name + ".unreadable")
        latest.rename(aside)
        logger.warning("%s is cut short (s3prl's runner was stopped while writing it): set aside as %s; %s", latest,
                       aside.name, "resuming from the one before it" if latest_step_checkpoint(expdir) else
                       "training this task from the start")


def _units(spec: SweepSpec) -> List[Tuple[Task, Optional[str]]]:
    known = {fold for key in spec.tasks for fold in TASKS[key].folds}
    unknown = sorted(set(spec.folds or ()) - known)
    if unknown or spec.folds == []:
        raise ValueError(f"folds {unknown or '[]'}: choose from {sorted(known) or 'none (no task has folds)'}")
    units = []
    for key in spec.tasks:
        task = TASKS[key]
        folds = [f for f in task.folds if spec.folds is None or f in spec.folds] if task.folds else [None]
        units += [(task, fold) for fold in folds]
    return units


def _collect(spec: SweepSpec, records: List[Tuple[Task, Optional[str], dict]]) -> Path:
    run_dir = Path(spec.exproot) / spec.name
    results = {"upstream": spec.upstream, "label": spec.label or spec.upstream, "ckpt": spec.ckpt,
               "feature": spec.feature, "steps": spec.steps, "parameters": count_parameters(spec), "tasks": {}}
    for task, fold, record in records:
        entry = results["tasks"].setdefault(task.key, {"metric": task.metric, "higher_is_better":
                                                       task.higher_is_better, "train_s": 0.0, "evaluate_s": 0.0})
        entry["train_s"] += record.get("train_s", 0.0)
        entry["evaluate_s"] += record.get("evaluate_s", 0.0)
        if fold is None:
            entry["value"] = record["value"]
        else:
            entry.setdefault("folds", {})[fold] = record["value"]
            entry["value"] = sum(entry["folds"].values()) / len(entry["folds"])
    write_text_atomically(run_dir / "results.json", json.dumps(results, indent=2))
    write_report([results], run_dir, title=f"SUPERB: {results['label']}")
    return run_dir


def warn_if_er_ignores_seed(spec: SweepSpec, config: Dict[str, Any]) -> None:
    """s3prl's emotion expert calls ``torch.manual_seed(0)`` before its train/dev split, so until its first
    evaluation reseeds with ``--seed``, every draw (head initialisation, batch order) is seed 0's. A run evaluated
    only at its end then trains identically whatever ``--seed`` says: say so, rather than let a seed sweep report
    a spread of zero."""
    runner = config["runner"]
    if spec.seed is not None and runner["eval_step"] >= runner["total_steps"]:
        logger.warning(
            "%s: ER evaluates only at step %d, and s3prl's emotion expert seeds torch with 0 before its split, so its "
            "training will not depend on --seed %d (only the draws after an evaluation do); for seed-dependent ER "
            "runs, evaluate during training, e.g. --set er:runner.eval_step=%d",
            spec.name, runner["total_steps"], spec.seed, max(1, runner["total_steps"] // 8))


def run_sweeps(specs: List[SweepSpec], jobs: int = 1, desc: str = "SUPERB") -> List[Path]:
    """Run (or resume) several sweeps; ``jobs`` experiments run at once, each s3prl process then getting an equal
    share of the CPU threads (unless OMP_NUM_THREADS is set). Returns each sweep's run directory (results.json,
    results.md, results.png), in order."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    with ExitStack() as locks:
        plans = []
        for spec in specs:
            run_dir = Path(spec.exproot) / spec.name
            locks.enter_context(directory_lock(run_dir, "SUPERB run directory",
                                               hint="wait for that sweep to finish, or choose another -n"))
            check_same_sweep(spec, run_dir)
            values = data_values(Path(spec.data_root), spec.tasks, spec.num_workers)
            er_config = None
            for task, fold in _units(spec):  # a malformed or unknown --set fails before any training
                config = render_config(task, values, fold, *_unit_options(spec, task))
                if task.key == "er":  # every fold has the same runner steps: one warning per sweep
                    er_config = config
            if er_config is not None:
                warn_if_er_ignores_seed(spec, er_config)
            write_text_atomically(run_dir / "sweep.json", json.dumps(asdict(spec), indent=2))
            plans.append((spec, values, run_dir, _units(spec)))
        return _run_plans(plans, jobs, desc)


def _run_plans(plans: list, jobs: int, desc: str) -> List[Path]:
    environment = None
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        environment = {**os.environ, "OMP_NUM_THREADS": str(max(1, usable_cpus() // jobs))}
    # s3prl keeps VoxCeleb1 file lists in one cache inside its package: SID experiments must not overlap, in this
    # sweep (threads) or in another one (processes).
    sid_lock = threading.Lock()

    work = [(spec, values, run_dir, task, fold) for spec, values, run_dir, units in plans for task, fold in units]
    names = _run_names(work, several_sweeps=len(plans) > 1)
    records: Dict[int, dict] = {}
    with ExperimentServer(environment) as server, ThreadPoolExecutor(max_workers=jobs) as pool, \
            show_progress(total=len(work), desc=desc, unit="runs", show_eta=False, dynamic_ncols=True) as bar:
        last_refresh = [0.0]

        def show(postfix: str) -> None:  # from the runs' threads, at every s3prl step: redraw twice a second at most
            now = time.monotonic()
            refresh = now - last_refresh[0] >= 0.5
            if refresh:
                last_refresh[0] = now
            bar.set_postfix_str(postfix, refresh=refresh)

        progress = SweepProgress({name: _steps_to_train(*item) for name, item in zip(names, work)}, show)

        def execute(index: int, spec: SweepSpec, values: dict, run_dir: Path, task: Task,
                    fold: Optional[str]) -> dict:
            expdir = run_dir / experiment_name(task, fold)
            if task.key == "sid":
                with sid_lock, _voxceleb1_cache_lock():
                    record = run_unit(spec, task, fold, values, expdir, environment, progress, names[index], server)
            else:
                record = run_unit(spec, task, fold, values, expdir, environment, progress, names[index], server)
            progress.done(names[index])  # here, not when the main thread collects it: the next run starts now
            return record

        futures = {pool.submit(execute, index, *item): index for index, item in enumerate(work)}
        try:
            for future in as_completed(futures):
                index = futures[future]
                records[index] = future.result()
                bar.update()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    run_dirs, index = [], 0
    for spec, _, _, units in plans:
        run_dirs.append(_collect(spec, [(task, fold, records[index + i]) for i, (task, fold) in enumerate(units)]))
        index += len(units)
    return run_dirs


def _run_names(work: list, several_sweeps: bool) -> List[str]:
    """Each experiment's name in the progress line: its task (and fold), and its upstream's label when the bar
    covers several sweeps; unique."""
    names: List[str] = []
    for spec, _, _, task, fold in work:
        name = experiment_name(task, fold)
        if several_sweeps:
            name += f" {spec.label or spec.upstream}"
        while name in names:
            name += "'"
        names.append(name)
    return names


def _steps_to_train(spec: SweepSpec, values: dict, run_dir: Path, task: Task, fold: Optional[str]) -> int:
    """The training steps an experiment has ahead of it, for the sweep's ETA: none once trained, else its config's."""
    expdir = run_dir / experiment_name(task, fold)
    if (expdir / "done.json").is_file() or (expdir / "train.done").is_file():
        return 0
    return int(render_config(task, values, fold, *_unit_options(spec, task))["runner"]["total_steps"])


def _unit_options(spec: SweepSpec, task: Task) -> Tuple[Optional[int], Optional[float], Optional[list]]:
    """What the sweep changes in ``task``'s config: (steps, learning rate, --set settings), as render_config takes
    them."""
    return (spec.task_steps.get(task.key, spec.steps), spec.learning_rates.get(task.key),
            parse_settings(spec.settings).get(task.key))


def run_superb(spec: SweepSpec, jobs: int = 1) -> Path:
    """Run (or resume) one sweep; returns the run directory with results.json, results.md, results.png."""
    return run_sweeps([spec], jobs, desc=f"SUPERB {spec.label or spec.upstream}")[0]
