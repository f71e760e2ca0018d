"""How close each upstream's CPU forward could come to the GEMM peak at its own matrix shapes: the ceiling for the
fraction-of-peak figure of ``cpu_peak.py``.

The fraction of peak counts only matrix products, convolutions and attention (FlopCounterMode's ops) and divides
their FLOPs by the forward's whole time. Two things keep it below 1: the uncounted work (norms, activations, copies,
the fbank) and the counted ops themselves running slower than the peak's large square GEMM at the model's shapes (a
480-wide layer, a 3-tap convolution over 256 channels, 40-wide attention heads). This script separates the two.
For every family (the same random checkpoints as ``cpu_peak.py``, loaded through their s3prl entries) it

1. records every counted op of one forward with its exact operand shapes, strides and dtype (a dispatch mode, the
   same ops FlopCounterMode counts);
2. times each distinct call alone on fresh operands of that layout (median of ``--repeats`` after a warm-up), in the
   same process and thread count as the forwards, and adds them up with their multiplicity: the time the forward
   would take if everything but these ops were free;
3. reports ``fraction`` = counted FLOPs / forward time / fp32 GEMM peak (``cpu_peak.py``'s figure), ``ceiling`` =
   counted FLOPs / that sum / the same peak, and ``counted_share`` = the sum / forward time.

A family whose ``ceiling`` is below a target cannot reach the target by removing overhead: only other kernels or
other shapes would. The GEMM peak is measured before and after, as in ``cpu_peak.py``.

Where the rest goes: every op of ``--repeats`` more forwards is timed under a dispatch mode. ``uncounted_ops`` lists
the ops the fraction does not count (softmax, GELU, copies, norms, ...) with their time per forward and share of it;
``counted_ops_in_forward_s`` is the counted ops' time inside the forward, to set against their replay alone.

A host that slows down between a model's forwards and its replay would read as a share (or ceiling) that is off:
a short GEMM probe (``--probe-seconds``) runs just before each, and ``host_drift`` is the replay's rate over the
forwards'. A model whose drift is beyond 5 % or whose share is above 1 is measured again (``--retries``), the
steadiest measurement kept; the table marks one that stays so.

    python benchmarks/shape_ceiling.py [--seconds 10] [--batch 4] [--threads 2] [--repeats 5] [--only ENTRY ...]
"""

from __future__ import annotations

import functools
import json
import logging
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from inference_ratio import host_moved, paper_size_parser, steadiest, write_paper_checkpoints
from s3prl_distill.profiler import (UpstreamSpec, count_macs, extra_flop_formulas, fraction_of_peak, gemm_peak,
                                    load_upstream, peak_rates, profile_waves)
from s3prl_distill.profiling import forward_time_samples, load_average, upstream_features

logger = logging.getLogger("shape_ceiling")


