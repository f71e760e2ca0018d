"""The ``precision`` upstream option: validated, fp32 unchanged, bf16 close to fp32 with float32 outputs, for every
family of ours, through the hub entries, s3prl's S3PRLUpstream and the official FitHuBERT YAML."""

from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
import yaml

from s3prl_distill.checkpoint import save_checkpoint
from s3prl_distill.errors import ConfigError
from s3prl_distill.formats.dphubert import dphubert_checkpoint
from s3prl_distill.formats.fairseq import teacher_copy_config
from s3prl_distill.formats.fithubert import export_lightning
from s3prl_distill.formats.native import export_student
from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT
from s3prl_distill.model import StudentConfig, StudentModel, with_fbank_front_end
from s3prl_distill.upstream.interfaces import LazyOutputs

from helpers import (BF16_RELATIVE_TOLERANCE, TINY_STUDENT, random_waves, relative_deviation,
                     tiny_armhubert, tiny_fithubert, tiny_star)

pytestmark = pytest.mark.usefixtures("one_thread")


def random_model(config: StudentConfig) -> StudentModel:
    torch.manual_seed(0)
    model = StudentModel(config)
    with torch.no_grad():  # LayerNorms and biases off their defaults, as after training
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    if model.fbank is not None:
        model.fbank.set_statistics(torch.full((model.fbank.num_mel_bins,), 4.0), torch.full(
            (model.fbank.num_mel_bins,), 3.0), 10)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, session_distiller_ckpt) -> Dict[str, Tuple[str, Path]]:
    """entry name -> (entry, checkpoint) for a tiny checkpoint of every family."""
    folder = tmp_path_factory.mktemp("bf16")
    hubert_copy = teacher_copy_config(TINY_HUBERT)
    shallowwide = StudentConfig.from_dict(TINY_STUDENT)
    found = {"distilhubert": ("distilhubert_local", session_distiller_ckpt)}
    fit = random_model(tiny_fithubert())
    found["fithubert"] = ("fithubert_local", save_checkpoint(
        export_student("fithubert", fit.config, fit.state_dict()), folder / "fit.ckpt"))
    for name, config in (("deepthin", hubert_copy), ("deepthin_fbank", with_fbank_front_end(hubert_copy)),
                         ("shallowwide", shallowwide), ("shallowwide_fbank", with_fbank_front_end(shallowwide))):
        model = random_model(config)
        found[name] = (f"{name}_local", save_checkpoint(export_student("asr_distill", config, model.state_dict()),
                                                        folder / f"{name}.ckpt"))
    copy = random_model(hubert_copy)
    found["dphubert"] = ("dphubert_local", save_checkpoint(
        dphubert_checkpoint(copy.config, copy.state_dict(), "tiny"), folder / "dp.pth"))
    found["skill"] = ("skill_local", save_checkpoint(export_student("skill", copy.config, copy.state_dict()),
                                                     folder / "skill.ckpt"))
    found["student"] = ("student_local", save_checkpoint(
        export_student("student", copy.config, copy.state_dict()), folder / "student.ckpt"))
    # sungnyun/ARMHuBERT's families: reused attention maps (explicit softmax), MaskHuBERT's fused attention, and
    # STaRHuBERT's student without prediction heads.
    for name, config in (("armhubert", tiny_armhubert(reuse=True)), ("maskhubert", tiny_armhubert(reuse=False)),
                         ("starhubert", tiny_star())):
        model = random_model(config)
        found[name] = (f"{name}_local", save_checkpoint(export_student(name, config, model.state_dict()),
                                                        folder / f"{name}.ckpt"))
    return found


def build(entry: str, ckpt: Path, **kwargs):
    import s3prl.hub as hub

    return getattr(hub, entry)(ckpt=str(ckpt), **kwargs).eval()


