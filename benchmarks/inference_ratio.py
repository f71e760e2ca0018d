"""Forward time of each shipped student relative to a HuBERT-Base-sized teacher, measured in one run.

Every model is randomly initialised at full size and loaded through its s3prl entry (the teacher through s3prl's
own ``hubert_local``), so this times exactly what ``run_downstream.py`` would run. Batch: 4 x 10 s by default.

    python benchmarks/inference_ratio.py [--seconds 10] [--batch 4] [--threads 2 4] [--repeats 5]

With several thread counts, every count is timed in the same run (same models, same audio).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from s3prl_distill.checkpoint import save_checkpoint
from s3prl_distill.formats.native import export_student
from s3prl_distill.formats.s3prl_distiller import export_distiller
from s3prl_distill.formats.s3prl_hubert import HUBERT_BASE, write_random_hubert
from s3prl_distill.model import (
    StudentModel,
    deepthin_config,
    distilhubert_config,
    fithubert_config,
    shallowwide_config,
    with_fbank_front_end,
)
from s3prl_distill.profiling import forward_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "inference_ratio.json")
    args = parser.parse_args()
    import s3prl.hub as hub

    generator = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(int(16000 * args.seconds), generator=generator) for _ in range(args.batch)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        models = {"HuBERT Base (teacher, s3prl hubert_local)": hub.hubert_local(
            ckpt=str(write_random_hubert(folder / "hubert.ckpt", HUBERT_BASE)))}
        config = distilhubert_config()
        save_checkpoint(export_distiller(config, StudentModel(config).state_dict()), folder / "distilhubert.ckpt")
        models["DistilHuBERT (distilhubert_local)"] = hub.distilhubert_local(ckpt=str(folder / "distilhubert.ckpt"))
        models["s3prl's DistilHuBERT (distiller_local), same weights"] = hub.distiller_local(
            ckpt=str(folder / "distilhubert.ckpt"))
        config = fithubert_config()
        save_checkpoint(export_student("fithubert", config, StudentModel(config).state_dict()), folder / "fit.ckpt")
        models["FitHuBERT (fithubert_local)"] = hub.fithubert_local(ckpt=str(folder / "fit.ckpt"))
        for shape, base in (("deepthin", deepthin_config()), ("shallowwide", shallowwide_config())):
            for suffix, config in (("", base), ("_fbank", with_fbank_front_end(base))):
                model = StudentModel(config)
                if model.fbank is not None:  # statistics would come from training data; any will do for timing
                    model.fbank.set_statistics(torch.zeros(80), torch.ones(80), 1)
                path = folder / f"{shape}{suffix}.ckpt"
                save_checkpoint(export_student("asr_distill", config, model.state_dict()), path)
                models[f"Wang et al. {shape}{suffix.replace('_', ' ')} ({shape}{suffix}_local)"] = getattr(
                    hub, f"{shape}{suffix}_local")(ckpt=str(path))
        for threads in args.threads:
            torch.set_num_threads(threads)
            medians = forward_times(models, wavs, args.repeats)
            teacher_time = next(iter(medians.values()))
            for name, model in models.items():
                rows.append({"model": name, "threads": threads, "parameters": sum(p.numel() for p in model.parameters()),
                             "median_s": round(medians[name], 3),
                             "ratio_to_teacher": round(medians[name] / teacher_time, 3)})
    result = {"benchmark": "inference_ratio", "batch": f"{args.batch} x {args.seconds:g} s", "threads": args.threads,
              "device": "cpu", "machine": platform.machine(), "repeats": args.repeats, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"{row['threads']} threads  {row['model']:58s} {row['parameters'] / 1e6:7.2f} M  {row['median_s']:7.3f} s  "
              f"x{row['ratio_to_teacher']:.3f}")


if __name__ == "__main__":
    main()
