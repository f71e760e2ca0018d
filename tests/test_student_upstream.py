"""One checkpoint reader for every format, the generic ``student`` upstream family, families found by discovery."""

import sys

import pytest
import torch

import s3prl_distill.upstream as upstream_package
from s3prl_distill import registry
from s3prl_distill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from s3prl_distill.formats import read_student
from s3prl_distill.formats.dphubert import dphubert_checkpoint
from s3prl_distill.formats.fairseq import teacher_copy_config
from s3prl_distill.formats.fithubert import export_lightning
from s3prl_distill.formats.native import export_student
from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT
from s3prl_distill.model import StudentModel, pruning_student_config
from s3prl_distill.upstream.interfaces import pad_waveforms
from s3prl_distill.upstream.student.hubconf import student_local

from helpers import random_waves, tiny_fithubert


def random_student(config) -> StudentModel:
    """Random weights, LayerNorms and biases moved off their defaults so that a weight left unloaded shows."""
    torch.manual_seed(0)
    model = StudentModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def same_state(ours, expected) -> bool:
    return ours.keys() == expected.keys() and all(torch.equal(ours[k], v) for k, v in expected.items())


def test_read_student_recognises_every_format(session_distiller_ckpt):
    hubert_copy = random_student(teacher_copy_config(TINY_HUBERT))
    native = read_student(export_student("toy_method", hubert_copy.config, hubert_copy.state_dict()), "native.ckpt")
    assert (native.family, native.format, native.config) == ("toy_method", "native", hubert_copy.config)
    assert same_state(native.state, hubert_copy.state_dict())
    assert native.description == "an s3prl-distill toy_method student checkpoint"

    distiller = read_student(load_checkpoint(session_distiller_ckpt), "distiller.ckpt")
    assert (distiller.family, distiller.format) == ("distilhubert", "s3prl_distiller")
    StudentModel(distiller.config).load_state_dict(distiller.state, strict=True)

    fithubert = random_student(tiny_fithubert())
    release, training_yaml = export_lightning(fithubert.config, fithubert.state_dict())
    official = read_student(release, "FitHuBERT.ckpt", training_yaml)
    assert (official.family, official.format, official.config) == ("fithubert", "fithubert_lightning",
                                                                   fithubert.config)
    assert same_state(official.state, fithubert.state_dict())
    with pytest.raises(CheckpointError, match="FitHuBERT.ckpt is an official FitHuBERT Lightning checkpoint: also "
                                              "pass its training YAML"):
        read_student(release, "FitHuBERT.ckpt")

    dphubert = read_student(dphubert_checkpoint(hubert_copy.config, hubert_copy.state_dict(), "tiny"), "dp.pth")
    assert (dphubert.family, dphubert.format) == ("dphubert", "dphubert")
    StudentModel(dphubert.config).load_state_dict(dphubert.state, strict=True)
    # Their layout adds the CNN's output scale (all ones here); every weight of ours comes back unchanged.
    assert same_state({k: v for k, v in dphubert.state.items() if k in hubert_copy.state_dict()},
                      hubert_copy.state_dict())

    with pytest.raises(CheckpointError, match=r"hubert.ckpt is an s3prl converted HuBERT.*; expected a student "
                                              r"checkpoint: ours"):
        read_student({"model_cfg": {}, "model_weight": {}}, "hubert.ckpt")


def test_read_student_refuses_other_families_before_reading_them():
    hubert_copy = random_student(teacher_copy_config(TINY_HUBERT))
    native = export_student("dphubert", hubert_copy.config, hubert_copy.state_dict())
    with pytest.raises(CheckpointError, match=r"^n.ckpt is an s3prl-distill dphubert student checkpoint; skill "
                                              r"wants its own$"):
        read_student(native, "n.ckpt", families=("skill",), wanted="skill wants its own")
    # A Lightning release without its YAML is refused for its family, not for the missing YAML.
    fithubert = random_student(tiny_fithubert())
    release, _ = export_lightning(fithubert.config, fithubert.state_dict())
    with pytest.raises(CheckpointError, match="is a PyTorch Lightning checkpoint; deepthin wants its own"):
        read_student(release, "r.ckpt", families=("asr_distill",), wanted="deepthin wants its own")
    # A broken config of a recognised format names the file.
    broken = {**native, "StudentConfig": {**native["StudentConfig"], "encoder": {"num_layerz": 3}}}
    with pytest.raises(CheckpointError, match=r"b.ckpt \(StudentConfig\)"):
        read_student(broken, "b.ckpt")