FAMILIES = ["distilhubert", "fithubert", "deepthin", "deepthin_fbank", "shallowwide", "shallowwide_fbank",
            "dphubert", "skill", "student", "armhubert", "maskhubert", "starhubert"]


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_outputs_are_float32_and_close_to_fp32(checkpoints, family):
    entry, ckpt = checkpoints[family]
    fp32 = build(entry, ckpt)
    bf16 = build(entry, ckpt, model_config={"precision": "bf16"})
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    waves = random_waves([16000, 12000, 9000], seed=2)  # unequal: the padded, masked paths run too
    with torch.no_grad():
        expected, got = fp32(waves), bf16(waves)
    for key in ("hidden_states", "last_hidden_state", "pad_mask"):
        if key not in expected:  # FitHuBERT has no pad_mask
            continue
        ours = got[key] if isinstance(got[key], list) else [got[key]]
        theirs = expected[key] if isinstance(expected[key], list) else [expected[key]]
        assert len(ours) == len(theirs)
        for a, b in zip(theirs, ours):
            assert b.dtype == torch.float32 and b.shape == a.shape
            assert relative_deviation(a, b) < BF16_RELATIVE_TOLERANCE, (key, relative_deviation(a, b))
    if "pad_mask" in expected:
        assert torch.equal(got["pad_mask"], expected["pad_mask"])
    if not isinstance(got, LazyOutputs):  # a plain dict: its aliases stay aliases (FitHuBERT's heads are separate)
        assert got["last_hidden_state"] is got["hidden_states"][-1]
    # bf16 really ran: a hidden state differs from fp32's (an option silently ignored would give equality).
    assert any(not torch.equal(a, b) for a, b in zip(expected["hidden_states"], got["hidden_states"]))


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_default_is_the_forward_it_was(checkpoints, family):
    """Default and explicit ``precision: fp32`` both return exactly what the adapter computes without the option
    (the forward before it existed): no autocast, no cast."""
    entry, ckpt = checkpoints[family]
    default = build(entry, ckpt)
    explicit = build(entry, ckpt, model_config={"precision": "fp32"})
    waves = random_waves([16000, 11000], seed=4)
    with torch.no_grad():
        before = default.adapter.outputs(default.model, waves)["hidden_states"]
        for upstream in (default, explicit):
            states = upstream(waves)["hidden_states"]
            assert len(states) == len(before) and all(torch.equal(a, b) for a, b in zip(before, states))


def test_fithubert_lazy_outputs_run_under_bf16_when_read(checkpoints):
    """FitHuBERT computes its heads only when a key is read, after the forward returned: still bf16, still float32."""
    entry, ckpt = checkpoints["fithubert"]
    fp32, bf16 = build(entry, ckpt), build(entry, ckpt, model_config={"precision": "bf16"})
    waves = random_waves([16000, 12345], seed=5)
    with torch.no_grad():
        expected, got = fp32(waves), bf16(waves)
    for key in ("last_hidden_state", "head_outputs", "hidden_states_40ms"):
        theirs = expected[key] if isinstance(expected[key], list) else [expected[key]]
        ours = got[key] if isinstance(got[key], list) else [got[key]]
        for a, b in zip(theirs, ours):
            assert b.dtype == torch.float32 and relative_deviation(a, b) < BF16_RELATIVE_TOLERANCE
    assert not torch.equal(expected["last_hidden_state"], got["last_hidden_state"])


def test_bad_precision_is_an_error_naming_the_option_and_the_file(checkpoints, tmp_path):
    entry, ckpt = checkpoints["deepthin"]
    options = tmp_path / "options.yaml"
    options.write_text("precision: fp16\n")
    with pytest.raises(ConfigError, match=rf"deepthin: invalid upstream options in {options}: precision: Input "
                                          r"should be 'fp32' or 'bf16'"):
        build(entry, ckpt, model_config=str(options))
    with pytest.raises(ConfigError, match="precision: Input should be 'fp32' or 'bf16'"):
        build(entry, ckpt, model_config={"precision": "half"})
    with pytest.raises(ConfigError, match=r"invalid upstream option precision=: precision"):
        build(entry, ckpt, precision="fp16")
    entry, ckpt = checkpoints["fithubert"]
    with pytest.raises(ConfigError, match=rf"fithubert: invalid options in {options}: precision"):
        build(entry, ckpt, model_config=str(options))


