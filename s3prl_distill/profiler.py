"""Efficiency profile of s3prl upstreams (``s3prl-distill profile``): parameters, multiply-accumulates, latency,
real-time factor and peak memory of the forward pass, all measured in one run, so that ratios to a reference
upstream (``--vs``) compare like with like.

- **Parameters**: every parameter of the module the s3prl entry returns ("with heads"). "Backbone" leaves out the
  training-only heads of our ``StudentModel`` (``num_parameters()``); for any other upstream no split is known and
  backbone = total (the output says which).
- **MACs**: torch's own ``FlopCounterMode`` on one utterance of each length, MACs = FLOPs / 2. It counts only the
  ops it has formulas for (matmuls, convolutions, attention); we add the CPU attention kernel torch lacks a formula
  for, so SDPA is counted on CPU as it is on CUDA.
- **Latency**: warm-up forwards, then the median of ``repeats`` forwards, models interleaved round-robin
  (:func:`s3prl_distill.profiling.forward_time_samples`); real-time factor = latency / seconds of audio in the batch.
- **Peak memory**: measured in a fresh process per upstream, after one warm-up forward. CPU: the growth of the
  process's peak resident set size (Linux ``VmHWM``, reset just before the forward) over its resident size before
  it. CUDA: ``torch.cuda.max_memory_allocated`` growth over ``memory_allocated`` before the forward.

This module measures; :mod:`s3prl_distill.profile_report` turns a result into ratios and the printed table.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .errors import UnknownUpstreamError
from .profile_report import format_table, ratios
from .profiling import (DEFAULT_FEATURE, cpu_name, device_synchronizer, forward_time_samples, load_average,
                        upstream_features)
from .registry import build_upstream, check_upstream_names

# UnknownUpstreamError (raised through check_upstream_names) and the report's functions are importable from here.
__all__ = [
    "DEFAULT_SECONDS", "MEMORY_METHOD", "PEAK_GEMM_SIZE", "SAMPLE_RATE", "UnknownUpstreamError", "UpstreamSpec",
    "bf16_gemm_supported", "count_macs", "cpu_name", "extra_flop_formulas", "format_table", "fraction_of_peak",
    "gemm_peak", "length_key", "load_upstream", "machine_info", "measure_memory", "parameter_counts", "peak_rates",
    "process_memory_bytes", "profile_upstreams", "profile_waves", "ratios", "reset_peak_rss", "specs_from_lists",
]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DEFAULT_SECONDS = (10.0,)
NO_CKPT = ("", "-", "none", "None")  # placeholders in a -k/-g list for "this upstream takes none"


@dataclass(frozen=True)
class UpstreamSpec:
    """One s3prl upstream as ``run_downstream.py`` would build it: ``-u name -k ckpt -g model_config``."""

    name: str
    ckpt: Optional[str] = None
    model_config: Optional[str] = None
    label: Optional[str] = None

    @property
    def identity(self) -> Tuple[str, Optional[str], Optional[str]]:
        return (self.name, self.ckpt, self.model_config)


def specs_from_lists(
    names: Sequence[str], ckpts: Optional[Sequence[str]] = None, model_configs: Optional[Sequence[str]] = None
) -> List[UpstreamSpec]:
    """Pair ``-u`` names with ``-k`` / ``-g`` values given in the same order (``-`` or ``none`` for "no value")."""

    def column(values: Optional[Sequence[str]], option: str) -> List[Optional[str]]:
        if not values:
            return [None] * len(names)
        if len(values) != len(names):
            raise ValueError(f"{option} has {len(values)} values for {len(names)} upstreams: give one per -u, "
                             "'-' for an upstream that takes none")
        return [None if value in NO_CKPT else value for value in values]

    return [UpstreamSpec(name, ckpt, config)
            for name, ckpt, config in zip(names, column(ckpts, "-k/--ckpt"), column(model_configs, "-g"))]


def load_upstream(spec: UpstreamSpec) -> torch.nn.Module:
    """``getattr(s3prl.hub, name)(ckpt=..., model_config=..., refresh=False)``, with our upstreams registered."""
    return build_upstream(spec.name, spec.ckpt, spec.model_config, what="-u")


def parameter_counts(upstream: torch.nn.Module) -> Dict[str, Any]:
    """Total parameters of the upstream module, and its backbone without our students' training heads."""
    from s3prl_distill.model import StudentModel

    total = sum(p.numel() for p in upstream.parameters())
    students = [module for module in upstream.modules() if isinstance(module, StudentModel)]
    if not students:
        return {"with_heads": total, "backbone": total, "heads": 0,
                "split": "no head split known for this upstream: backbone = total"}
    heads = sum(m.num_parameters(include_heads=True) - m.num_parameters() for m in students)
    return {"with_heads": total, "backbone": total - heads, "heads": heads,
            "split": "backbone = total minus StudentModel training heads (prediction/front-end/codeword heads)"}


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # q @ k^T then scores @ v, 2 FLOPs per multiply-accumulate (torch's formula for its CUDA attention kernels).
    *batch, queries, head_dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    rows = math.prod(batch)
    return 2 * rows * queries * keys * head_dim + 2 * rows * queries * keys * value_dim


