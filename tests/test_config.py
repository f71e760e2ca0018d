import pytest
import yaml

from s3prl_distill.model import StudentConfig, distilhubert_config, format_conv_layers, parse_conv_layers


def test_conv_spec_parses_fairseq_expressions():
    layers = parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")
    assert layers == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert parse_conv_layers(format_conv_layers(layers)) == layers
    assert parse_conv_layers([[8, 3, 1], [16, 2, 2]]) == [(8, 3, 1), (16, 2, 2)]


@pytest.mark.parametrize(
    "spec",
    ["__import__('os').system('true')", "[(512,10)]", "[]", "[(512,10,0)]", "[(512.5,10,5)]", "[(1,2,3)] -", "abc"],
)
def test_conv_spec_rejects_code_and_malformed_layers(spec):
    with pytest.raises(ValueError, match="conv layer spec"):
        parse_conv_layers(spec)


def test_unknown_keys_are_errors_naming_the_key_path():
    with pytest.raises(ValueError) as error:
        StudentConfig.from_dict({"encoder": {"num_layer": 3}, "extra_thing": 1}, source="student.yaml")
    message = str(error.value)
    assert "student.yaml" in message
    assert "encoder.num_layer: unknown key" in message
    assert "extra_thing: unknown key" in message


def test_per_layer_widths_are_validated():
    config = StudentConfig.from_dict({"encoder": {"num_layers": 2, "ffn_dim": [64, 32], "num_heads": [4, 2]}})
    assert config.encoder.layer_ffn_dims() == [64, 32]
    assert config.encoder.layer_num_heads() == [4, 2]
    with pytest.raises(ValueError, match="ffn_dim lists 3 values for 2 layers"):
        StudentConfig.from_dict({"encoder": {"num_layers": 2, "ffn_dim": [1, 2, 3]}})
    with pytest.raises(ValueError, match="not divisible"):
        StudentConfig.from_dict({"encoder": {"embed_dim": 50, "num_heads": 4}})
    with pytest.raises(ValueError, match="dropout"):
        StudentConfig.from_dict({"encoder": {"dropout": 1.5}})


def test_yaml_round_trip(tmp_path):
    config = distilhubert_config()
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert StudentConfig.from_yaml(path) == config
    assert isinstance(config.to_dict()["feature_extractor"]["conv_layers"], str)
