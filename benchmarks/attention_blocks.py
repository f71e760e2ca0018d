"""What computing the explicit attention in blocks gains in inference: each upstream whose layers reuse attention
maps (ARMHuBERT, ARMHuBERT-S), its forward with the blocked attention (the CPU inference default) against the same
forward with the whole-batch attention, in one run.

Every such family at its paper's size with random weights (:func:`inference_ratio.write_paper_checkpoints`, through
its s3prl entry), batch 4 x 10 s, forwards under ``no_grad`` in eval mode. The whole-batch path is selected by
raising ``attention.ATTENTION_BLOCKS_ABOVE_BYTES`` out of reach, which changes nothing else; the two paths alternate
round by round (rotating which goes first). Recorded per upstream: the median forward (reading ``hidden_states``)
each way, their ratio, and the largest difference between the two paths' hidden states.

Also one map-providing and one map-reusing layer alone at each width the families use (480 and 432, 12 heads), on
4 x 10 s of frames, both ways, alternating, with the largest difference between their outputs.

And the sweep behind ``attention.ATTENTION_BLOCKS_ABOVE_BYTES`` (the whole-batch score size above which inference
blocks): each upstream's forward both ways at batch sizes and lengths whose scores fall on either side of it,
in fp32 and (where the CPU has native bf16 matrix instructions) under bf16 autocast, as ``upstream_bf16`` runs it.
Each case records its whole-batch score bytes, whether the rule blocks it, and the blocked / whole ratio.

And what the softmaxes cost the blocked forward: the same forward with the providing layers' softmax and the reusing
layers' second softmax left out (``without_softmax``: wrong outputs, timing only), alternating with the real one;
``softmax_free_ratio`` is the most any faster softmax could save.

    python benchmarks/attention_blocks.py [--seconds 10] [--batch 4] [--threads 2] [--repeats 5]
        [--sweep 8x2 1x6 2x5 ...] [--sweep-repeats 7]
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import torch

from cnn_stream import alternate, encoder_frames, write_result
from inference_ratio import paper_size_parser, write_paper_checkpoints
from s3prl_distill.model import attention
from s3prl_distill.model.attention import AttentionMaps, SelfAttention, whole_batch_scores_bytes
from s3prl_distill.profiler import UpstreamSpec, bf16_gemm_supported, load_upstream, profile_waves
from s3prl_distill.profiling import load_average

logger = logging.getLogger("attention_blocks")

# (batch, seconds) of the sweep: 12 heads' fp32 scores of 3.8, 4.3, 6.0, 8.9, 11.9, 12.0, 23.9 and 47.8 MB (half in bf16)
SWEEP = ("8x2", "1x6", "2x5", "3x5", "4x5", "1x10", "2x10", "4x10")


@contextmanager
def blocks_above(size: int) -> Iterator[None]:
    """Attention blocked when the whole batch's scores exceed ``size`` bytes (``sys.maxsize``: never, as before
    blocks; 0: always); the rest of the forward is unchanged."""
    saved = attention.ATTENTION_BLOCKS_ABOVE_BYTES
    attention.ATTENTION_BLOCKS_ABOVE_BYTES = size
    try:
        yield
    finally:
        attention.ATTENTION_BLOCKS_ABOVE_BYTES = saved


def whole_batch_attention():
    """Every layer attends over the whole batch at once, as before blocks."""
    return blocks_above(sys.maxsize)


@contextmanager
def without_softmax() -> Iterator[None]:
    """The blocked attention with its softmaxes left out: a providing layer attends with its raw scores, a reusing
    layer with the map as it is. Everything else runs as before (outputs are wrong: for timing only)."""
    saved = attention.softmax_rows_, attention.reused_attention_weights
    attention.softmax_rows_ = lambda scores: scores
    attention.reused_attention_weights = lambda probabilities, padding_mask: probabilities
    try:
        yield
    finally:
        attention.softmax_rows_, attention.reused_attention_weights = saved


def sweep_case(text: str) -> Tuple[int, float]:
    """``"4x10"`` -> (4 utterances, 10.0 s)."""
    try:
        batch, seconds = text.lower().split("x")
        return int(batch), float(seconds)
    except ValueError:
        raise ValueError(f"--sweep takes BATCHxSECONDS cases such as 4x10, got {text!r}") from None


def blocked_against_whole(blocked: Callable[[], object], whole: Callable[[], object], repeats: int) -> dict:
    """Both runs alternating (:func:`cnn_stream.alternate`) under ``no_grad``: their medians (s), the blocked / whole
    ratio of the medians, and every sample."""
    with torch.no_grad():
        times = alternate({"blocked": blocked, "whole": whole}, repeats)
    medians: Dict[str, float] = {name: statistics.median(values) for name, values in times.items()}
    return {"medians": medians, "ratio": medians["blocked"] / medians["whole"], "samples_s": times}


def explicit_layers(upstream: torch.nn.Module) -> List[SelfAttention]:
    found = [module for module in upstream.modules()
             if isinstance(module, SelfAttention) and (module.provides_map or module.reuses_map)]
    if not found:
        raise ValueError("no attention layer of this upstream provides or reuses a map: nothing is blocked")
    return found


def measure(upstream: torch.nn.Module, wavs: List[torch.Tensor], repeats: int) -> dict:
    layers = explicit_layers(upstream)

    def forward() -> List[torch.Tensor]:
        return upstream(wavs)["hidden_states"]

    def forward_whole() -> List[torch.Tensor]:
        with whole_batch_attention():
            return forward()

    def forward_without_softmax() -> List[torch.Tensor]:
        with without_softmax():
            return forward()

    with torch.no_grad():
        difference = max((a - b).abs().max().item() for a, b in zip(forward(), forward_whole()))
        softmax_free = alternate({"real": forward, "without_softmax": forward_without_softmax}, repeats)
    timed = blocked_against_whole(forward, forward_whole, repeats)
    paired = [free / real for real, free in zip(softmax_free["real"], softmax_free["without_softmax"])]
    return {"explicit_layers": len(layers), "forward_s": timed["medians"], "ratio": timed["ratio"],
            "max_abs_difference": difference, "samples_s": timed["samples_s"],
            "softmax_free_ratio": statistics.median(paired), "softmax_free_samples_s": softmax_free}


def threshold_sweep(upstream: torch.nn.Module, cases: Sequence[Tuple[int, float]], precisions: Sequence[str],
                    repeats: int) -> List[dict]:
    """The forward blocked against whole-batch at each (batch, seconds) and precision; each case also says whether
    the current rule (``ATTENTION_BLOCKS_ABOVE_BYTES``) blocks it."""
    heads, rule = explicit_layers(upstream)[0].num_heads, attention.ATTENTION_BLOCKS_ABOVE_BYTES
    rows = []
    for batch, seconds in cases:
        wavs = profile_waves(seconds, batch, torch.device("cpu"))
        frames = encoder_frames(seconds)
        for precision in precisions:
            bf16 = precision == "bf16"
            scores_bytes = whole_batch_scores_bytes(batch, heads, frames, torch.bfloat16 if bf16 else torch.float32)

            def forward(size: int, bf16: bool = bf16) -> None:
                with blocks_above(size), (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()):
                    upstream(wavs)["hidden_states"]

            timed = blocked_against_whole(lambda: forward(0), lambda: forward(sys.maxsize), repeats)
            rows.append({"batch": batch, "seconds": seconds, "precision": precision, "frames": frames,
                         "scores_bytes": scores_bytes, "blocked_by_rule": scores_bytes > rule,
                         "forward_s": timed["medians"], "ratio": timed["ratio"], "samples_s": timed["samples_s"]})
            logger.info("  %d x %g s %s (%.1f MB of scores): blocked / whole %.3f", batch, seconds, precision,
                        scores_bytes / 1e6, rows[-1]["ratio"])
    return rows


def layer_pair(width: int, heads: int, frames: int, batch: int, repeats: int) -> dict:
    """A providing and a reusing layer on ``(batch, frames, width)`` (padding in one utterance), both ways."""
    torch.manual_seed(0)
    provider = SelfAttention(width, heads, width // heads, 0.0, provides_map=True).eval()
    reuser = SelfAttention(width, heads, width // heads, 0.0, reuses_map=True).eval()
    x = torch.randn(batch, frames, width)
    padding = torch.zeros(batch, frames, dtype=torch.bool)
    padding[-1, frames * 3 // 4:] = True

    def pair() -> torch.Tensor:
        maps = AttentionMaps()
        return reuser(provider(x, padding, maps=maps), padding, maps=maps)

    def pair_whole() -> torch.Tensor:
        with whole_batch_attention():
            return pair()

    with torch.no_grad():
        difference = (pair() - pair_whole()).abs().max().item()
    timed = blocked_against_whole(pair, pair_whole, repeats)
    return {"width": width, "heads": heads, "frames": frames, "batch": batch, "seconds": timed["medians"],
            "ratio": timed["ratio"], "max_abs_difference": difference, "samples_s": timed["samples_s"]}


def main() -> None:
    parser = paper_size_parser(__doc__.splitlines()[0], Path(__file__).parent / "results" / "attention_blocks.json",
                               "default: armhubert_local")
    parser.add_argument("--sweep", nargs="*", default=list(SWEEP), metavar="BATCHxSECONDS",
                        help="cases of the threshold sweep (none: no sweep); default: %(default)s")
    parser.add_argument("--sweep-repeats", type=int, default=7)
    args = parser.parse_args()
    try:
        cases = [sweep_case(text) for text in args.sweep]
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    load_before = load_average()
    wavs = profile_waves(args.seconds, args.batch, torch.device("cpu"))
    only = args.only or ["armhubert_local"]
    rows, sweeps = {}, []
    precisions = ["fp32", "bf16"] if bf16_gemm_supported() else ["fp32"]
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = write_paper_checkpoints(Path(folder), keep=lambda label, entry: entry in only)
        for label, (entry, path) in checkpoints.items():
            logger.info("timing %s", label)
            upstream = load_upstream(UpstreamSpec(entry, str(path), label=label)).eval()
            rows[label] = {"entry": entry, **measure(upstream, wavs, args.repeats)}
            logger.info("  blocked / whole: forward %.3f; max |difference| %.2e; without softmax / real %.3f",
                        rows[label]["ratio"], rows[label]["max_abs_difference"], rows[label]["softmax_free_ratio"])
            if cases:
                logger.info("threshold sweep, %s", label)
                sweeps.append({"upstream": label, "precisions": precisions,
                               "cases": threshold_sweep(upstream, cases, precisions, args.sweep_repeats)})
    frames = encoder_frames(args.seconds)
    pairs = [layer_pair(width, 12, frames, args.batch, args.repeats) for width in (480, 432)]
    result = write_result("attention_blocks", args, load_before, block_bytes=attention.ATTENTION_BLOCK_BYTES,
                          blocks_above_bytes=attention.ATTENTION_BLOCKS_ABOVE_BYTES, upstreams=rows,
                          layer_pairs=pairs, threshold_sweeps=sweeps)
    print(f"{'upstream':40s} {'whole s':>8s} {'blocked s':>9s} {'ratio':>6s} {'max |diff|':>10s} "
          f"{'without softmax / real':>22s}")
    for label, row in rows.items():
        print(f"{label:40s} {row['forward_s']['whole']:8.3f} {row['forward_s']['blocked']:9.3f} "
              f"{row['ratio']:6.3f} {row['max_abs_difference']:10.2e} {row['softmax_free_ratio']:22.3f}")
    for row in pairs:
        print(f"providing + reusing layer, {row['width']} wide, {row['heads']} heads, {row['batch']} x {row['frames']} "
              f"frames: blocked / whole {row['ratio']:.3f} ({row['seconds']['blocked'] * 1e3:.1f} / "
              f"{row['seconds']['whole'] * 1e3:.1f} ms), max |difference| {row['max_abs_difference']:.2e}")
    for sweep, row in ((sweep, row) for sweep in sweeps for row in sweep["cases"]):
        print(f"sweep, {sweep['upstream']}, {row['batch']} x {row['seconds']:g} s, {row['precision']}: "
              f"{row['scores_bytes'] / 1e6:.1f} MB of scores ({'blocked' if row['blocked_by_rule'] else 'whole'} by "
              f"the rule), blocked / whole {row['ratio']:.3f}")
    print(f"load average before {load_before}, after {result['load_average_after']}; json: {args.output}")


if __name__ == "__main__":
    main()
