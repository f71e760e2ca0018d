"""``s3prl-distill export CKPT --to onnx FILE``: a student upstream as an ONNX graph for onnxruntime.

The graph is the upstream's own forward on a padded batch (its adapter's ``batch_outputs``): inputs ``waveforms``
(batch, samples, float32, 16 kHz) and ``lengths`` (batch, int64: valid samples per row); outputs ``hidden_state_<i>``
(batch, frames, dim) — the ``hidden_states`` the s3prl upstream gives, in its order — and ``frame_lengths`` (batch,
int64: valid frames per row; frames past it are padding). Batch and length are dynamic.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, checkpoint_or_latest

logger = logging.getLogger(__name__)

INPUT_NAMES = ("waveforms", "lengths")
FRAME_LENGTHS = "frame_lengths"
OPSET = 18
# The trace's example batch: two rows of different lengths, so the padded path is the one traced.
EXAMPLE_SAMPLES = (16000, 12000)


class OnnxUpstream(nn.Module):
    """An upstream expert's (``upstream.expert.StudentExpert``) hidden states and frame lengths for a padded batch."""

    def __init__(self, expert: nn.Module) -> None:
        super().__init__()
        self.expert = expert

    def forward(self, waveforms: Tensor, lengths: Tensor) -> Tuple[Tensor, ...]:
        outputs = self.expert.adapter.batch_outputs(self.expert.model, waveforms, lengths)
        hidden_states: List[Tensor] = list(outputs["hidden_states"])
        frames = hidden_states[0].shape[1]
        # Valid frames per row, capped at the frames the upstream returns (FitHuBERT trims to its heads' frames).
        frame_lengths = torch.clamp(self.expert.model.frame_lengths(lengths), max=frames)
        return (*hidden_states, frame_lengths)


def example_batch(samples: Sequence[int] = EXAMPLE_SAMPLES, seed: int = 0) -> Tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    waves = [0.1 * torch.randn(n, generator=generator) for n in samples]
    return nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor(list(samples), dtype=torch.int64)


def output_names(count: int) -> List[str]:
    return [*(f"hidden_state_{i}" for i in range(count)), FRAME_LENGTHS]


def export_onnx_model(expert: nn.Module, output: Path, opset: int = OPSET) -> List[str]:
    """Write ``expert`` (a loaded student upstream) as ONNX to ``output``; returns the output names."""
    wrapper = OnnxUpstream(expert).eval()
    waveforms, lengths = example_batch()
    with torch.no_grad():
        count = len(wrapper(waveforms, lengths)) - 1
    names = output_names(count)
    batch, samples = torch.export.Dim("batch", min=1), torch.export.Dim("samples", min=800)
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(wrapper, (waveforms, lengths), dynamo=True, opset_version=opset,
                                    input_names=list(INPUT_NAMES), output_names=names,
                                    dynamic_shapes={"waveforms": {0: batch, 1: samples}, "lengths": {0: batch}},
                                    optimize=True, verify=False, verbose=False)
    program.save(str(output))
    return names


def _require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxscript") if _absent(name)]
    if missing:
        raise CheckpointError(f"--to onnx needs {' and '.join(missing)}: pip install 's3prl-distill[onnx]' "
                              "(onnx, onnxscript, and onnxruntime to run the result)")


def _absent(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def max_difference(expert: nn.Module, output: Path, samples: Sequence[int]) -> Optional[Tuple[float, float]]:
    """Largest absolute difference over valid frames between onnxruntime (CPU) on ``output`` and PyTorch on a
    padded batch of ``samples``, and the largest absolute value PyTorch gives there (float32 rounding scales with
    it); None without onnxruntime."""
    if _absent("onnxruntime"):
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    waveforms, lengths = example_batch(samples, seed=1)
    with torch.no_grad():
        expected = OnnxUpstream(expert).eval()(waveforms, lengths)
    found = session.run(None, {"waveforms": waveforms.numpy(), "lengths": lengths.numpy()})
    if not torch.equal(torch.from_numpy(found[-1]), expected[-1]):
        return float("inf"), 0.0
    worst = largest = 0.0
    for ours, theirs in zip(expected[:-1], found[:-1]):
        for row, frames in enumerate(expected[-1].tolist()):
            difference = (ours[row, :frames] - torch.from_numpy(theirs)[row, :frames]).abs().max()
            worst, largest = max(worst, float(difference)), max(largest, float(ours[row, :frames].abs().max()))
    return worst, largest


# A check batch longer than the trace's and with one more row: the graph must not have frozen either.
CHECK_SAMPLES = (9000, 23000, 15000)


def export_onnx(path: Path, output: Path) -> Dict[str, Any]:
    """``s3prl-distill export CKPT --to onnx FILE``: the student of ``path`` (any format its upstream reads, or a
    run directory: its latest step), through its family's upstream, as ONNX; checked against PyTorch with
    onnxruntime when it is installed. Returns a summary."""
    from ..checkpoint import load_checkpoint
    from ..registry import build_upstream
    from .huggingface import upstream_of
    from .reader import read_student

    _require_onnx()
    path = checkpoint_or_latest(path)
    student = read_student(load_checkpoint(path, what="checkpoint to export"), str(path))
    entry = upstream_of(student.config, student.family)
    expert = build_upstream(f"{entry}_local", str(path), what="the upstream to export").eval()
    names = export_onnx_model(expert, Path(output))
    difference = max_difference(expert, Path(output), CHECK_SAMPLES)
    logger.info("exported %s -> %s (ONNX through %s_local; outputs %s)", path, output, entry, ", ".join(names))
    return {"source": str(path), "output": str(output), "format": "onnx", "family": student.family,
            "upstream": f"{entry}_local", "inputs": list(INPUT_NAMES), "outputs": names, "opset": OPSET,
            "max_abs_difference_vs_pytorch": None if difference is None else difference[0],
            "max_abs_value": None if difference is None else difference[1]}
