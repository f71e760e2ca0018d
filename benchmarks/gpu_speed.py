"""Training-step throughput and MFU of our four distillation recipes, and forward throughput of every upstream family,
on one device, with the device's own peak FLOP rate measured in the same run.

    python3 benchmarks/gpu_speed.py --device cuda|cpu [--quick] --out FILE.json [--budget-s S]

Written for a short one-shot check on a lent GPU (``benchmarks/gpu_check.sh``); ``--device cpu --quick`` runs every
code path at toy sizes in about a minute (CI), and its figures are not speed figures.

**Peak.** A square GEMM (8192 on CUDA, 1024 on CPU, 256 with ``--quick``) in bf16 and in fp32 (TF32 as
torch's current setting: off by default), measured by the profiler's ``gemm_peak`` (the one the CPU fraction-of-peak
uses): products repeated for 1 s after a warm-up, each timed on its own (the device synchronised), the median rate;
2 n^3 FLOPs per product.

**Training** (a): the production path, as ``s3prl-distill pretrain`` runs it: each recipe's shipped config
(``pretrain/<recipe>/config.yaml``; DPHuBERT with its pruning gates on), the student following a randomly initialised
``hubert_local`` teacher we write (HuBERT Base, 12 x 768; a tiny one with ``--quick``) via ``fit_to_teacher``, then
``Trainer.train()`` (data loading, teacher, student forward/backward, AdamW, clipping, logging) on generated audio of
one length, logging every step. Step time = the time between consecutive per-step log lines, the device
synchronised first; the first steps are warm-up (``compile_warmup_s``: their total, compilation included) and left
out of the median. Teacher ``online`` runs the teacher every step; ``cache`` reads a teacher cache
(``pretrain/teacher_cache.py``) built before the case (``cache_build_s``, not in the step time).

**Model FLOPs per step**: ``torch.utils.flop_counter.FlopCounterMode`` (with the CPU attention formulas of
``s3prl_distill.profiler``) around one eager fp32 ``task.losses`` + ``backward()`` on one of the run's batches, right
after the timed run of the same recipe and teacher mode: the student's forward and backward, plus the teacher's
forward when it runs online (none from the cache). Counted: matrix products, convolutions (forward and backward) and
attention (2 FLOPs per multiply-accumulate); not counted: element-wise ops, norms, softmax outside fused attention,
the fbank, the optimizer. The same count serves the compiled and bf16 cases of that recipe and mode.
**MFU** = model FLOPs per step / median step time / a measured GEMM peak (``mfu``): fp32 cases over the fp32 peak,
bf16 (autocast) cases over the higher of the bf16 and fp32 peaks (:func:`peak_for`); over the bf16 peak as well
(``mfu_vs_bf16_peak``).

**Upstreams** (b): every upstream family from a random checkpoint of the right shape (full size; toy with
``--quick``) written by our own code, loaded through its s3prl entry (``build_upstream``), plus s3prl's own
``distiller_local`` on our DistilHuBERT's weights: seconds of audio per second over ``--upstream-batch`` utterances
of ``--upstream-seconds``, fp32 and bf16 (the upstreams' own ``precision: bf16`` option, :func:`in_precision`), median of repeats after warm-up.
Each case also records where its time goes (:func:`forward_breakdown`): the time until the forward call returns
without a final synchronisation (close to the synchronised time = launch-bound), the ops and casts the host
dispatched, the CUDA kernels, and the top ops by device time; and the median forward over a padded batch of the same
size (SUPERB's batches are padded: the masks run, and on CUDA a padding mask rules out some fused attention kernels).
Each bf16 case records its deviation from fp32 on that padded batch (:func:`deviation_vs_fp32`).

**Memory** (c): CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (training: over the whole
``train()``, weights and optimizer state included; upstreams: one forward, over the memory allocated before it).
CPU: growth of the process's peak resident set (Linux ``VmHWM`` reset before, minus ``VmRSS`` before), in-process,
so an approximation.

The JSON is rewritten after every case, so a killed run leaves what it measured. Cases run in priority order; once
``--budget-s`` is used up (or the next case's estimate does not fit) the remaining ones are recorded as skipped.
Exit status 2 for argument errors, 1 when no case ran, else 0 (failed cases record their exception).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

REPOSITORY = Path(__file__).resolve().parents[1]
RECIPES = {  # name -> shipped config
    "distilhubert": REPOSITORY / "pretrain" / "distilhubert" / "config.yaml",
    "fithubert": REPOSITORY / "pretrain" / "fithubert" / "config.yaml",
    "deepthin": REPOSITORY / "pretrain" / "asr_distill" / "config.yaml",
    "dphubert": REPOSITORY / "pretrain" / "dphubert" / "config.yaml",
}
logger = logging.getLogger("gpu_speed")


@dataclass(frozen=True)
class Sizes:
    teacher: str  # "base" or "tiny"
    train_batch: int
    train_seconds: float
    warmup_steps: int
    compile_warmup_steps: int
    timed_steps: int
    upstream_batch: int
    upstream_seconds: float
    upstream_warmup: int
    upstream_repeats: int
    gemm: int
    num_workers: int
    budget_s: float
    estimate_s: Dict[str, float]  # a case's expected cost, by kind: it starts only if that much budget is left


def sizes_for(device: str, quick: bool) -> Sizes:
    if quick:
        return Sizes("tiny", 2, 1.0, 1, 2, 2, 2, 1.0, 1, 2, 512, 0, 80.0,
                     {"eager": 1.0, "compile": 5.0, "upstream": 0.5})
    if device == "cuda":
        # 4.5 min on an H100 in all. Estimates as measured on one (2026-11-27): an eager case 5-8 s, a compiled one
        # 25.5 s (20.6 s of it compiling), an upstream case 0.6-4.4 s.
        return Sizes("base", 8, 10.0, 2, 3, 5, 8, 10.0, 2, 5, 8192, 4, 270.0,
                     {"eager": 12.0, "compile": 30.0, "upstream": 3.0})
    return Sizes("base", 4, 4.0, 1, 2, 3, 4, 4.0, 1, 3, 1024, 1, 3600.0,
                 {"eager": 60.0, "compile": 240.0, "upstream": 20.0})


# --- the result file ---------------------------------------------------------------------------------------------------

class Result:
    """The JSON document, rewritten (atomically) after every change."""

    def __init__(self, path: Path, data: Dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=2, default=_plain) + "\n")
        os.replace(partial, self.path)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _error(exc: BaseException) -> Dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)[-2000:],
            "traceback": "".join(traceback.format_exception(exc))[-4000:]}


# --- device helpers ----------------------------------------------------------------------------------------------------

class MemoryMeter:
    """Peak memory over a block (see the module docstring for what each device records)."""

    def __init__(self, device) -> None:
        self.device = device
        self.method = ("cuda_max_memory_allocated" if device.type == "cuda"
                       else "cpu_rss_growth (VmHWM after - VmRSS before, in-process)")
        self.before: Optional[int] = None

    def start(self) -> None:
        import torch

        from s3prl_distill.profiler import process_memory_bytes, reset_peak_rss

        if self.device.type == "cuda":
            gc.collect()  # tensors of the previous case (slow with a big heap: not on the CPU, where RSS is relative)
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            self.before = process_memory_bytes("VmRSS") if reset_peak_rss() else None

    def peak(self) -> Dict[str, Optional[int]]:
        """``peak_bytes`` (CUDA: the peak allocated; CPU: None) and ``growth_bytes`` (the peak over the start)."""
        import torch

        from s3prl_distill.profiler import process_memory_bytes

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"peak_bytes": peak, "growth_bytes": peak - (self.before or 0)}
        high = process_memory_bytes("VmHWM")
        growth = None if self.before is None or high is None else max(0, high - self.before)
        return {"peak_bytes": None, "growth_bytes": growth}


def environment(device) -> Dict[str, Any]:
    import torch

    from s3prl_distill.profiling import cpu_name

    info: Dict[str, Any] = {"device": str(device), "python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                            "threads": torch.get_num_threads(), "platform": platform.platform(),
                            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                            "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                    memory_bytes=properties.total_memory, cudnn=torch.backends.cudnn.version(),
                    multiprocessors=properties.multi_processor_count)
    else:
        info["name"] = info["cpu"]
    return info


def peak_for(precision: str, peaks: Dict[str, float]) -> float:
    """The MFU denominator: the fp32 GEMM peak for fp32; for bf16 (autocast, which leaves some ops in fp32) the higher
    of the bf16 and fp32 peaks: the bf16 one on GPUs, the fp32 one on CPUs without bf16 matrix units."""
    return peaks["fp32"] if precision == "fp32" else max(peaks["bf16"], peaks["fp32"])


# --- training cases ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainCase:
    recipe: str
    teacher: str  # "online" or "cache"
    compile: bool
    precision: str

    @property
    def name(self) -> str:
        return f"{self.recipe}/{self.teacher}/{'compile' if self.compile else 'eager'}/{self.precision}"

    @property
    def kind(self) -> str:
        return "compile" if self.compile else "eager"


def training_cases(main: str, reference: str, quick: bool) -> List[TrainCase]:
    """Priority order: every recipe eager (online, then from the cache), the reference precision, then compiled
    (DistilHuBERT's both ways first: the cheapest compile, and the pair shows the cache's gain when compiled). The
    run times the upstreams between the eager and the compiled cases."""
    recipes = list(RECIPES)
    cases = [TrainCase(r, "online", False, main) for r in recipes]
    cases += [TrainCase(r, "cache", False, main) for r in recipes]
    cases.append(TrainCase("distilhubert", "online", False, reference))
    if not quick:  # compiling takes minutes on a small CPU, even for a toy student: not in the quick run
        cases += [TrainCase("distilhubert", "online", True, main), TrainCase("distilhubert", "cache", True, main)]
        cases += [TrainCase(r, "online", True, main) for r in recipes[1:]]
        cases += [TrainCase(r, "cache", True, main) for r in recipes[1:]]
    return cases


class Workspace:
    """The generated audio, the teacher checkpoint and each recipe's followed config and teacher caches."""

    def __init__(self, folder: Path, sizes: Sizes, device) -> None:
        from s3prl_distill.audio_lists import write_length_csvs
        from s3prl_distill.formats.s3prl_hubert import HUBERT_BASE, TINY_HUBERT, write_random_hubert
        from teacher_cache import write_audio

        self.folder, self.sizes, self.device = folder, sizes, device
        self.utterances = sizes.train_batch * (max(sizes.warmup_steps, sizes.compile_warmup_steps) + sizes.timed_steps)
        # One epoch covers every step of a case: no epoch boundary (DataLoader restart) inside the timed steps.
        write_audio(folder / "audio", self.utterances, sizes.train_seconds)
        write_length_csvs(folder / "audio", folder / "csv", progress=False)
        self.teacher = write_random_hubert(folder / "teacher.ckpt", HUBERT_BASE if sizes.teacher == "base" else TINY_HUBERT)
        self.caches: Dict[str, Dict[str, Any]] = {}

    def config(self, case: TrainCase, cache: Optional[Path] = None):
        import yaml

        from s3prl_distill.pretrain.config import validate_config
        from s3prl_distill.pretrain.follow_teacher import fit_to_teacher

        data = yaml.safe_load(RECIPES[case.recipe].read_text())
        if self.sizes.teacher == "tiny":  # what does not follow the toy teacher is made a toy too
            from s3prl_distill.model import StudentConfig

            data["student"] = tiny(StudentConfig.from_dict(data["student"]), keep_depth=True).to_dict()
        data["teacher"]["ckpt"] = str(self.teacher)
        data["data"].update(root=str(self.folder / "audio"), bucket_dir=str(self.folder / "csv"), sets=["train"],
                            train_batch_size=self.sizes.train_batch, max_length=int(16000 * self.sizes.train_seconds),
                            num_workers=self.sizes.num_workers, teacher_cache=str(cache) if cache else None)
        warmup = self.sizes.compile_warmup_steps if case.compile else self.sizes.warmup_steps
        steps = warmup + self.sizes.timed_steps
        data["runner"].update(total_steps=steps, log_step=1, save_step=10 * steps, gradient_accumulate_steps=1,
                              precision=case.precision, compile=case.compile)
        return fit_to_teacher(validate_config(data, f"{RECIPES[case.recipe]} (gpu_speed)"))

    def cache(self, recipe: str) -> Dict[str, Any]:
        """The recipe's teacher cache, built once (its build time and size recorded)."""
        if recipe not in self.caches:
            from s3prl_distill.pretrain.teacher_cache import build_teacher_cache
            from s3prl_distill.profiling import device_synchronizer

            config = self.config(TrainCase(recipe, "cache", False, "fp32"))
            sync = device_synchronizer(self.device)
            sync()
            start = time.perf_counter()
            path = build_teacher_cache(config, self.folder / f"cache-{recipe}", batch_size=self.sizes.train_batch,
                                       device=str(self.device), progress=False)
            sync()
            meta = json.loads((path / "meta.json").read_text())
            self.caches[recipe] = {"path": path, "build_s": time.perf_counter() - start, "bytes": meta["bytes"]}
        return self.caches[recipe]


