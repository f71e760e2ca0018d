"""onnxruntime vs PyTorch CPU forward time of each student family's upstream, on the ONNX graph ``s3prl-distill
export --to onnx`` writes.

Every student is randomly initialised at full size, loaded through its s3prl entry, exported with
``s3prl_distill.formats.onnx_export.export_onnx_model`` and timed on 1 x 10 s and 4 x 10 s (padded batch: the rows
differ by 0.5 s), PyTorch and onnxruntime interleaved repeat by repeat, both on the same number of threads.

    python benchmarks/onnx_speed.py [--threads 2] [--repeats 5] [--families distilhubert fithubert ...]
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

from s3prl_distill.checkpoint import save_checkpoint
from s3prl_distill.formats.native import export_student
from s3prl_distill.formats.onnx_export import OnnxUpstream, example_batch, export_onnx_model
from s3prl_distill.formats.s3prl_distiller import export_distiller
from s3prl_distill.model import (StudentModel, deepthin_config, distilhubert_config, fithubert_config,
                                 shallowwide_config, with_fbank_front_end)
from s3prl_distill.profiling import cpu_name
from s3prl_distill.registry import build_upstream

FAMILIES = ("distilhubert", "fithubert", "deepthin", "deepthin_fbank", "shallowwide", "shallowwide_fbank")


def write_student(family: str, folder: Path) -> Path:
    """A full-size random student of ``family`` as the checkpoint its ``<family>_local`` entry reads."""
    torch.manual_seed(0)
    path = folder / f"{family}.ckpt"
    if family == "distilhubert":
        config = distilhubert_config()
        return save_checkpoint(export_distiller(config, StudentModel(config).state_dict()), path)
    if family == "fithubert":
        config = fithubert_config()
        return save_checkpoint(export_student("fithubert", config, StudentModel(config).state_dict()), path)
    base = deepthin_config() if family.startswith("deepthin") else shallowwide_config()
    config = with_fbank_front_end(base) if family.endswith("_fbank") else base
    model = StudentModel(config)
    if model.fbank is not None:  # statistics would come from training data; any will do for timing
        model.fbank.set_statistics(torch.zeros(80), torch.ones(80), 1)
    return save_checkpoint(export_student("asr_distill", config, model.state_dict()), path)


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
    batches = {"1 x 10 s": example_batch([samples]), "4 x 10 s": example_batch([samples - 8000 * i for i in range(4)])}
    rows: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory() as folder:
        for family in args.families:
            expert = build_upstream(f"{family}_local", str(write_student(family, Path(folder)))).eval()
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
              "onnxruntime": onnxruntime.__version__, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
