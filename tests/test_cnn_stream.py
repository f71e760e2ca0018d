"""The CNN's inference path over pieces of time (ConvFeatureExtractor.stream) against its whole-batch forward."""

import copy
from pathlib import Path

import pytest
import torch

from s3prl_distill.model.config import parse_conv_layers
from s3prl_distill.model.feature_extractor import ConvFeatureExtractor, first_layer_statistics
from s3prl_distill.model.lengths import conv_output_lengths
from s3prl_distill.profiler import UpstreamSpec, load_upstream, profile_waves

from helpers import import_benchmark

BEFORE = Path(__file__).resolve().parent / "data" / "before_issue17"

# HuBERT's layout at small widths, FitHuBERT's (1 x 1 layers between), and a pruned one (widths changing by layer).
LAYOUTS = {
    "hubert": "[(24,10,5)] + [(24,3,2)]*4 + [(24,2,2)]*2",
    "fithubert": "[(8,10,5)] + [(16,1,1)] + [(16,3,2)]*4 + [(24,1,1)] + [(24,2,2)]*2",
    "pruned": "[(12,10,5)] + [(14,3,2)] + [(9,3,2)] + [(17,3,2)]*2 + [(11,2,2)]*2",
}
LENGTHS = [16000, 15000, 9000, 4000]


def extractor(layout: str, norm: str, gates: bool = False, bias: bool = False) -> ConvFeatureExtractor:
    torch.manual_seed(0)
    module = ConvFeatureExtractor(parse_conv_layers(LAYOUTS[layout]), norm, bias, 0.0, output_scale=True,
                                  gate_initial_drop=0.3 if gates else None)
    with torch.no_grad():  # non-trivial affine norms, output scale and gates, so a misplaced one shows
        for name, parameter in module.named_parameters():
            if name.endswith(("norm.weight", "norm.bias", "log_alpha")):
                parameter.copy_(torch.randn_like(parameter) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
        module.output_scale.copy_(torch.rand_like(module.output_scale) + 0.5)
    return module.eval()


def waves() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(len(LENGTHS), max(LENGTHS), generator=generator) * 0.1 + 0.02  # an offset: the mean matters
    for row, length in enumerate(LENGTHS):
        x[row, length:] = 0.0
    return x


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("norm", ["group_norm", "layer_norm"])
@pytest.mark.parametrize("padded", [False, True])
def test_streamed_pieces_give_the_whole_batch_forward(layout, norm, padded):
    """In float64 the pieces give the whole-batch result to rounding, for pieces of 1 frame, odd sizes, and one
    piece longer than the input; in float32 they stay within float32 rounding of it."""
    module = extractor(layout, norm, gates=layout == "pruned", bias=layout == "fithubert")
    x = waves()
    lengths = torch.tensor(LENGTHS) if padded else None
    exact = copy.deepcopy(module).double()
    with torch.no_grad():
        reference, reference_lengths = exact.whole(x.double(), lengths)
        layers = len(module.conv_layers)
        for chunk, whole_from in ((1, None), (7, None), (37, None), (1000, None), (10 ** 6, None), (7, 1), (37, 3),
                                  (1, layers - 1), (10 ** 6, layers)):
            out, out_lengths = exact.stream(x.double(), lengths, chunk, whole_from)
            assert out.shape == reference.shape
            assert out.is_contiguous() or whole_from < layers  # joined pieces are (B, frames, C) in memory
            torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)
            if padded:
                assert torch.equal(out_lengths, reference_lengths)
            else:
                assert out_lengths is None
        single = module.stream(x, lengths, 37)[0]
        whole = module.whole(x, lengths)[0]
    assert single.dtype == torch.float32
    # float32: as close to the float64 result as the whole-batch float32 forward is (closer, with a group norm
    # over padded rows: its statistics are float64 here, float32 sums over every frame there).
    stream_error = (single.double() - reference).abs().max().item()
    whole_error = (whole.double() - reference).abs().max().item()
    assert stream_error <= max(1.5 * whole_error, 4e-6), (stream_error, whole_error)


