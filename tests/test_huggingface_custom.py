"""``s3prl-distill export --to hf`` for students a stock transformers config cannot express: our own registered
model type. ``AutoModel.from_pretrained(DIR)`` builds our class with no remote code, gives our upstream's hidden
states on a padded batch, and the directory loads back through the family's ``*_local`` entry; a fresh interpreter
finds the class through the start-up hook alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch

from s3prl_distill.checkpoint import save_checkpoint
from s3prl_distill.formats import export_student
from s3prl_distill.formats.export import export_checkpoint
from s3prl_distill.formats.fairseq import teacher_copy_config
from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT
from s3prl_distill.formats.s3prl_wavlm import TINY_WAVLM
from s3prl_distill.model import StudentConfig, StudentModel
from s3prl_distill.upstream.deepthin.hubconf import deepthin_fbank_local
from s3prl_distill.upstream.dphubert.hubconf import dphubert_local
from s3prl_distill.upstream.fithubert.hubconf import fithubert_local
from s3prl_distill.upstream.skill.hubconf import skill_local

from helpers import random_waves, run_python, tiny_deepthin, tiny_fithubert

transformers = pytest.importorskip("transformers")

from s3prl_distill.hf_model import DistilledStudentModel  # noqa: E402  (needs transformers)

LENGTHS = [16000, 11000, 7000]  # a padded batch: the last two rows are padding-filled
OWN_TYPE = "s3prl_distill_student"


def _pruned_dphubert() -> StudentConfig:
    """A pruned DPHuBERT student: per-layer widths, layer 1 without attention (0 heads), layer 2 without FFN, and
    the CNN output scale pruning folds in."""
    data = teacher_copy_config(TINY_HUBERT).to_dict()
    data["encoder"].update(num_heads=[4, 0, 3], ffn_dim=[96, 50, 0], head_dim=12)
    data["feature_extractor"]["output_scale"] = True
    return StudentConfig.from_dict(data)


def _pruned_wavlm() -> StudentConfig:
    """A WavLM-shaped (gated relative position bias) student whose layers keep different heads of the bias."""
    data = teacher_copy_config(TINY_WAVLM).to_dict()
    data["encoder"].update(num_heads=[4, 2, 3], kept_heads=[[0, 1, 2, 3], [1, 3], [0, 2, 3]], ffn_dim=[96, 40, 96])
    return StudentConfig.from_dict(data)


def _fbank_deepthin() -> StudentConfig:
    return tiny_deepthin(codeword=None, fbank=True)


def _perturbed(config: StudentConfig, seed: int) -> StudentModel:
    """Every weight and buffer moved off its initial value (LayerNorms, biases, the CNN output scale, the fbank
    statistics), so a weight the export forgot or misplaced changes the outputs."""
    torch.manual_seed(seed)
    model = StudentModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        if model.feature_extractor is not None and model.feature_extractor.output_scale is not None:
            model.feature_extractor.output_scale.uniform_(0.5, 1.5)
        if model.fbank is not None:
            bins = config.fbank_front_end.num_mel_bins
            model.fbank.set_statistics(torch.randn(bins) + 5.0, torch.rand(bins) + 1.5, frames=1000)
    return model


# name -> (family, config, *_local entry)
CASES: Dict[str, Tuple[str, Callable[[], StudentConfig], Callable]] = {
    "dphubert": ("dphubert", _pruned_dphubert, dphubert_local),
    "fithubert": ("fithubert", tiny_fithubert, fithubert_local),
    "deepthin_fbank": ("asr_distill", _fbank_deepthin, deepthin_fbank_local),
    "wavlm": ("skill", _pruned_wavlm, skill_local),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Dict[str, Tuple[Path, Path, Callable]]:
    torch.set_num_threads(1)
    made = {}
    for seed, (name, (family, make, entry)) in enumerate(CASES.items()):
        folder = tmp_path_factory.mktemp(name)
        config = make()
        model = _perturbed(config, seed)
        checkpoint = save_checkpoint(export_student(family, config, model.state_dict()), folder / "student.ckpt")
        summary = export_checkpoint(checkpoint, "hf", folder / "hf")
        assert summary["model_type"] == OWN_TYPE and f"{summary['upstream']}_local" == entry.__name__
        made[name] = (checkpoint, folder / "hf", entry)
    return made


def _padded(waves: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch, samples) zero-padded, valid lengths, and transformers' attention_mask."""
    lengths = torch.tensor([wave.shape[0] for wave in waves])
    padded = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        padded[row, :wave.shape[0]] = wave
    mask = (torch.arange(padded.shape[1])[None] < lengths[:, None]).long()
    return padded, lengths, mask


