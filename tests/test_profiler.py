"""``s3prl-distill profile``: parameters, MACs, latency and memory of s3prl upstreams, on tiny models only.

No timing assertions here: speed targets live in benchmarks/."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT, write_random_hubert
from s3prl_distill.profiler import (
    count_macs,
    extra_flop_formulas,
    UnknownUpstreamError,
    UpstreamSpec,
    format_table,
    load_upstream,
    parameter_counts,
    profile_upstreams,
    specs_from_lists,
)

from helpers import run_python


class ToyUpstream(torch.nn.Module):
    """Conv (kernel 400, stride 320, no bias) -> Linear -> one self-attention: MACs countable by hand."""

    def __init__(self, channels: int = 8, dim: int = 12, heads: int = 2) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, channels, 400, stride=320, bias=False)
        self.proj = torch.nn.Linear(channels, dim)
        self.heads = heads

    def forward(self, wavs):
        x = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).unsqueeze(1)
        x = self.proj(self.conv(x).transpose(1, 2))
        batch, frames, dim = x.shape
        q = x.view(batch, frames, self.heads, dim // self.heads).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(batch, frames, dim)
        return {"hidden_states": [x, attended]}


def toy_macs(samples: int, channels: int = 8, dim: int = 12) -> int:
    frames = (samples - 400) // 320 + 1
    conv = frames * channels * 400
    linear = frames * channels * dim
    attention = 2 * frames * frames * dim  # q @ k^T and scores @ v, over all heads
    return conv + linear + attention


@pytest.fixture
def toy_hub(monkeypatch):
    """A toy entry in s3prl.hub, the way our registration adds real ones."""
    from s3prl_distill import register

    register()
    import s3prl.hub as hub

    def toy_profile_upstream(ckpt=None, model_config=None, refresh=False, **kwargs):
        torch.manual_seed(0)
        return ToyUpstream()

    monkeypatch.setattr(hub, "toy_profile_upstream", toy_profile_upstream, raising=False)
    return "toy_profile_upstream"


@pytest.fixture(scope="module")
def hubert_ckpt(tmp_path_factory) -> Path:
    return write_random_hubert(tmp_path_factory.mktemp("profile") / "hubert.ckpt")


def test_macs_equal_a_hand_count_and_params_equal_numel(toy_hub):
    result = profile_upstreams([UpstreamSpec(toy_hub)], seconds=[1.0, 2.5], threads=1, repeats=1, warmup=0,
                               memory=False)
    row = result["upstreams"][0]
    assert row["macs"] == {"1s": toy_macs(16000), "2.5s": toy_macs(40000)}
    # The attention is counted on CPU too (torch has no formula for its CPU kernel; the profiler adds one).
    assert any("attention" in op for op in row["macs_by_op"]["1s"])
    assert row["gmacs_per_audio_second"]["2.5s"] == pytest.approx(toy_macs(40000) / 2.5 / 1e9)
    expected_params = 8 * 400 + 8 * 12 + 12
    assert row["parameters"] == {"with_heads": expected_params, "backbone": expected_params, "heads": 0,
                                 "split": row["parameters"]["split"]}
    assert "backbone = total" in row["parameters"]["split"]
    assert set(row["latency_s"]) == set(row["rtf"]) == {"1s", "2.5s"}
    assert row["rtf"]["2.5s"] == row["latency_s"]["2.5s"] / 2.5
    assert "memory" not in row


def test_student_backbone_excludes_heads_and_macs_scale(session_distiller_ckpt, hubert_ckpt, tmp_path):
    wide = write_random_hubert(tmp_path / "wide.ckpt", dict(TINY_HUBERT, encoder_embed_dim=96,
                                                              encoder_ffn_embed_dim=192))
    specs = [UpstreamSpec("distilhubert_local", str(session_distiller_ckpt)),
             UpstreamSpec("hubert_local", str(hubert_ckpt)), UpstreamSpec("hubert_local", str(wide))]
    previous = torch.get_num_threads()
    result = profile_upstreams(specs, seconds=[2.0, 4.0], threads=1, repeats=1, warmup=0, memory=False)
    assert torch.get_num_threads() == previous  # the run's thread setting does not leak
    assert result["environment"]["threads"] == 1
    student, teacher, wide_teacher = result["upstreams"]
    assert [teacher["label"], wide_teacher["label"]] == ["hubert_local:hubert.ckpt", "hubert_local:wide.ckpt"]

    expert = load_upstream(specs[0])
    total = sum(p.numel() for p in expert.parameters())
    heads = expert.model.num_parameters(include_heads=True) - expert.model.num_parameters()
    assert heads > 0
    assert student["parameters"]["with_heads"] == total
    assert student["parameters"]["backbone"] == total - heads < total
    assert parameter_counts(expert) == student["parameters"]
    hubert = load_upstream(specs[1])
    assert teacher["parameters"]["with_heads"] == teacher["parameters"]["backbone"] == sum(
        p.numel() for p in hubert.parameters())

    for row in result["upstreams"]:
        # Convolutions and per-frame matmuls are linear in the length, attention quadratic in the frame count.
        short, long = row["macs_by_op"]["2s"], row["macs_by_op"]["4s"]
        attention = [op for op in short if "attention" in op]
        assert len(attention) == 1, row["label"]
        linear_short = sum(v for op, v in short.items() if op not in attention)
        linear_long = sum(v for op, v in long.items() if op not in attention)
        assert 1.98 < linear_long / linear_short < 2.02, row["label"]
        assert 3.9 < long[attention[0]] / short[attention[0]] < 4.1, row["label"]
        assert row["macs"]["2s"] == sum(short.values()) > 0
    assert wide_teacher["macs"]["2s"] > teacher["macs"]["2s"]
    assert wide_teacher["parameters"]["with_heads"] > teacher["parameters"]["with_heads"]


def test_vs_reference_is_the_same_measurement(session_distiller_ckpt, hubert_ckpt):
    teacher = UpstreamSpec("hubert_local", str(hubert_ckpt))
    result = profile_upstreams([UpstreamSpec("distilhubert_local", str(session_distiller_ckpt)), teacher],
                               seconds=[1.0], threads=1, repeats=2, warmup=1, reference=teacher, memory=False)
    assert result["reference"] == "hubert_local"
    assert len(result["upstreams"]) == 2  # the reference is the profiled teacher row, not a second copy
    student, reference = result["upstreams"]
    vs = reference["vs_reference"]
    assert vs["parameters_backbone"] == vs["parameters_with_heads"] == 1.0
    assert vs["macs"] == vs["latency"] == {"1s": 1.0}
    assert student["vs_reference"]["macs"]["1s"] == student["macs"]["1s"] / reference["macs"]["1s"]
    table = format_table(result)
    assert "x latency" in table and "hubert_local" in table and "threads 1" in table


def test_unknown_upstream_is_named_with_close_matches():
    with pytest.raises(UnknownUpstreamError, match=r"'hubert_locl'.*hubert_local"):
        profile_upstreams([UpstreamSpec("hubert_locl", "x.ckpt")], memory=False)


def test_ckpt_list_must_match_upstreams():
    specs = specs_from_lists(["fbank", "distilhubert_local"], ["-", "a.ckpt"])
    assert [s.ckpt for s in specs] == [None, "a.ckpt"]
    with pytest.raises(ValueError, match="-k/--ckpt has 1 values for 2 upstreams"):
        specs_from_lists(["fbank", "distilhubert_local"], ["a.ckpt"])


def test_cli_end_to_end(session_distiller_ckpt, hubert_ckpt, tmp_path):
    out = tmp_path / "profile.json"
    done = run_python(["-m", "s3prl_distill.cli", "profile", "-u", "distilhubert_local", "-k",
                       str(session_distiller_ckpt), "--vs", "hubert_local", "--vs-ckpt", str(hubert_ckpt),
                       "--seconds", "1", "2", "--threads", "1", "--repeats", "2", "--warmup", "1", "--json", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x MACs" in done.stdout and "distilhubert_local" in done.stdout
    result = json.loads(out.read_text())
    assert set(result) == {"tool", "environment", "settings", "reference", "upstreams"}
    assert {"machine", "torch", "threads", "device", "cpu_count"} <= set(result["environment"])
    assert result["environment"]["threads"] == 1 and result["environment"]["device"] == "cpu"
    assert result["settings"]["seconds"] == [1.0, 2.0] and result["settings"]["repeats"] == 2
    assert result["reference"] == "hubert_local"
    assert [row["upstream"] for row in result["upstreams"]] == ["distilhubert_local", "hubert_local"]
    for row in result["upstreams"]:
        assert {"parameters", "macs", "gmacs_per_audio_second", "latency_s", "rtf", "memory",
                "vs_reference"} <= set(row)
        assert set(row["macs"]) == {"1s", "2s"}
    teacher = result["upstreams"][1]["vs_reference"]
    assert teacher["latency"] == teacher["peak_memory"] == teacher["macs"] == {"1s": 1.0, "2s": 1.0}
    for row in result["upstreams"]:  # peak memory, each upstream in its own fresh process
        memory = row["memory"]
        assert memory["method"] in ("rss_vmhwm", "ru_maxrss_lower_bound")
        assert memory["forward_peak_bytes"]["2s"] > 0
        assert memory["process_peak_bytes"]["2s"] >= memory["baseline_bytes"]["2s"]

    bad = run_python(["-m", "s3prl_distill.cli", "profile", "-u", "distilhubert_locl", "--no-memory"])
    assert bad.returncode != 0
    assert "'distilhubert_locl'" in bad.stderr and "distilhubert_local" in bad.stderr

    # A feature the upstream does not give: its message names the feature and what there is, with no traceback.
    missing = run_python(["-m", "s3prl_distill.cli", "profile", "-u", "distilhubert_local", "-k",
                          str(session_distiller_ckpt), "--feature", "head_outputs", "--no-memory", "--seconds", "1",
                          "--repeats", "1", "--warmup", "0"])
    assert missing.returncode != 0
    assert "no output 'head_outputs'" in missing.stderr and "hidden_states" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_reading_the_selected_feature_is_part_of_what_is_measured():
    """Upstreams may compute an output only when it is read (LazyOutputs): MACs follow the feature s3prl selects."""
    from s3prl_distill.upstream.interfaces import LazyOutputs

    class LazyHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 8)

        def forward(self, wavs):
            x = self.body(torch.stack(wavs).view(len(wavs), -1, 4))
            return LazyOutputs({"hidden_states": lambda: [x], "head": lambda: self.head(x)})

    model, wavs = LazyHead(), [torch.randn(400)]
    assert count_macs(model, wavs, "hidden_states")[0] == 100 * 4 * 4
    assert count_macs(model, wavs, "head")[0] == 100 * 4 * 4 + 100 * 4 * 8
    assert count_macs(model, wavs, None)[0] == 100 * 4 * 4
    with pytest.raises(KeyError, match="no output 'missing'; it has hidden_states, head"):
        count_macs(model, wavs, "missing")


def test_cpu_attention_is_counted_forward_and_backward():
    """torch counts its CUDA attention kernels (forward: q k^T and P v; backward: 5 products, the scores recomputed);
    the CPU kernels get the same formulas, so a training step's attention is not free on CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    batch, heads, frames, dim = 2, 3, 10, 8
    query = torch.randn(batch, heads, frames, dim, requires_grad=True)
    key, value = torch.randn(batch, heads, frames, dim), torch.randn(batch, heads, frames, dim)
    with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
        F.scaled_dot_product_attention(query, key, value).sum().backward()
    by_op = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    products = batch * heads * frames * frames * dim  # multiply-accumulates of one of the products
    forward = [v for op, v in by_op.items() if "attention" in op and "backward" not in op]
    backward = [v for op, v in by_op.items() if "attention" in op and "backward" in op]
    assert forward == [2 * 2 * products]
    assert backward == [2 * 5 * products]