def test_the_small_last_layers_run_whole_after_the_last_layer_above_the_threshold(monkeypatch):
    """Whole from the layer after the last one whose output exceeds STREAM_ABOVE_BYTES (those after it are small:
    short pieces of them are slow); every layer in pieces when the last output itself is above; a clear error for an
    index out of range."""
    from s3prl_distill.model import feature_extractor as fe

    module = extractor("fithubert", "group_norm")
    x = waves()
    sizes = module._output_bytes(x)
    assert sizes == [4 * frames * block.conv.out_channels * 4
                     for frames, block in zip(module._frame_counts(x.shape[-1]), module.conv_layers)]
    for threshold in sorted(set(sizes)) + [0, max(sizes) * 2]:
        monkeypatch.setattr(fe, "STREAM_ABOVE_BYTES", threshold)
        whole_from = module._whole_from(sizes)
        assert 1 <= whole_from <= len(sizes)
        assert all(size <= threshold for size in sizes[whole_from - 1:-1])  # joined and later outputs are small
        if whole_from > 1:
            assert sizes[whole_from - 2] > threshold  # and it is the earliest such layer
    monkeypatch.setattr(fe, "STREAM_ABOVE_BYTES", 0)
    assert module._whole_from(sizes) == len(sizes)
    with torch.no_grad(), pytest.raises(ValueError, match="whole_from must be a layer index from 1 to 9"):
        module.stream(x, None, 100, 0)


def test_large_inference_batches_on_cpu_stream_and_training_or_autograd_runs_the_whole_batch(monkeypatch):
    from s3prl_distill.model import feature_extractor as fe

    module = extractor("hubert", "group_norm")
    x, lengths = waves(), torch.tensor(LENGTHS)
    largest = max(module._output_bytes(x))
    assert largest == 4 * 3199 * 24 * 4  # the first layer's output: 3199 frames of 24 channels, 4 rows, fp32
    with torch.no_grad():
        whole = module.whole(x, lengths)[0]
        monkeypatch.setattr(fe, "STREAM_ABOVE_BYTES", largest)  # not above: the whole batch
        assert torch.equal(module(x, lengths)[0], whole)
    monkeypatch.setattr(fe, "STREAM_ABOVE_BYTES", largest - 1)
    # only the first layer's output is above: the rest run whole
    assert module._whole_from(module._output_bytes(x)) == 2
    with torch.no_grad():
        streamed = module.stream(x, lengths, module._chunk_frames(x), 2)[0]
        assert torch.equal(module(x, lengths)[0], streamed)
        assert not torch.equal(streamed, whole)  # the two paths differ in rounding, so the checks above can tell
    with torch.enable_grad():
        assert torch.equal(module(x, lengths)[0].detach(), whole)
    module.train()
    with torch.no_grad():
        assert torch.equal(module(x, lengths)[0], whole)  # dropout 0: train mode changes nothing but the path
    with pytest.raises(RuntimeError, match="call eval"):
        module.stream(x, lengths, 100)


def test_piece_size_follows_the_byte_budget_with_a_floor():
    module = extractor("hubert", "group_norm")  # 24 channels at most
    from s3prl_distill.model import feature_extractor as fe

    assert module._chunk_frames(torch.zeros(1, 100)) == fe.STREAM_CHUNK_BYTES // (24 * 4)
    assert module._chunk_frames(torch.zeros(10 ** 6, 100)) == fe.STREAM_MIN_CHUNK_FRAMES


def test_short_input_and_bad_piece_size_are_named():
    module = extractor("hubert", "group_norm")
    with pytest.raises(ValueError, match="300 samples are shorter than the CNN's receptive field \\(400 samples\\)"):
        module.stream(torch.zeros(1, 300), None, 100)
    with pytest.raises(ValueError, match="chunk_frames must be positive"):
        module.stream(torch.zeros(1, 4000), None, 0)


