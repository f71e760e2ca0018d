"""Forward time of each shipped student relative to a HuBERT-Base-sized teacher, measured in one run.

Every model is randomly initialised at full size and loaded through its s3prl entry (the teacher through s3prl's
own ``hubert_local``), so this times exactly what ``run_downstream.py`` would run. Batch: 4 x 10 s by default.

    python benchmarks/inference_ratio.py [--seconds 10] [--batch 4] [--threads 2 4] [--repeats 5]

With several thread counts, every count is timed in the same run (same models, same audio).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from s3prl_distill.checkpoint import save_checkpoint
from s3prl_distill.formats.fairseq import teacher_copy_config
from s3prl_distill.formats.native import export_student
from s3prl_distill.formats.s3prl_distiller import export_distiller
from s3prl_distill.formats.s3prl_hubert import HUBERT_BASE, write_random_hubert
from s3prl_distill.formats.s3prl_wavlm import WAVLM_BASE_PLUS
from s3prl_distill.model import (
    StudentConfig,
    StudentModel,
    armhubert_config,
    deepthin_config,
    distilhubert_config,
    fithubert_config,
    maskhubert_config,
    shallowwide_config,
    starhubert_config,
    with_fbank_front_end,
)
from s3prl_distill.profiling import forward_times

logger = logging.getLogger("inference_ratio")


def write_paper_checkpoints(folder: Path, pruned: bool = False,
                            keep: Optional[Callable[[str, str], bool]] = None) -> Dict[str, Tuple[str, Path]]:
    """Randomly initialised checkpoints at the papers' sizes, written by our code into ``folder``: label -> (s3prl
    entry, checkpoint). The HuBERT-Base-sized teacher (s3prl's ``hubert_local``) first, then DistilHuBERT (ours and
    s3prl's ``distiller_local`` on the same file), FitHuBERT, Wang et al.'s students with and without the fbank
    front end, and ARMHuBERT(-S), MaskHuBERT and STaRHuBERT(-L) (sungnyun/ARMHuBERT's models); ``pruned`` adds
    DPHuBERT- and SKILL-sized pruned students (see :func:`pruned_config`) and a 4-layer student through the generic
    ``student_local``. ``keep(label, entry)``: write only the checkpoints it accepts (default: all). Each file's
    weights come from a seed of its own, so a selection writes the same weights as the whole set."""

    def native(family: str, config: StudentConfig) -> Callable[[Path], Path]:
        def write(path: Path) -> Path:
            model = StudentModel(config)
            if model.fbank is not None:  # statistics would come from training data; any will do for timing
                model.fbank.set_statistics(torch.zeros(80), torch.ones(80), 1)
            return save_checkpoint(export_student(family, config, model.state_dict()), path)
        return write

    distil = distilhubert_config()

    def write_distil(path: Path) -> Path:
        return save_checkpoint(export_distiller(distil, StudentModel(distil).state_dict()), path)

    # (label, entry, file name, writer); a file named twice is written once
    plan: List[Tuple[str, str, str, Callable[[Path], Path]]] = [
        ("HuBERT Base (teacher, s3prl hubert_local)", "hubert_local", "hubert.ckpt",
         lambda path: write_random_hubert(path, HUBERT_BASE)),
        ("DistilHuBERT (distilhubert_local)", "distilhubert_local", "distilhubert.ckpt", write_distil),
        ("s3prl's DistilHuBERT (distiller_local), same weights", "distiller_local", "distilhubert.ckpt", write_distil),
        ("FitHuBERT (fithubert_local)", "fithubert_local", "fit.ckpt", native("fithubert", fithubert_config())),
    ]
    for shape, base in (("deepthin", deepthin_config()), ("shallowwide", shallowwide_config())):
        for suffix, config in (("", base), ("_fbank", with_fbank_front_end(base))):
            plan.append((f"Wang et al. {shape}{suffix.replace('_', ' ')} ({shape}{suffix}_local)",
                         f"{shape}{suffix}_local", f"{shape}{suffix}.ckpt", native("asr_distill", config)))
    for label, family, config in (("ARMHuBERT", "armhubert", armhubert_config()),
                                  ("ARMHuBERT-S", "armhubert", armhubert_config(small=True)),
                                  ("MaskHuBERT", "maskhubert", maskhubert_config()),
                                  ("STaRHuBERT", "starhubert", starhubert_config()),
                                  ("STaRHuBERT-L", "starhubert", starhubert_config(large=True))):
        plan.append((f"{label} ({family}_local)", f"{family}_local", f"{label}.ckpt", native(family, config)))
    if pruned:
        for family in ("dphubert", "skill"):
            plan.append((f"{PRUNED_NAMES[family]} ({family}_local)", f"{family}_local", f"{family}.ckpt",
                         native(family, pruned_config(family))))
        config = distil.model_copy(update={"encoder": distil.encoder.model_copy(update={"num_layers": 4})})
        plan.append(("4-layer student (student_local)", "student_local", "student.ckpt",
                     native("distilhubert", config)))
    checkpoints: Dict[str, Tuple[str, Path]] = {}
    written: Dict[str, Path] = {}
    for label, entry, name, write in plan:
        if keep is not None and not keep(label, entry):
            continue
        if name not in written:
            torch.manual_seed(zlib.crc32(name.encode()))
            written[name] = write(folder / name)
        checkpoints[label] = (entry, written[name])
    return checkpoints


def paper_size_parser(description: str, output: Path, only_help: str = "default: all") -> argparse.ArgumentParser:
    """The options of the scripts that time the upstreams of :func:`write_paper_checkpoints` one thread count at a
    time (``cpu_peak``, ``shape_ceiling``, ``cnn_stream``): audio length, batch, threads, repeats, the entries to
    keep and the JSON to write."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="+", help=f"entries to keep (e.g. fithubert_local); {only_help}")
    parser.add_argument("--output", type=Path, default=output)
    return parser


PRUNED_NAMES = {"dphubert": "DPHuBERT-sized pruned student", "skill": "SKILL-sized pruned student"}

# Per-layer widths after pruning HuBERT Base (head width 64), shaped like the published students (~24 M parameters,
# widths falling with depth; DPHuBERT's removes the last layer's attention block entirely: 0 heads).
PRUNED_SHAPES = {
    "dphubert": {"conv": "[(320,10,5),(352,3,2),(384,3,2),(400,3,2),(400,3,2),(384,2,2),(320,2,2)]",
                 "heads": [8, 8, 7, 6, 5, 4, 4, 3, 2, 2, 1, 0],
                 "ffn": [800, 700, 600, 500, 450, 400, 350, 300, 250, 200, 150, 100]},
    "skill": {"conv": "[(288,10,5),(320,3,2),(352,3,2),(384,3,2),(384,3,2),(352,2,2),(288,2,2)]",
              "heads": [7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 1],
              "ffn": [900, 800, 700, 600, 500, 450, 400, 350, 300, 250, 200, 150]},
}


def host_moved(drift: float, limit: float = 0.05) -> bool:
    """Whether two GEMM-rate readings around one measurement (their ratio, ``drift``) differ by more than ``limit``:
    this shared machine's rate moves by 10-30 % within minutes, and a measurement it moved under is off."""
    return abs(drift - 1.0) > limit


def steadiest(measurement: Callable[[], Dict], retries: int, suspect: Callable[[Dict], bool],
              label: str = "") -> Dict:
    """``measurement()`` (a row with a ``host_drift``), taken again up to ``retries`` times while ``suspect(row)``;
    the first row that is not suspect is kept, else the one whose drift is nearest 1, with ``attempts`` (how many
    were taken) and ``suspect`` (whether the kept one is). The host's slow phases last seconds to minutes: a later
    measurement usually misses them."""
    attempts = [measurement()]
    while suspect(attempts[-1]) and len(attempts) <= retries:
        logger.info("%s: host drift %.2f: measuring again", label, attempts[-1]["host_drift"])
        attempts.append(measurement())
    kept = min(attempts, key=lambda row: (suspect(row), abs(row["host_drift"] - 1.0)))
    return {**kept, "attempts": len(attempts), "suspect": suspect(kept)}


def pruned_config(family: str, wavlm: bool = False) -> StudentConfig:
    """A pruned HuBERT Base copy (the shape ``s3prl-distill prune`` leaves) with :data:`PRUNED_SHAPES`' widths; with
    ``wavlm`` a pruned WavLM Base+ copy instead (SKILL's recipe): each layer keeps its first heads of the gated
    relative position bias."""
    shape = PRUNED_SHAPES[family]
    data = teacher_copy_config(WAVLM_BASE_PLUS if wavlm else HUBERT_BASE).to_dict()
    data["feature_extractor"]["conv_layers"] = shape["conv"]
    data["encoder"].update(num_heads=shape["heads"], ffn_dim=shape["ffn"], head_dim=64)
    if wavlm:
        data["encoder"]["kept_heads"] = [list(range(heads)) for heads in shape["heads"]]
    return StudentConfig.from_dict(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="+", help="time only the models whose label contains one of these (the "
                        "teacher always runs)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "inference_ratio.json")
    args = parser.parse_args()
    import s3prl.hub as hub

    generator = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(int(16000 * args.seconds), generator=generator) for _ in range(args.batch)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = write_paper_checkpoints(Path(folder), keep=lambda label, entry: (
            entry == "hubert_local" or not args.only or any(part in label for part in args.only)))
        models = {label: getattr(hub, entry)(ckpt=str(path)) for label, (entry, path) in checkpoints.items()}
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
