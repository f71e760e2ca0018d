"""benchmarks/cpu_peak.py's --each mode: every upstream profiled on its own, against its own GEMM peak."""

import argparse
from pathlib import Path

import pytest

from s3prl_distill.profiler import UpstreamSpec

from helpers import import_benchmark

BEFORE = Path(__file__).resolve().parent / "data" / "before_issue17"


@pytest.fixture(scope="module")
def cpu_peak():
    yield from import_benchmark("cpu_peak")


def test_each_upstream_gets_its_own_peak_and_fraction(cpu_peak):
    specs = [UpstreamSpec("distilhubert_local", str(BEFORE / "distilhubert.ckpt"), label="distil"),
             UpstreamSpec("fithubert_local", str(BEFORE / "fithubert.ckpt"), label="fit")]
    args = argparse.Namespace(seconds=0.5, batch=2, threads=1, repeats=2, warmup=0, peak_seconds=0.05, retries=0)
    result = cpu_peak.profile_each(specs, args)
    assert result["mode"] == "each" and [row["label"] for row in result["upstreams"]] == ["distil", "fit"]
    assert "each upstream on its own" in result["settings"]["latency"]
    for row in result["upstreams"]:
        peak = row["peak"]
        assert peak["gflops"] > 0 and peak["before"] is not None and peak["after"] is not None
        assert len(row["latency_samples_s"]["0.5s"]) == 2
        expected = 2 * row["macs"]["0.5s"] * 2 / row["latency_s"]["0.5s"] / (peak["gflops"] * 1e9)
        assert row["fraction_of_peak"]["0.5s"] == pytest.approx(expected, rel=1e-9)
        assert row["host_drift"] == pytest.approx(peak["after"]["gflops"] / peak["before"]["gflops"])
        assert row["attempts"] == 1 and row["suspect"] == (abs(row["host_drift"] - 1) > 0.05)
    assert result["upstreams"][0]["peak"] is not result["upstreams"][1]["peak"]  # measured twice, once per upstream
    table = cpu_peak.each_table(result).splitlines()
    suspect = any(row["suspect"] for row in result["upstreams"])  # 0.05 s peaks on a shared machine can move
    assert len(table) == 3 + suspect and table[1].startswith("distil") and table[2].startswith("fit")
    first = result["upstreams"][0]
    assert table[1].split()[-2] == f"{100 * first['fraction_of_peak']['0.5s']:.1f}"
    assert table[1].split()[-1] == f"{first['host_drift']:.2f}" + ("!" if first["suspect"] else "")


def test_an_upstream_the_host_moved_under_is_profiled_again(cpu_peak, monkeypatch):
    """GEMM rates before / after the forwards of 100 / 130 (moved), then 100 / 102 (steady): profiled twice, the
    steady profile kept; with every profile moved, all retries are taken and the nearest to 1 is kept, marked."""
    def fake_runs(*rates):
        pairs = iter(rates)

        def profile_upstreams(specs, *args, **kwargs):
            before, after = next(pairs)
            return {"tool": "t", "environment": {}, "settings": {}, "upstreams": [{"label": specs[0].label}],
                    "peak": {"gflops": (before + after) / 2, "before": {"gflops": before}, "after": {"gflops": after}}}
        return profile_upstreams

    spec = UpstreamSpec("distilhubert_local", "unused.ckpt", label="distil")
    args = argparse.Namespace(seconds=0.5, batch=2, threads=1, repeats=2, warmup=0, peak_seconds=0.05, retries=2)
    monkeypatch.setattr(cpu_peak, "profile_upstreams", fake_runs((100, 130), (100, 102), (100, 100)))
    row, = cpu_peak.profile_each([spec], args)["upstreams"]
    assert (row["attempts"], row["suspect"], row["peak"]["after"]["gflops"]) == (2, False, 102)
    monkeypatch.setattr(cpu_peak, "profile_upstreams", fake_runs((100, 130), (100, 90), (100, 120)))
    row, = cpu_peak.profile_each([spec], args)["upstreams"]
    assert (row["attempts"], row["suspect"], row["peak"]["after"]["gflops"]) == (3, True, 90)


