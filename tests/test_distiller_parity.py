"""Our DistilHuBERT upstream against s3prl's own installed distiller code, both directions."""

import pytest
import torch

from s3prl_distill.checkpoint import load_checkpoint
from s3prl_distill.formats.s3prl_distiller import (
    config_from_distiller,
    export_distiller,
    import_distiller,
    state_dict_from_distiller,
    state_dict_to_distiller,
)
from s3prl_distill.model import StudentModel

from helpers import TINY_DISTILLER_CONFIG, random_waves, write_s3prl_distiller_checkpoint

TOLERANCE = 1e-4


def s3prl_hub():
    import s3prl.hub

    return s3prl.hub


def max_difference(theirs, ours):
    assert set(theirs) >= {"hidden_states", "last_hidden_state", "paper"}
    assert set(ours) >= {"hidden_states", "last_hidden_state", "paper", "pad_mask"}
    assert len(theirs["hidden_states"]) == len(ours["hidden_states"])
    pairs = list(zip(theirs["hidden_states"], ours["hidden_states"]))
    pairs += [(theirs["paper"], ours["paper"]), (theirs["last_hidden_state"], ours["last_hidden_state"])]
    for a, b in pairs:
        assert a.shape == b.shape
    return max((a - b).abs().max().item() for a, b in pairs)


VARIANTS = {
    "tiny": TINY_DISTILLER_CONFIG,
    "layer_norm_cnn_pre_ln": dict(TINY_DISTILLER_CONFIG, extractor_mode="layer_norm", layer_norm_first=True),
    "one_head": dict(TINY_DISTILLER_CONFIG, n_tasks=1, pred_layer_id=[3]),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_s3prl_checkpoint_gives_the_same_features_in_ours(tmp_path, variant):
    path = write_s3prl_distiller_checkpoint(tmp_path / "s3prl.ckpt", VARIANTS[variant], seed=1)
    hub = s3prl_hub()
    theirs, ours = hub.distiller_local(ckpt=str(path)).eval(), hub.distilhubert_local(ckpt=str(path)).eval()
    waves = random_waves([16000, 16000], seed=2)
    with torch.no_grad():
        difference = max_difference(theirs(waves), ours(waves))
    assert difference <= TOLERANCE
    print(f"PARITY s3prl->ours [{variant}] max-abs {difference:.3e}")


def test_our_checkpoint_loads_in_stock_distiller_local(tmp_path):
    config = config_from_distiller(TINY_DISTILLER_CONFIG)
    torch.manual_seed(7)
    ours_model = StudentModel(config)
    path = tmp_path / "ours.ckpt"
    torch.save(export_distiller(config, ours_model.state_dict()), path)
    hub = s3prl_hub()
    theirs, ours = hub.distiller_local(ckpt=str(path)).eval(), hub.distilhubert_local(ckpt=str(path)).eval()
    waves = random_waves([24000], seed=4)
    with torch.no_grad():
        difference = max_difference(theirs(waves), ours(waves))
        # Against the model we saved, too: the upstream really uses these weights.
        direct = ours_model.eval()(waves[0][None]).layer_outputs[-1]
    assert difference <= TOLERANCE
    assert (direct - ours(waves)["paper"]).abs().max() <= TOLERANCE
    print(f"PARITY ours->s3prl max-abs {difference:.3e}")


def test_different_weights_give_different_features(tmp_path):
    """Guards the parity tests against comparing a model with itself."""
    hub = s3prl_hub()
    a = hub.distilhubert_local(ckpt=str(write_s3prl_distiller_checkpoint(tmp_path / "a.ckpt", seed=1))).eval()
    b = hub.distiller_local(ckpt=str(write_s3prl_distiller_checkpoint(tmp_path / "b.ckpt", seed=2))).eval()
    waves = random_waves([16000])
    with torch.no_grad():
        assert max_difference(b(waves), a(waves)) > 1e-2


def test_state_dict_conversion_round_trips(tmp_path):
    checkpoint = load_checkpoint(write_s3prl_distiller_checkpoint(tmp_path / "s.ckpt"))
    config, ours = import_distiller(checkpoint)
    back = state_dict_to_distiller(ours, config)
    assert set(back) == set(checkpoint["Distiller"])
    for key, value in checkpoint["Distiller"].items():
        assert torch.equal(back[key], value), key
    assert set(state_dict_from_distiller(back, config)) == set(StudentModel(config).state_dict())