def _attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                              **kwargs) -> int:
    # What torch counts for its CUDA attention backward: the scores recomputed (q k^T), then the gradients of the
    # scores (dO v^T), of v (P^T dO), of q (dS k) and of k (dS^T q); 2 FLOPs per multiply-accumulate.
    *batch, queries, head_dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    products = queries * keys * (head_dim + value_dim + value_dim + head_dim + head_dim)
    return 2 * math.prod(batch) * products


def extra_flop_formulas() -> Dict[Any, Any]:
    """Formulas for ops torch's counter skips, for ``FlopCounterMode(custom_mapping=...)``. On CPU,
    scaled_dot_product_attention lowers to a kernel (and, in training, a backward kernel) with no formula, so
    attention would count as free; each is added only where this torch lacks it."""
    from torch.utils.flop_counter import flop_registry

    extra = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _attention_flops),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _attention_backward_flops)):
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and packet not in flop_registry:
            extra[packet] = formula
    return extra


def _tensors_needing_grad(upstream: torch.nn.Module) -> List[torch.Tensor]:
    """Leaf tensors of ``upstream`` that require grad: parameters, buffers and plain tensor attributes of its
    modules (each once)."""
    found: Dict[int, torch.Tensor] = {}
    for module in upstream.modules():
        stored = [*module._parameters.values(), *module._buffers.values(),
                  *(value for value in vars(module).values() if isinstance(value, torch.Tensor))]
        for tensor in stored:
            if tensor is not None and tensor.requires_grad and tensor.is_leaf:
                found.setdefault(id(tensor), tensor)
    return list(found.values())


@contextmanager
def _nothing_needs_grad(upstream: torch.nn.Module) -> Iterator[None]:
    """``requires_grad`` off on every tensor ``upstream`` holds for the duration, then restored.

    ``FlopCounterMode``'s module tracker registers a backward hook on every module input / output that requires
    grad. Under ``no_grad`` a view of a tensor that requires grad (a parameter slice or transpose handed to a
    submodule) still requires grad but has neither a grad_fn nor a gradient accumulator, and torch's
    ``register_multi_grad_hook`` fails on it (``AssertionError: Expected gradient function to be set``). With no
    tensor requiring grad the tracker hooks nothing; the ops run, and so the counts, are the same."""
    frozen = _tensors_needing_grad(upstream)
    try:
        for tensor in frozen:
            tensor.requires_grad_(False)
        yield
    finally:
        for tensor in frozen:
            tensor.requires_grad_(True)


