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
    row = shape_ceiling.with_fractions(shape_ceiling.measure(upstream(family), wavs, repeats=1, probe_seconds=0.01),
                                       peak_gflops=10.0)
    # Every op FlopCounterMode counts in the forward was recorded, with its multiplicity, and nothing else.
    assert row["replayed_flops"] == 2 * row["macs"] > 0
    assert row["calls"] >= row["distinct_calls"] >= 1
    for key in ("median_forward_s", "counted_ops_s", "counted_share", "fraction", "ceiling"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    for op in row["top_ops"]:
        assert op["calls"] >= 1 and op["seconds_each"] > 0 and op["flops_each"] > 0, op
    shares = [op["share_of_counted_time"] for op in row["top_ops"]]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-9
    # The timed pass: counted ops inside the forward, the uncounted ones listed apart, and the two GEMM probes.
    for key in ("counted_ops_in_forward_s", "uncounted_ops_s", "gemm_gflops_at_forwards", "gemm_gflops_at_replay",
                "host_drift"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    assert row["host_drift"] == pytest.approx(row["gemm_gflops_at_replay"] / row["gemm_gflops_at_forwards"])
    uncounted = row["uncounted_ops"]
    assert uncounted and not {op["op"] for op in uncounted} & COUNTED_NAMES
    seconds = [op["seconds"] for op in uncounted]
    assert seconds == sorted(seconds, reverse=True) and sum(seconds) <= row["uncounted_ops_s"] + 1e-12
    for op in uncounted:
        assert op["calls"] >= 1
        assert op["share_of_forward"] == pytest.approx(op["seconds"] / row["median_forward_s"])


COUNTED_NAMES = {"addmm", "mm", "bmm", "convolution", "_scaled_dot_product_flash_attention_for_cpu"}


def test_timed_ops_split_counted_from_uncounted_work(shape_ceiling):
    """A model of one Linear and one softmax: the Linear's addmm is counted work, the softmax is not; each listed
    once per forward, and timing leaves the outputs unchanged."""
    model = torch.nn.Linear(8, 8)

    class Upstream(torch.nn.Module):
        def forward(self, wavs):
            return {"hidden_states": [torch.softmax(model(torch.stack(wavs)[:, :8]), dim=-1)]}

    upstream = Upstream()
    wavs = [torch.randn(16) for _ in range(2)]
    with torch.no_grad():
        plain = upstream(wavs)["hidden_states"][0]
        timer = shape_ceiling.TimedOps()
        with timer:
            timed = upstream(wavs)["hidden_states"][0]
    assert torch.equal(plain, timed)
    assert timer.calls[torch.ops.aten.addmm] == 1 and timer.calls[torch.ops.aten._softmax] == 1
    times = shape_ceiling.op_times(upstream, wavs, forwards=3, forward_s=1.0)
    names = [op["op"] for op in times["uncounted_ops"]]
    assert "_softmax" in names and "addmm" not in names
    softmax, = [op for op in times["uncounted_ops"] if op["op"] == "_softmax"]
    assert softmax["calls"] == 1  # per forward, over 3 forwards
    assert times["counted_ops_in_forward_s"] > 0 and times["uncounted_share"] == times["uncounted_ops_s"]


@pytest.mark.parametrize("drift, share, flagged", [
    (1.0, 0.9, False), (1.04, 0.9, False), (0.96, 0.99, False),
    (1.06, 0.9, True), (0.94, 0.9, True), (1.0, 1.02, True),
])
def test_a_measurement_the_host_moved_under_is_flagged(shape_ceiling, drift, share, flagged):
    assert shape_ceiling.suspect({"host_drift": drift, "counted_share": share}) is flagged


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


def test_a_moved_measurement_is_taken_again_and_the_steadiest_kept(shape_ceiling):
    def measurements(*drifts):
        taken = iter([{"host_drift": drift, "counted_share": 0.9, "n": n} for n, drift in enumerate(drifts)])
        return lambda: next(taken)

    # steady at once: measured once
    row = shape_ceiling.steadiest(measurements(1.01, 0.5), retries=2, suspect=shape_ceiling.suspect)
    assert (row["n"], row["attempts"], row["suspect"]) == (0, 1, False)
    # moved, then steady: the steady one, no more
    row = shape_ceiling.steadiest(measurements(1.3, 0.98, 2.0), retries=2, suspect=shape_ceiling.suspect)
    assert (row["n"], row["attempts"], row["suspect"]) == (1, 2, False)
    # moved every time: all retries taken, the one nearest 1 kept and still marked
    row = shape_ceiling.steadiest(measurements(1.3, 0.8, 1.1, 1.0), retries=2, suspect=shape_ceiling.suspect)
    assert (row["n"], row["attempts"], row["suspect"]) == (2, 3, True)
    # no retries
    row = shape_ceiling.steadiest(measurements(1.3, 1.0), retries=0, suspect=shape_ceiling.suspect)
    assert (row["n"], row["attempts"], row["suspect"]) == (0, 1, True)


@pytest.mark.parametrize("argv, message", [
    (["--only", "no_such_local"], "no such entry"),
    (["--repeats", "0"], "--repeats must be positive"),
    (["--probe-seconds", "0"], "--probe-seconds must be positive"),
    (["--retries", "-1"], "--retries must be 0 or more"),
])
def test_bad_arguments_are_refused_by_name(shape_ceiling, argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        shape_ceiling.main([*argv, "--peak-seconds", "0.01", "--output", str(tmp_path / "out.json")])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
