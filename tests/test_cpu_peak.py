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
    args = argparse.Namespace(seconds=0.5, batch=2, threads=1, repeats=2, warmup=0, peak_seconds=0.05)
    result = cpu_peak.profile_each(specs, args)
    assert result["mode"] == "each" and [row["label"] for row in result["upstreams"]] == ["distil", "fit"]
    assert "each upstream on its own" in result["settings"]["latency"]
    for row in result["upstreams"]:
        peak = row["peak"]
        assert peak["gflops"] > 0 and peak["before"] is not None and peak["after"] is not None
        assert len(row["latency_samples_s"]["0.5s"]) == 2
        expected = 2 * row["macs"]["0.5s"] * 2 / row["latency_s"]["0.5s"] / (peak["gflops"] * 1e9)
        assert row["fraction_of_peak"]["0.5s"] == pytest.approx(expected, rel=1e-9)
    assert result["upstreams"][0]["peak"] is not result["upstreams"][1]["peak"]  # measured twice, once per upstream
    table = cpu_peak.each_table(result).splitlines()
    assert len(table) == 3 and table[1].startswith("distil") and table[2].startswith("fit")
    assert table[1].split()[-1] == f"{100 * result['upstreams'][0]['fraction_of_peak']['0.5s']:.1f}"