def test_negative_retries_are_refused_by_name(cpu_peak, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.argv", ["cpu_peak.py", "--each", "--retries", "-1", "--output", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit) as stopped:
        cpu_peak.main()
    assert stopped.value.code == 2 and "--retries must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_runs_report_the_median_run_with_every_runs_fraction(cpu_peak, monkeypatch):
    """Three passes over two upstreams with faked fractions: each row is the run with its median fraction, carries
    all three in run order with their median and range, and the order of the upstreams rotates between passes."""
    fractions = {"distil": iter([0.9, 0.7, 0.8]), "fit": iter([0.6, 0.65, 0.5])}
    orders = []

    def profile_upstreams(specs, *args, **kwargs):
        label = specs[0].label
        orders.append(label)
        fraction = next(fractions[label])
        return {"tool": "t", "environment": {}, "settings": {"seconds": [10.0], "latency": "median"},
                "upstreams": [{"label": label, "macs": {"10s": 1}, "latency_s": {"10s": 1.0 / fraction},
                               "fraction_of_peak": {"10s": fraction}}],
                "peak": {"gflops": 100.0, "before": {"gflops": 100.0}, "after": {"gflops": 100.0}}}

    monkeypatch.setattr(cpu_peak, "profile_upstreams", profile_upstreams)
    specs = [UpstreamSpec("distilhubert_local", "a.ckpt", label="distil"),
             UpstreamSpec("fithubert_local", "b.ckpt", label="fit")]
    args = argparse.Namespace(seconds=10.0, batch=4, threads=2, repeats=3, warmup=1, peak_seconds=1.0, retries=0,
                              runs=3)
    result = cpu_peak.profile_each_runs(specs, args)
    assert orders == ["distil", "fit", "fit", "distil", "distil", "fit"]
    distil, fit = result["upstreams"]
    assert distil["label"] == "distil" and fit["label"] == "fit"
    assert distil["fraction_runs"]["10s"] == [0.9, 0.7, 0.8] and fit["fraction_runs"]["10s"] == [0.6, 0.65, 0.5]
    assert distil["fraction_of_peak"]["10s"] == 0.8 and distil["median_run"] == 2
    assert distil["latency_s"]["10s"] == pytest.approx(1 / 0.8)  # the median run's fields, not a mix of runs
    assert fit["fraction_of_peak"]["10s"] == 0.6 and fit["median_run"] == 0
    assert (fit["fraction_min"]["10s"], fit["fraction_median"]["10s"], fit["fraction_max"]["10s"]) == (0.5, 0.6, 0.65)
    assert distil["attempts_runs"] == [1, 1, 1] and distil["suspect_runs"] == [False, False, False]
    assert result["settings"]["runs"] == 3 and "3 times" in result["settings"]["latency"]
    table = cpu_peak.each_table(result).splitlines()
    assert table[0].split()[-3:] == ["%", "peak,", "runs"]
    assert table[1].split()[-1] == "70.0-90.0" and table[2].split()[-1] == "50.0-65.0"
    assert table[1].split()[-3] == "80.0"


def test_even_runs_keep_the_lower_middle_run(cpu_peak, monkeypatch):
    values = iter([0.9, 0.7, 0.8, 0.75])

    def profile_upstreams(specs, *args, **kwargs):
        fraction = next(values)
        return {"tool": "t", "environment": {}, "settings": {"seconds": [10.0], "latency": "median"},
                "upstreams": [{"label": specs[0].label, "fraction_of_peak": {"10s": fraction}}],
                "peak": {"gflops": 100.0, "before": {"gflops": 100.0}, "after": {"gflops": 100.0}}}

    monkeypatch.setattr(cpu_peak, "profile_upstreams", profile_upstreams)
    args = argparse.Namespace(seconds=10.0, batch=4, threads=2, repeats=3, warmup=1, peak_seconds=1.0, retries=0,
                              runs=4)
    row, = cpu_peak.profile_each_runs([UpstreamSpec("distilhubert_local", "a.ckpt", label="distil")],
                                      args)["upstreams"]
    assert row["fraction_of_peak"]["10s"] == 0.75 and row["median_run"] == 3
    assert row["fraction_median"]["10s"] == pytest.approx(0.775)


@pytest.mark.parametrize("argv, message", [(["--each", "--runs", "0"], "--runs must be 1 or more"),
                                           (["--runs", "3"], "--runs needs --each")])
def test_bad_runs_are_refused_by_name(cpu_peak, monkeypatch, capsys, tmp_path, argv, message):
    monkeypatch.setattr("sys.argv", ["cpu_peak.py", *argv, "--output", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit) as stopped:
        cpu_peak.main()
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
