"""s3prl-style distillation pretraining.

    s3prl-distill pretrain -g CONFIG.yaml -n NAME [-p EXPROOT] [-o OVERRIDES] [-e CHECKPOINT] [--overwrite]
    python -m s3prl_distill.pretrain ...            (same)
    torchrun --nproc_per_node=N -m s3prl_distill.pretrain ...

Writes ``EXPROOT/NAME/``: ``states-<step>.ckpt`` (atomic; the last ``keep_last`` kept), ``config.yaml`` (the
resolved config), ``train.log``, ``metrics.jsonl`` (each log step as one JSON record, see :mod:`.metrics`) and
TensorBoard events. ``-e`` resumes exactly: model, optimizer, scheduler, grad scaler, step, data position and RNG
state are restored, so a killed-and-resumed run equals an uninterrupted one.

One run per directory: a run holds ``NAME/.s3prl-distill.lock`` while it lives (the OS drops it when the process
dies, ``kill -9`` included), so a second run there stops at once naming the holder's PID. A new run refuses a
directory that holds another run's checkpoints unless ``--overwrite`` moves them aside (into
``NAME/superseded-<time>/``; nothing is deleted); so does a resume from an earlier checkpoint of a directory that holds
later ones (the continuation it abandons), unless ``--overwrite`` moves those later checkpoints aside.

This module sets the run up (config, directory, lock, resume, CLI); the training loop is :mod:`.trainer`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch.distributed as dist
import yaml

from s3prl_distill.checkpoint import (
    CheckpointError,
    latest_step_checkpoint,
    load_checkpoint,
    remove_temporary_files,
    step_checkpoints,
    trust_from_environment,
)
from s3prl_distill.errors import ConfigError, UserError, user_message
from s3prl_distill.locking import LOCK_NAME, directory_lock
from s3prl_distill.options import SAVE_FORMATS

from .config import PretrainConfig, apply_overrides, load_config, validate_config
from .follow_teacher import fit_to_teacher, following_summary
from .loader import build_data
from .metrics import METRICS_NAME
from .trainer import (Distributed, Trainer, linear_warmup_decay, setup_distributed, training_device,
                      training_precision)

# Importable from here, where they lived before the training loop moved to .trainer and .loader.
__all__ = ["Distributed", "RunExistsError", "Trainer", "build_data", "build_parser", "find_latest_checkpoint",
           "linear_warmup_decay", "main", "run", "setup_distributed"]

logger = logging.getLogger(__name__)


class RunExistsError(UserError, FileExistsError):
    """A new run aimed at a directory that holds another run's checkpoints."""


def find_latest_checkpoint(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"-e {path}: no such checkpoint file or directory")
    latest = latest_step_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"-e {path}: the directory holds no states-<step>.ckpt")
    return latest


_run_log_handler: Optional[logging.Handler] = None


def _configure_logging(expdir: Path, is_main: bool) -> None:
    """Console logging, plus ``train.log`` of this run only (several runs may share one process)."""
    global _run_log_handler
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    if _run_log_handler is not None:
        root.removeHandler(_run_log_handler)
        _run_log_handler.close()
        _run_log_handler = None
    if is_main:
        _run_log_handler = logging.FileHandler(expdir / "train.log")
        _run_log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(_run_log_handler)