class TensorLayout(tuple):
    """(shape, stride, dtype) of an operand: what a replay allocates in its place."""

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "TensorLayout":
        return cls((tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype))

    def allocate(self, generator: torch.Generator) -> torch.Tensor:
        shape, stride, dtype = self
        tensor = torch.empty_strided(shape, stride, dtype=dtype)
        if dtype.is_floating_point:
            # fill the whole storage the strides reach, not only the view (a broadcast stride of 0 reaches one value)
            tensor.as_strided((tensor.untyped_storage().nbytes() // tensor.element_size(),), (1,)).normal_(
                generator=generator)
        else:
            tensor.zero_()
        return tensor


Call = Tuple[Any, tuple, tuple]  # (op, args, sorted kwargs items) with tensors replaced by their TensorLayout


class CountedOps(TorchDispatchMode):
    """Records each call of an op FlopCounterMode counts (plus our CPU attention formulas), with its operands'
    layouts; the ops still run, so the forward's outputs are unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.counted = set(flop_registry) | set(extra_flop_formulas())
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in self.counted:
            keywords = tuple(sorted((key, frozen(value)) for key, value in kwargs.items()))
            self.calls[(func, frozen(tuple(args)), keywords)] += 1
        return func(*args, **kwargs)


def frozen(value: Any) -> Any:
    """``value`` as a hashable record: tensors as their :class:`TensorLayout`, lists as tuples."""
    if isinstance(value, torch.Tensor):
        return TensorLayout.of(value)
    if isinstance(value, (list, tuple)):
        return tuple(frozen(item) for item in value)
    return value


def materialise(value: Any, generator: torch.Generator) -> Any:
    """The inverse of :func:`frozen`: fresh tensors in place of layouts (random values), lists in place of tuples."""
    if isinstance(value, TensorLayout):
        return value.allocate(generator)
    if isinstance(value, tuple):
        return [materialise(item, generator) for item in value]
    return value


def replay(call: Call, repeats: int, generator: torch.Generator) -> Tuple[float, int]:
    """The call alone on fresh operands of the recorded layouts: median seconds of ``repeats`` calls after one
    warm-up call, and the FLOPs FlopCounterMode counts for it."""
    func, args, kwargs = call
    operands = materialise(args, generator)
    keywords = {key: materialise(value, generator) for key, value in kwargs}
    samples = []
    with torch.no_grad():
        with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
            func(*operands, **keywords)  # the warm-up call, counted
        for _ in range(repeats):
            start = time.perf_counter()
            func(*operands, **keywords)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples), counter.get_total_flops()


class TimedOps(TorchDispatchMode):
    """Wall time of every op call made under it, summed per op: where a forward's time goes, counted ops or not.
    Each call is timed from Python around its kernel, so a view's few microseconds of dispatch count too."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: Counter = Counter()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds[func.overloadpacket] += time.perf_counter() - start
        self.calls[func.overloadpacket] += 1
        return out


def op_times(upstream: torch.nn.Module, wavs: List[torch.Tensor], forwards: int, forward_s: float,
             top: int = 8) -> Dict[str, Any]:
    """Every op of ``forwards`` forwards timed under :class:`TimedOps` (after the caller's warm-up), per forward:
    the counted ops' time inside the forward (against their replay alone: what the forward's cache and memory state
    costs them), and the ops FlopCounterMode does not count, with ``seconds`` and ``share_of_forward`` of
    ``forward_s`` (the plain forward's median) for the ``top`` slowest and the total over all of them."""
    counted = CountedOps().counted
    timer = TimedOps()
    with torch.no_grad(), timer:
        for _ in range(forwards):
            upstream_features(upstream, wavs)
    rows = [{"op": op.__name__, "calls": timer.calls[op] // forwards, "seconds": seconds / forwards,
             "share_of_forward": seconds / forwards / forward_s}
            for op, seconds in timer.seconds.items() if op not in counted]
    rows.sort(key=lambda row: row["seconds"], reverse=True)
    total = sum(row["seconds"] for row in rows)
    counted_s = sum(seconds for op, seconds in timer.seconds.items() if op in counted) / forwards
    return {"counted_ops_in_forward_s": counted_s, "uncounted_ops_s": total, "uncounted_share": total / forward_s,
            "uncounted_ops": rows[:top]}


def describe(call: Call) -> str:
    func, args, _ = call
    shapes = [list(item[0]) for item in args if isinstance(item, TensorLayout)]
    return f"{func.overloadpacket.__name__} {shapes}"


def measure(upstream: torch.nn.Module, wavs: List[torch.Tensor], repeats: int, top: int = 8,
            probe_seconds: float = 1.0) -> Dict[str, Any]:
    """Forward time, the uncounted ops' time and the counted ops' time alone for one upstream (see the module
    docstring), each of the forwards and the replay after a GEMM probe of ``probe_seconds``; the fractions of peak
    are added by :func:`with_fractions` once the run's peak is known."""
    generator = torch.Generator().manual_seed(0)
    upstream.eval()
    recorder = CountedOps()
    with torch.no_grad(), recorder:
        upstream_features(upstream, wavs)
    threads = torch.get_num_threads()
    at_forwards = gemm_peak(torch.float32, threads, probe_seconds)["gflops"]
    forward = forward_time_samples({"upstream": upstream}, wavs, repeats, warmup=1)["upstream"]
    latency = statistics.median(forward)
    uncounted = op_times(upstream, wavs, repeats, latency, top)
    macs, _ = count_macs(upstream, wavs)
    at_replay = gemm_peak(torch.float32, threads, probe_seconds)["gflops"]
    rows = []
    for call, count in recorder.calls.items():
        seconds, flops = replay(call, repeats, generator)
        rows.append({"op": describe(call), "calls": count, "seconds_each": seconds, "flops_each": flops})
    counted_s = sum(row["seconds_each"] * row["calls"] for row in rows)
    for row in rows:
        row["share_of_counted_time"] = row["seconds_each"] * row["calls"] / counted_s
    rows.sort(key=lambda row: row["share_of_counted_time"], reverse=True)
    return {"macs": macs, "replayed_flops": sum(row["flops_each"] * row["calls"] for row in rows),
            "forward_s": forward, "median_forward_s": latency, "counted_ops_s": counted_s,
            "counted_share": counted_s / latency, "distinct_calls": len(rows),
            "calls": sum(row["calls"] for row in rows), "top_ops": rows[:top], **uncounted,
            "gemm_gflops_at_forwards": at_forwards, "gemm_gflops_at_replay": at_replay,
            "host_drift": at_replay / at_forwards}


def suspect(row: Dict[str, Any]) -> bool:
    """Whether the host's speed moved between a model's forwards and its replay (GEMM probes more than 5 % apart),
    or the replay came out slower than the forward it was taken from (share above 1)."""
    return host_moved(row["host_drift"]) or row["counted_share"] > 1.0


def with_fractions(row: Dict[str, Any], peak_gflops: float) -> Dict[str, Any]:
    """``row`` from :func:`measure` with its fractions of an fp32 GEMM rate: ``fraction`` (counted FLOPs over the
    forward's time), ``ceiling`` (over the counted ops' time alone) and each top op's own."""
    row["fraction"] = fraction_of_peak(row["macs"], row["median_forward_s"], peak_gflops)
    row["ceiling"] = fraction_of_peak(row["macs"], row["counted_ops_s"], peak_gflops)
    for op in row["top_ops"]:
        op["fraction_of_peak"] = (fraction_of_peak(op["flops_each"] / 2, op["seconds_each"], peak_gflops)
                                  if op["seconds_each"] > 0 else None)
    return row


def main(argv: Optional[List[str]] = None) -> None:
    parser = paper_size_parser(__doc__.splitlines()[0], Path(__file__).parent / "results" / "shape_ceiling.json")
    parser.add_argument("--peak-seconds", type=float, default=5.0, help="GEMM seconds before and after the upstreams")
    parser.add_argument("--probe-seconds", type=float, default=1.0,
                        help="GEMM seconds before each model's forwards and before its replay (host_drift)")
    parser.add_argument("--retries", type=int, default=2,
                        help="measurements more of a model the host moved under (see suspect); the steadiest is kept")
    args = parser.parse_args(argv)
    for name in ("seconds", "batch", "threads", "repeats", "peak_seconds", "probe_seconds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.retries < 0:
        parser.error(f"--retries must be 0 or more, got {args.retries}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    load_before = load_average()
    wavs = profile_waves(args.seconds, args.batch, torch.device("cpu"))
    rows: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = write_paper_checkpoints(Path(folder), pruned=True,
                                              keep=lambda label, entry: not args.only or entry in args.only)
        if not checkpoints:
            parser.error(f"--only {' '.join(args.only)}: no such entry")
        before = gemm_peak(torch.float32, args.threads, args.peak_seconds)
        for label, (entry, path) in checkpoints.items():
            logger.info("%s", label)
            upstream = load_upstream(UpstreamSpec(entry, str(path), label=label))
            measurement = functools.partial(measure, upstream, wavs, args.repeats, probe_seconds=args.probe_seconds)
            rows[label] = {"entry": entry, **steadiest(measurement, args.retries, suspect, label)}
            del measurement
            del upstream
    after = gemm_peak(torch.float32, args.threads, args.peak_seconds)
    peak = peak_rates(before, after)  # the median of the GEMM calls before and after the upstreams
    for row in rows.values():
        with_fractions(row, peak["gflops"])
    result = {"benchmark": "shape_ceiling", "seconds": args.seconds, "batch": args.batch, "threads": args.threads,
              "repeats": args.repeats, "torch": torch.__version__, "peak_fp32": peak, "upstreams": rows,
              "load_average_before": load_before, "load_average_after": load_average()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"fp32 GEMM peak {peak['gflops']:.1f} GFLOP/s ({before['gflops']:.1f} before, {after['gflops']:.1f} after)")
    print(f"{'upstream':55s} {'GMACs':>7s} {'forward':>9s} {'counted':>9s} {'share':>6s} {'fraction':>8s} "
          f"{'ceiling':>8s} {'drift':>6s}  slowest uncounted ops (share of the forward)")
    for label, row in rows.items():
        slowest = ", ".join(f"{op['op']} {op['share_of_forward']:.3f}" for op in row["uncounted_ops"][:3])
        print(f"{label[:55]:55s} {row['macs'] / 1e9 / args.batch:7.1f} {row['median_forward_s']:8.2f}s "
              f"{row['counted_ops_s']:8.2f}s {row['counted_share']:6.2f} {row['fraction']:8.2f} {row['ceiling']:8.2f} "
              f"{row['host_drift']:6.2f}{'!' if row['suspect'] else ' '} {slowest}")
    if any(row["suspect"] for row in rows.values()):
        print(f"!: after {args.retries} more measurement(s), the host's GEMM rate still moved by more than 5 % between "
              "the forwards and the replay, or the replay was slower than the forward (share above 1): measure these "
              "again (--only ENTRY)")
    print(f"load average before {load_before}, after {result['load_average_after']}; json: {args.output}")


if __name__ == "__main__":
    main()
