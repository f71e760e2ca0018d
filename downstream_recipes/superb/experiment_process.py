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
"split": <evaluate split>, "device": ...}``, or a list of them: several experiments in one interpreter, one after the
other, with the marker after every phase but the last (``runner.run_unit_batch``).
"""

from __future__ import annotations

import gc
import json
import runpy
import shlex
import sys
from pathlib import Path
from typing import List, Optional

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


def _end_phase() -> None:
    sys.stderr.flush()
    sys.stdout.write(PHASE_MARKER)
    sys.stdout.flush()


def run_plan(plan: dict, last: bool = True) -> None:
    """One experiment: train (when ``plan["train"]`` is set), then evaluate; :data:`PHASE_MARKER` after each phase
    but the ``last`` one of the process."""
    if plan["train"] is not None:
        run_downstream(plan["train"])
        _release_training_memory()
        _end_phase()
    expdir = Path(plan["expdir"])
    checkpoint = checkpoint_to_evaluate(expdir, plan["best"])
    if checkpoint is None:
        sys.exit(f"{expdir}: training left no checkpoint to evaluate")
    run_downstream(["-m", "evaluate", "-e", str(checkpoint), "-t", plan["split"], "--device", plan["device"]])
    if not last:
        _release_training_memory()
        _end_phase()


def main(argv: Optional[List[str]] = None) -> int:
    """``PLAN_JSON``: one plan, or a list of plans run one after the other (s3prl's start-up paid once for all)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m s3prl_distill.downstream_recipes.superb.experiment_process PLAN_JSON")
    loaded = json.loads(argv[0])
    plans = loaded if isinstance(loaded, list) else [loaded]
    for index, plan in enumerate(plans):
        run_plan(plan, last=index == len(plans) - 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
