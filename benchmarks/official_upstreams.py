"""Our upstreams against the official implementations on the same weights: forward time and equal outputs.

    python benchmarks/official_upstreams.py [--fithubert-repo ~/FitHuBERT] [--threads 2] [--batch 4] [--seconds 10]

* DistilHuBERT: ``distilhubert_local`` vs s3prl's own ``distiller_local``, on one s3prl distiller checkpoint, reading
  ``hidden_states`` (s3prl's default feature).
* FitHuBERT: ``fithubert_local`` vs the official expert (the ``fithubert/`` folder of a glory20h/FitHuBERT checkout,
  which imports fairseq: ``pip install fairseq-fixed==0.12.3.1 --no-build-isolation`` with torch pinned), both on one
  official-format Lightning checkpoint + training YAML, reading ``last_hidden_state`` (the official upstream's only
  usable output: its ``hidden_states`` are fairseq's raw per-layer tuples). Skipped, with the reason, when no
  checkout is given or fairseq does not import.

Each group also times s3prl's ``hubert_local`` on a HuBERT-Base-sized checkpoint (all weights random), interleaved
round-robin with the others, so every ratio comes from one run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import yaml

from s3prl_distill.checkpoint import save_checkpoint
from s3prl_distill.formats.fithubert import export_lightning
from s3prl_distill.formats.s3prl_distiller import export_distiller
from s3prl_distill.formats.s3prl_hubert import HUBERT_BASE, write_random_hubert
from s3prl_distill.model import StudentModel, distilhubert_config, fithubert_config
from s3prl_distill.profiling import forward_times, upstream_features

TEACHER = "HuBERT Base (s3prl hubert_local)"


def official_fithubert(repo: Optional[Path]) -> Tuple[Optional[type], str]:
    """The official UpstreamExpert class, or None and why not."""
    if repo is None:
        return None, "no --fithubert-repo given (a glory20h/FitHuBERT checkout)"
    if not (repo / "fithubert" / "expert.py").is_file():
        return None, f"{repo} has no fithubert/expert.py"
    try:
        import fairseq  # noqa: F401
    except Exception as error:  # fairseq-fixed missing, or it fails to import on this stack
        return None, f"fairseq does not import ({type(error).__name__}: {error})"
    sys.path.insert(0, str(repo))
    return importlib.import_module("fithubert.expert").UpstreamExpert, ""


def max_difference(a, b) -> float:
    left, right = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
    return max((x - y).abs().max().item() for x, y in zip(left, right))


def time_group(models: Dict[str, torch.nn.Module], wavs: List[torch.Tensor], feature: str, repeats: int,
               pairs: List[Tuple[str, str]]) -> List[dict]:
    with torch.no_grad():
        for ours, official in pairs:  # same weights must give the same feature
            difference = max_difference(upstream_features(models[ours].eval(), wavs, feature),
                                        upstream_features(models[official].eval(), wavs, feature))
            if difference > 1e-3:
                raise SystemExit(f"{ours} and {official} disagree on {feature} by {difference:.3g}")
    medians = forward_times(models, wavs, repeats, feature=feature)
    rows = []
    for ours, official in pairs:
        rows.append({
            "feature": feature, "ours": ours, "official": official,
            "ours_s": round(medians[ours], 3), "official_s": round(medians[official], 3),
            "ours_over_official": round(medians[ours] / medians[official], 3),
            "ours_over_teacher": round(medians[ours] / medians[TEACHER], 3),
            "official_over_teacher": round(medians[official] / medians[TEACHER], 3),
            "teacher_s": round(medians[TEACHER], 3),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fithubert-repo", type=Path, help="a glory20h/FitHuBERT checkout (needs fairseq)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "official_upstreams.json")
    args = parser.parse_args()
    import s3prl.hub as hub

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(int(16000 * args.seconds), generator=generator) for _ in range(args.batch)]
    rows, skipped = [], {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        teacher = hub.hubert_local(ckpt=str(write_random_hubert(folder / "hubert.ckpt", HUBERT_BASE)))

        config = distilhubert_config()
        save_checkpoint(export_distiller(config, StudentModel(config).state_dict()), folder / "distilhubert.ckpt")
        models = {TEACHER: teacher,
                  "DistilHuBERT, ours": hub.distilhubert_local(ckpt=str(folder / "distilhubert.ckpt")),
                  "DistilHuBERT, s3prl distiller_local": hub.distiller_local(ckpt=str(folder / "distilhubert.ckpt"))}
        rows += time_group(models, wavs, "hidden_states", args.repeats,
                           [("DistilHuBERT, ours", "DistilHuBERT, s3prl distiller_local")])
        del models

        expert, reason = official_fithubert(args.fithubert_repo)
        if expert is None:
            skipped["FitHuBERT"] = reason
            print(f"FitHuBERT vs the official expert skipped: {reason}", file=sys.stderr)
        else:
            config = fithubert_config()
            checkpoint, training_yaml = export_lightning(config, StudentModel(config).state_dict())
            torch.save(checkpoint, folder / "fithubert.ckpt")
            (folder / "fithubert.yaml").write_text(yaml.safe_dump(training_yaml))
            models = {TEACHER: teacher,
                      "FitHuBERT, ours": hub.fithubert_local(ckpt=str(folder / "fithubert.ckpt"),
                                                             model_config=str(folder / "fithubert.yaml")),
                      "FitHuBERT, official expert": expert(str(folder / "fithubert.ckpt"),
                                                           str(folder / "fithubert.yaml"))}
            rows += time_group(models, wavs, "last_hidden_state", args.repeats,
                               [("FitHuBERT, ours", "FitHuBERT, official expert")])
    result = {"benchmark": "official_upstreams", "batch": f"{args.batch} x {args.seconds:g} s",
              "threads": args.threads, "device": "cpu", "machine": platform.machine(), "repeats": args.repeats,
              "torch": torch.__version__, "rows": rows, "skipped": skipped}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"{row['ours']}: {row['ours_s']} s, {row['official']}: {row['official_s']} s -> "
              f"{row['ours_over_official']}x; over the teacher: {row['ours_over_teacher']} vs "
              f"{row['official_over_teacher']} ({row['feature']})")


if __name__ == "__main__":
    main()
