"""Training throughput of ``s3prl-distill pretrain`` with the shipped DistilHuBERT config.

A randomly initialised HuBERT-Base-sized teacher (written in the ``hubert_local`` format) and generated 4 s
utterances; the real runner (data loading, teacher forward, student forward/backward, AdamW, clipping) runs for a
few steps and the per-step times after the warm-up steps are reported, for each variant of the step in one run:

    python benchmarks/pretrain_throughput.py [--steps 6] [--batch 4] [--seconds 4] [--threads 2] \
        [--variants fp32 bf16 compile bf16+compile]

``fp32``: the shipped settings; ``bf16``: ``runner.precision=bf16`` (autocast; on CPU fast only with AVX512-BF16 or
AMX); ``compile``: ``runner.compile=true`` (its first steps compile and are left out of the median).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import soundfile
import torch
import yaml

from s3prl_distill.formats.s3prl_hubert import HUBERT_BASE, write_random_hubert
from s3prl_distill.pretrain.config import apply_overrides, validate_config
from s3prl_distill.audio_lists import write_length_csvs
from s3prl_distill.pretrain.runner import Trainer

SHIPPED = Path(__file__).resolve().parents[1] / "pretrain" / "distilhubert" / "config.yaml"
# Variant -> (runner overrides, warm-up steps left out of the median).
VARIANTS = {
    "fp32": ("", 1),
    "bf16": (",,config.runner.precision=bf16", 1),
    "compile": (",,config.runner.compile=true", 3),
    "bf16+compile": (",,config.runner.precision=bf16,,config.runner.compile=true", 3),
}


class StepTimer(logging.Handler):
    """Collects the wall time between the runner's per-step log lines. ``synchronize`` (e.g.
    ``torch.cuda.synchronize``) runs before each clock read, so that queued device work is in the step it belongs
    to."""

    def __init__(self, synchronize: Optional[Callable[[], None]] = None) -> None:
        super().__init__()
        self.stamps = []
        self.synchronize = synchronize

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("step "):
            if self.synchronize is not None:
                self.synchronize()
            self.stamps.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["fp32"], choices=sorted(VARIANTS))
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "pretrain_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    samples = int(16000 * args.seconds)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        teacher = write_random_hubert(folder / "hubert_base.ckpt", HUBERT_BASE)
        rng = np.random.default_rng(0)
        for i in range(2 * args.batch):
            path = folder / "audio" / "bench" / f"utt{i:03d}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, (0.1 * rng.standard_normal(samples)).astype(np.float32), 16000)
        write_length_csvs(folder / "audio", folder / "csv", progress=False)
        data = apply_overrides(
            yaml.safe_load(SHIPPED.read_text()),
            f"config.teacher.ckpt={teacher},,config.data.root={folder / 'audio'},,config.data.bucket_dir={folder / 'csv'}"
            f",,config.data.sets=[bench],,config.data.train_batch_size={args.batch},,config.data.max_length={samples}"
            f",,config.data.num_workers=1,,config.runner.total_steps={args.steps},,config.runner.log_step=1"
            f",,config.runner.save_step={10 * args.steps}",
        )
        timer = StepTimer()
        step_log = logging.getLogger(Trainer.__module__)  # where the per-step lines are logged
        step_log.addHandler(timer)
        step_log.setLevel(logging.INFO)
        variants = {}
        for variant in args.variants:
            overrides, warmup = VARIANTS[variant]
            config = validate_config(apply_overrides(data, overrides.lstrip(",")), str(SHIPPED))
            timer.stamps = []
            trainer = Trainer(config, folder / f"exp-{variant.replace('+', '-')}")
            start = time.perf_counter()
            trainer.train()
            steps = [b - a for a, b in zip([start] + timer.stamps, timer.stamps)][warmup:]
            variants[variant] = {
                "step_seconds": [round(s, 3) for s in steps],
                "median_step_s": round(statistics.median(steps), 3),
                "utterances_per_s": round(args.batch / statistics.median(steps), 2),
            }
            print(variant, variants[variant], flush=True)
    baseline = variants[args.variants[0]]["median_step_s"]
    for figures in variants.values():
        figures[f"speedup_over_{args.variants[0]}"] = round(baseline / figures["median_step_s"], 3)
    result = {
        "benchmark": "pretrain_throughput",
        "config": str(SHIPPED.relative_to(SHIPPED.parents[2])),
        "batch": f"{args.batch} x {args.seconds:g} s",
        "threads": args.threads,
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "machine": platform.processor() or platform.machine(),
        "student_parameters": sum(p.numel() for p in trainer.student.parameters()),
        "variants": variants,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