def count_step_flops(trainer) -> Dict[str, Any]:
    """FLOPs of one eager fp32 training step's forward and backward (see the module docstring) on a batch of the
    trainer's own loader."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from s3prl_distill.losses import combine
    from s3prl_distill.profiler import extra_flop_formulas

    waveforms, lengths, *cached = next(iter(trainer.loader))
    waveforms, *cached = (t.to(trainer.device) for t in (waveforms, *cached))
    trainer.optimizer.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
        terms = trainer.task.losses(trainer.model, waveforms, lengths, trainer.step, *cached)
        combine(terms, lambda count: count).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    by_op = {str(op): flops for op, flops in counter.get_flop_counts().get("Global", {}).items()}
    del terms
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    return {"flops": counter.get_total_flops(), "by_op": by_op}


def run_training_case(case: TrainCase, space: Workspace, peaks: Dict[str, float], flops: Dict[str, Dict[str, Any]],
                      timer) -> Dict[str, Any]:
    from s3prl_distill.pretrain.runner import Trainer
    from s3prl_distill.profiling import device_synchronizer

    device = space.device
    row: Dict[str, Any] = {"case": case.name, "recipe": case.recipe, "teacher": case.teacher,
                           "compile": case.compile, "precision": case.precision}
    cache = None
    if case.teacher == "cache":
        built = space.cache(case.recipe)
        cache = built["path"]
        row.update(cache_build_s=round(built["build_s"], 3), cache_bytes=built["bytes"])
    config = space.config(case, cache)
    expdir = space.folder / "runs" / case.name.replace("/", "-")
    sync = device_synchronizer(device)
    start = time.perf_counter()
    trainer = Trainer(config, expdir)
    row["setup_s"] = round(time.perf_counter() - start, 3)
    row["student_parameters"] = sum(p.numel() for p in trainer.student.parameters())
    meter = MemoryMeter(device)
    meter.start()
    timer.stamps = []
    timer.synchronize = sync
    sync()
    start = time.perf_counter()
    trainer.train()
    stamps = [start] + timer.stamps
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    if len(steps) != config.runner.total_steps:
        raise RuntimeError(f"expected {config.runner.total_steps} per-step log lines, got {len(steps)}")
    row["memory"] = meter.peak()
    warmup = space.sizes.compile_warmup_steps if case.compile else space.sizes.warmup_steps
    timed = steps[warmup:]
    median = statistics.median(timed)
    audio_seconds = space.sizes.train_batch * space.sizes.train_seconds
    row.update(batch=space.sizes.train_batch, seconds_each=space.sizes.train_seconds, warmup_steps=warmup,
               step_s=[round(s, 5) for s in steps], median_step_s=median,
               warmup_s=round(sum(steps[:warmup]), 3), utterances_per_s=space.sizes.train_batch / median,
               audio_seconds_per_s=audio_seconds / median)
    if case.compile:
        row["compile_warmup_s"] = row["warmup_s"]  # the warm-up steps' time, compilation included
    key = f"{case.recipe}/{case.teacher}"
    if key not in flops and not case.compile:
        flops[key] = count_step_flops(trainer)
    if key in flops:
        row["model_flops_per_step"] = flops[key]["flops"]
        row["flops_by_op"] = flops[key]["by_op"]
        achieved = flops[key]["flops"] / median
        row["achieved_flops_per_s"] = achieved
        row["mfu"] = achieved / peak_for(case.precision, peaks)
        row["mfu_vs_bf16_peak"] = achieved / peaks["bf16"]
    else:
        row["mfu"] = None
        row["mfu_note"] = "no eager case of this recipe and teacher mode ran, so no FLOP count"
    del trainer
    return row


# --- upstream cases ----------------------------------------------------------------------------------------------------

def in_precision(entry: str, upstream, ckpt: Path, precision: str, device):
    """The upstream to time in ``precision``: itself for fp32. For bf16, ours are built again with their own
    ``precision: bf16`` option from a ``-g`` file (as a user sets it); any other (s3prl's ``distiller_local``) runs its forward
    in the same autocast that option applies, its outputs cast to float32 as ours are."""
    import torch

    from s3prl_distill.registry import build_upstream
    from s3prl_distill.upstream.expert import StudentExpert
    from s3prl_distill.upstream.interfaces import as_float32, precision_context

    if precision == "fp32":
        return upstream
    if isinstance(upstream, StudentExpert):  # -g options.yaml, as s3prl's runner passes it
        options = ckpt.parent / f"precision_{precision}.yaml"
        options.write_text(f"precision: {precision}\n")
        return build_upstream(entry, str(ckpt), str(options)).to(device).eval()

    class Autocast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.upstream = upstream

        def forward(self, wavs):
            with precision_context(precision, device.type):
                return as_float32(self.upstream(wavs))

    return Autocast()


def tiny(config, keep_depth: bool = False):
    """A toy version of a student config for ``--quick``: the same layout at width 48, CNN channels <= 32, and (unless
    ``keep_depth``: a training config whose depth and target layers follow its teacher) at most 3 layers, with a
    layer-wise head still predicting one layer per layer."""
    from s3prl_distill.model import StudentConfig, format_conv_layers, parse_conv_layers

    data = config.to_dict()
    extractor = data.get("feature_extractor")
    if extractor is not None:
        extractor["conv_layers"] = format_conv_layers([(min(dim, 32), k, s)
                                                       for dim, k, s in parse_conv_layers(extractor["conv_layers"])])
    encoder = data["encoder"]
    layers = encoder["num_layers"] if keep_depth else min(encoder["num_layers"], 3)
    encoder.update(num_layers=layers, embed_dim=48, ffn_dim=96 if encoder["ffn_dim"] > encoder["embed_dim"] else 48,
                   num_heads=4, pos_conv_kernel=16, pos_conv_groups=4)
    if encoder.get("attention_reuse") is not None:  # ARMHuBERT's per-layer pattern, cut to the kept layers
        encoder["attention_reuse"] = encoder["attention_reuse"][:layers]
    head = data.get("prediction_head")
    if head is not None:
        head["out_dim"] = 48
        if head.get("inner_dim") is not None:
            head["inner_dim"] = 48
        if head["type"] == "layerwise" and not keep_depth:
            head["target_layers"] = list(range(1, layers + 1))
    return StudentConfig.from_dict(data, "tiny student")


# s3prl's own DistilHuBERT entry, timed on the checkpoint written for ours.
SAME_WEIGHTS = {"distiller_local": "distilhubert_local"}


def upstream_plan(quick: bool) -> Dict[str, Any]:
    """Every upstream family's ``*_local`` entry -> (family written in its checkpoint, None for s3prl's distiller
    format; student config), full size or toy (``quick``)."""
    from s3prl_distill.formats.fairseq import teacher_copy_config
    from s3prl_distill.formats.s3prl_hubert import HUBERT_BASE, TINY_HUBERT
    from s3prl_distill.model import (armhubert_config, deepthin_config, distilhubert_config, fithubert_config,
                                     maskhubert_config, shallowwide_config, starhubert_config, with_fbank_front_end)

    size = tiny if quick else (lambda config: config)
    copy = teacher_copy_config(TINY_HUBERT if quick else HUBERT_BASE)
    # entry -> (family written in the checkpoint or None for s3prl's distiller format, config)
    plan = {
        "distilhubert_local": (None, size(distilhubert_config())),
        "fithubert_local": ("fithubert", size(fithubert_config())),
        "deepthin_local": ("asr_distill", size(deepthin_config())),
        "deepthin_fbank_local": ("asr_distill", with_fbank_front_end(size(deepthin_config()))),
        "shallowwide_local": ("asr_distill", size(shallowwide_config())),
        "shallowwide_fbank_local": ("asr_distill", with_fbank_front_end(size(shallowwide_config()))),
        "dphubert_local": ("dphubert", copy),  # a pruned student: the teacher's shape, no gates left
        "skill_local": ("skill", copy),
        "student_local": ("student", size(deepthin_config())),
        "armhubert_local": ("armhubert", size(armhubert_config())),
        "maskhubert_local": ("maskhubert", size(maskhubert_config())),
        "starhubert_local": ("starhubert", size(starhubert_config())),
    }
    return plan


def write_upstream_checkpoint(folder: Path, entry: str, family: Optional[str], config) -> Path:
    """A random model of ``config`` written by our code in the format ``entry`` reads."""
    import torch

    from s3prl_distill.checkpoint import save_checkpoint
    from s3prl_distill.formats.native import export_student
    from s3prl_distill.formats.s3prl_distiller import export_distiller
    from s3prl_distill.model import StudentModel

    torch.manual_seed(0)
    model = StudentModel(config)
    if model.fbank is not None:  # statistics would come from training data; any will do for timing
        model.fbank.set_statistics(torch.zeros(80), torch.ones(80), 1)
    state = model.state_dict()
    checkpoint = export_distiller(config, state) if family is None else export_student(family, config, state)
    return save_checkpoint(checkpoint, folder / f"{entry}.ckpt")


def uncovered_families(entries: List[str]) -> List[str]:
    """Upstream families (registry) none of ``entries`` belongs to."""
    from s3prl_distill.registry import families

    return [family for family in families() if not any(entry.startswith(family + "_") for entry in entries)]


def run_upstream_case(entry: str, ckpt: Path, precision: str, sizes: Sizes, device, peaks: Dict[str, float],
                      models: Dict[str, Any]) -> Dict[str, Any]:
    from s3prl_distill.profiler import SAMPLE_RATE, count_macs, profile_waves
    from s3prl_distill.profiling import device_synchronizer, forward_time_samples, upstream_features
    from s3prl_distill.registry import build_upstream

    import torch

    if entry not in models:
        models.clear()  # one upstream in memory at a time
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
        upstream = build_upstream(entry, str(ckpt)).to(device).eval()
        # FLOPs do not depend on the precision: counted once, in fp32
        models[entry] = (upstream, 2 * count_macs(upstream, profile_waves(sizes.upstream_seconds, sizes.upstream_batch,
                                                                          device))[0])
    upstream, flops = models[entry]
    model = in_precision(entry, upstream, ckpt, precision, device)
    wavs = profile_waves(sizes.upstream_seconds, sizes.upstream_batch, device)
    sync = device_synchronizer(device)
    samples = forward_time_samples({entry: model}, wavs, sizes.upstream_repeats, sizes.upstream_warmup, sync)[entry]
    median = statistics.median(samples)
    meter = MemoryMeter(device)
    meter.start()
    with torch.no_grad():
        upstream_features(model, wavs)
    memory = meter.peak()
    audio = sizes.upstream_batch * sizes.upstream_seconds
    row = {"case": f"{entry}/{precision}", "upstream": entry, "precision": precision, "ckpt": ckpt.name,
           "parameters": sum(p.numel() for p in upstream.parameters()), "batch": sizes.upstream_batch,
           "seconds_each": sizes.upstream_seconds, "forward_s": [round(s, 6) for s in samples],
           "median_forward_s": median, "audio_seconds_per_s": audio / median, "model_flops_per_forward": flops,
           "mfu": flops / median / peak_for(precision, peaks), "memory": memory,
           **forward_breakdown(model, wavs, device, sizes.upstream_repeats)}
    # A padded batch, as SUPERB's are: the masked paths run (padding masks, which also decide the fused attention
    # kernel CUDA can use). A failure here (these paths had not run on a GPU before) keeps the timings above.
    padded = profile_waves(sizes.upstream_seconds, sizes.upstream_batch, device, uneven=True)
    row["padded_batch_s"] = [round(len(wave) / SAMPLE_RATE, 3) for wave in padded]
    try:
        padded_samples = forward_time_samples({entry: model}, padded, sizes.upstream_repeats, sizes.upstream_warmup,
                                              sync)[entry]
        row["padded_median_forward_s"] = statistics.median(padded_samples)
    except Exception as exc:  # noqa: BLE001 - recorded in the row
        row["padded_error"] = _error(exc)
    if precision != "fp32":
        try:
            row["deviation_vs_fp32"] = deviation_vs_fp32(upstream, model, padded, device)
        except Exception as exc:  # noqa: BLE001 - recorded in the row
            row["deviation_vs_fp32"] = {"error": _error(exc)}
    return row


def deviation_vs_fp32(fp32, model, wavs, device) -> Dict[str, Any]:
    """``model``'s hidden states against the fp32 upstream's on the same padded batch and device, per state
    (``profiling.state_deviations``): the worst element's and the typical element's error over the fp32 state's rms.
    The fp32 reference runs with TF32 off (cuDNN's default would let its convolutions round to TF32)."""
    import torch

    from s3prl_distill.profiling import state_deviations, upstream_features

    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        with torch.no_grad():
            reference = upstream_features(fp32, wavs)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    with torch.no_grad():
        states = upstream_features(model, wavs)
    rows = state_deviations(reference, states)
    return {"relative": [round(row["relative"], 5) for row in rows],
            "mean_abs_relative": [round(row["mean_abs_relative"], 6) for row in rows],
            "worst_relative": max(row["relative"] for row in rows),
            "worst_mean_abs_relative": max(row["mean_abs_relative"] for row in rows),
            "device": device.type}


def forward_breakdown(model, wavs, device, repeats: int, top: int = 8) -> Dict[str, Any]:
    """Where one forward's time goes, to tell a launch-bound forward from a compute-bound one.

    ``host_forward_s``: median time until the forward call returns, the device synchronised before the clock starts
    but not before it stops: on CUDA, when this is close to ``median_forward_s`` the host's op dispatch and kernel
    launches are the bottleneck, not the GPU (on a CPU the two are the same). From one profiled forward
    (``torch.profiler``): ``ops``, the aten ops the host dispatched (every level: autocast's casts run inside
    ``aten::linear``), ``casts`` (``aten::_to_copy``, dtype conversions among them), ``device_kernels`` (CUDA kernels
    and copies; None on a CPU) and the ``top`` entries by self time on the device (the CPU's self time on a CPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from s3prl_distill.profiling import device_synchronizer, upstream_features

    sync = device_synchronizer(device)
    cuda = device.type == "cuda"
    host = []
    with torch.no_grad():
        for _ in range(max(repeats, 1)):
            sync()
            start = time.perf_counter()
            upstream_features(model, wavs)
            host.append(time.perf_counter() - start)
            sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            upstream_features(model, wavs)
            sync()
    events = list(prof.events())
    kernels = [event for event in events if event.device_type == torch.autograd.DeviceType.CUDA]
    ops = [event for event in events if event.device_type == torch.autograd.DeviceType.CPU
           and event.name.startswith("aten::")]

    def self_time_us(average) -> float:  # the device's self time where one is recorded, else the CPU's
        if cuda:
            return getattr(average, "self_device_time_total", getattr(average, "self_cuda_time_total", 0.0))
        return average.self_cpu_time_total

    averages = [average for average in prof.key_averages() if self_time_us(average) > 0]
    averages.sort(key=self_time_us, reverse=True)
    return {"host_forward_s": statistics.median(host), "ops": len(ops),
            "casts": sum(1 for event in ops if event.name == "aten::_to_copy"),
            "device_kernels": len(kernels) if cuda else None,
            "top_self_time": [{"name": average.key[:120], "calls": average.count,
                               "self_ms": round(self_time_us(average) / 1e3, 4)} for average in averages[:top]]}


# --- the run -----------------------------------------------------------------------------------------------------------

class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def used(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, estimate: float) -> bool:
        return self.used() + estimate <= self.seconds


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True, choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="toy sizes: every code path, no meaningful figures")
    parser.add_argument("--out", required=True, type=Path, help="the JSON file to write (rewritten after every case)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="time for all cases (default: 270 on CUDA, 80 with --quick); later cases are skipped")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: 1 with --device cpu --quick, where toy ops only pay "
                             "for threads on a shared machine; else torch's)")
    parser.add_argument("--only", choices=["training", "upstreams"], default=None, help="run one part only")
    args = parser.parse_args(argv)
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.device == "cpu":
        # Before CUDA is first touched: the trainer trains on CUDA whenever it is available.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    from s3prl_distill.profiler import gemm_peak

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"--device cuda: CUDA is not available in this torch ({torch.__version__})", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    threads = args.threads or (1 if args.quick and args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    sizes = sizes_for(args.device, args.quick)
    budget = Budget(args.budget_s if args.budget_s is not None else sizes.budget_s)
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    main_precision, reference_precision = ("bf16", "fp32") if args.device == "cuda" else ("fp32", "bf16")

    from pretrain_throughput import StepTimer
    from s3prl_distill.pretrain.runner import Trainer

    result = Result(args.out, {
        "benchmark": "gpu_speed", "status": "running", "quick": args.quick, "environment": environment(device),
        "settings": {**vars(sizes), "budget_s": budget.seconds, "main_precision": main_precision,
                     "reference_precision": reference_precision},
        "methods": {
            "peak": "best of 3 timed batches of n x n x n GEMMs (each batch about 0.2 s) after warm-up, 2 n^3 "
                    "FLOPs each",
            "step_time": "time between consecutive per-step log lines of Trainer.train() (device synchronised "
                         "before each stamp); median over the steps after the warm-up steps",
            "model_flops": "FlopCounterMode (+ s3prl_distill.profiler's CPU attention formulas) over one eager fp32 "
                           "task.losses + backward() on one batch: student forward + backward, plus the teacher "
                           "forward when online; matmuls, convolutions and attention only (no element-wise ops, "
                           "norms, fbank or optimizer)",
            "mfu": "model_flops_per_step / median_step_s / peak: the fp32 GEMM peak for fp32 cases, the higher of "
                   "the bf16 and fp32 GEMM peaks for bf16 (autocast) cases; mfu_vs_bf16_peak: over the bf16 peak. "
                   "torch's defaults (environment tf32_*) run fp32 matmuls in full fp32 but let cuDNN convolutions use "
                   "TF32 tensor cores, so a convolution-heavy fp32 case can pass 1 against the strict-fp32 peak",
            "upstream_throughput": "seconds of audio per wall second: batch x seconds / median forward (forward + "
                                   "reading hidden_states), after warm-up; bf16 = the forward under torch.autocast",
            "padded": "per upstream case: padded_median_forward_s, the median forward over a padded batch of the same "
                      "size (padded_batch_s: utterance i cut to 1 - 0.12 i of the length, at least a quarter), as "
                      "SUPERB's batches are: the masked paths run, and a padding mask rules out some fused attention "
                      "kernels on CUDA",
            "deviation_vs_fp32": "per bf16 upstream case, on the padded batch: per hidden state max |bf16 - fp32| "
                                 "(relative) and mean |bf16 - fp32| (mean_abs_relative) over the fp32 state's rms, "
                                 "the fp32 reference on the same device with TF32 off",
            "forward_breakdown": "per upstream case: host_forward_s (median time until the forward returns, no "
                                 "synchronisation at the end: near median_forward_s on CUDA means launch-bound), and "
                                 "from one torch.profiler forward: aten ops dispatched (all levels), casts "
                                 "(aten::_to_copy), CUDA kernels, the top ops by self device (CPU: host) time",
            "memory": MemoryMeter(device).method,
        },
        "peaks": {}, "training": [], "upstreams": [], "skipped": [], "errors": [],
    })
    data = result.data
    ran = 0
    try:
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            try:
                # The profiler's GEMM peak: each product timed on its own (synchronised on CUDA), the median rate.
                data["peaks"][name] = gemm_peak(dtype, seconds=1.0, size=sizes.gemm, device=str(device))
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                data["errors"].append({"case": f"peak/{name}", **_error(exc)})
            result.write()
        peaks = {name: value["gflops"] * 1e9 for name, value in data["peaks"].items()}
        if set(peaks) != {"bf16", "fp32"}:
            raise RuntimeError("the GEMM peaks could not be measured: no MFU can be computed")

        timer = StepTimer()
        runner_log = logging.getLogger(Trainer.__module__)  # its per-step log lines
        runner_log.addHandler(timer)
        runner_log.setLevel(logging.INFO)
        runner_log.propagate = False  # the per-step lines are for the timer, not the terminal
        with tempfile.TemporaryDirectory(prefix="gpu_speed-") as folder:
            folder = Path(folder)
            cases = training_cases(main_precision, reference_precision, args.quick)
            space = Workspace(folder / "train", sizes, device) if args.only in (None, "training") else None
            flops: Dict[str, Dict[str, Any]] = {}

            def train(chosen: List[TrainCase]) -> int:
                done = 0
                for case in chosen:
                    if not budget.allows(sizes.estimate_s[case.kind]):
                        data["skipped"].append({"case": case.name, "reason": f"time budget: {budget.used():.0f} s of "
                                                f"{budget.seconds:.0f} s used, about {sizes.estimate_s[case.kind]:.0f}"
                                                " s needed"})
                        result.write()
                        continue
                    logger.info("training %s (%.0f s used)", case.name, budget.used())
                    start = time.perf_counter()
                    try:
                        row = run_training_case(case, space, peaks, flops, timer)
                        done += 1
                    except Exception as exc:  # noqa: BLE001
                        row = {"case": case.name, "error": _error(exc)}
                        data["errors"].append({"case": f"training/{case.name}", **_error(exc)})
                    row["wall_s"] = round(time.perf_counter() - start, 3)
                    data["training"].append(row)
                    result.write()
                    if device.type == "cuda":
                        gc.collect()
                        torch.cuda.empty_cache()
                return done

            if space is not None:
                ran += train([case for case in cases if not case.compile])
            if args.only in (None, "upstreams"):
                (folder / "upstreams").mkdir()
                plan = upstream_plan(args.quick)
                data["uncovered_upstream_families"] = uncovered_families(list(plan))
                checkpoints: Dict[str, Path] = {}
                models: Dict[str, Any] = {}
                for entry in [*plan, *SAME_WEIGHTS]:
                    for precision in ("fp32", "bf16"):
                        name = f"{entry}/{precision}"
                        if not budget.allows(sizes.estimate_s["upstream"]):
                            data["skipped"].append({"case": name, "reason": f"time budget: {budget.used():.0f} s of "
                                                    f"{budget.seconds:.0f} s used"})
                            continue
                        start = time.perf_counter()
                        try:
                            source = SAME_WEIGHTS.get(entry, entry)
                            if source not in checkpoints:  # written when first needed: none for skipped cases
                                checkpoints[source] = write_upstream_checkpoint(folder / "upstreams", source,
                                                                                *plan[source])
                            row = run_upstream_case(entry, checkpoints[source], precision, sizes, device, peaks,
                                                    models)
                            ran += 1
                        except Exception as exc:  # noqa: BLE001
                            row = {"case": name, "error": _error(exc)}
                            data["errors"].append({"case": f"upstream/{name}", **_error(exc)})
                        row["wall_s"] = round(time.perf_counter() - start, 3)
                        data["upstreams"].append(row)
                        result.write()
                models.clear()
            if space is not None:
                ran += train([case for case in cases if case.compile])
        data["status"] = "complete" if not data["skipped"] else "budget_exhausted"
    except Exception as exc:  # noqa: BLE001 - whatever stopped the run is recorded
        data["status"] = "failed"
        data["errors"].append({"case": "run", **_error(exc)})
    finally:
        data["wall_s"] = round(budget.used(), 3)
        data["cases_ran"] = ran
        result.write()
    summary(data)
    return 0 if ran else 1


def summary(data: Dict[str, Any]) -> None:
    """The table on stdout."""
    for name, peak in data["peaks"].items():
        print(f"peak {name}: {peak['gflops'] / 1e3:.2f} TFLOP/s (GEMM {peak['size']})")
    for row in data["training"]:
        if "error" in row:
            print(f"{row['case']:40s} ERROR {row['error']['type']}: {row['error']['message'][:120]}")
            continue
        mfu = row.get("mfu")
        print(f"{row['case']:40s} {row['median_step_s'] * 1000:9.1f} ms/step {row['audio_seconds_per_s']:9.1f} audio-s/s"
              f"  MFU {'-' if mfu is None else f'{mfu:.3f}'}")
    for row in data["upstreams"]:
        if "error" in row:
            print(f"{row['case']:40s} ERROR {row['error']['type']}: {row['error']['message'][:120]}")
            continue
        print(f"{row['case']:40s} {row['median_forward_s'] * 1000:9.1f} ms/fwd  {row['audio_seconds_per_s']:9.1f} "
              f"audio-s/s  MFU {row['mfu']:.3f}  host {row['host_forward_s'] * 1000:.1f} ms, {row['ops']} ops, "
              f"{row['casts']} casts; padded "
              + (f"{row['padded_median_forward_s'] * 1000:.1f} ms/fwd" if "padded_median_forward_s" in row else
                 "failed")
              + (f", max dev. {row['deviation_vs_fp32']['worst_relative']:.3f} of rms"
                 if "worst_relative" in row.get("deviation_vs_fp32", {}) else "")
              + (", deviation failed" if "error" in row.get("deviation_vs_fp32", {}) else ""))
    for row in data["skipped"]:
        print(f"{row['case']:40s} skipped: {row['reason']}")
    print(f"status {data['status']}, {data['cases_ran']} case(s) ran in {data['wall_s']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
