"""s3prl-style distillation pretraining.

    s3prl-distill pretrain -g CONFIG.yaml -n NAME [-p EXPROOT] [-o OVERRIDES] [-e CHECKPOINT] [--overwrite]
    python -m s3prl_distill.pretrain ...            (same)
    torchrun --nproc_per_node=N -m s3prl_distill.pretrain ...

Writes ``EXPROOT/NAME/``: ``states-<step>.ckpt`` (atomic; the last ``keep_last`` kept), ``config.yaml`` (the
resolved config), ``train.log`` and TensorBoard events. ``-e`` resumes exactly: model, optimizer, scheduler, grad
scaler, step, data position and RNG state are restored, so a killed-and-resumed run equals an uninterrupted one.

One run per directory: a run holds ``NAME/.s3prl-distill.lock`` while it lives (the OS drops it when the process
dies, ``kill -9`` included), so a second run there stops at once naming the holder's PID. A new run refuses a
directory that holds another run's checkpoints unless ``--overwrite`` moves them aside (into
``NAME/superseded-<time>/``; nothing is deleted).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from s3prl_distill import __version__
from s3prl_distill.checkpoint import (
    CheckpointError,
    latest_step_checkpoint,
    load_checkpoint,
    remove_temporary_files,
    save_checkpoint,
    step_checkpoints,
    trust_from_environment,
)
from s3prl_distill.errors import ConfigError, UserError, user_message
from s3prl_distill.locking import LOCK_NAME, directory_lock
from s3prl_distill.losses import combine

from .config import DataConfig, PretrainConfig, apply_overrides, load_config, validate_config
from s3prl_distill.audio_lists import check_audio_files, read_length_csvs

from .data import BucketBatchSampler, CroppedAudioDataset, collate_waveforms
from .optim import S3prlAdamW, linear_warmup_decay_factor
from .task import DistillationTask
from .teacher_cache import CachedWindowDataset, TeacherCache, collate_with_targets

logger = logging.getLogger(__name__)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(rank, world_size, local_rank)


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


def build_data(data: DataConfig, seed: int, world_size: int = 1, rank: int = 0, pin_memory: bool = False,
               progress: bool = True):
    """(items, sampler, loader) for a data config: CSVs, header checks, length buckets, resumable crops (or, with a
    teacher cache, its windows and their cached targets)."""
    items = read_length_csvs(Path(data.root), Path(data.bucket_dir), data.sets)
    if data.check_files:
        items = check_audio_files(items, data.on_bad_file, progress=progress,
                                  source=f"sets {data.sets} in {data.bucket_dir}")
    if data.train_batch_size % world_size:
        raise ValueError(f"data.train_batch_size={data.train_batch_size} is not divisible by the {world_size} processes")
    sampler = BucketBatchSampler([item.length for item in items], data.train_batch_size, seed, world_size, rank)
    if data.teacher_cache is not None:
        dataset = CachedWindowDataset(items, TeacherCache(Path(data.teacher_cache)), data.max_length, seed,
                                      data.on_bad_file)
        collate = collate_with_targets
    else:
        dataset, collate = CroppedAudioDataset(items, data.max_length, seed, data.on_bad_file), collate_waveforms
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=data.num_workers,
        pin_memory=pin_memory,
        persistent_workers=data.num_workers > 0,
        # Its own generator: creating an iterator must not draw from the global RNG (exact resume).
        generator=torch.Generator(),
    )
    logger.info("data: %d utterances, %d batches per epoch", len(items), len(sampler))
    return items, sampler, loader


def linear_warmup_decay(total_steps: int, warmup_proportion: float) -> Callable[[int], float]:
    """LambdaLR factor: LambdaLR passes the 0-based index ``s`` of the coming update, the official schedules (s3prl's
    ``warmup_linear``, DPHuBERT's) count updates from 1, so ``s`` gets their factor at ``t = s + 1``."""

    def factor(step: int) -> float:
        return linear_warmup_decay_factor(step + 1, total_steps, warmup_proportion)

    return factor


class Trainer:
    def __init__(self, config: PretrainConfig, expdir: Path, resume: Optional[dict] = None) -> None:
        self.config = config
        self.expdir = expdir
        self.dist = setup_distributed()
        if torch.cuda.is_available():
            torch.cuda.set_device(self.dist.local_rank)
            self.device = torch.device("cuda", self.dist.local_rank)
        else:
            self.device = torch.device("cpu")
        runner = config.runner
        self.precision = "fp32" if runner.precision == "fp16" and self.device.type != "cuda" else runner.precision
        if self.precision != runner.precision:
            logger.warning("precision %s needs CUDA; training in fp32 on %s", runner.precision, self.device)

        # Same seed on every rank: identical initial weights (DDP also broadcasts them).
        torch.manual_seed(runner.seed)
        cache = TeacherCache(Path(config.data.teacher_cache)) if config.data.teacher_cache else None
        self.task = DistillationTask(config.teacher, config.student, config.student_init, config.method, self.device,
                                     cache)
        self.student = self.task.student
        if runner.compile:
            self.student.compile()  # in place: parameter names and checkpoints stay those of the eager module
        self.model = (
            DistributedDataParallel(self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                    # a front-end stage leaves the encoder and heads without gradients
                                    find_unused_parameters=self.task.method.front_end_steps > 0)
            if self.dist.enabled else self.student
        )
        self.optimizer = self._optimizer()
        self.trained_parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        # AdamW_with_schedule applies the schedule itself, per parameter; its LambdaLR stays at 1 (kept so that
        # every checkpoint has the same fields).
        scheduled_by_lambda = config.scheduler.name == "linear_warmup_decay" and not self.schedules_itself
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            linear_warmup_decay(runner.total_steps, config.scheduler.warmup_proportion)
            if scheduled_by_lambda else (lambda step: 1.0),
        )
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # LambdaLR path: the latest update's lr, for the log
        # One path for every precision: the scaler unscales, finds non-finite gradients and skips those updates. Only
        # fp16 scales the loss; otherwise the scale stays 1. The fused AdamW takes the skip decision as a tensor, so
        # no step waits for the device; AdamW_with_schedule (no AMP hooks) makes the scaler read it, once a step.
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0 ** 16 if self.precision == "fp16" else 1.0)
        self.skipped_updates = torch.zeros((), dtype=torch.long, device=self.device)  # in the current log window
        self.step, self.epoch, self.batch_index = 0, 0, 0
        self.term_layers: Dict[str, List[int]] = {}
        # Dropout differs per rank, as it would per sample in one big batch.
        torch.manual_seed(runner.seed + 1000 * (self.dist.rank + 1))
        self._data()
        if cache is not None:
            self.task.check_cache(config.teacher, config.data, self.items)
        if resume is not None:
            self._restore(resume)
        self.task.prepare_front_end(self.items)

    # --- construction ---------------------------------------------------------------------------------------------

    @property
    def schedules_itself(self) -> bool:
        return isinstance(self.optimizer, S3prlAdamW)

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config.optimizer
        groups = self.task.method.parameter_groups(self.student, cfg.weight_decay)
        if groups is None:
            decay = [p for n, p in self.student.named_parameters() if p.requires_grad and not n.endswith("bias")]
            no_decay = [p for n, p in self.student.named_parameters() if p.requires_grad and n.endswith("bias")]
            groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if cfg.name == "AdamW_with_schedule":
            scheduler = self.config.scheduler
            return S3prlAdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                              total_steps=self.config.runner.total_steps,
                              warmup_proportion=scheduler.warmup_proportion, schedule=scheduler.name)
        # The fused kernel: one pass over all parameters (4x faster than the foreach version for DistilHuBERT on CPU),
        # and it skips a non-finite step on the device (see the scaler).
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                 fused=self.device.type in ("cpu", "cuda"))

    def _data(self) -> None:
        self.items, self.sampler, self.loader = build_data(
            self.config.data, self.config.runner.seed, self.dist.world_size, self.dist.rank,
            pin_memory=self.device.type == "cuda", progress=self.dist.is_main,
        )

    # --- checkpoints ----------------------------------------------------------------------------------------------

    def _rng_states(self) -> List[dict]:
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        if not self.dist.enabled:
            return [state]
        gathered: List[Optional[dict]] = [None] * self.dist.world_size
        dist.all_gather_object(gathered, state)
        return gathered

    def save(self) -> Optional[Path]:
        rng = self._rng_states()  # collective: every rank takes part
        if not self.dist.is_main:
            return None
        checkpoint = self.task.export(self.student.state_dict())
        checkpoint.update(
            {
                "Step": self.step,
                "Optimizer": self.optimizer.state_dict(),
                "Scheduler": self.scheduler.state_dict(),
                "Scaler": self.scaler.state_dict(),
                "TrainingState": {
                    "step": self.step, "epoch": self.epoch, "batch_index": self.batch_index,
                    "world_size": self.dist.world_size, "rng": rng,
                },
                "RunConfig": self.config.to_dict(),
                "MethodState": self.task.method.state_dict(),
                "Version": __version__,
            }
        )
        path = save_checkpoint(checkpoint, self.expdir / f"states-{self.step}.ckpt")
        for _, old in step_checkpoints(self.expdir)[: -self.config.runner.keep_last]:
            old.unlink(missing_ok=True)
        logger.info("saved %s", path)
        return path

    def _restore(self, checkpoint: dict) -> None:
        state = checkpoint["TrainingState"]
        self.student.load_state_dict(self.task.student_state(checkpoint))
        self.optimizer.load_state_dict(checkpoint["Optimizer"])
        self.scheduler.load_state_dict(checkpoint["Scheduler"])
        if self.schedules_itself:
            # The schedule comes from the config, as a LambdaLR's does (the checkpoint's groups hold the saved one):
            # a resume with -o config.runner.total_steps=N follows the new length.
            scheduler = self.config.scheduler
            for group in self.optimizer.param_groups:
                group.update(total_steps=self.config.runner.total_steps, schedule=scheduler.name,
                             warmup_proportion=scheduler.warmup_proportion)
        if checkpoint["Scaler"]:  # empty in checkpoints of versions that kept the scaler off outside fp16
            self.scaler.load_state_dict(checkpoint["Scaler"])
        self.task.method.load_state_dict(checkpoint.get("MethodState", {}))
        self.step, self.epoch, self.batch_index = state["step"], state["epoch"], state["batch_index"]
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            torch.set_rng_state(rng[self.dist.rank]["torch"])
            if self.device.type == "cuda" and "cuda" in rng[self.dist.rank]:
                torch.cuda.set_rng_state(rng[self.dist.rank]["cuda"], self.device)
        else:
            logger.warning(
                "resuming with %d processes instead of %d: dropout RNG is re-seeded, the run is no longer "
                "bit-identical to an uninterrupted one", self.dist.world_size, len(rng),
            )
        logger.info("resumed at step %d (epoch %d, batch %d)", self.step, self.epoch, self.batch_index)

    # --- training -------------------------------------------------------------------------------------------------

    def _reduce_counts(self, count: torch.Tensor) -> torch.Tensor:
        if not self.dist.enabled:
            return count
        count = count.clone()
        dist.all_reduce(count)
        return count

    def _batches(self):
        """Batches from the saved position on, epoch after epoch; keeps (epoch, batch_index) = what was consumed."""
        while True:
            if self.batch_index >= len(self.sampler):  # saved right after an epoch's last batch
                self.epoch, self.batch_index = self.epoch + 1, 0
            self.sampler.set_position(self.epoch, self.batch_index)
            for batch in self.loader:
                self.batch_index += 1
                yield batch
            self.epoch, self.batch_index = self.epoch + 1, 0

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def train(self) -> None:
        runner = self.config.runner
        if self.step >= runner.total_steps:
            logger.info("this run already finished at step %d (total_steps %d): nothing to do", self.step, runner.total_steps)
            return
        writer = None
        if self.dist.is_main:
            from tensorboardX import SummaryWriter

            writer = SummaryWriter(str(self.expdir))
        self.student.train()
        batches = self._batches()
        accumulate = runner.gradient_accumulate_steps
        window: Dict[str, List[torch.Tensor]] = {}
        window_utterances, window_start = 0, time.perf_counter()
        progress = tqdm(total=runner.total_steps, initial=self.step, desc="distill", dynamic_ncols=True,
                        disable=not self.dist.is_main)
        while self.step < runner.total_steps:
            for micro in range(accumulate):
                # Lengths stay on the host: the teacher (an s3prl upstream) takes a list of waveforms, so reading them
                # from the device would stall every step.
                waveforms, lengths, *cached = next(batches)
                waveforms, *cached = (t.to(self.device, non_blocking=True) for t in (waveforms, *cached))
                last = micro == accumulate - 1
                sync = contextlib.nullcontext() if (last or not self.dist.enabled) else self.model.no_sync()
                with sync:
                    with self._autocast():
                        terms = self.task.losses(self.model, waveforms, lengths, self.step, *cached)
                        loss = combine(terms, self._reduce_counts)
                    # DDP averages gradients over ranks; the loss is already normalised by the global count.
                    self.scaler.scale(loss * self.dist.world_size / accumulate).backward()
                for name, term in terms.items():
                    window.setdefault(name, []).append(term.per_target())
                    self.term_layers[name] = term.layers or list(range(len(term.sums)))
                window.setdefault("loss", []).append(loss.detach()[None])
                window_utterances += waveforms.shape[0] * self.dist.world_size
            self.scaler.unscale_(self.optimizer)
            # Over everything the optimizer trains (a method's own parameters too, e.g. DPHuBERT's λ, as Lightning
            # clips there); no clipping still measures the norm, for the log and the non-finite check.
            if runner.gradient_clipping is None:
                grad_norm = torch.nn.utils.get_total_norm(
                    [p.grad for p in self.trained_parameters if p.grad is not None])
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.trained_parameters, runner.gradient_clipping)
            self.skipped_updates += ~torch.isfinite(grad_norm)
            self.scaler.step(self.optimizer)  # no update when a gradient is inf/NaN
            self.scaler.update(None if self.precision == "fp16" else 1.0)
            self.optimizer.zero_grad(set_to_none=True)
            self.last_lr = self.optimizer.param_groups[0]["lr"]  # before the LambdaLR moves on to the next update's
            self.scheduler.step()
            self.step += 1
            progress.update(1)
            if self.step % runner.log_step == 0 or self.step == runner.total_steps:
                elapsed = time.perf_counter() - window_start
                self._log(writer, window, grad_norm, window_utterances / max(elapsed, 1e-9), progress)
                skipped = int(self.skipped_updates)
                if skipped:  # expected now and then under fp16, where the loss scale backs off
                    logger.log(logging.INFO if self.precision == "fp16" else logging.WARNING,
                               "step %d: %d update(s) skipped since the last log (non-finite gradients)",
                               self.step, skipped)
                self.skipped_updates.zero_()
                window, window_utterances, window_start = {}, 0, time.perf_counter()
            if self.step % runner.save_step == 0 or self.step == runner.total_steps:
                self.save()
        progress.close()
        if writer is not None:
            writer.close()

    def _scheduled_lr(self) -> float:
        """The first group's lr as scheduled for the latest update (AdamW_with_schedule: at its parameters' own step
        count); Adam's bias correction is not in it, for either optimizer."""
        return self.optimizer.scheduled_lr() if self.schedules_itself else self.last_lr

    def _log(self, writer, window, grad_norm, utterances_per_second, progress) -> None:
        if writer is None:
            return
        means = {name: torch.stack(values).mean(0).cpu() for name, values in window.items()}
        scalars = {"loss": means.pop("loss").item(), "lr": self._scheduled_lr(),
                   "grad_norm": float(grad_norm), "utterances_per_s": utterances_per_second,
                   **self.task.method.scalars()}
        for name, per_target in means.items():
            for layer, value in zip(self.term_layers[name], per_target.tolist()):
                scalars[f"{name}/layer{layer}"] = value
        for key, value in scalars.items():
            writer.add_scalar(f"train/{key}", value, self.step)
        progress.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['lr']:.2e}")
        logger.info("step %d: %s", self.step, ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))


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
) -> Path:
    """Start (``config_path`` + ``name``) or resume (``resume``) a run; returns its directory.

    Everything cheap is decided before anything heavy is built: the config is validated, the directory locked and
    checked, and a resumed run that already reached ``total_steps`` returns without loading its teacher or data.
    """
    trust_from_environment()  # a malformed S3PRL_DISTILL_TRUST_CHECKPOINTS fails now, not when the teacher loads
    checkpoint, source_dir = None, None
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
    else:
        if config_path is None or name is None:
            raise ConfigError("a new run needs -g CONFIG and -n NAME (or -e CHECKPOINT to resume)")
        config = load_config(config_path, overrides)
        expdir = Path(exproot) / name
    is_main = int(os.environ.get("RANK", "0")) == 0
    if not is_main:  # rank 0 owns the directory; the others only read it
        _configure_logging(expdir, is_main)
        return _train(config, expdir, checkpoint)
    with directory_lock(expdir, "experiment directory",
                        hint="wait for that run to finish, or choose another -n"):
        leftovers = remove_temporary_files(expdir)
        moved_to = None
        if source_dir is None or source_dir.resolve() != expdir.resolve():
            moved_to = _claim_directory(expdir, overwrite)
        _configure_logging(expdir, is_main)
        if moved_to is not None:
            logger.warning("--overwrite: the previous run's files are now in %s", moved_to)
        for leftover in leftovers:
            logger.info("removed %s, left by an interrupted checkpoint write", leftover)
        if checkpoint is not None and checkpoint["TrainingState"]["step"] >= config.runner.total_steps:
            logger.info("this run already finished at step %d (total_steps %d): nothing to do",
                        checkpoint["TrainingState"]["step"], config.runner.total_steps)
            return expdir
        (expdir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return _train(config, expdir, checkpoint)


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


def _train(config: PretrainConfig, expdir: Path, checkpoint: Optional[dict]) -> Path:
    trainer = Trainer(config, expdir, checkpoint)
    try:
        trainer.train()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return expdir


def _claim_directory(expdir: Path, overwrite: bool) -> Optional[Path]:
    """A new run may use ``expdir`` only if it holds no other run's checkpoints, or if ``overwrite`` moves that
    run's files aside (never deleting them); returns where they went."""
    existing = step_checkpoints(expdir)
    if not existing:
        return None
    names = ", ".join(path.name for _, path in existing[-3:])
    if not overwrite:
        raise RunExistsError(
            f"experiment directory {expdir} already holds another run's checkpoints ({names}). Resume that run with "
            f"-e {expdir}, start this one under another -n NAME, or pass --overwrite to move the old run's files "
            f"into {expdir}/superseded-<time>/ first"
        )
    aside = expdir / time.strftime("superseded-%Y%m%d-%H%M%S")
    while aside.exists():
        aside = aside.with_name(aside.name + "_")
    aside.mkdir()
    for entry in sorted(expdir.iterdir()):
        if entry.name != LOCK_NAME and not entry.name.startswith("superseded-"):
            entry.rename(aside / entry.name)
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
                             "that run's files into NAME/superseded-<time>/ (nothing is deleted)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args.config, args.name, args.exproot, args.override, args.resume, args.overwrite)
    except UserError as error:  # bad input: its message names it; a traceback would only hide it
        if _run_log_handler is not None:  # the run had started: the console and train.log get it
            logger.error("%s", user_message(error))
        else:
            sys.stderr.write(f"s3prl-distill pretrain: {user_message(error)}\n")
        sys.exit(2)
