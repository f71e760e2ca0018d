"""The training loop of the pretrain runner: devices and DDP, optimizer and schedule, the step, checkpoints, logs.

:mod:`.runner` sets up the run (config, directory, lock, resume) and hands it to :class:`Trainer`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from s3prl_distill import __version__
from s3prl_distill.checkpoint import save_checkpoint, step_checkpoints
from s3prl_distill.formats.safetensors_format import save_student_checkpoint_as_safetensors
from s3prl_distill.losses import combine
from s3prl_distill.options import SAVE_FORMATS
from s3prl_distill.progress import progress as show_progress

from .config import PretrainConfig
from .loader import build_data
from .metrics import MetricsWriter
from .optim import S3prlAdamW, linear_warmup_decay_factor
from .task import DistillationTask
from .teacher_cache import TeacherCache

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


def linear_warmup_decay(total_steps: int, warmup_proportion: float) -> Callable[[int], float]:
    """LambdaLR factor: LambdaLR passes the 0-based index ``s`` of the coming update, the official schedules (s3prl's
    ``warmup_linear``, DPHuBERT's) count updates from 1, so ``s`` gets their factor at ``t = s + 1``."""

    def factor(step: int) -> float:
        return linear_warmup_decay_factor(step + 1, total_steps, warmup_proportion)

    return factor


def training_device(local_rank: int = 0) -> torch.device:
    """Where a run's process trains: its local GPU where CUDA is available, else the CPU."""
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def training_precision(requested: str, device: torch.device) -> str:
    """The precision a run trains in on ``device``: fp16 (autocast with loss scaling) needs CUDA, so it becomes
    fp32 elsewhere; fp32 and bf16 stay."""
    return "fp32" if requested == "fp16" and device.type != "cuda" else requested


class Trainer:
    """One run's training state and loop; on rank 0 it also writes the checkpoints, ``metrics.jsonl`` and
    TensorBoard events into ``expdir``. ``resume``: a checkpoint of this runner, restored exactly (the student is then
    not initialised from the teacher: the checkpoint holds every weight); ``resume_source``: where it was read from,
    for the log. ``student_format`` (:data:`~s3prl_distill.options.SAVE_FORMATS`): ``safetensors`` also writes each
    step's student as ``states-<step>.safetensors`` beside the resumable ``states-<step>.ckpt`` (rotated with it)."""

    def __init__(self, config: PretrainConfig, expdir: Path, resume: Optional[dict] = None,
                 resume_source: Optional[Path] = None, student_format: str = "pickle") -> None:
        if student_format not in SAVE_FORMATS:
            raise ValueError(f"student_format {student_format!r}: expected one of {', '.join(SAVE_FORMATS)}")
        self.config = config
        self.expdir = expdir
        self.resume_source = resume_source
        self.student_format = student_format
        self.dist = setup_distributed()
        self.device = training_device(self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        runner = config.runner
        self.precision = training_precision(runner.precision, self.device)
        if self.precision != runner.precision:  # the run's start already warned (runner.run), once
            logger.debug("precision %s needs CUDA; training in fp32 on %s", runner.precision, self.device)

        # Same seed on every rank: identical initial weights (DDP also broadcasts them).
        torch.manual_seed(runner.seed)
        cache = TeacherCache(Path(config.data.teacher_cache)) if config.data.teacher_cache else None
        self.task = DistillationTask(config.teacher, config.student, config.student_init, config.method, self.device,
                                     cache, initialise=resume is None, seed=runner.seed)
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
                    "world_size": self.dist.world_size, "rng": rng, "student_format": self.student_format,
                },
                "RunConfig": self.config.to_dict(),
                "MethodState": self.task.method.state_dict(),
                "Version": __version__,
            }
        )
        path = save_checkpoint(checkpoint, self.expdir / f"states-{self.step}.ckpt")
        if self.student_format == "safetensors":
            # The shareable student only (what export --to safetensors would write); resuming needs the .ckpt.
            shared = save_student_checkpoint_as_safetensors(checkpoint, path, path.with_suffix(".safetensors"))
            logger.info("saved %s (the %s student, safetensors)", path.with_suffix(".safetensors"), shared.family)
        # Only this run's steps so far: a later step's checkpoint here is not this run's to delete (the runner sets
        # such files aside before a resume), and the one just written is never among the deleted.
        saved = [(number, candidate) for number, candidate in step_checkpoints(self.expdir) if number <= self.step]
        for _, old in saved[: -self.config.runner.keep_last]:
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)
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
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", self.resume_source or "a checkpoint", self.step,
                    self.epoch, self.batch_index)

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
        writer, metrics = None, None
        if self.dist.is_main:
            from tensorboardX import SummaryWriter

            writer = SummaryWriter(str(self.expdir))
            metrics = MetricsWriter(self.expdir, resumed_step=self.step)
        self.student.train()
        batches = self._batches()
        accumulate = runner.gradient_accumulate_steps
        window: Dict[str, List[torch.Tensor]] = {}
        window_utterances, window_start = 0, time.perf_counter()
        progress = show_progress(total=runner.total_steps, initial=self.step, desc="distill", unit="step",
                                 dynamic_ncols=True, disable=not self.dist.is_main)
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
                self._log(writer, metrics, window, grad_norm, window_utterances / max(elapsed, 1e-9), progress)
                window, window_utterances, window_start = {}, 0, time.perf_counter()
            if self.step % runner.save_step == 0 or self.step == runner.total_steps:
                self.save()
        progress.close()
        if writer is not None:
            writer.close()
            metrics.close()

    def _scheduled_lr(self) -> float:
        """The first group's lr as scheduled for the latest update (AdamW_with_schedule: at its parameters' own step
        count); Adam's bias correction is not in it, for either optimizer."""
        return self.optimizer.scheduled_lr() if self.schedules_itself else self.last_lr

    def _log(self, writer, metrics: Optional[MetricsWriter], window, grad_norm, utterances_per_second,
             progress) -> None:
        """The end of a log window: the one place between logs where a step reads values back from the device."""
        skipped = int(self.skipped_updates)
        if skipped:  # expected now and then under fp16, where the loss scale backs off
            logger.log(logging.INFO if self.precision == "fp16" else logging.WARNING,
                       "step %d: %d update(s) skipped since the last log (non-finite gradients)", self.step, skipped)
        self.skipped_updates.zero_()
        if writer is None:  # not rank 0
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
        metrics.write(self.step, scalars)
        progress.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['lr']:.2e}")
        logger.info("step %d: %s", self.step, ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

