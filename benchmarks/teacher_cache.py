"""Epoch time of DistilHuBERT distillation with the teacher running online vs. from the teacher-target cache, and
the cache's one-off build time and disk size, measured in one run.

Shipped DistilHuBERT config (27 M student) with a randomly initialised HuBERT-Base-sized teacher in ``hubert_local``
format, on generated 16 kHz audio (so the figures are about compute, not about what is learnt):

    python benchmarks/teacher_cache.py [--utterances 32] [--seconds 4] [--batch 4] [--threads 2] \
        [--precision fp32|bf16] [--compile]

Each run trains two epochs and the second is timed, so a compiled student is measured after compiling.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import yaml

from s3prl_distill.formats.s3prl_hubert import HUBERT_BASE, write_random_hubert
from s3prl_distill.pretrain.config import load_config
from s3prl_distill.audio_lists import write_length_csvs
from s3prl_distill.pretrain.metrics import metric_values, read_metrics
from s3prl_distill.pretrain.runner import run
from s3prl_distill.pretrain.teacher_cache import build_teacher_cache

SHIPPED = Path(__file__).resolve().parents[1] / "pretrain" / "distilhubert" / "config.yaml"


def write_audio(root: Path, count: int, seconds: float) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        path = root / "train" / f"{index % 8}" / f"{index:05d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.01 * rng.standard_normal(t.size)
        soundfile.write(path, wave.astype(np.float32), 16000)


def utterances_per_second(config_path: Path, name: str, exproot: Path, overrides: str) -> float:
    """Training speed over the last epoch, as the runner logs it (one log window = one epoch)."""
    expdir = run(str(config_path), name, str(exproot), overrides, None)
    return metric_values(read_metrics(expdir), "utterances_per_s")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="the student's autocast")
    parser.add_argument("--compile", action="store_true", help="runner.compile: torch.compile the student")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "teacher_cache.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.utterances // args.batch  # one epoch
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_audio(folder / "audio", args.utterances, args.seconds)
        write_length_csvs(folder / "audio", folder / "csv", progress=False)
        teacher = write_random_hubert(folder / "teacher.ckpt", HUBERT_BASE)
        config = yaml.safe_load(SHIPPED.read_text())
        config["teacher"]["ckpt"] = str(teacher)
        config["data"].update(root=str(folder / "audio"), bucket_dir=str(folder / "csv"), sets=["train"],
                              train_batch_size=args.batch, num_workers=1)
        config["runner"].update(total_steps=2 * steps, log_step=steps, save_step=2 * steps,
                                precision=args.precision, compile=args.compile)
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(config))

        online = utterances_per_second(path, "online", folder / "runs", "")
        start = time.perf_counter()
        cache = build_teacher_cache(load_config(path), folder / "cache", batch_size=args.batch, progress=False)
        build_s = time.perf_counter() - start
        cached = utterances_per_second(path, "cached", folder / "runs", f"config.data.teacher_cache={cache}")
        meta = json.loads((cache / "meta.json").read_text())
    result = {
        "benchmark": "teacher_cache", "threads": args.threads, "device": "cpu", "machine": platform.machine(),
        "utterances": args.utterances, "seconds_each": args.seconds, "batch": args.batch,
        "precision": args.precision, "compile": args.compile, "timed": "second epoch",
        "online_epoch_s": round(args.utterances / online, 2),  # every epoch without a cache
        "cache_build_s": round(build_s, 2),  # once (the teacher's share of an online epoch)
        "cached_epoch_s": round(args.utterances / cached, 2),  # every epoch from the cache
        "epoch_speedup_from_cache": round(cached / online, 2),
        "cache_mb_per_audio_hour": round(meta["bytes_per_audio_hour"] / 1e6, 1),
        "layers": meta["key"]["layers"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
