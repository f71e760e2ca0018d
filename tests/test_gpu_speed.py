"""benchmarks/gpu_speed.py at toy sizes on the CPU (``--device cpu --quick``): every case runs through the production
paths and the JSON holds a sane figure for each. No timing assertions: the figures are only checked to be finite,
positive and, for MFU, at most MFU_BOUND."""

from __future__ import annotations

import json
import math

import pytest

from helpers import BENCHMARKS, BF16_RELATIVE_TOLERANCE, import_benchmark, run_python

SCRIPT = BENCHMARKS / "gpu_speed.py"
# MFU is over a *measured* GEMM peak, not the hardware's: on a CPU, products whose operands stay in cache have run at
# 1.1x the large GEMM's rate (README, the shape-ceiling table), and a loaded machine can depress the peak measurement
# more than a toy forward. So not "at most 1"; a bound that still catches a FLOP count off by a large factor.
MFU_BOUND = 1.5


@pytest.fixture(scope="module")
def gpu_speed():
    yield from import_benchmark("gpu_speed")


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_speed") / "quick.json"
    # No time budget: on a busy machine a skipped case would fail the test for a reason that is not the code's.
    result = run_python([str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out), "--budget-s", "100000"],
                        timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(out.read_text()), result.stdout


def test_quick_run_has_every_case_without_errors(quick_run, gpu_speed):
    data, stdout = quick_run
    assert data["status"] == "complete" and data["errors"] == [] and data["skipped"] == []
    assert data["environment"]["device"] == "cpu" and data["environment"]["torch"]
    assert all(positive(data["peaks"][name]["gflops"]) for name in ("bf16", "fp32"))

    expected = [case.name for case in gpu_speed.training_cases("fp32", "bf16", quick=True)]
    assert [row["case"] for row in data["training"]] == expected
    recipes = {row["recipe"] for row in data["training"]}
    assert recipes == set(gpu_speed.RECIPES) == {"distilhubert", "fithubert", "deepthin", "dphubert"}
    assert {(row["teacher"], row["precision"]) for row in data["training"]} >= {
        ("online", "fp32"), ("cache", "fp32"), ("online", "bf16")}
    for row in data["training"]:
        assert "error" not in row, row["case"]
        assert len(row["step_s"]) == row["warmup_steps"] + data["settings"]["timed_steps"]
        for key in ("median_step_s", "utterances_per_s", "audio_seconds_per_s", "model_flops_per_step",
                    "achieved_flops_per_s"):
            assert positive(row[key]), (row["case"], key, row[key])
        assert 0 < row["mfu"] <= MFU_BOUND, (row["case"], row["mfu"])
        assert row["memory"]["peak_bytes"] is None and row["memory"]["growth_bytes"] >= 0  # CPU: RSS growth only
        if row["teacher"] == "cache":
            assert positive(row["cache_build_s"]) and positive(row["cache_bytes"])
    # The teacher's forward is in an online step's FLOPs and not in a cached one's; the student's work is the same.
    flops = {(row["recipe"], row["teacher"]): row["model_flops_per_step"] for row in data["training"]}
    for recipe in gpu_speed.RECIPES:
        assert flops[(recipe, "online")] > flops[(recipe, "cache")], recipe

    entries = [*gpu_speed.upstream_plan(quick=True), *gpu_speed.SAME_WEIGHTS]
    assert "distiller_local" in entries
    assert data["uncovered_upstream_families"] == []
    assert [row["case"] for row in data["upstreams"]] == [f"{e}/{p}" for e in entries for p in ("fp32", "bf16")]
    for row in data["upstreams"]:
        assert "error" not in row, row["case"]
        assert positive(row["audio_seconds_per_s"]) and positive(row["model_flops_per_forward"]), row["case"]
        assert 0 < row["mfu"] <= MFU_BOUND, (row["case"], row["mfu"])
        # On a CPU the forward returns when its work is done: the host time is the forward's own time.
        assert 0 < row["host_forward_s"] <= 10 * row["median_forward_s"], row["case"]
        assert row["device_kernels"] is None and row["ops"] > 10, row["case"]
        top = row["top_self_time"]
        assert 0 < len(top) <= 8 and all(entry["calls"] >= 1 and entry["self_ms"] > 0 for entry in top), row["case"]
        assert [entry["self_ms"] for entry in top] == sorted((entry["self_ms"] for entry in top), reverse=True)
    # Each case also timed a padded batch of the same size; each bf16 case measured its deviation from fp32 there.
    for row in data["upstreams"]:
        assert (row["batch"], row["seconds_each"]) == (2, 1.0)  # --quick: 2 x 1 s, so the padded batch is 1 and 0.88 s
        assert row["padded_batch_s"] == [1.0, 0.88], row["case"]
        assert positive(row["padded_median_forward_s"]), row["case"]
        deviation = row.get("deviation_vs_fp32")
        if row["precision"] == "fp32":
            assert deviation is None, row["case"]
            continue
        # bf16 really ran (not equal to fp32) and stayed close to it, in every hidden state.
        assert len(deviation["relative"]) == len(deviation["mean_abs_relative"]) >= 2, row["case"]
        assert 0 < deviation["worst_relative"] < BF16_RELATIVE_TOLERANCE, (row["case"], deviation)
        assert deviation["worst_relative"] == pytest.approx(max(deviation["relative"]), abs=1e-5)
        assert 0 < deviation["worst_mean_abs_relative"] < deviation["worst_relative"], row["case"]
    assert "max dev." in stdout and "padded" in stdout
    # bf16 autocast casts weights and activations inside the ops; fp32 casts (almost) nothing.
    casts = {row["case"]: row["casts"] for row in data["upstreams"]}
    for entry in entries:
        assert casts[f"{entry}/bf16"] > casts[f"{entry}/fp32"] + 10, (entry, casts)
    # s3prl's distiller_local ran on the very checkpoint our distilhubert_local read.
    ckpt = {row["upstream"]: row["ckpt"] for row in data["upstreams"]}
    assert ckpt["distiller_local"] == ckpt["distilhubert_local"]
    assert "status complete" in stdout