def run(
    config_path: Union[None, str, List[str]], name: Optional[str], exproot: str = "result/pretrain",
    overrides: Optional[str] = None, resume: Optional[str] = None, overwrite: bool = False,
    student_format: Optional[str] = None,
) -> Path:
    """Start (``config_path`` + ``name``) or resume (``resume``) a run; returns its directory. ``student_format``:
    see :class:`Trainer` (``safetensors``: each step's student also as ``states-<step>.safetensors``); None: pickle
    for a new run, the format the resumed run was saving in for a resume.

    Everything cheap is decided before anything heavy is built: the config is validated, the directory locked and
    checked, and a resumed run that already reached ``total_steps`` returns without loading its teacher or data.
    """
    trust_from_environment()  # a malformed S3PRL_DISTILL_TRUST_CHECKPOINTS fails now, not when the teacher loads
    checkpoint, source_dir, path, written, format_note = None, None, None, None, None
    if resume is not None:
        path = find_latest_checkpoint(Path(resume))
        checkpoint = load_checkpoint(path, what="checkpoint to resume")
        if not isinstance(checkpoint, dict) or "TrainingState" not in checkpoint or "RunConfig" not in checkpoint:
            raise CheckpointError(f"{path} is not a checkpoint of this pretrain runner (no TrainingState/RunConfig)")
        config = validate_config(apply_overrides(_keep_layer_zero(checkpoint["RunConfig"], path), overrides),
                                 f"{path} (RunConfig)")
        saved = (checkpoint["RunConfig"].get("optimizer") or {}).get("name", "AdamW")
        if config.optimizer.name != saved:  # the moments and step counters are another optimizer's
            raise ConfigError(
                f"optimizer.name={config.optimizer.name!r}: {path} was trained with {saved!r}, whose state another "
                f"optimizer cannot resume; resume with optimizer.name={saved!r} (another optimizer means a new run)")
        source_dir = path.parent
        expdir = source_dir if name is None else Path(exproot) / name
        student_format, format_note = _resumed_format(checkpoint, student_format, path)
    else:
        if config_path is None or name is None:
            raise ConfigError("a new run needs -g CONFIG and -n NAME (or -e CHECKPOINT to resume)")
        written = load_config(config_path, overrides)
        config = fit_to_teacher(written)  # before anything is made or locked: a student that does not fit stops here
        expdir = Path(exproot) / name
        student_format = student_format or "pickle"
    is_main = int(os.environ.get("RANK", "0")) == 0
    followed = resume is None and config is not written
    if not is_main:  # rank 0 owns the directory; the others only read it
        _configure_logging(expdir, is_main)
        if _finished(checkpoint, config, path):
            return expdir
        return _train(config, expdir, checkpoint, path, student_format)
    with directory_lock(expdir, "experiment directory",
                        hint="wait for that run to finish, or choose another -n"):
        leftovers = remove_temporary_files(expdir)
        moved_to = None
        in_place = source_dir is not None and source_dir.resolve() == expdir.resolve()  # a resume in its own folder
        if not in_place:
            moved_to = _claim_directory(expdir, overwrite)
        _configure_logging(expdir, is_main)
        if moved_to is not None:
            logger.warning("--overwrite: the previous run's files are now in %s", moved_to)
        for leftover in leftovers:
            logger.info("removed %s, left by an interrupted checkpoint write", leftover)
        if followed:
            logger.info("%s", following_summary(written, config))
        if format_note is not None:
            logger.info("%s", format_note)
        if _finished(checkpoint, config, path):
            return expdir
        if in_place:
            aside = _set_aside_later_checkpoints(expdir, checkpoint["TrainingState"]["step"], path, overwrite)
            if aside is not None:
                logger.warning("--overwrite: the checkpoints after step %d are now in %s, with a copy of "
                               "metrics.jsonl as it was; this run goes on from %s", checkpoint["TrainingState"]["step"],
                               aside, path)
        (expdir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        _warn_precision_fallback(config)
        return _train(config, expdir, checkpoint, path, student_format)


def _resumed_format(checkpoint: dict, requested: Optional[str], path: Path) -> Tuple[str, Optional[str]]:
    """The format a resumed run saves in, and what to log about it: the run's own unless ``--format`` says
    otherwise (a run shared as safetensors would otherwise silently stop writing them after a restart)."""
    saved = checkpoint["TrainingState"].get("student_format", "pickle")
    if requested is None:
        if saved == "pickle":
            return saved, None
        return saved, f"{path} was saving its students as {saved} too: resuming so (--format pickle to stop)"
    if requested == saved:
        return requested, None
    return requested, f"--format {requested}: {path} was saving as {saved}; saving as {requested} from now on"


def _warn_precision_fallback(config: PretrainConfig) -> None:
    """Said once per run, by rank 0, where the config is settled (the trainer falls back silently)."""
    if training_precision(config.runner.precision, training_device()) != config.runner.precision:
        logger.warning("runner.precision=fp16 needs CUDA; this run trains in fp32 on the CPU (set "
                       "runner.precision=fp32 or bf16 to choose)")


def _finished(checkpoint: Optional[dict], config: PretrainConfig, path: Optional[Path]) -> bool:
    """Whether the resumed checkpoint already reached ``total_steps`` (then said so): decided from the checkpoint
    alone, before the teacher, the student or the audio files are touched."""
    if checkpoint is None:
        return False
    step = checkpoint["TrainingState"]["step"]
    if step < config.runner.total_steps:
        return False
    logger.info("%s: this run already finished at step %d (runner.total_steps %d): nothing to do; to train on, "
                "resume with -o config.runner.total_steps=<more>", path, step, config.runner.total_steps)
    return True


def _keep_layer_zero(run_config: dict, path: Path) -> dict:
    """A run saved before projection heads had ``layer_zero`` distilled s3prl's hidden state 0; it resumes so,
    rather than switching its layer-0 target halfway (new runs default to DPHuBERT's)."""
    head = (run_config.get("student") or {}).get("prediction_head") or {}
    if head.get("type") != "projection" or "layer_zero" in head:
        return run_config
    logger.warning("%s predates student.prediction_head.layer_zero: resuming with its layer 0 as it was trained "
                   "(transformer_input, s3prl's hidden state 0)", path)
    student = {**run_config["student"], "prediction_head": {**head, "layer_zero": "transformer_input"}}
    return {**run_config, "student": student}


def _train(config: PretrainConfig, expdir: Path, checkpoint: Optional[dict], source: Optional[Path],
           student_format: str) -> Path:
    trainer = Trainer(config, expdir, checkpoint, source, student_format)
    try:
        trainer.train()
        if dist.is_initialized():
            dist.barrier()  # no rank tears gloo / NCCL down while another still saves or logs its last step
    finally:
        # DDP's reducer holds the process group: free it while the interpreter is whole, not in its teardown, where
        # gloo's threads could be destroyed unjoined (SIGABRT after a finished run).
        del trainer
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
    return expdir


def _claim_directory(expdir: Path, overwrite: bool) -> Optional[Path]:
    """A new run may use ``expdir`` only if it holds no other run's checkpoints or logged metrics (a run that
    trained but crashed before its first checkpoint; the new run's metrics writer would drop them), or if
    ``overwrite`` moves that run's files aside (never deleting them); returns where they went."""
    existing = step_checkpoints(expdir)
    metrics = expdir / METRICS_NAME
    logged = metrics.is_file() and metrics.stat().st_size > 0
    if not existing and not logged:
        return None
    if not overwrite:
        if existing:
            names = ", ".join(path.name for _, path in existing[-3:])
            held = f"checkpoints ({names}). Resume that run with -e {expdir}, "
        else:
            held = f"logged metrics ({metrics}) but no checkpoint to resume from. "
        raise RunExistsError(
            f"experiment directory {expdir} already holds another run's {held}start this one under another -n NAME, "
            f"or pass --overwrite to move the old run's files into {expdir}/superseded-<time>/ first"
        )
    aside = _new_aside_folder(expdir)
    for entry in sorted(expdir.iterdir()):
        if entry.name != LOCK_NAME and not entry.name.startswith("superseded-"):
            entry.rename(aside / entry.name)
    return aside


def _set_aside_later_checkpoints(expdir: Path, step: int, path: Path, overwrite: bool) -> Optional[Path]:
    """A resume from step ``step`` in ``expdir`` while it holds checkpoints of later steps (the continuation that
    resume abandons): refused, or with ``overwrite`` those checkpoints (and their safetensors) moved into
    ``expdir/superseded-<time>/`` with a copy of ``metrics.jsonl``, whose later records the resumed run drops. Left
    in place they would pass for the newest state of the run: keep_last would delete the resumed run's own
    checkpoints before them, and ``-e DIR`` would resume from them."""
    later = [candidate for number, candidate in step_checkpoints(expdir) if number > step]
    if not later:
        return None
    names = ", ".join(candidate.name for candidate in later[-3:])
    if not overwrite:
        raise RunExistsError(
            f"{path} is step {step} of {expdir}, which also holds later checkpoints ({names}): resuming there would "
            f"mix the two continuations. Resume from the latest with -e {expdir}, resume into another directory with "
            f"-e {path} -n NAME, or pass --overwrite to move the later checkpoints into {expdir}/superseded-<time>/ "
            "first (nothing is deleted)")
    aside = _new_aside_folder(expdir)
    for candidate in later:
        for companion in (candidate, candidate.with_suffix(".safetensors")):
            if companion.exists():
                companion.rename(aside / companion.name)
    metrics = expdir / METRICS_NAME
    if metrics.exists():
        shutil.copy2(metrics, aside / METRICS_NAME)
    return aside


def _new_aside_folder(expdir: Path) -> Path:
    """A fresh ``expdir/superseded-<time>/`` for files a run sets aside instead of deleting."""
    aside = expdir / time.strftime("superseded-%Y%m%d-%H%M%S")
    while aside.exists():
        aside = aside.with_name(aside.name + "_")
    aside.mkdir()
    return aside


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3prl-distill pretrain", description="distillation pretraining")
    parser.add_argument("-g", "--config", action="append",
                        help="the run's YAML config (see pretrain/<method>/config.yaml); repeat -g to merge more "
                             "YAML into it in order (e.g. a layer-similarity skill_groups.yaml)")
    parser.add_argument("-n", "--name", help="experiment name: outputs go to EXPROOT/NAME")
    parser.add_argument("-p", "--exproot", default="result/pretrain", help="experiment root (default result/pretrain)")
    parser.add_argument("-o", "--override", help="s3prl-style overrides: config.runner.total_steps=10,,config.optimizer.lr=1e-4")
    parser.add_argument("-e", "--resume", help="checkpoint (or experiment directory) to resume from")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a directory that holds another run's checkpoints, after moving "
                             "that run's files into NAME/superseded-<time>/ (nothing is deleted); with -e, resume "
                             "from an earlier checkpoint after moving the later ones there")
    parser.add_argument("--format", choices=SAVE_FORMATS, default=None, dest="student_format",
                        help="pickle (default): states-<step>.ckpt only; safetensors: also each step's student as "
                             "states-<step>.safetensors (no pickle, for sharing; every *_local of its family loads "
                             "it). The .ckpt stays: resuming needs it. A resumed run keeps the format it was saving in")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args.config, args.name, args.exproot, args.override, args.resume, args.overwrite,
            args.student_format)
    except UserError as error:  # bad input: its message names it; a traceback would only hide it
        if _run_log_handler is not None:  # the run had started: the console and train.log get it
            logger.error("%s", user_message(error))
        else:
            sys.stderr.write(f"s3prl-distill pretrain: {user_message(error)}\n")
        sys.exit(2)
