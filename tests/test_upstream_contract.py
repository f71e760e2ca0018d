"""The s3prl upstream contract and the errors bad input and bad checkpoints get."""

import argparse
import sys
import types

import pytest
import torch

from s3prl_distill.checkpoint import CheckpointError, UnpickledPlaceholder, load_checkpoint, save_checkpoint

from helpers import random_waves


def distilhubert_local(**kwargs):
    from s3prl_distill.upstream.distilhubert.hubconf import distilhubert_local as entry

    return entry(**kwargs)


@pytest.fixture(scope="module")
def upstream(session_distiller_ckpt):
    return distilhubert_local(ckpt=str(session_distiller_ckpt)).eval()


def test_output_contract(upstream):
    with torch.no_grad():
        out = upstream(random_waves([16000, 12000, 9600]))
    states = out["hidden_states"]
    assert len(states) == 1 + 2 + 3  # projected CNN, 2 layers, 3 heads
    assert all(isinstance(s, torch.Tensor) and s.shape == (3, 49, 48) for s in states)
    assert out["last_hidden_state"] is states[-1]
    assert torch.equal(out["paper"], states[2])
    assert out["pad_mask"].sum(1).tolist() == [49.0, 37.0, 29.0]
    for key in ("hidden_states", "last_hidden_state", "paper", "pad_mask"):
        assert upstream.get_downsample_rates(key) == 320
    with pytest.raises(KeyError, match="no feature 'nope'"):
        upstream.get_downsample_rates("nope")


def test_s3prl_featurizer_accepts_it(upstream):
    from s3prl.upstream.interfaces import Featurizer

    for key in ("hidden_states", "paper", "last_hidden_state"):
        featurizer = Featurizer(upstream, feature_selection=key, upstream_device="cpu")
        waves = random_waves([16000, 13000, 7777])
        with torch.no_grad():
            features = featurizer(waves, upstream(waves))
        # It keeps round(len / rate) frames per utterance, capped by the frames the model produced (49 for 1 s).
        assert [f.shape[0] for f in features] == [min(round(len(w) / 320), 49) for w in waves]
        assert featurizer.output_dim == 48


@pytest.mark.parametrize(
    "wavs, message",
    [
        ([torch.zeros(0)], "is empty"),
        ([torch.randn(399)], "fewer than the 400"),
        ([torch.randn(16000), torch.full((16000,), float("nan"))], "waveform 1 contains NaN or Inf"),
        ([torch.tensor([0.0, float("inf")] * 8000)], "NaN or Inf"),
        ([torch.randn(2, 16000)], "expected a 1-D mono waveform"),
        ([torch.randint(-100, 100, (16000,), dtype=torch.int16)], "dtype torch.int16"),
        ([torch.randn(16000, dtype=torch.float64)], "dtype torch.float64"),
        (torch.randn(16000), "non-empty list"),
        ([], "non-empty list"),
        ([[0.0] * 16000], "expected a torch.Tensor"),
    ],
)
def test_bad_input_gets_one_clear_value_error(upstream, wavs, message):
    with pytest.raises(ValueError, match=message):
        upstream(wavs)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.ckpt does not exist"):
        distilhubert_local(ckpt=str(tmp_path / "nothing.ckpt"))
    with pytest.raises(ValueError, match="distilhubert_local needs a checkpoint path"):
        distilhubert_local()


def test_truncated_checkpoint(tmp_path, distiller_ckpt):
    data = distiller_ckpt.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.ckpt is not a readable PyTorch checkpoint"):
        distilhubert_local(ckpt=str(truncated))


