"""onnxruntime vs PyTorch CPU forward time of each student family's upstream, on the ONNX graph ``s3prl-distill
export --to onnx`` writes.

Every student is randomly initialised at full size (the shared builder of ``inference_ratio.py``: the papers' sizes,
DPHuBERT- and SKILL-sized pruned students; plus a SKILL-sized one pruned from WavLM Base+), loaded through its s3prl
entry, exported with ``s3prl_distill.formats.onnx_export.export_onnx_model`` and timed on 1 x 10 s and 4 x 10 s
(padded batch: the rows differ by 0.5 s), PyTorch and onnxruntime interleaved repeat by repeat, both on the same
number of threads. The load average before and after goes into the JSON: the times move with the machine's load.

    python benchmarks/onnx_speed.py [--threads 2] [--repeats 5] [--families distilhubert dphubert skill ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from inference_ratio import pruned_config, write_paper_checkpoints
from s3prl_distill.checkpoint import save_checkpoint
from s3prl_distill.formats.native import export_student
from s3prl_distill.formats.onnx_export import OnnxUpstream, example_batch, export_onnx_model
from s3prl_distill.model import StudentModel
from s3prl_distill.profiling import cpu_name, load_average
from s3prl_distill.registry import build_upstream

# Labels; each is timed through its family's entry (ENTRIES, else <label>_local).
FAMILIES = ("distilhubert", "fithubert", "deepthin", "deepthin_fbank", "shallowwide", "shallowwide_fbank", "dphubert",
            "skill", "skill_wavlm")
ENTRIES = {"skill_wavlm": "skill_local"}


def write_students(folder: Path, labels: List[str]) -> Dict[str, Path]:
    """Full-size random students, label -> the checkpoint its entry reads: the shared builder's
    (:func:`inference_ratio.write_paper_checkpoints`, the pruned DPHuBERT- and SKILL-sized ones included), plus
    ``skill_wavlm``, the SKILL-sized student pruned from WavLM Base+ (gated relative position bias, SKILL's recipe)."""
    by_entry: Dict[str, Path] = {}
    for entry, path in write_paper_checkpoints(folder, pruned=True).values():
        by_entry.setdefault(entry, path)  # a family's first size: ARMHuBERT, not ARMHuBERT-S
    students = {label: by_entry[f"{label}_local"] for label in labels if f"{label}_local" in by_entry}
    if "skill_wavlm" in labels:
        config = pruned_config("skill", wavlm=True)
        students["skill_wavlm"] = save_checkpoint(
            export_student("skill", config, StudentModel(config).state_dict()), folder / "skill_wavlm.ckpt")
    return students


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "onnx_speed.json")
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(args.threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    samples = int(16000 * args.seconds)
    batches = {f"1 x {args.seconds:g} s": example_batch([samples]),
               f"4 x {args.seconds:g} s": example_batch([samples - 8000 * i for i in range(4)])}
    rows: List[Dict[str, object]] = []
    load_before = load_average()
    with tempfile.TemporaryDirectory() as folder:
        students = write_students(Path(folder), args.families)
        for family in args.families:
            expert = build_upstream(ENTRIES.get(family, f"{family}_local"), str(students[family])).eval()
            wrapper = OnnxUpstream(expert).eval()
            graph = Path(folder) / f"{family}.onnx"
            export_onnx_model(expert, graph)
            session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
            for batch, (waveforms, lengths) in batches.items():
                feeds = {"waveforms": waveforms.numpy(), "lengths": lengths.numpy()}
                times: Dict[str, List[float]] = {"pytorch": [], "onnxruntime": []}
                with torch.no_grad():
                    wrapper(waveforms, lengths), session.run(None, feeds)  # warm-up
                    for _ in range(args.repeats):  # interleaved: a noisy moment hits both
                        times["pytorch"].append(timed(lambda: wrapper(waveforms, lengths)))
                        times["onnxruntime"].append(timed(lambda: session.run(None, feeds)))
                medians = {name: statistics.median(values) for name, values in times.items()}
                rows.append({"family": family, "batch": batch, "pytorch_s": round(medians["pytorch"], 4),
                             "onnxruntime_s": round(medians["onnxruntime"], 4),
                             "ratio_onnxruntime_to_pytorch": round(medians["onnxruntime"] / medians["pytorch"], 3)})
                print(f"{family:18s} {batch}  pytorch {medians['pytorch']:.3f} s  onnxruntime "
                      f"{medians['onnxruntime']:.3f} s  x{rows[-1]['ratio_onnxruntime_to_pytorch']:.3f}", flush=True)
    result = {"benchmark": "onnx_speed", "threads": args.threads, "repeats": args.repeats, "device": "cpu",
              "cpu": cpu_name(), "machine": platform.machine(), "torch": torch.__version__,
              "onnxruntime": onnxruntime.__version__, "load_average_before": load_before,
              "load_average_after": load_average(), "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