def test_an_exhausted_budget_skips_cases_with_a_reason(tmp_path, monkeypatch, gpu_speed):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the script sets it for --device cpu; restored afterwards
    out = tmp_path / "skipped.json"
    assert gpu_speed.main(["--device", "cpu", "--quick", "--out", str(out), "--budget-s", "0.001"]) == 1  # none ran
    data = json.loads(out.read_text())
    assert data["status"] == "budget_exhausted" and data["cases_ran"] == 0
    assert data["training"] == [] and data["upstreams"] == []
    skipped = [row["case"] for row in data["skipped"]]
    assert skipped[:len(gpu_speed.training_cases("fp32", "bf16", quick=True))] == [
        case.name for case in gpu_speed.training_cases("fp32", "bf16", quick=True)]
    assert "distiller_local/bf16" in skipped
    assert all("time budget" in row["reason"] for row in data["skipped"])


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu", "--out", "x.json"], "--device"),
    (["--device", "cpu"], "--out"),
    (["--device", "cpu", "--out", "x.json", "--budget-s", "0"], "--budget-s must be positive"),
    (["--device", "cpu", "--out", "x.json", "--threads", "0"], "--threads must be >= 1"),
])
def test_argument_errors_exit_2_naming_the_argument(argv, message, gpu_speed, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(SystemExit) as raised:
        gpu_speed.main(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_a_failed_padded_forward_or_deviation_keeps_the_case_and_its_timings(tmp_path, monkeypatch, gpu_speed,
                                                                            capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    def fail(*args):
        raise RuntimeError("TF32 flags set through both APIs")

    def padded_fails(models, wavs, *args, **kwargs):
        if len({len(wave) for wave in wavs}) > 1:  # the padded batch
            raise RuntimeError("no kernel for this mask")
        return real_samples(models, wavs, *args, **kwargs)

    from s3prl_distill import profiling

    real_samples = profiling.forward_time_samples
    monkeypatch.setattr(gpu_speed, "deviation_vs_fp32", fail)
    monkeypatch.setattr(profiling, "forward_time_samples", padded_fails)
    out = tmp_path / "upstreams.json"
    assert gpu_speed.main(["--device", "cpu", "--quick", "--only", "upstreams", "--out", str(out),
                           "--budget-s", "100000"]) == 0
    data = json.loads(out.read_text())
    assert data["errors"] == [] and data["training"] == [] and len(data["upstreams"]) >= 2
    for row in data["upstreams"]:
        assert "error" not in row and positive(row["median_forward_s"]), row["case"]
        assert "padded_median_forward_s" not in row and row["padded_error"]["message"] == "no kernel for this mask"
        if row["precision"] == "bf16":
            failure = row["deviation_vs_fp32"]["error"]
            assert (failure["type"], failure["message"]) == ("RuntimeError", "TF32 flags set through both APIs")
    out = capsys.readouterr().out
    assert "deviation failed" in out and "padded failed" in out