def count_macs(upstream: torch.nn.Module, wavs: List[torch.Tensor],
               feature: Optional[str] = DEFAULT_FEATURE) -> Tuple[int, Dict[str, int]]:
    """Multiply-accumulates of one forward on ``wavs`` and reading ``feature`` (FLOPs / 2 from ``FlopCounterMode``),
    total and per op. Counted under ``no_grad`` with no tensor of the upstream (nor the input) requiring grad, so
    that torch's module tracker never needs a backward hook (see :func:`_nothing_needs_grad`)."""
    from torch.utils.flop_counter import FlopCounterMode

    wavs = [wav.detach() for wav in wavs]
    with _nothing_needs_grad(upstream), torch.no_grad(), \
            FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
        upstream_features(upstream, wavs, feature)
    by_op = {str(op): flops // 2 for op, flops in counter.get_flop_counts().get("Global", {}).items()}
    return counter.get_total_flops() // 2, by_op


PEAK_GEMM_SIZE = 2048  # square fp32 operands of 16 MiB each: large enough for torch's GEMM to run at full rate


def bf16_gemm_supported() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX) for oneDNN; elsewhere a bf16 GEMM
    is emulated and its rate says nothing about the machine's peak."""
    checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(checker()) if checker is not None else False
    except RuntimeError:
        return False


def gemm_peak(dtype: torch.dtype = torch.float32, threads: Optional[int] = None, seconds: float = 2.0,
              size: int = PEAK_GEMM_SIZE, device: str = "cpu") -> Dict[str, Any]:
    """The matrix-multiply rate torch reaches here: ``size`` x ``size`` GEMMs (``torch.mm`` into a preallocated
    output) repeated for ``seconds`` after one warm-up call, each call timed on its own. FLOPs per call = 2 size^3.

    ``gflops`` is the median of the per-call rates (a noisy moment moves it less than a mean; the forwards it is
    compared with are medians too), ``gflops_max`` the fastest call. ``threads``: ``torch.set_num_threads`` while
    measuring (restored after; None keeps the current setting)."""
    if seconds <= 0 or size < 1:
        raise ValueError(f"gemm_peak needs seconds > 0 and size >= 1 (got {seconds}, {size})")
    target = torch.device(device)
    sync = device_synchronizer(target)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used_threads = torch.get_num_threads()
        generator = torch.Generator().manual_seed(0)
        left, right = (torch.randn(size, size, generator=generator).to(target, dtype) for _ in range(2))
        out = torch.empty(size, size, device=target, dtype=dtype)
        flops = 2 * size ** 3
        rates: List[float] = []
        with torch.no_grad():
            torch.mm(left, right, out=out)
            sync()
            began = time.perf_counter()
            while not rates or time.perf_counter() - began < seconds:
                start = time.perf_counter()
                torch.mm(left, right, out=out)
                sync()
                rates.append(flops / (time.perf_counter() - start) / 1e9)
    finally:
        torch.set_num_threads(previous_threads)
    logger.info("%s GEMM %d^3 on %d thread(s): %.1f GFLOP/s median of %d calls", dtype, size, used_threads,
                statistics.median(rates), len(rates))
    return {"dtype": str(dtype).replace("torch.", ""), "size": size, "threads": used_threads, "device": str(target),
            "seconds": seconds, "calls": len(rates), "gflops": statistics.median(rates), "gflops_max": max(rates),
            "gflops_samples": rates, "load_average": load_average()}


def fraction_of_peak(macs: int, latency_s: float, peak_gflops: float, batch: int = 1) -> float:
    """Achieved FLOP/s of a forward (2 FLOPs per multiply-accumulate, ``batch`` utterances of ``macs`` each, in
    ``latency_s``) over a GEMM rate in GFLOP/s."""
    if latency_s <= 0 or peak_gflops <= 0:
        raise ValueError(f"need a positive latency and peak (got {latency_s} s, {peak_gflops} GFLOP/s)")
    return 2 * macs * batch / latency_s / (peak_gflops * 1e9)


