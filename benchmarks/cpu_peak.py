"""How close each upstream's CPU forward comes to the machine's GEMM peak, measured in one run.

Every family of our upstreams (and the HuBERT-Base-sized teacher and s3prl's ``distiller_local`` for reference) at
its paper's size with random weights, built through its s3prl entry from a checkpoint our code writes
(:func:`inference_ratio.write_paper_checkpoints`), is profiled by :func:`s3prl_distill.profiler.profile_upstreams`
with ``peak=True``: MACs by torch's FlopCounterMode, forwards interleaved round-robin, and the fp32 GEMM rate measured
before and after the forwards in the same process. Fraction of peak = 2 x MACs x batch / latency / fp32 GEMM FLOP/s.
The bf16 GEMM rate is recorded too where the CPU has native bf16 matrix instructions.

    python benchmarks/cpu_peak.py [--seconds 10] [--batch 4] [--threads 2] [--repeats 5] [--only fithubert ...]
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from inference_ratio import paper_size_parser, write_paper_checkpoints
from s3prl_distill.profiler import UpstreamSpec, bf16_gemm_supported, format_table, gemm_peak, profile_upstreams
from s3prl_distill.profiling import load_average


def main() -> None:
    parser = paper_size_parser(__doc__.splitlines()[0], Path(__file__).parent / "results" / "cpu_peak.json")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--peak-seconds", type=float, default=5.0, help="GEMM seconds before and after the forwards")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    load_before = load_average()
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = write_paper_checkpoints(Path(folder), pruned=True,
                                              keep=lambda label, entry: not args.only or entry in args.only)
        specs = [UpstreamSpec(entry, str(path), label=label) for label, (entry, path) in checkpoints.items()]
        result = profile_upstreams(specs, [args.seconds], args.batch, args.threads, args.repeats, args.warmup,
                                   memory=False, peak=True, peak_seconds=args.peak_seconds)
    bf16 = bf16_gemm_supported()
    result["peak_bf16"] = (gemm_peak(torch.bfloat16, args.threads, args.peak_seconds) if bf16 else
                           "not measured: no native bf16 matrix instructions on this CPU (oneDNN would emulate)")
    result["benchmark"] = "cpu_peak"
    result["load_average_before"], result["load_average_after"] = load_before, load_average()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"load average before {load_before}, after {result['load_average_after']}; json: {args.output}")


if __name__ == "__main__":
    main()
