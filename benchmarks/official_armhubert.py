"""Parity of ``armhubert_local`` / ``maskhubert_local`` / ``starhubert_local`` with the official experts of
sungnyun/ARMHuBERT on the same weights.

    python benchmarks/official_armhubert.py --repo ~/ARMHuBERT --python ~/armref/bin/python

Full-size students (ARMHuBERT, ARMHuBERT-S, MaskHuBERT, STaRHuBERT) with random weights are written in our format
and exported with ``s3prl-distill export --to lightning``; our upstreams read the exported release + YAML. The
official ``models/<name>/expert.py`` (unchanged, from ``--repo``) runs in ``--python``, an interpreter with torch and
fairseq (``fairseq-fixed==0.12.3.1``; fairseq pins old packages, so its own venv), on the same files. Compared, max
|difference|: ``hidden_states`` and ``last_hidden_state`` per waveform; our padded batch against the official
per-waveform outputs; the official padded batch against its own per-waveform outputs (batch-dependent: its CNN's
GroupNorm runs over the padding, and its reusing layers pair waveforms with other waveforms' maps).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

from s3prl_distill import registry
from s3prl_distill.checkpoint import save_checkpoint
from s3prl_distill.formats.export import export_checkpoint
from s3prl_distill.formats.native import export_student
from s3prl_distill.model import StudentModel, armhubert_config, maskhubert_config, starhubert_config

# label -> (our family = the official models/ folder, config)
MODELS = {
    "ARMHuBERT": ("armhubert", armhubert_config()),
    "ARMHuBERT-S": ("armhubert", armhubert_config(small=True)),
    "MaskHuBERT": ("maskhubert", maskhubert_config()),
    "STaRHuBERT": ("starhubert", starhubert_config()),
}

# Runs in --python: the official experts on each release, one waveform at a time and as one padded batch.
OFFICIAL_SIDE = """
import importlib, sys, torch
repo, folder, labels = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, repo)
waves = torch.load(f"{folder}/waves.pt")
results = {}
for label in labels:
    family = open(f"{folder}/{label}.family").read().strip()
    expert = importlib.import_module(f"models.{family}.expert").UpstreamExpert(
        f"{folder}/{label}.ckpt", f"{folder}/{label}.yaml").eval()
    with torch.no_grad():
        keep = lambda out: {"hidden_states": list(out["hidden_states"]), "last_hidden_state": out["last_hidden_state"]}
        results[label] = {"single": [keep(expert([wave])) for wave in waves], "batch": keep(expert(waves))}
torch.save(results, f"{folder}/official.pt")
"""


def max_difference(left: List[torch.Tensor], right: List[torch.Tensor]) -> float:
    if len(left) != len(right):
        raise SystemExit(f"{len(left)} against {len(right)} hidden states")
    return max((a - b).abs().max().item() for a, b in zip(left, right))


def ours(folder: Path, waves: List[torch.Tensor]) -> Dict[str, Any]:
    torch.manual_seed(0)
    results = {}
    for label, (family, config) in MODELS.items():
        model = StudentModel(config)
        with torch.no_grad():  # off the initial LayerNorm / bias values
            for parameter in model.parameters():
                parameter.add_(0.02 * torch.randn_like(parameter))
        save_checkpoint(export_student(family, config, model.state_dict()), folder / f"{label}_ours.ckpt")
        export_checkpoint(folder / f"{label}_ours.ckpt", "lightning", folder / f"{label}.ckpt")
        (folder / f"{label}.family").write_text(family)
        upstream = registry.entries()[f"{family}_local"](ckpt=str(folder / f"{label}.ckpt"),
                                                         model_config=str(folder / f"{label}.yaml")).eval()
        with torch.no_grad():
            single = [dict(upstream([wave])) for wave in waves]
            batch = upstream(waves)
            results[label] = {"single": [{key: out[key] for key in ("hidden_states", "last_hidden_state")}
                                         for out in single],
                              "batch": {key: batch[key] for key in ("hidden_states", "pad_mask")}}
    return results


def compare(mine: Dict[str, Any], theirs: Dict[str, Any]) -> List[dict]:
    rows = []
    for label, (family, _) in MODELS.items():
        a, b = mine[label], theirs[label]
        frames = a["batch"]["pad_mask"].sum(-1).long().tolist()

        def of_row(states: List[torch.Tensor], row: int) -> List[torch.Tensor]:
            return [state[row:row + 1, :frames[row]] for state in states]

        # STaRHuBERT's official last_hidden_state is time first.
        last = [s["last_hidden_state"].transpose(0, 1) if family == "starhubert" else s["last_hidden_state"]
                for s in b["single"]]
        rows.append({
            "model": label,
            "single_hidden_states": max(max_difference(x["hidden_states"], y["hidden_states"])
                                        for x, y in zip(a["single"], b["single"])),
            "single_last_hidden_state": max(max_difference([x["last_hidden_state"]], [y])
                                            for x, y in zip(a["single"], last)),
            "our_batch_vs_official_single": max(
                max_difference(of_row(a["batch"]["hidden_states"], row), b["single"][row]["hidden_states"])
                for row in range(len(frames))),
            "official_batch_vs_official_single": max(
                max_difference(of_row(b["batch"]["hidden_states"], row), b["single"][row]["hidden_states"])
                for row in range(len(frames))),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a sungnyun/ARMHuBERT checkout (its models/)")
    parser.add_argument("--python", required=True, help="an interpreter with torch and fairseq")
    parser.add_argument("--seconds", type=float, nargs="+", default=[3.0, 1.95], help="waveform lengths")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "official_armhubert.json")
    args = parser.parse_args()
    if not (args.repo / "models" / "armhubert" / "expert.py").is_file():
        raise SystemExit(f"{args.repo} has no models/armhubert/expert.py (a sungnyun/ARMHuBERT checkout)")
    generator = torch.Generator().manual_seed(0)
    waves = [0.1 * torch.randn(int(16000 * seconds), generator=generator) for seconds in args.seconds]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.save(waves, folder / "waves.pt")
        mine = ours(folder, waves)
        subprocess.run([args.python, "-c", OFFICIAL_SIDE, str(args.repo), str(folder), *MODELS], check=True)
        theirs = torch.load(folder / "official.pt", weights_only=False)
    rows = compare(mine, theirs)
    result = {"benchmark": "official_armhubert", "waveform_seconds": args.seconds, "torch": torch.__version__,
              "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"{row['model']}: per waveform hidden_states {row['single_hidden_states']:.2e}, last_hidden_state "
              f"{row['single_last_hidden_state']:.2e}; our padded batch vs official per waveform "
              f"{row['our_batch_vs_official_single']:.2e}; official padded batch vs its per-waveform outputs "
              f"{row['official_batch_vs_official_single']:.2e}", file=sys.stdout)


if __name__ == "__main__":
    main()
