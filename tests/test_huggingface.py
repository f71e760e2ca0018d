"""``s3prl-distill export --to hf``: transformers' own HubertModel / WavLMModel on the exported directory gives our
upstream's hidden states, the directory loads back through the ``*_local`` entries, HubertForCTC fine-tunes it, and
students a stock HubertConfig / WavLMConfig cannot express go to our own type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch

from s3prl_distill.checkpoint import CheckpointError, save_checkpoint
from s3prl_distill.formats import export_student
from s3prl_distill.formats.export import export_checkpoint
from s3prl_distill.formats.fairseq import teacher_copy_config
from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT
from s3prl_distill.formats.s3prl_wavlm import TINY_WAVLM
from s3prl_distill.model import StudentConfig, StudentModel
from s3prl_distill.upstream.deepthin.hubconf import deepthin_local
from s3prl_distill.upstream.distilhubert.hubconf import distilhubert_local
from s3prl_distill.upstream.fithubert.hubconf import fithubert_local
from s3prl_distill.upstream.shallowwide.hubconf import shallowwide_local
from s3prl_distill.upstream.skill.hubconf import skill_local
from s3prl_distill.upstream.student.hubconf import student_local

from helpers import (random_waves, run_python, tiny_deepthin, tiny_fithubert, tiny_shallowwide,
                     write_s3prl_distiller_checkpoint)

transformers = pytest.importorskip("transformers")

LENGTHS = [16000, 11000, 7000]  # a padded batch: the last two rows are padding-filled


def _perturbed(config: StudentConfig, seed: int) -> StudentModel:
    """A student whose every weight (LayerNorms and biases included) differs from its initial value, so a weight
    the export forgot or misplaced changes the outputs."""
    torch.manual_seed(seed)
    model = StudentModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def _native(family: str, config: StudentConfig, seed: int) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        model = _perturbed(config, seed)
        return save_checkpoint(export_student(family, config, model.state_dict()), folder / "student.ckpt")
    return write


def _distiller(folder: Path) -> Path:
    return write_s3prl_distiller_checkpoint(folder / "distiller.ckpt", seed=4)


def _uniform_prelayer_norm() -> StudentConfig:
    """A uniform student of ours exercising the other switches: layer-norm CNN with bias, the CNN LayerNorm, pre-LN
    encoder, odd positional kernel, ReLU."""
    data = teacher_copy_config(TINY_HUBERT).to_dict()
    data["feature_extractor"].update(norm="layer_norm", bias=True)
    data["encoder"].update(layer_norm_first=True, pos_conv_kernel=15, activation="relu", num_layers=2)
    return StudentConfig.from_dict(data)


def _uniform_wavlm(stable: bool) -> StudentConfig:
    """A uniform WavLM-shaped student (gated relative position bias): WavLM Base+'s layout (post-LN, group-norm CNN),
    or with ``stable`` the Large one (pre-LN, layer-norm CNN with bias)."""
    data = teacher_copy_config(TINY_WAVLM).to_dict()
    if stable:
        data["feature_extractor"].update(norm="layer_norm", bias=True)
        data["encoder"].update(layer_norm_first=True, num_layers=2)
    return StudentConfig.from_dict(data)


# label -> (checkpoint writer, its *_local entry, transformers model_type, CNN norm mode)
FAMILIES: Dict[str, tuple] = {
    "distilhubert": (_distiller, distilhubert_local, "hubert", "group"),
    "shallowwide": (_native("asr_distill", tiny_shallowwide(codeword=None), 1), shallowwide_local, "hubert", "group"),
    "deepthin": (_native("asr_distill", tiny_deepthin(codeword=None), 2), deepthin_local, "hubert", "group"),
    "student": (_native("student", _uniform_prelayer_norm(), 3), student_local, "hubert", "layer"),
    "skill_wavlm": (_native("skill", _uniform_wavlm(stable=False), 5), skill_local, "wavlm", "group"),
    "student_wavlm": (_native("student", _uniform_wavlm(stable=True), 6), student_local, "wavlm", "layer"),
}
STOCK_CLASSES = {"hubert": "HubertModel", "wavlm": "WavLMModel"}


def _layers(outputs, count: int) -> List[torch.Tensor]:
    """The transformer layers' outputs among an upstream's hidden states (its last ``count`` backbone entries)."""
    states = outputs["hidden_states"]
    return list(states[1:1 + count])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Dict[str, tuple]:
    torch.set_num_threads(1)
    made = {}
    for name, (write, entry, model_type, norm) in FAMILIES.items():
        folder = tmp_path_factory.mktemp(name)
        checkpoint = write(folder)
        summary = export_checkpoint(checkpoint, "hf", folder / "hf")
        assert summary["format"] == "hf" and summary["output"] == str(folder / "hf")
        assert summary["model_type"] == model_type
        made[name] = (checkpoint, folder / "hf", entry, norm)
    return made


@pytest.mark.parametrize("name", list(FAMILIES))
def test_stock_transformers_model_gives_our_hidden_states(exported, name):
    checkpoint, directory, entry, norm = exported[name]
    model_type = FAMILIES[name][2]
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in directory.iterdir()}
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == model_type and config["feat_extract_norm"] == norm
    assert f"{config['s3prl_distill']['upstream']}_local" == entry.__name__
    upstream = entry(ckpt=str(checkpoint)).eval()
    model, loading = transformers.AutoModel.from_pretrained(str(directory), output_loading_info=True)
    model.eval()
    # The stock class, no code of ours; every weight read from the file (none newly initialised, none left over).
    assert type(model) is getattr(transformers, STOCK_CLASSES[model_type])
    assert type(model).__module__.startswith("transformers.models.")
    assert not loading["missing_keys"] and not loading["unexpected_keys"], loading
    waves = random_waves(LENGTHS, seed=7)
    layers = upstream.model.config.encoder.num_layers
    with torch.no_grad():
        ours = upstream(waves)
        student = upstream.model(*_pad(waves))
        frames = upstream.model.frame_lengths(torch.tensor(LENGTHS)).tolist()
        if norm == "group":
            # transformers' convention for feat_extract_norm "group": no attention_mask, and the CNN's GroupNorm
            # sees the whole input, so padded rows would differ; each utterance alone is what our upstream gives
            # for it inside a padded batch (its statistics use valid samples only).
            theirs = [model(wave[None], output_hidden_states=True).hidden_states for wave in waves]
        else:
            padded, lengths = _pad(waves)
            mask = (torch.arange(padded.shape[1])[None] < lengths[:, None]).long()
            batch = model(padded, attention_mask=mask, output_hidden_states=True).hidden_states
            theirs = [[state[row:row + 1] for state in batch] for row in range(len(waves))]
    for row, valid in enumerate(frames):
        hf_states = theirs[row]
        assert len(hf_states) == layers + 1
        # transformers' hidden_states[0]: the first layer's input (s3prl HuBERT's hidden state 0, our encoder_input)
        torch.testing.assert_close(hf_states[0][0, :valid], student.encoder_input[row, :valid], atol=1e-4, rtol=0)
        for ours_layer, hf_layer in zip(_layers(ours, layers), hf_states[1:]):
            torch.testing.assert_close(hf_layer[0, :valid], ours_layer[row, :valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_exported_directory_loads_through_the_local_entry(exported, name):
    checkpoint, directory, entry, _ = exported[name]
    original, reloaded = entry(ckpt=str(checkpoint)).eval(), entry(ckpt=str(directory)).eval()
    waves = random_waves(LENGTHS, seed=8)
    with torch.no_grad():
        before, after = original(waves), reloaded(waves)
    layers = original.model.config.encoder.num_layers
    # The heads are not exported; every backbone output is the same.
    for old, new in zip(before["hidden_states"][:layers + 1], after["hidden_states"]):
        torch.testing.assert_close(new, old, atol=1e-5, rtol=0)
    assert torch.equal(before["pad_mask"], after["pad_mask"])


def test_directory_of_another_family_or_type_is_refused(exported, tmp_path):
    _, shallowwide_dir, _, _ = exported["shallowwide"]
    with pytest.raises(CheckpointError, match="load it with shallowwide_local"):
        deepthin_local(ckpt=str(shallowwide_dir))
    with pytest.raises(CheckpointError, match="fithubert"):
        fithubert_local(ckpt=str(shallowwide_dir))
    wav2vec2 = tmp_path / "wav2vec2"
    wav2vec2.mkdir()
    (wav2vec2 / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(CheckpointError, match="'wav2vec2'.*only 'hubert' / 'wavlm'"):
        student_local(ckpt=str(wav2vec2))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((shallowwide_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no weights"):
        shallowwide_local(ckpt=str(empty))


@pytest.mark.parametrize("name, prefix, refused_by", [("distilhubert", "hubert.", shallowwide_local),
                                                      ("student_wavlm", "wavlm.", skill_local)])
def test_foreign_directory_without_our_record_reads_as_a_plain_student(exported, tmp_path, name, prefix, refused_by):
    """A transformers directory made elsewhere (like ntu-spml/distilhubert, or a fine-tuned WavLM): pytorch_model.bin,
    a task model's prefix and head, a mask embedding, no record of ours. HuBERT reads as DistilHuBERT-shaped, WavLM
    as a generic student."""
    from safetensors.torch import load_file

    _, directory, entry, _ = exported[name]
    config = json.loads((directory / "config.json").read_text())
    del config["s3prl_distill"]
    config["mask_time_prob"] = 0.05
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps(config))
    state = {f"{prefix}{key}": value for key, value in load_file(str(directory / "model.safetensors")).items()}
    state[f"{prefix}masked_spec_embed"] = torch.rand(config["hidden_size"])
    state["lm_head.weight"], state["lm_head.bias"] = torch.rand(5, config["hidden_size"]), torch.rand(5)
    torch.save(state, foreign / "pytorch_model.bin")
    waves = random_waves([9000], seed=9)
    layers = config["num_hidden_layers"]
    with torch.no_grad():
        ours = entry(ckpt=str(directory)).eval()(waves)["hidden_states"]
        theirs = student_local(ckpt=str(foreign)).eval()(waves)["hidden_states"]
    # distilhubert_local's hidden state 0 is the projected CNN output, student_local's the first layer's input.
    torch.testing.assert_close(theirs[1:], ours[1:layers + 1])
    with pytest.raises(CheckpointError, match="no s3prl-distill record"):
        refused_by(ckpt=str(foreign))


def test_students_a_stock_config_cannot_express_go_to_our_own_type(tmp_path):
    """The stock export is kept for the students above; the others are written as our own registered type
    (tests/test_huggingface_custom.py checks those), and a student still holding its pruning gates is refused."""
    fbank = tiny_deepthin(codeword=None, fbank=True)
    per_layer = StudentConfig.from_dict({**teacher_copy_config(TINY_HUBERT).to_dict(),
                                         "encoder": {**teacher_copy_config(TINY_HUBERT).to_dict()["encoder"],
                                                     "ffn_dim": [96, 40, 96], "num_heads": [4, 2, 4]}})
    wavlm = _uniform_wavlm(stable=False).to_dict()
    # Uniform WavLM students a WavLMConfig cannot express: transformers' WavLM always gates the bias and always has
    # the CNN output's LayerNorm.
    ungated = StudentConfig.from_dict({**wavlm, "encoder": {
        **wavlm["encoder"], "relative_position": {**wavlm["encoder"]["relative_position"], "gated": False}}})
    no_feature_norm = StudentConfig.from_dict({**wavlm, "feature_layer_norm": False})
    cases = {"fithubert": ("fithubert", tiny_fithubert()), "per_layer": ("student", per_layer),
             "ungated": ("skill", ungated), "no_feature_norm": ("student", no_feature_norm)}
    for label, (family, config) in cases.items():
        state = StudentModel(config).state_dict()
        path = save_checkpoint(export_student(family, config, state), tmp_path / f"{label}.ckpt")
        summary = export_checkpoint(path, "hf", tmp_path / f"{label}-hf")
        assert summary["model_type"] == "s3prl_distill_student", label
        assert json.loads((tmp_path / f"{label}-hf" / "config.json").read_text())["model_type"] == \
            "s3prl_distill_student"
    # An fbank front end without its normalisation statistics is refused before anything is written.
    path = save_checkpoint(export_student("asr_distill", fbank, StudentModel(fbank).state_dict()),
                           tmp_path / "fbank.ckpt")
    with pytest.raises(CheckpointError, match="no normalisation statistics"):
        export_checkpoint(path, "hf", tmp_path / "fbank-hf")
    assert not (tmp_path / "fbank-hf").exists()
    from helpers import gated_student

    gated = gated_student(wavlm=False)
    path = save_checkpoint(export_student("dphubert", gated.config, gated.state_dict()), tmp_path / "gated.ckpt")
    with pytest.raises(CheckpointError, match="still has its pruning gates"):
        export_checkpoint(path, "hf", tmp_path / "gated-hf")
    assert not (tmp_path / "gated-hf").exists()


def test_hubert_for_ctc_fine_tunes_an_exported_distilhubert(exported, tmp_path):
    _, directory, _, _ = exported["distilhubert"]
    torch.manual_seed(0)
    model = transformers.HubertForCTC.from_pretrained(str(directory), vocab_size=6, ctc_loss_reduction="mean")
    assert type(model.hubert) is transformers.HubertModel and model.lm_head.out_features == 6
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    waves = torch.stack([wave[:12000] for wave in random_waves([12000, 12000], seed=10)])
    labels = torch.tensor([[1, 2, 3, 4], [5, 4, 3, -100]])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for _ in range(2):
        loss = model(waves, labels=labels).loss
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name in ("lm_head.weight", "hubert.encoder.layers.1.feed_forward.output_dense.weight",
                 "hubert.feature_projection.projection.weight"):
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), name
    # The fine-tuned directory (transformers' own save: "hubert." prefix, CTC head) loads back as a student.
    model.save_pretrained(str(tmp_path / "ctc"))
    model.eval()
    wave = random_waves([9000], seed=11)
    with torch.no_grad():
        theirs = model.hubert(wave[0][None], output_hidden_states=True).hidden_states
        ours = student_local(ckpt=str(tmp_path / "ctc")).eval()(wave)["hidden_states"]
    torch.testing.assert_close(ours, list(theirs), atol=1e-4, rtol=0)


def test_transformers_alone_imports_in_a_fresh_interpreter():
    """Our start-up hook guards torchaudio's native libraries; importing only transformers must work too."""
    result = run_python(["-c", "from transformers import HubertModel, AutoModel; print(HubertModel.__name__)"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("HubertModel")


def _pad(waves: List[torch.Tensor]):
    from s3prl_distill.upstream.interfaces import pad_waveforms

    padded, lengths = pad_waveforms(waves)
    return padded, (lengths if lengths is not None else torch.tensor([w.shape[0] for w in waves]))
