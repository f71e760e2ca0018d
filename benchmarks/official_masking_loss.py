"""Masking distillation against sungnyun/ARMHuBERT's own code, run out of tree: the loss, and the span masks.

    python benchmarks/official_masking_loss.py --repo ~/ARMHuBERT --python ~/armref/bin/python

* **Loss.** ``W2V2Distil.calculate_loss`` is read from the checkout's ``train.py`` (unchanged; only that method is
  executed, on an object carrying the attributes it reads: the released configs' ``rec_loss_weight`` 1.0,
  ``random_layer_weight`` 0.1, ``distil_random_layer`` 11) in ``--python``, on random student projections, unmasked
  and masked teacher layer results (fairseq's time-first layout) and a mask, per ``rec_loss_type``; our
  ``maskhubert`` method computes its loss on the same tensors. Reported: both totals and their relative difference.
* **Masks.** fairseq's ``compute_mask_indices`` with the released teacher settings (mask_prob 0.8, length 10,
  ``uniform``, ``no_overlap``, min_space 1, ``min_masks`` 2) against ours (``pretrain/armhubert/masking.py``), on
  rows of several lengths, many draws: masked fraction and masked-span statistics per row length, fairseq with and
  without ``require_same_masks`` (on, in HuBERT; ours never equalises rows, on purpose: see the README). fairseq
  0.12.3's ``uniform`` spans need a legacy ``RandomState`` in place of ``default_rng``, and ``np.int`` back
  (see OFFICIAL_SIDE).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import torch

from s3prl_distill.losses import combine
from s3prl_distill.model import maskhubert_config
from s3prl_distill.model.student import StudentOutput
from s3prl_distill.pretrain.armhubert.masking import mask_rng, span_mask
from s3prl_distill.pretrain.armhubert.recipe import MaskDistillMethodConfig
from s3prl_distill.pretrain.method import DistillationBatch
from s3prl_distill.pretrain.methods import build_method

# Runs in --python (the official code's environment): calculate_loss from train.py, and fairseq's masks.
OFFICIAL_SIDE = """
import ast, json, sys, textwrap, types
import numpy as np, torch, torch.nn.functional as F
repo, folder = sys.argv[1], sys.argv[2]
source = open(f"{repo}/train.py").read()
cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "W2V2Distil")
method = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "calculate_loss")
namespace = {"torch": torch, "F": F}
exec(textwrap.dedent(ast.get_source_segment(source, method)), namespace)
inputs = torch.load(f"{folder}/loss_inputs.pt")
losses = {}
for kind in ("mse", "l1"):
    owner = types.SimpleNamespace(rec_loss_weight=1.0, rec_loss_type=kind, random_layer_weight=0.1,
                                  train_cfg={"distil_random_layer": 11}, rand_l=list(range(11)))
    total, _ = namespace["calculate_loss"](owner, inputs["student"], inputs["teacher"], inputs["masked_teacher"])
    losses[kind] = float(total)
from fairseq.data.data_utils import compute_mask_indices
# fairseq 0.12.3 (fairseq-fixed, what installs on today's Python) draws from np.random.default_rng(), whose
# Generator has no randint: its "uniform" spans crash. The official code ran fairseq 0.12.2 (unpinned in 2023),
# which drew from the legacy np.random functions; a RandomState gives this code those methods back.
np.random.default_rng = lambda seed=None: np.random.RandomState(np.random.randint(2**31) if seed is None else seed)
np.int = int  # its no_overlap path still says np.int, gone since numpy 1.24 (the official code pins numpy<=1.23.5)
spec = json.load(open(f"{folder}/mask_spec.json"))
masks = {}
for same in (True, False):
    np.random.seed(0)
    rows = []
    for _ in range(spec["draws"]):
        frames = max(spec["lengths"])
        padding = torch.tensor([[t >= n for t in range(frames)] for n in spec["lengths"]])
        rows.append(compute_mask_indices((len(spec["lengths"]), frames), padding, 0.8, 10, "uniform", 0.0,
                                         min_masks=2, no_overlap=True, min_space=1, require_same_masks=same))
    masks[str(same)] = np.stack(rows).tolist()
