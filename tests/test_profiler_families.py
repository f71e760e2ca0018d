"""The profiler on every family of our upstreams (pruned ones with removed attention / FFN blocks included), MACs
checked against an independent count, and the module-tracker crash of FLOP counting (issue 19)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest
import torch

from s3prl_distill.checkpoint import save_checkpoint
from s3prl_distill.formats.dphubert import dphubert_state_dict, dphubert_student_config
from s3prl_distill.formats.native import export_student
from s3prl_distill.model.attention import SelfAttention
from s3prl_distill.model.encoder import ConvPositionalEmbedding, TimeReduction
from s3prl_distill.model.fbank import FbankFrontEnd, fbank_frames
from s3prl_distill.model import feature_extractor
from s3prl_distill.model.feature_extractor import ConvFeatureExtractor, ConvLayerBlock
from s3prl_distill.profiler import UpstreamSpec, count_macs, load_upstream, profile_upstreams, profile_waves

from test_pruned_blocks import official_with_removed_blocks

BEFORE = Path(__file__).resolve().parent / "data" / "before_issue17"
SECONDS = 1.0
SAMPLES = int(SECONDS * 16000)


def independent_macs(upstream: torch.nn.Module, wav: torch.Tensor) -> int:
    """MACs of one forward on ``wav`` from module shapes, without torch's counter: every conv layer of the CNN from
    its config (our CNN runs some as a GEMM, not through its Conv1d; so does FitHuBERT's time reduction), every other Conv1d / ConvTranspose1d / Linear
    from its input and output, attention as q @ k^T plus scores @ v, the fbank's mel filterbank product, and in
    inference the first CNN layer's group-norm statistics from its input windows."""
    total = 0
    counted_by_block: set = set()
    hooks = []

    def conv_layer(block: ConvLayerBlock, inputs, output) -> None:
        nonlocal total  # called once per piece of time in inference (ConvFeatureExtractor.stream): pieces add up
        conv = block.conv
        features = output[0]
        total += features.shape[0] * features.shape[-1] * conv.out_channels * conv.in_channels * conv.kernel_size[0]

    def first_layer_statistics(extractor: ConvFeatureExtractor, inputs, output) -> None:
        nonlocal total  # a streamed CNN computes the first layer's group-norm statistics from its input windows:
        first = extractor.conv_layers[0]  # k x k covariance per frame, then w . mu and w^T Sigma w per channel
        if first.norm_type != "group_norm" or \
                max(extractor._output_bytes(inputs[0])) <= feature_extractor.STREAM_ABOVE_BYTES:
            return
        batch, samples = inputs[0].shape
        k, channels = first.kernel_size, first.conv.out_channels
        frames = (samples - k) // first.stride + 1
        total += batch * (k * k * frames + k * channels + channels * k * k)

    def time_reduction(block: TimeReduction, inputs, output) -> None:
        nonlocal total  # a strided conv run as one GEMM, so its Conv1d is never called: counted from its output
        conv = block.conv
        total += output[0].numel() * conv.in_channels * conv.kernel_size[0]

    def conv(module: torch.nn.Module, inputs, output) -> None:
        nonlocal total
        if module in counted_by_block:
            return
        if isinstance(module, torch.nn.ConvTranspose1d):  # every input frame times the whole kernel
            x = inputs[0]
            total += x.shape[0] * x.shape[-1] * module.in_channels * module.out_channels * module.kernel_size[0]
        else:
            total += output.numel() * module.in_channels // module.groups * module.kernel_size[0]

    def linear(module: torch.nn.Linear, inputs, output) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    def attention(module: SelfAttention, inputs, output) -> None:
        nonlocal total
        batch, frames, _ = inputs[0].shape
        total += 2 * batch * module.num_heads * frames * frames * module.head_dim

    def fbank(module: FbankFrontEnd, inputs, output) -> None:
        nonlocal total
        frames = int(fbank_frames(torch.tensor([inputs[0].shape[-1]]))[0])
        total += frames * 257 * module.num_mel_bins  # power spectrum (512-point window: 257 bins) @ mel banks

    def positional(module: ConvPositionalEmbedding, inputs, output) -> None:
        nonlocal total  # on CPU a 2-D convolution, so its Conv1d is never called: counted from its output
        conv = module.conv
        batch, frames, channels = output.shape  # before the even kernel's extra frame was trimmed
        total += batch * (frames + module.trim) * channels * conv.in_channels // conv.groups * conv.kernel_size[0]

    for module in upstream.modules():
        if isinstance(module, ConvPositionalEmbedding):
            counted_by_block.add(module.conv)
            hooks.append(module.register_forward_hook(positional))
        elif isinstance(module, ConvFeatureExtractor):
            hooks.append(module.register_forward_hook(first_layer_statistics))
        elif isinstance(module, ConvLayerBlock):
            counted_by_block.add(module.conv)
            hooks.append(module.register_forward_hook(conv_layer))
        elif isinstance(module, TimeReduction):
            counted_by_block.add(module.conv)
            hooks.append(module.register_forward_hook(time_reduction))
        elif isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            hooks.append(module.register_forward_hook(conv))
        elif isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_hook(linear))
        elif isinstance(module, SelfAttention):
            hooks.append(module.register_forward_hook(attention))
        elif isinstance(module, FbankFrontEnd):
            hooks.append(module.register_forward_hook(fbank))
    try:
        with torch.no_grad():
            upstream([wav])["hidden_states"]
    finally:
        for hook in hooks:
            hook.remove()
    return total