def test_first_layer_statistics_equal_those_of_its_output():
    """mean = w . mu + b and variance = w^T Sigma w over the valid frames: the statistics of the conv's output."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(1, 6, 10, stride=5).double()
    x = waves().double()
    frames = conv_output_lengths(torch.tensor(LENGTHS), 10, 5)
    mean, variance = first_layer_statistics(conv, x, frames)
    with torch.no_grad():
        y = conv(x[:, None])
    for row, valid in enumerate(frames.tolist()):
        torch.testing.assert_close(mean[row], y[row, :, :valid].mean(-1), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(variance[row], y[row, :, :valid].var(-1, unbiased=False), rtol=1e-10, atol=0)
    whole_mean, _ = first_layer_statistics(conv, x, None)
    torch.testing.assert_close(whole_mean[0], y[0].mean(-1), rtol=1e-12, atol=1e-15)


def test_streaming_keeps_autocast_dtypes():
    """Under CPU autocast (bf16) the streamed CNN returns what the whole-batch one returns: bf16 features, equal
    within bf16 rounding."""
    module = extractor("hubert", "group_norm")
    x, lengths = waves(), torch.tensor(LENGTHS)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = module.whole(x, lengths)[0]
        streamed = module.stream(x, lengths, 100)[0]
    assert streamed.dtype == whole.dtype == torch.bfloat16
    torch.testing.assert_close(streamed.float(), whole.float(), rtol=0.05, atol=0.05)


@pytest.fixture(scope="module")
def cnn_stream():
    yield from import_benchmark("cnn_stream")


def test_the_benchmark_times_both_paths_of_an_upstream_and_leaves_it_in_eval(cnn_stream, monkeypatch):
    from s3prl_distill.model import feature_extractor as fe

    upstream = load_upstream(UpstreamSpec("distilhubert_local", str(BEFORE / "distilhubert.ckpt"))).eval()
    monkeypatch.setattr(fe, "STREAM_ABOVE_BYTES", 0)  # this tiny model streams only at 4 x 10 s otherwise
    row = cnn_stream.measure(upstream, profile_waves(0.5, 2, torch.device("cpu")), repeats=1)
    assert row["streams_at_this_size"]
    assert 0 < row["max_abs_difference"] < 1e-4  # two paths were run (they differ in rounding), with equal results
    for key in ("forward_s", "cnn_s"):
        assert all(seconds > 0 for seconds in row[key].values())
    assert set(row["cnn_s"]) == {"streamed", "whole", "all_pieces"} and row["cnn_small_layers_whole_ratio"] > 0
    assert row["whole_from_layer"] == len(the_cnn_of(upstream).conv_layers)  # threshold 0: every layer in pieces
    assert len(row["samples_s"]["streamed"]) == 1
    assert not any(module.training for module in upstream.modules())


def the_cnn_of(upstream: torch.nn.Module) -> ConvFeatureExtractor:
    return next(module for module in upstream.modules() if isinstance(module, ConvFeatureExtractor))


def test_the_benchmark_refuses_a_cnn_that_train_mode_would_change(cnn_stream):
    gated = extractor("pruned", "group_norm", gates=True)
    with pytest.raises(ValueError, match="train mode would change"):
        cnn_stream.the_cnn(torch.nn.Sequential(gated))


@pytest.mark.parametrize("kernel, weight_norm", [(16, True), (7, False)])
def test_positional_convolution_on_cpu_equals_the_grouped_conv1d(kernel, weight_norm):
    """The CPU path (a 2-D convolution over the frames-first input read as channels-last) gives what the module's own
    Conv1d gives, forward and backward, for even kernels (one frame trimmed) and odd ones, with and without weight
    norm; and its output comes back frames-first and contiguous."""
    from s3prl_distill.model.encoder import ConvPositionalEmbedding

    torch.manual_seed(0)
    module = ConvPositionalEmbedding(32, kernel, 4, weight_norm)
    with torch.no_grad():
        module.conv.bias.normal_()
    x = torch.randn(3, 50, 32, requires_grad=True)
    y = module(x)
    reference = module.conv(x.transpose(1, 2))
    if kernel % 2 == 0:
        reference = reference[..., :-1]
    reference = torch.nn.functional.gelu(reference).transpose(1, 2)
    assert y.shape == x.shape and y.is_contiguous()
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-6)
    weights = [p for p in module.parameters()]
    grads = torch.autograd.grad(y.square().sum(), [x, *weights])
    reference_grads = torch.autograd.grad(reference.square().sum(), [x, *weights])
    for ours, theirs in zip(grads, reference_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=5e-5)


def test_the_benchmark_compares_the_positional_convolution_with_its_conv1d(cnn_stream):
    row = cnn_stream.positional_conv(32, 40, 2, repeats=1)
    assert row["width"] == 32 and row["frames"] == 40
    assert 0 <= row["max_abs_difference"] < 1e-5 and row["ratio"] > 0
    assert all(len(samples) == 1 for samples in row["samples_s"].values())