def peak_rates(before: Dict[str, Any], after: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One GEMM peak from :func:`gemm_peak` measurements taken before and after the forwards of a run: the median
    of all their per-call rates (``gflops``), with both measurements kept."""
    samples = list(before["gflops_samples"]) + (list(after["gflops_samples"]) if after else [])
    return {"dtype": before["dtype"], "size": before["size"], "threads": before["threads"],
            "gflops": statistics.median(samples), "gflops_max": max(samples), "before": before, "after": after,
            "method": f"median over {len(samples)} timed {before['size']}^3 torch.mm calls, measured before "
                      + ("and after " if after else "") + "the forwards in the same process"}


def profile_waves(seconds: float, batch: int, device: torch.device, seed: int = 0,
                  uneven: bool = False) -> List[torch.Tensor]:
    """``batch`` utterances of ``seconds`` of low-level noise: the same audio for every upstream.

    ``uneven``: a padded batch, as SUPERB's are, so the masked paths (padding masks, masked norm statistics) run:
    utterance ``i`` is the first ``1 - 0.12 i`` of its noise (10, 8.8, 7.6, 6.4 s for 4 x 10 s), at least a quarter
    of ``seconds``."""
    generator = torch.Generator().manual_seed(seed)
    samples = int(round(SAMPLE_RATE * seconds))
    waves = [0.1 * torch.randn(samples, generator=generator) for _ in range(batch)]
    if uneven:
        waves = [wave[: max(int(samples * (1.0 - 0.12 * index)), samples // 4)] for index, wave in enumerate(waves)]
    return [wave.to(device) for wave in waves]


def length_key(seconds: float) -> str:
    return f"{seconds:g}s"


def machine_info(device: torch.device, threads: int) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "cpu": cpu_name(), "device": str(device),
        "threads": threads, "interop_threads": torch.get_num_interop_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _labels(specs: Sequence[UpstreamSpec]) -> List[str]:
    """Row names: the given label, else the upstream name, else name + checkpoint file (+ ``-g`` file, e.g. a
    ``precision: bf16`` options file) where names repeat."""
    names = [spec.name for spec in specs]
    labels = []
    for spec in specs:
        label = spec.label or spec.name
        if not spec.label and names.count(spec.name) > 1 and spec.ckpt:
            label = f"{spec.name}:{Path(spec.ckpt).name}"
        if not spec.label and names.count(spec.name) > 1 and spec.model_config:
            label += f" -g {Path(spec.model_config).name}"
        base, index = label, 2
        while label in labels:
            label, index = f"{base}#{index}", index + 1
        labels.append(label)
    return labels


def profile_upstreams(
    specs: Sequence[UpstreamSpec],
    seconds: Sequence[float] = DEFAULT_SECONDS,
    batch: int = 1,
    threads: Optional[int] = None,
    repeats: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    reference: Optional[UpstreamSpec] = None,
    memory: bool = True,
    feature: Optional[str] = DEFAULT_FEATURE,
    peak: bool = False,
    peak_seconds: float = 2.0,
) -> Dict[str, Any]:
    """Parameters, MACs (one utterance per length), latency and real-time factor (``batch`` utterances per length),
    and peak memory of each upstream, plus ratios to ``reference`` when given; everything from this one call.

    ``threads``: ``torch.set_num_threads`` for the whole run (default: torch's current setting), restored after.
    A reference equal to one of ``specs`` (same name, ckpt, config) is that very row, so its ratios are exactly 1.
    Every measured call is the forward plus reading ``feature`` (s3prl's ``-s``), as the downstream runner does.
    ``peak``: also measure the fp32 GEMM rate (:func:`gemm_peak`, ``peak_seconds`` before and after the forwards, same
    threads) and give each row its fraction of it: 2 x MACs x batch / latency / GEMM FLOP/s."""
    if not specs:
        raise ValueError("no upstream to profile")
    if not seconds or any(s <= 0 for s in seconds) or batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need positive seconds, batch >= 1, repeats >= 1, warmup >= 0 (got seconds={list(seconds)}, "
                         f"batch={batch}, repeats={repeats}, warmup={warmup})")
    if peak and peak_seconds <= 0:
        raise ValueError(f"--peak-seconds must be positive (got {peak_seconds})")
    target = torch.device(device)
    if target.type not in MEMORY_METHOD:
        raise ValueError(f"--device {device}: only cpu and cuda are supported")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available in this torch ({torch.__version__})")
    seconds = list(dict.fromkeys(float(s) for s in seconds))  # figures are keyed by length: one entry each
    specs = list(specs)
    reference_index = None
    if reference is not None:
        # Same identity = same row: the reference is timed once, so its ratio to itself is 1 by construction.
        matches = [i for i, spec in enumerate(specs) if spec.identity == reference.identity]
        if matches:
            reference_index = matches[0]
        else:
            specs.append(reference)
            reference_index = len(specs) - 1
    check_upstream_names([spec.name for spec in specs], what="-u")  # a typo in the last name fails before the first model loads
    labels = _labels(specs)
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    try:
        models: Dict[str, torch.nn.Module] = {}
        for label, spec in zip(labels, specs):
            logger.info("loading %s (%s, ckpt=%s)", label, spec.name, spec.ckpt)
            models[label] = load_upstream(spec).to(target).eval()
        rows = []
        for label, spec in zip(labels, specs):
            row: Dict[str, Any] = {"label": label, "upstream": spec.name, "ckpt": spec.ckpt,
                                   "model_config": spec.model_config, "class": _class_name(models[label]),
                                   "parameters": parameter_counts(models[label]), "macs": {}, "macs_by_op": {},
                                   "gmacs_per_audio_second": {}}
            for length in seconds:
                macs, by_op = count_macs(models[label], profile_waves(length, 1, target), feature)
                row["macs"][length_key(length)] = macs
                row["macs_by_op"][length_key(length)] = by_op
                row["gmacs_per_audio_second"][length_key(length)] = macs / length / 1e9
            rows.append(row)
        sync = device_synchronizer(target)
        peak_before = gemm_peak(torch.float32, threads, peak_seconds, device=str(target)) if peak else None
        for length in seconds:
            logger.info("timing %d upstream(s) on %d x %g s, %d threads", len(models), batch, length, threads)
            samples = forward_time_samples(models, profile_waves(length, batch, target), repeats, warmup, sync,
                                           feature)
            for row in rows:
                latency = statistics.median(samples[row["label"]])
                row.setdefault("latency_s", {})[length_key(length)] = latency
                row.setdefault("latency_samples_s", {})[length_key(length)] = samples[row["label"]]
                row.setdefault("rtf", {})[length_key(length)] = latency / (batch * length)
        peak_result = (peak_rates(peak_before, gemm_peak(torch.float32, threads, peak_seconds, device=str(target)))
                       if peak_before is not None else None)
        if peak_result is not None:
            for row in rows:
                row["fraction_of_peak"] = {key: fraction_of_peak(row["macs"][key], row["latency_s"][key],
                                                                 peak_result["gflops"], batch)
                                           for key in row["macs"]}
        if memory:
            del models  # the workers load their own copy; free this one first
            gc.collect()
            if target.type == "cuda":
                torch.cuda.empty_cache()
            for row, spec in zip(rows, specs):
                logger.info("peak memory of %s (fresh process)", row["label"])
                row["memory"] = measure_memory(spec, seconds, batch, threads, str(target), feature=feature)
    finally:
        torch.set_num_threads(previous_threads)
    result: Dict[str, Any] = {
        "tool": "s3prl-distill profile",
        "environment": machine_info(target, threads),
        "settings": {"seconds": list(seconds), "batch": batch, "repeats": repeats, "warmup": warmup, "feature": feature,
                     "sample_rate": SAMPLE_RATE, "macs": "FlopCounterMode on 1 utterance per length, MACs = FLOPs/2",
                     "latency": f"median of {repeats} forwards of {batch} utterance(s) after {warmup} warm-up, "
                                "upstreams interleaved round-robin",
                     "rtf": "latency / (batch x seconds)",
                     "memory": MEMORY_METHOD[target.type] if memory else None},
        "reference": labels[reference_index] if reference_index is not None else None,
        "upstreams": rows,
    }
    if peak_result is not None:
        result["peak"] = peak_result
        result["settings"]["fraction_of_peak"] = ("2 x MACs x batch / latency / fp32 GEMM FLOP/s (peak.gflops), "
                                                  "all measured in this run")
    if reference_index is not None:
        for row in rows:
            row["vs_reference"] = ratios(row, rows[reference_index])
    return result


MEMORY_METHOD = {
    "cpu": "fresh process per upstream; after 1 warm-up forward, peak RSS (VmHWM, reset before the forward) minus "
           "RSS before it; glibc returns freed blocks >= 64 KiB so earlier forwards do not hide the peak",
    "cuda": "fresh process per upstream; after 1 warm-up forward, torch.cuda.max_memory_allocated minus "
            "memory_allocated before the forward (tensor memory only, not the caching allocator's reserve)",
}


def _class_name(module: torch.nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def measure_memory(spec: UpstreamSpec, seconds: Sequence[float], batch: int, threads: int,
                   device: str = "cpu", timeout: float = 1800,
                   feature: Optional[str] = DEFAULT_FEATURE) -> Dict[str, Any]:
    """Peak memory of the forward on each length, in a fresh process (see :data:`MEMORY_METHOD`)."""
    payload = json.dumps({"name": spec.name, "ckpt": spec.ckpt, "model_config": spec.model_config,
                          "seconds": list(seconds), "batch": batch, "threads": threads, "device": device,
                          "feature": feature})
    env = dict(os.environ)
    # glibc: blocks of >= 64 KiB come from mmap and go back to the OS when freed, so the warm-up forward's freed
    # activations are not still resident (which would hide the measured forward's peak).
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["MALLOC_TRIM_THRESHOLD_"] = "0"
    done = subprocess.run([sys.executable, "-m", "s3prl_distill.profiler", "--memory-worker", payload],
                          env=env, capture_output=True, text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"memory measurement of {spec.name} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def process_memory_bytes(field: str) -> Optional[int]:
    """A size field of Linux ``/proc/self/status`` in bytes (e.g. ``VmRSS``, ``VmHWM``); None where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the peak resident set size (``VmHWM``) to the current one; False where the system cannot."""
    # Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0).
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _memory_worker(payload: Dict[str, Any]) -> Dict[str, Any]:
    device = torch.device(payload["device"])
    torch.set_num_threads(payload["threads"])
    spec = UpstreamSpec(payload["name"], payload["ckpt"], payload["model_config"])
    model = load_upstream(spec).to(device).eval()
    forward, baseline, peak = {}, {}, {}
    method = "cuda_max_memory_allocated" if device.type == "cuda" else "rss_vmhwm"

    def run(wavs: List[torch.Tensor]) -> None:
        upstream_features(model, wavs, payload["feature"])
    with torch.no_grad():
        for length in payload["seconds"]:
            key = length_key(length)
            wavs = profile_waves(length, payload["batch"], device)
            run(wavs)  # warm-up: one-time allocations (thread pools, kernel caches) are not the forward's
            gc.collect()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                baseline[key] = torch.cuda.memory_allocated(device)
                run(wavs)
                torch.cuda.synchronize(device)
                peak[key] = torch.cuda.max_memory_allocated(device)
            else:
                _trim_heap()
                if reset_peak_rss() and process_memory_bytes("VmRSS") is not None:
                    baseline[key] = process_memory_bytes("VmRSS")
                    run(wavs)
                    peak[key] = process_memory_bytes("VmHWM")
                else:
                    # No resettable peak (not Linux): ru_maxrss only rises, so this is a lower bound.
                    method = "ru_maxrss_lower_bound"
                    scale = 1 if sys.platform == "darwin" else 1024
                    baseline[key] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
                    run(wavs)
                    peak[key] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            forward[key] = max(0, peak[key] - baseline[key])
            del wavs
    return {"method": method, "forward_peak_bytes": forward, "baseline_bytes": baseline, "process_peak_bytes": peak}


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--memory-worker":
        print(json.dumps(_memory_worker(json.loads(argv[1]))))
        return
    raise SystemExit("internal entry point (memory worker); use `s3prl-distill profile`")


if __name__ == "__main__":
    main()
