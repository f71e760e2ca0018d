"""How close each upstream's CPU forward comes to the machine's GEMM peak, measured in one run.

Every family of our upstreams (and the HuBERT-Base-sized teacher and s3prl's ``distiller_local`` for reference) at
its paper's size with random weights, built through its s3prl entry from a checkpoint our code writes
(:func:`inference_ratio.write_paper_checkpoints`), is profiled by :func:`s3prl_distill.profiler.profile_upstreams`
with ``peak=True``: MACs by torch's FlopCounterMode, forwards interleaved round-robin, and the fp32 GEMM rate measured
before and after the forwards in the same process. Fraction of peak = 2 x MACs x batch / latency / fp32 GEMM FLOP/s.
The bf16 GEMM rate is recorded too where the CPU has native bf16 matrix instructions.

``--each``: every upstream profiled on its own instead, one after another in this process, as
``s3prl-distill profile --peak -u ENTRY -k CKPT`` profiles one: its forwards back to back, its own GEMM peak measured
just before and after them, its fraction against that peak (default output ``results/cpu_peak_each.json``). Round-robin
timing makes every forward follow another model's; one at a time, each model's timing window is a few seconds, so a
noisy phase of the host hits fewer rows. An upstream whose GEMM rates before and after its forwards differ by more
than 5 % (``host_drift``: the host's speed moved under it) is profiled again (``--retries``, default 2), the steadiest
profile kept (``attempts`` and ``suspect`` in its row; the table marks one that stays suspect).

``--each --runs N``: the whole ``--each`` pass N times, one after another, the order of the upstreams rotated each
time. A single row moves by about +-0.05 between runs minutes apart on a shared 2-core host, with every GEMM probe
steady, so one run cannot say on which side of a line like 0.8 a model is. Each row then carries every run's fraction
(``fraction_runs``), their median and range, and the other fields of the run whose fraction is the median (the lower
middle one for an even N); the table adds the range.

    python benchmarks/cpu_peak.py [--seconds 10] [--batch 4] [--threads 2] [--repeats 5] [--only fithubert ...]
        [--each [--retries 2] [--runs 1]]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

from inference_ratio import host_moved, paper_size_parser, steadiest, write_paper_checkpoints
from s3prl_distill.profiler import (UpstreamSpec, bf16_gemm_supported, format_table, gemm_peak, length_key,
                                    profile_upstreams)
from s3prl_distill.profiling import load_average, rotated

logger = logging.getLogger(__name__)


def main() -> None:
    parser = paper_size_parser(__doc__.splitlines()[0], Path(__file__).parent / "results" / "cpu_peak.json")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--peak-seconds", type=float, default=5.0, help="GEMM seconds before and after the forwards")
    parser.add_argument("--each", action="store_true", help="profile every upstream on its own, against its own peak")
    parser.add_argument("--retries", type=int, default=2,
                        help="with --each: profiles more of an upstream the host's speed moved under")
    parser.add_argument("--runs", type=int, default=1,
                        help="with --each: the whole pass this many times; each row reports the median run")
    args = parser.parse_args()
    if args.retries < 0:
        parser.error(f"--retries must be 0 or more, got {args.retries}")
    if args.runs < 1:
        parser.error(f"--runs must be 1 or more, got {args.runs}")
    if args.runs > 1 and not args.each:
        parser.error("--runs needs --each (a round-robin run has one GEMM peak for all its rows)")
    if args.each and args.output == parser.get_default("output"):
        args.output = args.output.with_name("cpu_peak_each.json")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    load_before = load_average()
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = write_paper_checkpoints(Path(folder), pruned=True,
                                              keep=lambda label, entry: not args.only or entry in args.only)
        specs = [UpstreamSpec(entry, str(path), label=label) for label, (entry, path) in checkpoints.items()]
        if args.each:
            result = profile_each_runs(specs, args)
        else:
            result = profile_upstreams(specs, [args.seconds], args.batch, args.threads, args.repeats, args.warmup,
                                       memory=False, peak=True, peak_seconds=args.peak_seconds)
    bf16 = bf16_gemm_supported()
    result["peak_bf16"] = (gemm_peak(torch.bfloat16, args.threads, args.peak_seconds) if bf16 else
                           "not measured: no native bf16 matrix instructions on this CPU (oneDNN would emulate)")
    result["benchmark"] = "cpu_peak"
    result["load_average_before"], result["load_average_after"] = load_before, load_average()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(each_table(result) if args.each else format_table(result))
    print(f"load average before {load_before}, after {result['load_average_after']}; json: {args.output}")


def profile_each(specs: List[UpstreamSpec], args: argparse.Namespace) -> Dict[str, Any]:
    """One :func:`profile_upstreams` call per upstream (with ``peak=True``): each row keeps its own ``peak``, and
    ``host_drift`` = its GEMM rate after the forwards / before; a row whose drift is beyond 5 % is profiled again
    (``args.retries`` times at most, :func:`inference_ratio.steadiest`)."""
    rows, runs = [], []

    def profile(spec: UpstreamSpec) -> Dict[str, Any]:
        run = profile_upstreams([spec], [args.seconds], args.batch, args.threads, args.repeats, args.warmup,
                                memory=False, peak=True, peak_seconds=args.peak_seconds)
        runs.append(run)
        peak = run["peak"]
        return {**run["upstreams"][0], "peak": peak,
                "host_drift": peak["after"]["gflops"] / peak["before"]["gflops"]}

    for spec in specs:
        rows.append(steadiest(functools.partial(profile, spec), args.retries, lambda row: host_moved(row["host_drift"]),
                              spec.label or spec.name))
    settings = {**runs[0]["settings"],
                "latency": f"median of {args.repeats} forwards of {args.batch} utterance(s) after {args.warmup} "
                           "warm-up, each upstream on its own (its forwards back to back)",
                "fraction_of_peak": "2 x MACs x batch / latency / the fp32 GEMM FLOP/s measured just before and "
                                    "after this upstream's forwards (its row's peak.gflops)"}
    return {"tool": runs[0]["tool"], "mode": "each", "environment": runs[0]["environment"], "settings": settings,
            "upstreams": rows}


def profile_each_runs(specs: List[UpstreamSpec], args: argparse.Namespace) -> Dict[str, Any]:
    """:func:`profile_each` ``args.runs`` times (the upstreams' order rotated by one each run, so none is always
    first after loading); with one run, its result unchanged. With more, every upstream's row is the one from the
    run with its median fraction (``statistics.median_low``), plus ``fraction_runs`` (every run's, in run order),
    ``fraction_median``, ``fraction_min`` and ``fraction_max`` per audio length."""
    if args.runs == 1:
        return profile_each(specs, args)
    labels = [spec.label or spec.name for spec in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--runs needs one label per upstream, got {labels}")
    runs = []
    for index in range(args.runs):
        logger.info("run %d of %d", index + 1, args.runs)
        runs.append(profile_each(rotated(specs, index), args))
    rows = []
    for label in labels:
        per_run = [next(row for row in run["upstreams"] if row["label"] == label) for run in runs]
        summary: Dict[str, Dict[str, Any]] = {"fraction_runs": {}, "fraction_median": {}, "fraction_min": {},
                                              "fraction_max": {}}
        for key in per_run[0]["fraction_of_peak"]:
            fractions = [row["fraction_of_peak"][key] for row in per_run]
            summary["fraction_runs"][key] = fractions
            summary["fraction_median"][key] = statistics.median(fractions)
            summary["fraction_min"][key], summary["fraction_max"][key] = min(fractions), max(fractions)
        first_key = next(iter(per_run[0]["fraction_of_peak"]))
        median = statistics.median_low(summary["fraction_runs"][first_key])
        median_row = next(row for row in per_run if row["fraction_of_peak"][first_key] == median)
        rows.append({**median_row, **summary, "median_run": per_run.index(median_row),
                     "attempts_runs": [row["attempts"] for row in per_run],
                     "suspect_runs": [row["suspect"] for row in per_run]})
    result = runs[0]
    settings = {**result["settings"], "runs": args.runs,
                "latency": result["settings"]["latency"] + f"; the whole pass {args.runs} times (order rotated each "
                           "run), each row from the run with its median fraction"}
    return {**result, "settings": settings, "upstreams": rows}


def each_table(result: Dict[str, Any]) -> str:
    """One line per upstream: GMACs, latency, its own GEMM peak, fraction of that peak, host drift; with
    ``--runs`` > 1 (the row being the median run's) the range of the fraction over the runs too."""
    key = length_key(result["settings"]["seconds"][0])
    several_runs = result["settings"].get("runs", 1) > 1
    lines = [f"{'upstream':55s} {'GMACs':>7s} {'latency s':>9s} {'GEMM GFLOP/s':>12s} {'% peak':>6s} {'drift':>6s}"
             + (f" {'% peak, runs':>13s}" if several_runs else "")]
    for row in result["upstreams"]:
        line = (f"{row['label'][:55]:55s} {row['macs'][key] / 1e9:7.2f} {row['latency_s'][key]:9.3f} "
                f"{row['peak']['gflops']:12.1f} {100 * row['fraction_of_peak'][key]:6.1f} "
                f"{row['host_drift']:6.2f}{'!' if row['suspect'] else ' '}")
        if several_runs:
            line += f" {100 * row['fraction_min'][key]:6.1f}-{100 * row['fraction_max'][key]:.1f}"
        lines.append(line)
    if any(row["suspect"] for row in result["upstreams"]):
        lines.append("!: the GEMM rate still moved by more than 5 % across this upstream's forwards after every retry: "
                     "profile it again (--only ENTRY)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