def test_official_fithubert_yaml_takes_precision_in_its_s3prl_distill_section(tmp_path):
    """With the official release, ``-g`` is its training YAML; our options, precision included, go in its
    ``s3prl_distill:`` section; the ``precision=`` keyword (S3PRLUpstream's extra_conf) overrides."""
    model = random_model(tiny_fithubert())
    release, training_yaml = export_lightning(model.config, model.state_dict())
    torch.save(release, tmp_path / "official.ckpt")
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(training_yaml))
    (tmp_path / "bf16.yaml").write_text(yaml.safe_dump({**training_yaml, "s3prl_distill": {"precision": "bf16"}}))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**training_yaml, "s3prl_distill": {"precision": "16"}}))
    ckpt = tmp_path / "official.ckpt"
    assert build("fithubert_local", ckpt, model_config=str(tmp_path / "plain.yaml")).precision == "fp32"
    assert build("fithubert_local", ckpt, model_config=str(tmp_path / "bf16.yaml")).precision == "bf16"
    assert build("fithubert_local", ckpt, model_config=str(tmp_path / "plain.yaml"),
                 precision="bf16").precision == "bf16"
    with pytest.raises(ConfigError, match=rf"invalid options in {tmp_path / 'bad.yaml'}: precision"):
        build("fithubert_local", ckpt, model_config=str(tmp_path / "bad.yaml"))


def test_s3prl_upstream_with_a_model_config_dict(checkpoints):
    """s3prl's own wrapper (the problem/ API's route) passes ``extra_conf`` to our entry: -g as a dict works."""
    from s3prl.nn import S3PRLUpstream

    entry, ckpt = checkpoints["distilhubert"]
    fp32 = S3PRLUpstream(entry, path_or_url=str(ckpt)).eval()
    bf16 = S3PRLUpstream(entry, path_or_url=str(ckpt), extra_conf={"model_config": {"precision": "bf16"}}).eval()
    waves = torch.stack(random_waves([16000, 16000], seed=6))
    lengths = torch.tensor([16000, 12000])
    with torch.no_grad():
        (expected, expected_lengths), (got, got_lengths) = fp32(waves, lengths), bf16(waves, lengths)
    assert [length.tolist() for length in got_lengths] == [length.tolist() for length in expected_lengths]
    for a, b in zip(expected, got):
        assert b.dtype == torch.float32 and relative_deviation(a, b) < BF16_RELATIVE_TOLERANCE


def test_s3prl_featurizer_takes_bf16_features(checkpoints):
    """The runner's featurizer mixes the layers with float32 weights: float32 features keep its contract."""
    from s3prl.upstream.interfaces import Featurizer

    entry, ckpt = checkpoints["shallowwide_fbank"]
    waves = random_waves([16000, 9000], seed=7)
    features = {}
    for precision in ("fp32", "bf16"):
        upstream = build(entry, ckpt, model_config={"precision": precision})
        featurizer = Featurizer(upstream, upstream_device="cpu")
        with torch.no_grad():
            features[precision] = featurizer(waves, upstream(waves))
    assert [f.dtype for f in features["bf16"]] == [torch.float32] * 2
    for a, b in zip(features["fp32"], features["bf16"]):
        assert a.shape == b.shape and relative_deviation(a, b) < BF16_RELATIVE_TOLERANCE


def test_profile_takes_precision_through_g(session_distiller_ckpt, tmp_path):
    """``s3prl-distill profile -u X X -k C C -g - bf16.yaml``: the same checkpoint at both precisions, side by side,
    rows named by their -g file; MACs do not depend on the precision."""
    from s3prl_distill.profiler import profile_upstreams, specs_from_lists

    options = tmp_path / "bf16.yaml"
    options.write_text("precision: bf16\n")
    ckpt = str(session_distiller_ckpt)
    specs = specs_from_lists(["distilhubert_local"] * 2, [ckpt, ckpt], ["-", str(options)])
    result = profile_upstreams(specs, seconds=[1.0], threads=1, repeats=1, warmup=0, memory=False)
    fp32, bf16 = result["upstreams"]
    assert (fp32["label"], bf16["label"]) == (f"distilhubert_local:{Path(ckpt).name}",
                                              f"distilhubert_local:{Path(ckpt).name} -g bf16.yaml")
    assert bf16["model_config"] == str(options)
    assert fp32["macs"] == bf16["macs"] and fp32["parameters"] == bf16["parameters"]


def test_every_local_entry_of_ours_is_checked(checkpoints):
    """A family added to the registry without a case here fails: each ``*_local`` entry of ours is in FAMILIES."""
    from s3prl_distill.registry import upstream_names

    assert sorted(checkpoints) == sorted(FAMILIES)
    assert sorted(entry for entry, _ in checkpoints.values()) == sorted(
        name for name in upstream_names() if name.endswith("_local"))
