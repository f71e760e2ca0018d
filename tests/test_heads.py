"""Prediction heads: one config class per type (discriminated by ``type``), each building a module that reads the
encoder's output; hidden state 0 under both conventions."""

from __future__ import annotations

import logging

import pytest
import torch

from s3prl_distill.errors import ConfigError
from s3prl_distill.model import (
    EncoderConfig,
    EncoderOutput,
    ExpandLastHeadConfig,
    LayerwiseHeadConfig,
    ProjectionHeadConfig,
    StudentConfig,
    StudentModel,
    hidden_state_zero,
)

from helpers import random_waves

TINY = {
    "feature_extractor": {"conv_layers": "[(16,10,5)] + [(16,3,2)]*4 + [(16,2,2)]*2"},
    "encoder": {"num_layers": 3, "embed_dim": 32, "ffn_dim": 64, "num_heads": 4, "pos_conv_kernel": 8,
                "pos_conv_groups": 4},
}

# ``prediction_head`` exactly as StudentConfig.to_dict() wrote it before the head types had their own classes
# (every field of every type, at its default where the type did not use it).
SAVED_BEFORE = {
    "expand_last": {"type": "expand_last", "target_layers": [1, 2, 3], "inner_dim": 20, "out_dim": 24,
                    "front_end": False, "target_groups": None, "group_target": "each", "group_student": "mean"},
    "layerwise": {"type": "layerwise", "target_layers": [1, 2, 3], "inner_dim": None, "out_dim": 24,
                  "front_end": True, "target_groups": None, "group_target": "each", "group_student": "mean"},
    "projection": {"type": "projection", "inner_dim": None, "out_dim": 32, "front_end": False,
                   "target_groups": [[0, 1], [2, 3]], "group_target": "mean", "group_student": "last",
                   "layer_zero": "transformer_input"},
}


def student_config(head: dict) -> StudentConfig:
    return StudentConfig.from_dict({**TINY, "prediction_head": head}, source="saved.yaml")


def test_heads_saved_before_the_split_still_load_and_save_only_their_own_fields():
    expand_last = student_config(SAVED_BEFORE["expand_last"]).prediction_head
    assert expand_last == ExpandLastHeadConfig(target_layers=[1, 2, 3], inner_dim=20, out_dim=24)
    layerwise = student_config(SAVED_BEFORE["layerwise"]).prediction_head
    assert layerwise == LayerwiseHeadConfig(target_layers=[1, 2, 3], out_dim=24, front_end=True)
    projection = student_config(SAVED_BEFORE["projection"]).prediction_head
    assert projection == ProjectionHeadConfig(target_groups=[[0, 1], [2, 3]], group_target="mean",
                                              group_student="last", layer_zero="transformer_input", out_dim=32)
    assert projection.target_layers == [0, 1, 2, 3]
    for head in (expand_last, layerwise, projection):
        config = student_config(head.model_dump())
        saved = config.to_dict()["prediction_head"]
        assert set(saved) == set(type(head).model_fields)
        assert StudentConfig.from_dict(config.to_dict()) == config
    assert set(StudentConfig.from_dict(TINY).to_dict()) == set(StudentConfig.model_fields)  # no head: stays None


def test_the_type_defaults_to_expand_last():
    head = student_config({"target_layers": [1, 2], "out_dim": 24}).prediction_head
    assert isinstance(head, ExpandLastHeadConfig) and head.type == "expand_last"


@pytest.mark.parametrize("head, key", [
    ({"type": "expand_last", "target_groups": [[1, 2]]}, "prediction_head.expand_last.target_groups"),
    ({"type": "layerwise", "target_layers": [1, 2, 3], "layer_zero": "transformer_input"},
     "prediction_head.layerwise.layer_zero"),
    ({"type": "layerwise", "target_layers": [1, 2, 3], "out_dim": 24, "kernel": 3}, "prediction_head.layerwise.kernel"),
])
def test_a_field_of_another_head_type_is_an_unknown_key(head, key):
    with pytest.raises(ConfigError, match=f"saved.yaml: {key}: unknown key"):
        student_config(head)


@pytest.mark.parametrize("head, key", [
    ({"type": "expand_last", "target_layers": [1, 2], "out_dim": 24, "group_target": "mean"}, "group_target"),
    ({"type": "layerwise", "target_layers": [1, 2, 3], "out_dim": 24, "inner_dim": 64}, "inner_dim"),
    ({"type": "projection", "target_groups": [[0], [1]], "out_dim": 32, "inner_dim": 64}, "inner_dim"),
])
def test_a_value_older_versions_ignored_on_this_head_type_is_dropped_with_a_warning(head, key, caplog):
    """The single head class of older versions accepted these keys on every head type and ignored them where they
    did nothing, and saved configs carry them: they still load, as the head without them, and the user hears."""
    with caplog.at_level(logging.WARNING, logger="s3prl_distill.model.head_config"):
        loaded = student_config(head).prediction_head
    assert loaded == student_config({k: v for k, v in head.items() if k != key}).prediction_head
    assert f"{key}={head[key]!r} ignored" in caplog.text