json.dump({"losses": losses, "masks": masks}, open(f"{folder}/official.json", "w"))
"""


def loss_inputs(batch: int, frames: int, width: int, seed: int = 0) -> Dict[str, object]:
    """Random tensors in the official layout (12 projections; 12 layer results, each (x time-first, ...))."""
    generator = torch.Generator().manual_seed(seed)

    def layers() -> List[torch.Tensor]:
        return [torch.randn(frames, batch, width, generator=generator) for _ in range(12)]

    projections = [torch.randn(batch, frames, width, generator=generator) for _ in range(12)]
    unmasked, masked = layers(), layers()
    mask = torch.rand(batch, frames, generator=generator) < 0.6
    return {"student": {"projections": projections},
            "teacher": {"layer_results": [(x, None, None) for x in unmasked]},
            "masked_teacher": {"layer_results": [(x, None, None) for x in masked], "mask_indices": mask}}


def our_loss(inputs: Dict[str, object], kind: str) -> float:
    """Our maskhubert method on the same tensors: heads 1..12 against teacher layers 1..11 (hints) and 12."""
    config = MaskDistillMethodConfig(name="maskhubert", loss_type=kind)  # released: hint 0.1 on 1-11, final 1.0
    method = build_method(config, maskhubert_config())
    predictions = torch.stack(inputs["student"]["projections"], dim=1)
    stack = lambda results: torch.stack([x.transpose(0, 1) for x, *_ in results], dim=1)  # noqa: E731
    output = StudentOutput(None, [], None, predictions, None, None)
    batch = DistillationBatch(output, stack(inputs["teacher"]["layer_results"]), None, [],
                              frame_mask=inputs["masked_teacher"]["mask_indices"],
                              masked_targets=stack(inputs["masked_teacher"]["layer_results"]))
    return float(combine(method.losses(batch)))


def span_statistics(masks: torch.Tensor, lengths: List[int]) -> Dict[str, Dict[str, float]]:
    """Per row length: mean masked fraction of the valid frames, mean number and length of masked runs."""
    result = {}
    for row, length in enumerate(lengths):
        fractions, runs, run_lengths = [], [], []
        for draw in masks[:, row, :length].to(torch.int8):
            edges = torch.diff(torch.nn.functional.pad(draw, (1, 1))).nonzero().flatten().tolist()
            spans = [end - start for start, end in zip(edges[::2], edges[1::2])]
            fractions.append(float(draw.float().mean()))
            runs.append(len(spans))
            run_lengths += spans
        result[str(length)] = {"masked_fraction": round(sum(fractions) / len(fractions), 4),
                               "runs": round(sum(runs) / len(runs), 2),
                               "run_length": round(sum(run_lengths) / max(len(run_lengths), 1), 2)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a sungnyun/ARMHuBERT checkout (its train.py)")
    parser.add_argument("--python", required=True, help="an interpreter with torch, numpy and fairseq")
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "official_masking_loss.json")
    args = parser.parse_args()
    if not (args.repo / "train.py").is_file():
        raise SystemExit(f"{args.repo} has no train.py (a sungnyun/ARMHuBERT checkout)")
    lengths = [749, 400, 120, 37]  # frames: 15 s, 8 s, 2.4 s, 0.74 s
    inputs = loss_inputs(batch=3, frames=50, width=16)
    with tempfile.TemporaryDirectory() as folder:
        torch.save(inputs, Path(folder) / "loss_inputs.pt")
        (Path(folder) / "mask_spec.json").write_text(json.dumps({"lengths": lengths, "draws": args.draws}))
        subprocess.run([args.python, "-c", OFFICIAL_SIDE, str(args.repo), folder], check=True)
        official = json.loads((Path(folder) / "official.json").read_text())
    losses = {}
    for kind in ("mse", "l1"):
        ours = our_loss(inputs, kind)
        theirs = official["losses"][kind]
        losses[kind] = {"official": theirs, "ours": ours, "relative_difference": abs(ours - theirs) / abs(theirs)}
    ours_masks = torch.stack([span_mask(lengths, max(lengths), 0.8, 10, mask_rng(0, draw, 0, 0), "uniform", True, 1)
                              for draw in range(args.draws)])
    masks = {"ours": span_statistics(ours_masks, lengths)}
    for same, label in (("True", "fairseq (require_same_masks, as HuBERT)"), ("False", "fairseq, rows independent")):
        masks[label] = span_statistics(torch.tensor(official["masks"][same]), lengths)
    result = {"benchmark": "official_masking_loss", "torch": torch.__version__, "draws": args.draws,
              "loss": losses, "masks": masks}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for kind, row in losses.items():
        print(f"loss {kind}: official {row['official']:.6f}, ours {row['ours']:.6f}, "
              f"relative difference {row['relative_difference']:.1e}")
    for label, statistics in masks.items():
        print(f"{label}: " + "; ".join(f"{length} frames: {s['masked_fraction']:.3f} masked, {s['runs']} runs of "
                                       f"{s['run_length']}" for length, s in statistics.items()))


if __name__ == "__main__":
    main()