@pytest.mark.parametrize("name", list(CASES))
def test_automodel_builds_our_class_with_our_upstreams_hidden_states(exported, name):
    checkpoint, directory, entry = exported[name]
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in directory.iterdir()}
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == OWN_TYPE and config["architectures"] == ["DistilledStudentModel"]
    assert "auto_map" not in config  # no remote code
    assert StudentConfig.from_dict(config["student_config"]).encoder.num_layers == config["num_hidden_layers"]

    model = transformers.AutoModel.from_pretrained(str(directory)).eval()
    assert type(model) is DistilledStudentModel
    assert type(transformers.AutoConfig.from_pretrained(str(directory))) is type(model.config)
    upstream = entry(ckpt=str(checkpoint)).eval()
    student = upstream.model
    waves = random_waves(LENGTHS, seed=7)
    padded, lengths, mask = _padded(waves)
    with torch.no_grad():
        theirs = model(padded, attention_mask=mask, output_hidden_states=True)
        ours = upstream(waves)
        direct = student(padded, lengths, predict=False)
    layers = student.config.encoder.num_layers
    hidden = theirs.hidden_states
    assert isinstance(hidden, tuple) and len(hidden) == layers + 1
    frames = student.frame_lengths(lengths)
    time_reduction = student.config.encoder.time_reduction
    layer_frames = frames // time_reduction.factor if time_reduction is not None else frames
    # Our upstream's transformer layers: FitHuBERT's at their native 40 ms, the others in hidden_states[1:].
    upstream_layers = (ours["hidden_states_40ms"] if time_reduction is not None else ours["hidden_states"][1:])
    assert len(upstream_layers) == layers
    for row in range(len(waves)):
        valid, valid_layer = int(frames[row]), int(layer_frames[row])
        # hidden_states[0]: the first layer's input (s3prl's HuBERT hidden state 0, our encoder_input)
        torch.testing.assert_close(hidden[0][row, :valid], direct.encoder_input[row, :valid], atol=1e-4, rtol=0)
        for index, upstream_layer in enumerate(upstream_layers):
            torch.testing.assert_close(hidden[index + 1][row, :valid_layer], upstream_layer[row, :valid_layer],
                                       atol=1e-4, rtol=0, msg=lambda m: f"layer {index + 1}, row {row}: {m}")
        torch.testing.assert_close(theirs.last_hidden_state[row, :valid_layer], direct.last_hidden[row, :valid_layer],
                                   atol=1e-4, rtol=0)
    if name in ("dphubert", "wavlm"):  # their upstream's hidden state 0 is transformers' (Wang et al.'s is not)
        torch.testing.assert_close(hidden[0], ours["hidden_states"][0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_exported_directory_loads_through_the_familys_local_entry(exported, name):
    checkpoint, directory, entry = exported[name]
    original, reloaded = entry(ckpt=str(checkpoint)).eval(), entry(ckpt=str(directory)).eval()
    assert reloaded.family == original.family
    waves = random_waves(LENGTHS, seed=8)
    with torch.no_grad():
        before, after = original(waves), reloaded(waves)
    keys = ("hidden_states", "hidden_states_40ms", "head_outputs", "last_hidden_state") if name == "fithubert" else \
        ("hidden_states", "last_hidden_state", "pad_mask")
    for key in keys:
        torch.testing.assert_close(after[key], before[key], atol=1e-5, rtol=0, msg=lambda m: f"{key}: {m}")


def test_save_pretrained_of_our_class_loads_back_everywhere(exported, tmp_path):
    """transformers' own save (keys prefixed with the base-model prefix) reads back through AutoModel and the
    *_local entry."""
    checkpoint, directory, entry = exported["wavlm"]
    model = transformers.AutoModel.from_pretrained(str(directory)).eval()
    model.save_pretrained(str(tmp_path / "saved"))
    again = transformers.AutoModel.from_pretrained(str(tmp_path / "saved")).eval()
    waves = random_waves([9000], seed=9)
    with torch.no_grad():
        first = model(waves[0][None], output_hidden_states=True).hidden_states
        second = again(waves[0][None], output_hidden_states=True).hidden_states
        upstream = entry(ckpt=str(tmp_path / "saved")).eval()(waves)["hidden_states"]
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    torch.testing.assert_close(list(first), upstream, atol=1e-5, rtol=0)


def test_directory_of_another_family_is_refused(exported):
    from s3prl_distill.checkpoint import CheckpointError

    _, directory, _ = exported["wavlm"]
    with pytest.raises(CheckpointError, match="s3prl-distill skill student.*dphubert expects"):
        dphubert_local(ckpt=str(directory))


def test_a_fresh_interpreter_finds_our_class(exported):
    """The start-up hook registers our classes when transformers' Auto modules load: nothing to import first, in
    either import order; ``import s3prl_distill`` itself imports neither torch nor transformers; with the hook off,
    ``s3prl_distill.register_transformers()`` does it."""
    _, directory, _ = exported["dphubert"]
    load = (f"model = AutoModel.from_pretrained({str(directory)!r}); "
            "print(type(model).__module__, type(model).__name__)")
    expected = "s3prl_distill.hf_model DistilledStudentModel"
    scripts = {
        "hook only": f"from transformers import AutoModel; {load}",
        "modeling_utils first": f"import transformers.modeling_utils; from transformers import AutoModel; {load}",
        "import s3prl_distill": ("import sys, s3prl_distill; "
                                 "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
                                 f"from transformers import AutoModel; {load}"),
    }
    offline = {"HF_HUB_OFFLINE": "1"}  # a local directory: nothing to fetch, and nothing may be
    for label, script in scripts.items():
        result = run_python(["-c", script], extra_env=offline)
        assert result.returncode == 0, f"{label}: {result.stderr[-3000:]}"
        assert result.stdout.strip().endswith(expected), label
    explicit = run_python(["-c", f"import s3prl_distill; s3prl_distill.register_transformers(); "
                                 f"from transformers import AutoModel; {load}"], autoload=False,
                          extra_env=offline)
    assert explicit.returncode == 0, explicit.stderr[-3000:]
    assert explicit.stdout.strip().endswith(expected)
    unregistered = run_python(["-c", f"from transformers import AutoModel; {load}"], autoload=False,
                              extra_env=offline)
    assert unregistered.returncode != 0 and OWN_TYPE in unregistered.stderr
