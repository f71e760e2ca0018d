"""One interpreter per SUPERB experiment: s3prl's unmodified runner trains, then evaluates, in the same process.

``python -m s3prl.run_downstream`` imports s3prl's hub, which imports transformers and torch's compiler stack:
about 11 s of CPU on the 2-core machines we measure on, more than a smoke run's training or a small test set's
evaluation. A sweep used to pay it twice per experiment (``-m train``, then ``-m evaluate``). Here both phases run
s3prl's own ``run_downstream`` module as ``__main__`` with the command line that ``python -m`` would have given
it, one after the other. s3prl's ``main()`` seeds every generator and builds a new ``Runner`` from its arguments
each time, so the evaluation sees the same state as in a fresh process.

Between the phases the process writes :data:`PHASE_MARKER` on stdout, so that the parent (see
``runner.run_experiment_process``) sends what came before to ``train.log`` and the rest to ``evaluate.log``.

Usage (by the sweep, not by hand)::

    python -m s3prl_distill.downstream_recipes.superb.experiment_process PLAN_JSON

``PLAN_JSON``: ``{"train": [s3prl arguments] or null, "expdir": ..., "best": <best checkpoint's file name>,
"split": <evaluate split>, "device": ...}``.

A sweep runs many experiments, so it does not start an interpreter for each: :func:`serve` is a small server that
imports s3prl's hub once and forks one child per experiment, which then runs :func:`main` on its plan with its
stdout and stderr on a pipe the sweep passed along with the request (see ``runner.ExperimentServer``). Each
experiment still is its own process (its memory, its exit status, killed on its own); what it shares with the
others is only the already-imported modules. The server forks from its only thread and never runs a torch op
itself, so each child starts as a fresh interpreter would (s3prl's ``main()`` seeds every generator)::

    python -m s3prl_distill.downstream_recipes.superb.experiment_process --serve CONTROL_FD
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import runpy
import select
import shlex
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Dict, List, Optional

from s3prl_distill.checkpoint import latest_step_checkpoint

PHASE_MARKER = "\n[s3prl-distill] training finished; evaluating\n"


def checkpoint_to_evaluate(expdir: Path, best: str) -> Optional[Path]:
    """s3prl's best-on-dev checkpoint where the task keeps one, else the last step's."""
    best_path = Path(expdir) / best
    return best_path if best_path.is_file() else latest_step_checkpoint(Path(expdir))


def run_downstream(arguments: List[str]) -> None:
    """s3prl's ``run_downstream`` as ``python -m s3prl.run_downstream ARGUMENTS`` runs it."""
    # the log's first line: the command that runs this phase on its own
    print(f"$ {sys.executable} -m s3prl.run_downstream {shlex.join(arguments)}", flush=True)
    saved = sys.argv
    sys.argv = ["run_downstream", *arguments]  # runpy puts the module's path in argv[0]
    try:
        runpy.run_module("s3prl.run_downstream", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved


def _release_training_memory() -> None:
    gc.collect()  # the training Runner, its model and data loaders are unreachable once main() returns
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--serve":
        return serve(int(argv[1]))
    if len(argv) != 1:
        sys.exit("usage: python -m s3prl_distill.downstream_recipes.superb.experiment_process PLAN_JSON "
                 "(or --serve CONTROL_FD)")
    plan = json.loads(argv[0])
    if plan["train"] is not None:
        run_downstream(plan["train"])
        _release_training_memory()
        sys.stderr.flush()
        sys.stdout.write(PHASE_MARKER)
        sys.stdout.flush()
    expdir = Path(plan["expdir"])
    checkpoint = checkpoint_to_evaluate(expdir, plan["best"])
    if checkpoint is None:
        sys.exit(f"{expdir}: training left no checkpoint to evaluate")
    run_downstream(["-m", "evaluate", "-e", str(checkpoint), "-t", plan["split"], "--device", plan["device"]])
    return 0


# Replies to the sweep: one JSON message each on the control socket (SOCK_SEQPACKET keeps them apart).
def _reply(control: socket.socket, message: dict) -> None:
    control.send(json.dumps(message).encode())


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(server_pid: int) -> None:
    """Have the kernel kill this process when the server ends, however it ends (SIGKILL included): an experiment
    nobody reads any more must not hold its memory and cores. Linux only; elsewhere the server's own kill remains."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != server_pid:  # the server ended before the request above took effect
        os._exit(1)


def _child(control: socket.socket, output: int, plan: dict, server_pid: int) -> int:
    """In the forked child: stdout and stderr to ``output``, then the experiment; returns its exit status."""
    _die_with(server_pid)
    control.close()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)
    try:
        return main([json.dumps(plan)])
    except SystemExit as stop:  # sys.exit(message) as the interpreter reports it
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _reap(control: socket.socket, children: Dict[int, int]) -> None:
    """Report every child that has ended: ``{"id": request, "exit": status}`` (-N: killed by signal N)."""
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        _reply(control, {"id": children.pop(pid), "exit": os.waitstatus_to_exitcode(status)})


def serve(control_fd: int) -> int:
    """Run experiments on request until the sweep closes its end of the control socket.

    A request is ``{"id": N, "plan": PLAN}`` with one file descriptor attached (where the experiment's output goes);
    the server forks a child for it and replies ``{"id": N, "pid": PID}``, then ``{"id": N, "exit": STATUS}`` when
    it ends. Should the sweep go away while experiments run, they are killed: nobody would read their output. The
    sweep is gone when its end of the socket closes, or when this process is handed to another parent (a process
    the sweep forked, such as a data-loader worker, may keep the socket open after the sweep was killed)."""
    sweep_pid = os.getppid()
    # s3prl's log_stft expert asks torch.cuda.is_available() when imported; through NVML that leaves the CUDA
    # driver uninitialised here, so the children can initialise it (the driver is not fork-safe once it is).
    user_setting = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    importlib.import_module("s3prl.hub")  # the import every experiment would pay: once, here
    if user_setting is None:  # the experiments see the environment they were given
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]
    else:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = user_setting
    import torch

    if torch.cuda.is_initialized():  # an s3prl that initialises CUDA on import: a forked child could not use it
        sys.exit("importing s3prl.hub initialised CUDA in the experiment server; forked experiments could not use it")

    sys.stdout.flush()
    sys.stderr.flush()
    control = socket.socket(fileno=control_fd)
    children: Dict[int, int] = {}
    server_pid = os.getpid()
    while os.getppid() == sweep_pid:
        readable, _, _ = select.select([control], [], [], 0.2)
        _reap(control, children)
        if not readable:
            continue
        message, fds, _, _ = socket.recv_fds(control, 1 << 20, 1)
        if not message:
            break
        request = json.loads(message)
        if len(fds) != 1:
            _reply(control, {"id": request["id"], "error": "no output descriptor came with the request"})
            continue
        pid = os.fork()
        if pid == 0:
            os._exit(_child(control, fds[0], request["plan"], server_pid))
        os.close(fds[0])
        children[pid] = request["id"]
        _reply(control, {"id": request["id"], "pid": pid})
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    for pid in list(children):
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