def test_checkpoint_of_another_family(tmp_path):
    hubert_like = tmp_path / "hubert.ckpt"
    torch.save({"task_cfg": {}, "model_cfg": {}, "model_weight": {}, "dictionaries_symbols": []}, hubert_like)
    with pytest.raises(CheckpointError, match="hubert.ckpt is an s3prl converted HuBERT.*expects a DistilHuBERT"):
        distilhubert_local(ckpt=str(hubert_like))
    bare = tmp_path / "bare.ckpt"
    torch.save({"w": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointError, match="bare state dict"):
        distilhubert_local(ckpt=str(bare))


def test_weights_that_do_not_fit_their_config(tmp_path, distiller_ckpt):
    checkpoint = load_checkpoint(distiller_ckpt)
    del checkpoint["Distiller"]["encoder.layer_norm.weight"]
    torch.save(checkpoint, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="missing.ckpt: weights do not match.*encoder.layer_norm.weight"):
        distilhubert_local(ckpt=str(tmp_path / "missing.ckpt"))
    checkpoint = load_checkpoint(distiller_ckpt)
    checkpoint["Config"]["distiller"]["encoder_embed_dim"] = 64
    checkpoint["Config"]["distiller"]["final_dim"] = 64
    torch.save(checkpoint, tmp_path / "shape.ckpt")
    with pytest.raises(CheckpointError, match="shape.ckpt: weights do not fit"):
        distilhubert_local(ckpt=str(tmp_path / "shape.ckpt"))


class Arbitrary:
    """Not allow-listed: loading it would mean running arbitrary unpickling."""


def test_unsafe_pickle_needs_an_explicit_opt_in(tmp_path, distiller_ckpt, monkeypatch):
    checkpoint = load_checkpoint(distiller_ckpt)
    checkpoint["Extra"] = Arbitrary()
    path = tmp_path / "unsafe.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="unsafe.ckpt contains Python objects.*S3PRL_DISTILL_TRUST_CHECKPOINTS"):
        distilhubert_local(ckpt=str(path))
    assert distilhubert_local(ckpt=str(path), trust_checkpoint=True) is not None
    options = tmp_path / "options.yaml"
    options.write_text("trust_checkpoint: true\n")
    assert distilhubert_local(ckpt=str(path), model_config=str(options)) is not None
    monkeypatch.setenv("S3PRL_DISTILL_TRUST_CHECKPOINTS", "1")
    assert distilhubert_local(ckpt=str(path)) is not None


def test_unknown_upstream_option_is_an_error(tmp_path, distiller_ckpt):
    options = tmp_path / "options.yaml"
    options.write_text("trust_checkpoints: true\n")
    with pytest.raises(ValueError, match="options.yaml: trust_checkpoints: unknown key"):
        distilhubert_local(ckpt=str(distiller_ckpt), model_config=str(options))
    with pytest.raises(FileNotFoundError, match="-g / model_config"):
        distilhubert_local(ckpt=str(distiller_ckpt), model_config=str(tmp_path / "absent.yaml"))


def test_pretrain_runner_checkpoint_loads_without_full_unpickling(tmp_path, distiller_ckpt):
    """s3prl's distiller pretraining stores Args (a Namespace) and LR schedule objects of a module once called
    'optimizers'; both must load with weights_only."""
    module = types.ModuleType("optimizers")

    class WarmupLinearSchedule:
        def __init__(self):
            self.warmup, self.t_total = 0.07, 200000

    WarmupLinearSchedule.__module__ = "optimizers"
    WarmupLinearSchedule.__qualname__ = "WarmupLinearSchedule"
    module.WarmupLinearSchedule = WarmupLinearSchedule
    sys.modules["optimizers"] = module
    try:
        checkpoint = load_checkpoint(distiller_ckpt)
        checkpoint["Args"] = argparse.Namespace(upstream="distiller", seed=1337)
        checkpoint["Optimizer"] = {"state": {}, "param_groups": [{"lr": 2e-4, "schedule": WarmupLinearSchedule()}]}
        checkpoint["Step"] = 200000
        path = tmp_path / "states-200000.ckpt"
        torch.save(checkpoint, path)  # torch's default pickle protocol, as s3prl's runner writes
    finally:
        del sys.modules["optimizers"]
    loaded = load_checkpoint(path)
    assert loaded["Args"].seed == 1337
    schedule = loaded["Optimizer"]["param_groups"][0]["schedule"]
    # An inert placeholder, or s3prl's own class once the compat layer allow-listed it in this process.
    state = schedule.state if isinstance(schedule, UnpickledPlaceholder) else vars(schedule)
    assert state == {"warmup": 0.07, "t_total": 200000}
    assert distilhubert_local(ckpt=str(path)) is not None


def test_named_entry_honours_k_and_url_entry_takes_paths(session_distiller_ckpt):
    from s3prl_distill.upstream.distilhubert.hubconf import distilhubert_ls960, distilhubert_url

    # With -k, no download is attempted (there is no network here).
    assert distilhubert_ls960(ckpt=str(session_distiller_ckpt)).get_downsample_rates("paper") == 320
    assert distilhubert_url(ckpt=str(session_distiller_ckpt)) is not None
    with pytest.raises(RuntimeError, match="could not download http://127.0.0.1:9/x.ckpt"):
        distilhubert_url(ckpt="http://127.0.0.1:9/x.ckpt")


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "states.ckpt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 1  # the last good checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["states.ckpt"]  # no temporary left behind