def pruned_checkpoints(folder: Path, wavlm: bool) -> Dict[str, Path]:
    """One pruned student (layer 1 without attention, layer 2 without FFN) in the official DPHuBERT layout and in
    ours as dphubert, skill and generic student checkpoints."""
    _, official = official_with_removed_blocks(wavlm)
    student = dphubert_student_config(official["config"], "official")
    state = dphubert_state_dict(official["state_dict"], student)
    kind = "wavlm" if wavlm else "hubert"
    paths = {f"dphubert_local:official_{kind}": save_checkpoint(official, folder / f"official_{kind}.pth")}
    for family in ("dphubert", "skill", "student"):
        paths[f"{family}_local:{kind}"] = save_checkpoint(export_student(family, student, state),
                                                         folder / f"{family}_{kind}.ckpt")
    return paths


@pytest.fixture(scope="module")
def family_specs(tmp_path_factory) -> List[UpstreamSpec]:
    folder = tmp_path_factory.mktemp("families")
    specs = [UpstreamSpec(f"{name}_local", str(BEFORE / f"{name}.ckpt"), label=name)
             for name in ("distilhubert", "fithubert", "deepthin", "deepthin_fbank", "shallowwide", "dphubert",
                          "skill")]
    for wavlm in (False, True):
        specs += [UpstreamSpec(key.split(":")[0], str(path), label=key)
                  for key, path in pruned_checkpoints(folder, wavlm).items()]
    return specs


@pytest.mark.parametrize("streamed", [False, True])
def test_every_family_is_profiled_with_macs_of_an_independent_count(family_specs, streamed, monkeypatch):
    if streamed:  # 1 s would run the CNN whole: make every inference CNN run in pieces, as long inputs do
        monkeypatch.setattr(feature_extractor, "STREAM_ABOVE_BYTES", 0)
    names = {spec.name for spec in family_specs}
    assert names == {"distilhubert_local", "fithubert_local", "deepthin_local", "deepthin_fbank_local",
                     "shallowwide_local", "dphubert_local", "skill_local", "student_local"}
    result = profile_upstreams(family_specs, seconds=[SECONDS], threads=1, repeats=1, warmup=0, memory=False)
    wav = profile_waves(SECONDS, 1, torch.device("cpu"))[0]
    for spec, row in zip(family_specs, result["upstreams"]):
        upstream = load_upstream(spec).eval()
        assert row["macs"]["1s"] == independent_macs(upstream, wav) > 0, spec.label
        assert row["parameters"]["with_heads"] == sum(p.numel() for p in upstream.parameters())
    # The pruned students: the removed blocks have no parameters and cost nothing, whatever the layout.
    pruned = {row["label"]: row for row in result["upstreams"] if ":" in row["label"]}
    for kind in ("hubert", "wavlm"):
        figures = {(row["macs"]["1s"], row["parameters"]["backbone"]) for label, row in pruned.items()
                   if label.endswith(kind)}
        assert len(figures) == 1, kind  # official layout, dphubert, skill and student: the same model


class SliceToSubmodule(torch.nn.Module):
    """An upstream that hands a submodule a slice of its own parameter (as position tables and codebooks are often
    read): under no_grad that slice requires grad but has no grad_fn, which torch's module tracker cannot hook."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.frame = torch.nn.Linear(320, dim, bias=False)
        self.table = torch.nn.Parameter(torch.randn(4, dim))
        self.mix = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        frames = self.frame(torch.stack(wavs)[:, : len(wavs[0]) // 320 * 320].reshape(len(wavs), -1, 320))
        return {"hidden_states": [frames, frames + self.mix(self.table[:1])]}


def test_counting_survives_parameter_views_at_module_boundaries():
    """Regression: this crashed with ``AssertionError: Expected gradient function to be set`` in
    ``torch/autograd/graph.py`` (from ``torch/utils/module_tracker.py``) before counting froze ``requires_grad``."""
    model = SliceToSubmodule().eval()
    before = [p.requires_grad for p in model.parameters()]
    macs, by_op = count_macs(model, [torch.randn(SAMPLES)])
    assert macs == 50 * 320 * 6 + 6 * 6
    assert by_op == {"aten.mm": macs}
    assert [p.requires_grad for p in model.parameters()] == before  # restored
    # ... also when the input itself is a view of a tensor that requires grad.
    base = torch.randn(2, SAMPLES, requires_grad=True)
    with torch.no_grad():
        wavs = [base[0]]
    assert count_macs(model, wavs)[0] == macs
    assert base.requires_grad


def test_requires_grad_is_restored_when_the_forward_fails():
    model = SliceToSubmodule().eval()
    with pytest.raises(KeyError, match="no output 'nope'"):
        count_macs(model, [torch.randn(SAMPLES)], "nope")
    assert all(p.requires_grad for p in model.parameters())