def test_gemm_peak_measures_a_positive_rate_and_restores_threads():
    from s3prl_distill.profiler import fraction_of_peak, gemm_peak

    before = torch.get_num_threads()
    peak = gemm_peak(torch.float32, threads=1, seconds=0.05, size=64)
    assert torch.get_num_threads() == before
    assert peak["dtype"] == "float32" and peak["threads"] == 1 and peak["size"] == 64
    assert peak["calls"] == len(peak["gflops_samples"]) >= 1
    assert 0 < peak["gflops"] <= peak["gflops_max"] == max(peak["gflops_samples"])
    # 1e9 MACs in 1 s on a 4 GFLOP/s peak: 2e9 FLOP/s = half of it; batch scales the FLOPs.
    assert fraction_of_peak(10**9, 1.0, 4.0) == pytest.approx(0.5)
    assert fraction_of_peak(10**9, 1.0, 4.0, batch=2) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fraction_of_peak(10**9, 0.0, 4.0)
    with pytest.raises(ValueError):
        gemm_peak(seconds=0)


def test_peak_gives_each_row_its_fraction_from_the_same_run(toy_hub):
    result = profile_upstreams([UpstreamSpec(toy_hub)], seconds=[1.0], batch=2, threads=1, repeats=2, warmup=1,
                               memory=False, feature="hidden_states", peak=True, peak_seconds=0.05)
    peak = result["peak"]
    assert peak["dtype"] == "float32" and peak["threads"] == 1
    assert peak["before"]["calls"] >= 1 and peak["after"]["calls"] >= 1
    samples = peak["before"]["gflops_samples"] + peak["after"]["gflops_samples"]
    assert peak["gflops"] == pytest.approx(statistics.median(samples))  # one peak from both measurements
    row = result["upstreams"][0]
    fraction = row["fraction_of_peak"]["1s"]
    assert 0 < fraction < float("inf")
    assert fraction == pytest.approx(2 * row["macs"]["1s"] * 2 / row["latency_s"]["1s"] / (peak["gflops"] * 1e9))
    assert "% peak" in format_table(result)
    without = profile_upstreams([UpstreamSpec(toy_hub)], seconds=[1.0], threads=1, repeats=1, warmup=0, memory=False)
    assert "peak" not in without and "fraction_of_peak" not in without["upstreams"][0]
    assert "% peak" not in format_table(without)
    with pytest.raises(ValueError, match="peak-seconds"):  # refused before any model is loaded
        profile_upstreams([UpstreamSpec(toy_hub)], peak=True, peak_seconds=0)


def test_cli_peak_records_the_peak_and_the_fraction(session_distiller_ckpt, tmp_path):
    out = tmp_path / "peak.json"
    done = run_python(["-m", "s3prl_distill.cli", "profile", "-u", "distilhubert_local", "-k",
                       str(session_distiller_ckpt), "--seconds", "1", "--threads", "1", "--repeats", "2",
                       "--warmup", "1", "--no-memory", "--peak", "--peak-seconds", "0.1", "--json", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "% peak" in done.stdout and "GFLOP/s" in done.stdout
    result = json.loads(out.read_text())
    peak = result["peak"]
    assert peak["gflops"] > 0 and peak["threads"] == 1 and peak["dtype"] == "float32"
    row = result["upstreams"][0]
    fraction = row["fraction_of_peak"]["1s"]
    assert 0 < fraction < float("inf")
    assert fraction == pytest.approx(2 * row["macs"]["1s"] * result["settings"]["batch"] / row["latency_s"]["1s"]
                                     / (peak["gflops"] * 1e9))
