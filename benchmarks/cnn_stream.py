"""What running the CNN over pieces of time gains in inference: each upstream with a CNN front end, its CNN streamed
(the inference default) against the same CNN over the whole batch, in one run.

Every family at its paper's size with random weights (:func:`inference_ratio.write_paper_checkpoints`, through its
s3prl entry), batch 4 x 10 s, forwards under ``no_grad`` in eval mode. The whole-batch path is selected by putting
only the CNN in train mode, which changes nothing else in it (checked: dropout 0, no pruning gates), and the two
paths alternate round by round. Recorded per upstream: the median forward (reading ``hidden_states``) each way and
their ratio, the CNN alone each way, and the largest difference between the two paths' hidden states; and the CNN
alone as streamed by default (its small last layers over the whole batch, ``_whole_from``) against every layer in
pieces (``cnn_small_layers_whole_ratio``).

Also the positional convolution (16 groups, kernel 128) alone at each width our families use, on 4 x 10 s of frames:
its CPU path (a 2-D convolution over the frames-first input read as channels-last) against the module's own grouped
Conv1d, the way it ran before, alternating, with the largest difference between their outputs.

    python benchmarks/cnn_stream.py [--seconds 10] [--batch 4] [--threads 2] [--repeats 5] [--only fithubert_local]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch
import torch.nn.functional as F

from inference_ratio import paper_size_parser, write_paper_checkpoints
from s3prl_distill.model import feature_extractor
from s3prl_distill.model.encoder import ConvPositionalEmbedding
from s3prl_distill.model.feature_extractor import ConvFeatureExtractor
from s3prl_distill.profiler import UpstreamSpec, load_upstream, profile_waves
from s3prl_distill.profiling import load_average, rotated

logger = logging.getLogger("cnn_stream")


def the_cnn(upstream: torch.nn.Module) -> ConvFeatureExtractor:
    found = [module for module in upstream.modules() if isinstance(module, ConvFeatureExtractor)]
    if len(found) != 1:
        raise ValueError(f"expected one ConvFeatureExtractor, found {len(found)}")
    cnn = found[0]
    if any(isinstance(module, torch.nn.Dropout) and module.p > 0 for module in cnn.modules()) or \
            any(block.gate is not None for block in cnn.conv_layers):
        raise ValueError("train mode would change this CNN's outputs (dropout or gates): no like-for-like path")
    return cnn


@contextmanager
def whole_batch(cnn: ConvFeatureExtractor) -> Iterator[None]:
    """The CNN alone in train mode: its whole-batch path, with the same arithmetic (dropout 0, no gates)."""
    cnn.train()
    try:
        yield
    finally:
        cnn.eval()


def alternate(runs: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, List[float]]:
    """Seconds of each run, the runs interleaved round by round (each round in a rotated order, so no run always
    follows the same one), after one untimed round."""
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for round_index in range(repeats + 1):
        for name in rotated(list(runs), round_index):
            start = time.perf_counter()
            runs[name]()
            if round_index:
                times[name].append(time.perf_counter() - start)
    return times


def encoder_frames(seconds: float) -> int:
    """The encoder's frames for ``seconds`` of 16 kHz audio: the HuBERT CNN's output length."""
    return (int(seconds * 16000) - 400) // 320 + 1


def write_result(name: str, args: argparse.Namespace, load_before: Tuple[float, ...], **parts: Any) -> dict:
    """The run's JSON (its settings, ``parts``, the load average around it) written to ``args.output``."""
    result = {"benchmark": name, "seconds": args.seconds, "batch": args.batch, "threads": args.threads,
              "repeats": args.repeats, "torch": torch.__version__, **parts,
              "load_average_before": load_before, "load_average_after": load_average()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return result


def measure(upstream: torch.nn.Module, wavs: List[torch.Tensor], repeats: int) -> dict:
    cnn = the_cnn(upstream)
    batch = torch.stack(wavs)
    sizes = cnn._output_bytes(batch)

    def forward() -> List[torch.Tensor]:
        return upstream(wavs)["hidden_states"]

    def forward_whole() -> List[torch.Tensor]:
        with whole_batch(cnn):
            return forward()

    def cnn_whole() -> torch.Tensor:
        with whole_batch(cnn):
            return cnn(batch)[0]

    def cnn_all_pieces() -> torch.Tensor:  # every layer in pieces, the small last ones too
        return cnn.stream(batch, None, cnn._chunk_frames(batch))[0]

    with torch.no_grad():
        difference = max((a - b).abs().max().item() for a, b in zip(forward(), forward_whole()))
        times = alternate({"streamed": forward, "whole": forward_whole, "cnn_streamed": lambda: cnn(batch)[0],
                           "cnn_whole": cnn_whole, "cnn_all_pieces": cnn_all_pieces}, repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        # Whether the default forward streams at this batch (else both timings are of the whole-batch path).
        "streams_at_this_size": max(sizes) > feature_extractor.STREAM_ABOVE_BYTES,
        "whole_from_layer": cnn._whole_from(sizes),
        "cnn_small_layers_whole_ratio": medians["cnn_streamed"] / medians["cnn_all_pieces"],
        "forward_s": {"streamed": medians["streamed"], "whole": medians["whole"]},
        "ratio": medians["streamed"] / medians["whole"],
        "cnn_s": {"streamed": medians["cnn_streamed"], "whole": medians["cnn_whole"],
                  "all_pieces": medians["cnn_all_pieces"]},
        "cnn_ratio": medians["cnn_streamed"] / medians["cnn_whole"],
        "cnn_share_whole": medians["cnn_whole"] / medians["whole"],
        "max_abs_difference": difference,
        "samples_s": times,
    }


def positional_conv(width: int, frames: int, batch: int, repeats: int) -> dict:
    """The CPU path of :class:`ConvPositionalEmbedding` against its Conv1d on ``(batch, frames, width)`` frames."""
    torch.manual_seed(0)
    module = ConvPositionalEmbedding(width, 128, 16, weight_norm=True).eval()
    x = torch.randn(batch, frames, width)

    def conv1d() -> torch.Tensor:  # the module's forward before it had a CPU path of its own
        y = module.conv(x.transpose(1, 2))[..., : -module.trim or None]
        return F.gelu(y).transpose(1, 2)

    with torch.no_grad():
        difference = (module(x) - conv1d()).abs().max().item()
        times = alternate({"cpu_path": lambda: module(x), "conv1d": conv1d}, repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"width": width, "frames": frames, "seconds": medians, "ratio": medians["cpu_path"] / medians["conv1d"],
            "max_abs_difference": difference, "samples_s": times}


def main() -> None:
    parser = paper_size_parser(__doc__.splitlines()[0], Path(__file__).parent / "results" / "cnn_stream.json",
                               "default: all with a CNN")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    load_before = load_average()
    wavs = profile_waves(args.seconds, args.batch, torch.device("cpu"))
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        # Students only (the teacher is s3prl's code), and only those with a CNN front end.
        checkpoints = write_paper_checkpoints(
            Path(folder), pruned=True, keep=lambda label, entry: entry != "hubert_local" and "fbank" not in entry
            and "distiller" not in entry and (not args.only or entry in args.only))
        for label, (entry, path) in checkpoints.items():
            logger.info("timing %s", label)
            upstream = load_upstream(UpstreamSpec(entry, str(path), label=label)).eval()
            rows[label] = {"entry": entry, **measure(upstream, wavs, args.repeats)}
            logger.info("  streamed / whole: forward %.3f, CNN alone %.3f; max |difference| %.2e",
                        rows[label]["ratio"], rows[label]["cnn_ratio"], rows[label]["max_abs_difference"])
    frames = encoder_frames(args.seconds)
    positional = [positional_conv(width, frames, args.batch, args.repeats) for width in (768, 480, 432)]
    result = write_result("cnn_stream", args, load_before, upstreams=rows, positional_conv=positional)
    print(f"{'upstream':55s} {'whole s':>8s} {'streamed s':>10s} {'ratio':>6s} {'CNN ratio':>9s} "
          f"{'small whole':>11s} {'max |diff|':>10s}")
    for label, row in rows.items():
        print(f"{label:55s} {row['forward_s']['whole']:8.3f} {row['forward_s']['streamed']:10.3f} "
              f"{row['ratio']:6.3f} {row['cnn_ratio']:9.3f} {row['cnn_small_layers_whole_ratio']:11.3f} "
              f"{row['max_abs_difference']:10.2e}")
    for row in positional:
        print(f"positional convolution, {row['width']} channels x {row['frames']} frames: CPU path / Conv1d "
              f"{row['ratio']:.3f} ({row['seconds']['cpu_path'] * 1e3:.1f} / {row['seconds']['conv1d'] * 1e3:.1f} ms), "
              f"max |difference| {row['max_abs_difference']:.2e}")
    print(f"load average before {load_before}, after {result['load_average_after']}; json: {args.output}")


if __name__ == "__main__":
    main()
