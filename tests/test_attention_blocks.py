"""Explicit attention (attention-map reuse) computed block by block in CPU inference, against the whole-batch path."""

from pathlib import Path

import pytest
import torch

from s3prl_distill.checkpoint import save_checkpoint
from s3prl_distill.formats.native import export_student
from s3prl_distill.model import StudentConfig, StudentModel
from s3prl_distill.model import attention
from s3prl_distill.model.attention import AttentionMaps, SelfAttention, attention_blocks
from s3prl_distill.profiler import UpstreamSpec, load_upstream, profile_waves

from helpers import import_benchmark, tiny_armhubert

BEFORE = Path(__file__).resolve().parent / "data" / "before_issue17"


@pytest.mark.parametrize("batch,heads,frames,element,budget", [
    (3, 12, 50, 4, 50 * 50 * 4 * 5),    # five heads fit: balanced into 4 + 4 + 4
    (2, 4, 50, 4, 50 * 50 * 4 * 100),   # every head fits: one block per utterance
    (2, 3, 50, 4, 50 * 4 * 7),          # not one head fits: 7 query rows at a time, balanced
    (1, 2, 9, 2, 1),                    # not one row fits: one row at a time
])
def test_blocks_cover_every_head_and_row_once_within_the_budget(batch, heads, frames, element, budget):
    blocks = attention_blocks(batch, heads, frames, element, budget)
    covered = torch.zeros(batch, heads, frames, dtype=torch.long)
    for block in blocks:
        covered[block.utterance, block.heads, block.rows] += 1
        size = (block.heads.stop - block.heads.start) * (block.rows.stop - block.rows.start) * frames * element
        assert size <= max(budget, frames * element)  # one row is the smallest block
    assert bool((covered == 1).all())
    per_utterance = len(blocks) // batch
    if frames * frames * element <= budget:
        assert all(block.rows == slice(0, frames) for block in blocks)
        assert per_utterance == -(-heads // (budget // (frames * frames * element)))
        widths = {block.heads.stop - block.heads.start for block in blocks}
        assert max(widths) - min(widths) <= 1  # balanced, not 5 + 5 + 2
    else:
        assert all(block.heads.stop - block.heads.start == 1 for block in blocks)
        lengths = {block.rows.stop - block.rows.start for block in blocks}
        assert max(lengths) - min(lengths) <= 1


def attention_pair(width: int = 32, heads: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    provider = SelfAttention(width, heads, width // heads, 0.0, provides_map=True).eval()
    reuser = SelfAttention(width, heads, width // heads, 0.0, reuses_map=True).eval()
    return provider, reuser


def padded_inputs(batch: int = 3, frames: int = 37, width: int = 32):
    x = torch.randn(batch, frames, width, generator=torch.Generator().manual_seed(1))
    padding = torch.zeros(batch, frames, dtype=torch.bool)
    padding[1, 30:] = True
    padding[2, 5:] = True
    return x, padding


def run_pair(provider, reuser, x, padding, blocked: bool, block_bytes: int, monkeypatch):
    monkeypatch.setattr(attention, "ATTENTION_BLOCKS_ABOVE_BYTES", 0 if blocked else 2**62)
    monkeypatch.setattr(attention, "ATTENTION_BLOCK_BYTES", block_bytes)
    maps = AttentionMaps()
    with torch.inference_mode():
        first = provider(x, padding, maps=maps)
        second = reuser(x, padding, maps=maps)
    return first, second, maps


@pytest.mark.parametrize("block_bytes", [1, 37 * 4 * 5, 37 * 37 * 4, 37 * 37 * 4 * 3, 2**30])
@pytest.mark.parametrize("padded", [True, False])
def test_blocked_attention_equals_the_whole_batch_path(block_bytes, padded, monkeypatch):
    """Single rows, row ranges, one head, three heads of four (uneven), whole utterances; with and without padding:
    the provider's output and map and the reusing layer's output match the whole-batch computation."""
    provider, reuser = attention_pair()
    x, padding = padded_inputs()
    padding = padding if padded else None
    whole_first, whole_second, whole_maps = run_pair(provider, reuser, x, padding, False, block_bytes, monkeypatch)
    first, second, maps = run_pair(provider, reuser, x, padding, True, block_bytes, monkeypatch)
    assert torch.allclose(first, whole_first, atol=1e-6, rtol=0)
    assert torch.allclose(second, whole_second, atol=1e-6, rtol=0)
    assert torch.allclose(maps.probabilities, whole_maps.probabilities, atol=1e-7, rtol=0)
    if padded:  # padded keys get no weight, in every head and row
        assert bool((maps.probabilities[2, :, :, 5:] == 0).all())


def test_the_blocked_path_runs_only_in_cpu_inference_above_the_size(monkeypatch):
    provider, reuser = attention_pair()
    x, padding = padded_inputs()
    calls = []
    original = SelfAttention.attend_in_blocks

    def spy(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SelfAttention, "attend_in_blocks", spy)
    whole_bytes = 3 * 4 * 37 * 37 * 4
    monkeypatch.setattr(attention, "ATTENTION_BLOCKS_ABOVE_BYTES", whole_bytes)  # not above: whole
    with torch.inference_mode():
        provider(x, padding, maps=AttentionMaps())
    assert calls == []
    monkeypatch.setattr(attention, "ATTENTION_BLOCKS_ABOVE_BYTES", whole_bytes - 1)
    with torch.no_grad():
        maps = AttentionMaps()
        provider(x, padding, maps=maps)
        reuser(x, padding, maps=maps)
    assert calls == [provider, reuser]
    provider(x, padding, maps=AttentionMaps())  # autograd on: the whole path, whose map a backward can use
    provider.train()
    with torch.no_grad():
        provider(x, padding, maps=AttentionMaps())
    assert calls == [provider, reuser]
    plain = SelfAttention(32, 4, 8, 0.0).eval()  # the fused kernel keeps no map: nothing to block
    with torch.no_grad():
        plain(x, padding)
    assert calls == [provider, reuser]


def test_the_map_buffer_is_reused_across_providers_and_each_reuser_sees_the_latest_map(monkeypatch):
    """Four layers, provide / reuse / provide / reuse: the second provider writes into the first one's memory (one
    buffer per forward), and the second reusing layer attends with the second map, as on the whole path."""
    first_pair, second_pair = attention_pair(seed=0), attention_pair(seed=1)
    x, padding = padded_inputs()

    def run(blocked: bool):
        monkeypatch.setattr(attention, "ATTENTION_BLOCKS_ABOVE_BYTES", 0 if blocked else 2**62)
        maps, outputs, storage = AttentionMaps(), [], []
        with torch.inference_mode():
            for layer in (*first_pair, *second_pair):
                outputs.append(layer(x, padding, maps=maps))
                storage.append(maps.probabilities.data_ptr())
        return outputs, storage

    whole, whole_storage = run(False)
    blocked, storage = run(True)
    for got, expected in zip(blocked, whole):
        assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert len(set(storage)) == 1
    assert len(set(whole_storage)) == 2  # the whole path allocates each map afresh


def test_blocks_of_an_empty_dimension_are_none():
    assert attention_blocks(0, 4, 10, 4) == attention_blocks(2, 0, 10, 4) == attention_blocks(2, 4, 0, 4) == []


def test_a_map_of_another_shape_is_an_error_on_both_paths(monkeypatch):
    """A reusing layer with other heads, or given fewer utterances, than the map it finds: a clear error, where the
    blocked path would otherwise read part of the map."""
    provider, _ = attention_pair()
    x, padding = padded_inputs()
    narrow = SelfAttention(16, 2, 8, 0.0, reuses_map=True).eval()
    _, same_heads = attention_pair()
    for threshold in (0, 2**62):
        monkeypatch.setattr(attention, "ATTENTION_BLOCKS_ABOVE_BYTES", threshold)
        maps = AttentionMaps()
        with torch.no_grad():
            provider(x, padding, maps=maps)
            with pytest.raises(ValueError, match=r"map to reuse is \(3, 4, 37, 37\).*attends over \(3, 2, 37, 37\)"):
                narrow(torch.randn(3, 37, 16), padding, maps=maps)
            with pytest.raises(ValueError, match=r"attends over \(2, 4, 37, 37\)"):
                same_heads(x[:2], padding[:2], maps=maps)


def test_a_map_is_only_overwritten_by_its_own_forward(monkeypatch):
    """The buffer is the AttentionMaps object's own: a map kept from one forward survives the next forward, and one
    object used first under inference_mode and then under no_grad still works."""
    provider, reuser = attention_pair()
    x, padding = padded_inputs()
    monkeypatch.setattr(attention, "ATTENTION_BLOCKS_ABOVE_BYTES", 0)
    first = AttentionMaps()
    with torch.no_grad():
        provider(x, padding, maps=first)
    kept = first.probabilities
    snapshot = kept.clone()
    with torch.no_grad():
        provider(torch.randn_like(x), padding, maps=AttentionMaps())
    assert torch.equal(kept, snapshot)
    shared = AttentionMaps()
    with torch.inference_mode():
        provider(x, padding, maps=shared)
    with torch.no_grad():
        out = reuser(x, padding, maps=shared)
        provider(x, padding, maps=shared)  # a buffer made in inference mode is not written outside it
    assert torch.isfinite(out).all() and not shared.probabilities.is_inference()


def test_a_reusing_layer_without_a_map_is_an_error_on_both_paths(monkeypatch):
    _, reuser = attention_pair()
    x, padding = padded_inputs()
    for threshold in (0, 2**62):
        monkeypatch.setattr(attention, "ATTENTION_BLOCKS_ABOVE_BYTES", threshold)
        with torch.no_grad(), pytest.raises(ValueError, match="reuses an earlier layer's attention map"):
            reuser(x, padding, maps=AttentionMaps())
        with torch.no_grad(), pytest.raises(ValueError, match="reuses an earlier layer's attention map"):
            reuser(x, padding)


def reuse_student() -> StudentModel:
    data = tiny_armhubert(reuse=True).to_dict()
    data["encoder"].update(num_layers=4, attention_reuse=[False, True, False, True])
    data["prediction_head"].update(target_layers=[1, 2, 3, 4])
    torch.manual_seed(0)
    return StudentModel(StudentConfig.from_dict(data, "tiny ARMHuBERT, two maps")).eval()


def student_hidden_states(model, waves, lengths, blocked: bool, monkeypatch, autocast: bool = False):
    monkeypatch.setattr(attention, "ATTENTION_BLOCKS_ABOVE_BYTES", 0 if blocked else 2**62)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(waves, lengths, predict=False).hidden_states()


def test_an_armhubert_student_gives_the_same_hidden_states_either_way(monkeypatch):
    model = reuse_student()
    generator = torch.Generator().manual_seed(2)
    lengths = torch.tensor([8000, 6100, 3000])
    waves = 0.1 * torch.randn(3, 8000, generator=generator)
    waves[1, 6100:] = waves[2, 3000:] = 0.0
    whole = student_hidden_states(model, waves, lengths, False, monkeypatch)
    blocked = student_hidden_states(model, waves, lengths, True, monkeypatch)
    assert len(blocked) == 5
    for got, expected in zip(blocked, whole):
        assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    # bf16 autocast (the upstream's ``precision: bf16``): the blocked path computes in the same dtypes
    whole = student_hidden_states(model, waves, lengths, False, monkeypatch, autocast=True)
    blocked = student_hidden_states(model, waves, lengths, True, monkeypatch, autocast=True)
    for got, expected in zip(blocked, whole):
        assert got.dtype == expected.dtype
        assert torch.allclose(got.float(), expected.float(), atol=2e-2, rtol=0)


def test_training_still_backpropagates_through_the_map(monkeypatch):
    """The training path is untouched by the inference threshold: gradients reach the providing layer's q/k
    projections through the reusing layer's map."""
    monkeypatch.setattr(attention, "ATTENTION_BLOCKS_ABOVE_BYTES", 0)
    provider, reuser = attention_pair()
    x, padding = padded_inputs()
    maps = AttentionMaps()
    provider(x, padding, maps=maps)
    reuser(x, padding, maps=maps).square().sum().backward()
    assert provider.q_proj.weight.grad is not None and provider.q_proj.weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def attention_blocks_benchmark():
    yield from import_benchmark("attention_blocks")


def test_the_benchmark_times_both_paths_of_a_reusing_upstream(attention_blocks_benchmark, tmp_path, monkeypatch):
    """Through the s3prl entry, on a checkpoint written by our exporter: both paths run, with equal results, and the
    blocking threshold is restored after the whole-batch runs."""
    model = reuse_student()
    checkpoint = save_checkpoint(export_student("armhubert", model.config, model.state_dict()),
                                 tmp_path / "arm.ckpt")
    upstream = load_upstream(UpstreamSpec("armhubert_local", str(checkpoint))).eval()
    monkeypatch.setattr(attention, "ATTENTION_BLOCKS_ABOVE_BYTES", 0)  # this tiny model blocks only when large
    row = attention_blocks_benchmark.measure(upstream, profile_waves(0.5, 2, torch.device("cpu")), repeats=1)
    assert row["explicit_layers"] == 4
    assert 0 <= row["max_abs_difference"] < 1e-5
    assert all(seconds > 0 for seconds in row["forward_s"].values()) and len(row["samples_s"]["blocked"]) == 1
    assert attention.ATTENTION_BLOCKS_ABOVE_BYTES == 0
    assert row["softmax_free_ratio"] > 0 and len(row["softmax_free_samples_s"]["without_softmax"]) == 1
    pair = attention_blocks_benchmark.layer_pair(32, 4, 40, 2, repeats=1)
    assert pair["ratio"] > 0 and 0 <= pair["max_abs_difference"] < 1e-5
    plain = load_upstream(UpstreamSpec("distilhubert_local", str(BEFORE / "distilhubert.ckpt")))
    with pytest.raises(ValueError, match="provides or reuses a map"):
        attention_blocks_benchmark.explicit_layers(plain)


def test_without_softmax_leaves_out_both_softmaxes_and_restores_them(attention_blocks_benchmark, monkeypatch):
    """The timing-only ablation: a providing layer attends with its raw scores and a reusing layer with the map as
    it is, on the blocked path; after it the layers give their real outputs again."""
    monkeypatch.setattr(attention, "ATTENTION_BLOCKS_ABOVE_BYTES", 0)
    provider, reuser = attention_pair()
    x, _ = padded_inputs()

    def pair():
        maps = AttentionMaps()
        out = provider(x, None, maps=maps)
        return out, maps.probabilities.clone(), reuser(x, None, maps=maps)

    with torch.no_grad():
        real_out, real_map, real_reused = pair()
        with attention_blocks_benchmark.without_softmax():
            raw_out, raw_map, raw_reused = pair()
        again = pair()
    assert torch.allclose(real_map.sum(-1), torch.ones(()), atol=1e-5)  # the real map is a softmax
    scale = provider.head_dim ** -0.5
    q = provider.q_proj(x).view(*x.shape[:2], provider.num_heads, -1).transpose(1, 2)
    k = provider.k_proj(x).view(*x.shape[:2], provider.num_heads, -1).transpose(1, 2)
    with torch.no_grad():
        assert torch.allclose(raw_map, (q * scale) @ k.transpose(-1, -2), atol=1e-5)  # raw scores, no softmax
        v = reuser.v_proj(x).view(*x.shape[:2], reuser.num_heads, -1).transpose(1, 2)
        attended = (raw_map @ v).transpose(1, 2).reshape(*x.shape[:2], -1)
        assert torch.allclose(raw_reused, reuser.out_proj(attended), atol=1e-4)  # the map as it is, no softmax
    assert not torch.allclose(raw_out, real_out) and not torch.allclose(raw_reused, real_reused)
    for got, expected in zip(again, (real_out, real_map, real_reused)):
        assert torch.equal(got, expected)


def test_the_threshold_sweep_times_each_case_both_ways_and_states_the_rule(attention_blocks_benchmark, tmp_path,
                                                                           monkeypatch):
    """Each (batch, seconds) x precision case runs the blocked and the whole-batch path (a spy counts the blocked
    layers' calls), under bf16 autocast where asked; the case's score bytes and the rule's verdict are the ones the
    layers would use, and the threshold is restored after."""
    model = reuse_student()
    checkpoint = save_checkpoint(export_student("armhubert", model.config, model.state_dict()), tmp_path / "a.ckpt")
    upstream = load_upstream(UpstreamSpec("armhubert_local", str(checkpoint))).eval()
    layer = attention_blocks_benchmark.explicit_layers(upstream)[0]
    frames = attention_blocks_benchmark.encoder_frames(0.5)
    rule = 2 * layer.num_heads * frames * frames * 4 - 1  # 2 x 0.5 s in fp32 is just above it, in bf16 below
    monkeypatch.setattr(attention, "ATTENTION_BLOCKS_ABOVE_BYTES", rule)
    calls, dtypes = [], []
    original = SelfAttention.attend_in_blocks

    def spy(self, x, *args, **kwargs):
        calls.append(self)
        dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype)
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(SelfAttention, "attend_in_blocks", spy)
    rows = attention_blocks_benchmark.threshold_sweep(upstream, [(2, 0.5), (1, 0.5)], ["fp32", "bf16"], repeats=2)
    assert [(row["batch"], row["precision"]) for row in rows] == [(2, "fp32"), (2, "bf16"), (1, "fp32"), (1, "bf16")]
    assert [row["blocked_by_rule"] for row in rows] == [True, False, False, False]
    assert rows[0]["scores_bytes"] == 2 * rows[1]["scores_bytes"] == 2 * rows[2]["scores_bytes"] == rule + 1
    explicit = len(attention_blocks_benchmark.explicit_layers(upstream))
    assert len(calls) == 4 * 3 * explicit  # blocked runs only: 1 untimed + 2 timed rounds per case
    assert dtypes.count(torch.bfloat16) == dtypes.count(torch.float32) == len(calls) // 2
    assert all(len(row["samples_s"]["whole"]) == 2 and row["ratio"] > 0 for row in rows)
    assert attention.ATTENTION_BLOCKS_ABOVE_BYTES == rule


@pytest.mark.parametrize("text,expected", [("4x10", (4, 10.0)), ("1X2.5", (1, 2.5))])
def test_sweep_cases_parse(attention_blocks_benchmark, text, expected):
    assert attention_blocks_benchmark.sweep_case(text) == expected


@pytest.mark.parametrize("text", ["4", "4x", "x10", "four x 10", "4x10x2"])
def test_a_malformed_sweep_case_is_an_error_naming_it(attention_blocks_benchmark, text):
    with pytest.raises(ValueError, match=f"--sweep takes BATCHxSECONDS.*{text!r}"):
        attention_blocks_benchmark.sweep_case(text)