@pytest.mark.parametrize("family", ["student", "asr_distill", "a_method_registered_later"])
def test_student_local_loads_any_native_student(tmp_path, family):
    model = random_student(teacher_copy_config(TINY_HUBERT))
    path = save_checkpoint(export_student(family, model.config, model.state_dict()), tmp_path / "student.ckpt")
    upstream = student_local(ckpt=str(path)).eval()
    assert upstream.family == family
    waves = random_waves([16000, 11000], seed=3)
    with torch.no_grad():
        outputs = upstream(waves)
        reference = model(*pad_waveforms(waves))
    # s3prl's HuBERT indexing: [transformer input after the positional conv, each layer's output].
    expected = [reference.encoder_input, *reference.layer_outputs]
    assert len(outputs["hidden_states"]) == len(expected) == 4
    for ours, theirs in zip(outputs["hidden_states"], expected):
        torch.testing.assert_close(ours, theirs)
    assert outputs["last_hidden_state"] is outputs["hidden_states"][-1]
    assert outputs["pad_mask"].sum(dim=1).tolist() == model.frame_lengths(torch.tensor([16000, 11000])).tolist()
    assert all(upstream.get_downsample_rates(key) == 320 for key in ("hidden_states", "last_hidden_state", "pad_mask"))
    with pytest.raises(KeyError, match="student has no feature 'paper'"):
        upstream.get_downsample_rates("paper")


def test_student_local_refuses_what_it_cannot_present(tmp_path, session_distiller_ckpt):
    gated = StudentModel(pruning_student_config(teacher_copy_config(TINY_HUBERT), target_groups=[[0], [1, 2, 3]]))
    path = save_checkpoint(export_student("student", gated.config, gated.state_dict()), tmp_path / "gated.ckpt")
    with pytest.raises(CheckpointError, match="gated.ckpt still has its pruning gates: run `s3prl-distill prune"):
        student_local(ckpt=str(path))
    fit = StudentModel(tiny_fithubert())
    path = save_checkpoint(export_student("student", fit.config, fit.state_dict()), tmp_path / "fit.ckpt")
    with pytest.raises(CheckpointError, match="fit.ckpt holds a student with a time reduction.*fithubert_local"):
        student_local(ckpt=str(path))
    path = save_checkpoint({"w": torch.ones(2)}, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="bare.ckpt is a bare state dict.*; student expects a student checkpoint"):
        student_local(ckpt=str(path))
    # Any format read_student reads is a student: s3prl's distiller checkpoint gives the standard outputs here.
    distiller = student_local(ckpt=str(session_distiller_ckpt))
    assert distiller.family == "distilhubert" and "paper" not in distiller(random_waves([8000]))


@pytest.fixture
def extra_family_folder(tmp_path, monkeypatch):
    """``toyfam`` (a package with a hubconf) and ``nohub`` (a package without) on the upstream package's path."""
    (tmp_path / "toyfam").mkdir()
    (tmp_path / "toyfam" / "__init__.py").write_text("")
    (tmp_path / "toyfam" / "hubconf.py").write_text(
        "from os.path import join  # imported, not an entry\n\n"
        "def _helper():\n    return 'private'\n\n"
        "def toyfam_local(ckpt=None, model_config=None, refresh=False, **kwargs):\n    return ('toy', ckpt)\n")
    (tmp_path / "nohub").mkdir()
    (tmp_path / "nohub" / "__init__.py").write_text("")
    monkeypatch.setattr(upstream_package, "__path__", [*upstream_package.__path__, str(tmp_path)])
    yield
    for name in [name for name in sys.modules if name.startswith(("s3prl_distill.upstream.toyfam",
                                                                  "s3prl_distill.upstream.nohub"))]:
        del sys.modules[name]


def test_families_are_discovered(extra_family_folder):
    assert registry.families() == ["armhubert", "deepthin", "distilhubert", "dphubert", "fithubert", "maskhubert",
                                   "shallowwide", "skill", "starhubert", "student", "toyfam"]
    found = registry.entries()
    assert found["toyfam_local"](ckpt="x.ckpt") == ("toy", "x.ckpt")
    assert "join" not in found and "_helper" not in found
    fake_hub = type(sys)("fake_hub")
    assert "toyfam_local" in registry.register(fake_hub) and fake_hub.toyfam_local is found["toyfam_local"]
