"""``precision: bf16`` against fp32 for every upstream family: forward speed and output deviation, in one run.

Every model is randomly initialised at its paper size and loaded through its s3prl entry twice, with ``-g``
``{"precision": "fp32"}`` and ``{"precision": "bf16"}`` (the same weights), as ``benchmarks/inference_ratio.py``
does. Speed: ``interleaved_times`` (every model once per round, order rotated), per family the median over rounds
of fp32 time / bf16 time (> 1: bf16 is faster). Deviation: on a padded batch of unequal lengths (so the masked
statistics run), per hidden state ``max |bf16 - fp32|``, that over the rms of the fp32 state, and the mean absolute
difference over the same rms (the typical error rather than the worst element's).

    python benchmarks/upstream_bf16.py [--seconds 10] [--batch 4] [--threads 2] [--families distilhubert ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

from inference_ratio import write_paper_checkpoints
from s3prl_distill.profiler import profile_waves
from s3prl_distill.profiling import Spread, interleaved_times, state_deviations

logger = logging.getLogger("upstream_bf16")

def write_checkpoints(folder: Path) -> Dict[str, Tuple[str, Path]]:
    """family -> (entry, checkpoint) at paper sizes, random weights: the students of the shared builder
    (:func:`inference_ratio.write_paper_checkpoints`, pruned ones included), without s3prl's own upstreams, which
    have no ``precision`` option."""
    found: Dict[str, Tuple[str, Path]] = {}
    for label, (entry, path) in write_paper_checkpoints(folder, pruned=True).items():
        if entry not in ("hubert_local", "distiller_local"):
            family = entry[: -len("_local")]
            if family in found:  # a second size of one family (ARMHuBERT-S, STaRHuBERT-L): armhubert_s, starhubert_l
                family += "_" + label.split(" (")[0].rsplit("-", 1)[-1].lower()
            found[family] = (entry, path)
    return found


def deviations(fp32: torch.nn.Module, bf16: torch.nn.Module, wavs: List[torch.Tensor]) -> List[Dict[str, float]]:
    with torch.no_grad():
        expected, got = fp32(wavs)["hidden_states"], bf16(wavs)["hidden_states"]
    for index, state in enumerate(got):
        if state.dtype != torch.float32:
            raise RuntimeError(f"hidden state {index} is {state.dtype}, expected float32")
    return [{"state": index, **row} for index, row in enumerate(state_deviations(expected, got))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="utterance length of the timed batch")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per model before timing")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of timed forwards (at least min-rounds)")
    parser.add_argument("--families", nargs="+", help="subset of the families (default: all)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "upstream_bf16.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import s3prl.hub as hub

    wavs = profile_waves(args.seconds, args.batch, torch.device("cpu"))
    # Unequal lengths for the deviation: padding and the masked statistics are part of what bf16 changes.
    uneven = profile_waves(args.seconds, args.batch, torch.device("cpu"), uneven=True)
    result: Dict[str, object] = {"benchmark": "upstream_bf16", "batch": f"{args.batch} x {args.seconds:g} s",
                                 "deviation_batch_s": [round(len(w) / 16000, 2) for w in uneven],
                                 "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    families: Dict[str, Dict[str, object]] = {}
    models: Dict[str, torch.nn.Module] = {}
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = write_checkpoints(Path(folder))
        for family in args.families or list(checkpoints):
            if family not in checkpoints:
                raise SystemExit(f"--families: unknown family {family!r}; known: {', '.join(checkpoints)}")
            entry, ckpt = checkpoints[family]
            make: Callable[[str], torch.nn.Module] = lambda precision: getattr(hub, entry)(
                ckpt=str(ckpt), model_config={"precision": precision}).eval()
            models[f"{family} fp32"], models[f"{family} bf16"] = make("fp32"), make("bf16")
            torch.set_num_threads(args.threads)
            rows = deviations(models[f"{family} fp32"], models[f"{family} bf16"], uneven)
            families[family] = {"entry": entry, "parameters": sum(p.numel() for p in models[f"{family} fp32"]
                                                                  .parameters()), "deviation": rows}
            logger.info("%s: max relative deviation %.4f", family, max(row["relative"] for row in rows))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # The deviations are kept even if the (long: bf16 can be far slower on a CPU without bf16 instructions) timing
    # is interrupted.
    args.output.write_text(json.dumps({**result, "families": families, "timing": "not finished"}, indent=2) + "\n")
    timing = interleaved_times(models, wavs, threads=args.threads, min_rounds=args.min_rounds, budget_s=args.budget,
                               warmup=args.warmup)
    for family, record in families.items():
        fp32, bf16 = timing.times[f"{family} fp32"], timing.times[f"{family} bf16"]
        speedup = Spread.of([a / b for a, b in zip(fp32, bf16)])
        record.update(fp32_s=statistics.median(fp32), bf16_s=statistics.median(bf16), speedup=vars(speedup))
    result.update(method="speed-up = fp32 time / bf16 time within each round; " + timing.method(),
                  conditions=timing.conditions(), families=families, timing=timing.to_json())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'family':18s} {'params M':>8s} {'fp32 s':>7s} {'bf16 s':>7s}  speed-up (IQR)        max rel. dev.")
    for family, record in families.items():
        spread = Spread(**record["speedup"])
        worst = max(row["relative"] for row in record["deviation"])
        print(f"{family:18s} {record['parameters'] / 1e6:8.2f} {record['fp32_s']:7.3f} {record['bf16_s']:7.3f}  "
              f"x{spread.format(2):20s} {worst:.4f}")
    print(timing.conditions())


if __name__ == "__main__":
    main()
