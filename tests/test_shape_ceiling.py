"""benchmarks/shape_ceiling.py: the counted ops of a forward are recorded exactly (the replay counts the same FLOPs as
the profiler), recording leaves the outputs unchanged, and each operand is replayed in its recorded layout. No
timing assertions: only that the figures are finite and positive."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from s3prl_distill.profiler import UpstreamSpec, load_upstream, profile_waves

from helpers import import_benchmark

BEFORE = Path(__file__).resolve().parent / "data" / "before_issue17"
FAMILIES = ("distilhubert", "fithubert", "deepthin", "deepthin_fbank", "dphubert")


@pytest.fixture(scope="module")
def shape_ceiling():
    yield from import_benchmark("shape_ceiling")


def upstream(family: str) -> torch.nn.Module:
    return load_upstream(UpstreamSpec(f"{family}_local", str(BEFORE / f"{family}.ckpt"))).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_replay_covers_exactly_the_counted_ops(shape_ceiling, family):
    wavs = profile_waves(0.5, 2, torch.device("cpu"))
    row = shape_ceiling.with_fractions(shape_ceiling.measure(upstream(family), wavs, repeats=1), peak_gflops=10.0)
    # Every op FlopCounterMode counts in the forward was recorded, with its multiplicity, and nothing else.
    assert row["replayed_flops"] == 2 * row["macs"] > 0
    assert row["calls"] >= row["distinct_calls"] >= 1
    for key in ("median_forward_s", "counted_ops_s", "counted_share", "fraction", "ceiling"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    for op in row["top_ops"]:
        assert op["calls"] >= 1 and op["seconds_each"] > 0 and op["flops_each"] > 0, op
    shares = [op["share_of_counted_time"] for op in row["top_ops"]]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-9


def test_recording_leaves_the_outputs_unchanged(shape_ceiling):
    model = upstream("fithubert")
    wavs = profile_waves(0.5, 2, torch.device("cpu"))
    with torch.no_grad():
        plain = model(wavs)["hidden_states"]
        recorder = shape_ceiling.CountedOps()
        with recorder:
            recorded = model(wavs)["hidden_states"]
    assert recorder.calls, "nothing recorded"
    assert len(plain) == len(recorded)
    for left, right in zip(plain, recorded):
        assert torch.equal(left, right)


def test_operands_are_replayed_in_their_recorded_layout(shape_ceiling):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 4)
    cases = {
        "transposed": weight.t(),  # how Linear hands its weight to addmm
        "broadcast": torch.randn(5, 1).expand(5, 3),  # a stride of 0
        "contiguous": torch.randn(2, 3, 4),
    }
    for name, tensor in cases.items():
        layout = shape_ceiling.TensorLayout.of(tensor)
        fresh = layout.allocate(generator)
        assert fresh.shape == tensor.shape and fresh.stride() == tensor.stride() and fresh.dtype == tensor.dtype, name
        assert torch.isfinite(fresh).all(), name
    # A recorded call replays: addmm on a transposed weight gives the shape the model saw.
    recorder = shape_ceiling.CountedOps()
    with recorder, torch.no_grad():
        torch.nn.functional.linear(torch.randn(3, 4), weight, torch.randn(6))
    (call, count), = recorder.calls.items()
    assert count == 1 and call[0].overloadpacket is torch.ops.aten.addmm
    seconds, flops = shape_ceiling.replay(call, 2, generator)
    assert flops == 2 * 3 * 4 * 6
    assert seconds > 0


@pytest.mark.parametrize("argv, message", [
    (["--only", "no_such_local"], "no such entry"),
    (["--repeats", "0"], "--repeats must be positive"),
])
def test_bad_arguments_are_refused_by_name(shape_ceiling, argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        shape_ceiling.main([*argv, "--peak-seconds", "0.01", "--output", str(tmp_path / "out.json")])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