def test_bad_head_types_and_projection_layers_are_named():
    with pytest.raises(ConfigError, match="prediction_head: type must be one of expand_last, layerwise, projection"):
        student_config({"type": "expand-last"})
    with pytest.raises(ConfigError, match="prediction_head.projection.target_groups: Field required"):
        student_config({"type": "projection"})
    with pytest.raises(ConfigError, match=r"take their layers from target_groups \(\[0, 1, 3\]\); drop target_layers"):
        student_config({"type": "projection", "target_groups": [[0], [1, 3]], "target_layers": [1, 3]})
    listed = student_config({"type": "projection", "target_groups": [[0], [1, 3]], "target_layers": [0, 1, 3]})
    assert "target_layers" not in listed.to_dict()["prediction_head"]
    with pytest.raises(ConfigError, match="target layer 4 but the student has hidden states 0..3"):
        student_config({"type": "projection", "target_groups": [[0], [4]]})
    with pytest.raises(ConfigError, match="layerwise heads: 2 target_layers for 3 layers"):
        student_config({"type": "layerwise", "target_layers": [1, 2]})
    with pytest.raises(AttributeError):  # derived, so not assignable
        listed.prediction_head.target_layers = [0]


def encoder_output(frames: int = 6, width: int = 32, layers: int = 3) -> EncoderOutput:
    generator = torch.Generator().manual_seed(0)

    def state() -> torch.Tensor:
        return torch.randn(2, frames, width, generator=generator)

    outputs = [state() for _ in range(layers)]
    return EncoderOutput(features=state(), encoder_input=state(), last_hidden=outputs[-1] + 1.0,
                         layer_outputs=outputs, lengths=None, padding_mask=None)


@pytest.mark.parametrize("head, reads, ignores", [
    (ExpandLastHeadConfig(target_layers=[1, 2], out_dim=8), "last_hidden", ["features", "encoder_input"]),
    (LayerwiseHeadConfig(target_layers=[1, 2, 3], out_dim=8), "layer_outputs", ["last_hidden", "features"]),
    (ProjectionHeadConfig(target_groups=[[0], [2]], out_dim=8), "features", ["encoder_input", "last_hidden"]),
    (ProjectionHeadConfig(target_groups=[[0], [2]], out_dim=8, layer_zero="transformer_input"), "encoder_input",
     ["features", "last_hidden"]),
])
def test_each_head_reads_what_its_type_says_from_the_encoder_output(head, reads, ignores):
    module = head.build(EncoderConfig(**TINY["encoder"]))
    encoded = encoder_output()
    predictions = module(encoded)
    assert predictions.shape == (2, len(head.target_layers), 6, 8)

    def changed(name: str) -> EncoderOutput:
        value = getattr(encoded, name)
        value = [x + 1.0 for x in value] if isinstance(value, list) else value + 1.0
        return encoded._replace(**{name: value})

    assert not torch.equal(module(changed(reads)), predictions)
    for name in ignores:
        assert torch.equal(module(changed(name)), predictions)


def test_student_runs_any_head_type_on_its_encoder_output():
    waves = torch.nn.utils.rnn.pad_sequence(random_waves([8000, 6000]), batch_first=True)
    lengths = torch.tensor([8000, 6000])
    for head in SAVED_BEFORE.values():
        model = StudentModel(student_config(head)).eval()
        out = model(waves, lengths)
        encoded = model.encoder(out.features, out.lengths)
        assert encoded.features is out.features
        assert torch.equal(out.predictions, model.prediction_head(encoded))


def test_hidden_state_zero_is_named_once_for_both_conventions():
    model = StudentModel(student_config(SAVED_BEFORE["expand_last"])).eval()
    out = model(torch.stack(random_waves([8000, 8000])))
    assert out.hidden_states()[0] is out.encoder_input  # s3prl's indexing
    assert out.hidden_states("feature_projection")[0] is out.features  # DPHuBERT's layer 0
    layers = out.hidden_states("feature_projection")[1:]
    assert len(layers) == 3 and all(a is b for a, b in zip(layers, out.layer_outputs))
    encoded = encoder_output()
    assert encoded.hidden_states("feature_projection")[0] is encoded.features
    assert hidden_state_zero("transformer_input", encoded.features, encoded.encoder_input) is encoded.encoder_input
    with pytest.raises(ValueError, match="layer_zero must be one of"):
        hidden_state_zero("layer_0", encoded.features, encoded.encoder_input)
