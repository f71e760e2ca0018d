"""safetensors students (issue 21, item 3): ``export --to safetensors`` for every family, read back by every
``*_local`` upstream with identical outputs and no unpickling, and clear errors for files that are not ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import s3prl_distill.checkpoint as checkpoint_module
from s3prl_distill.checkpoint import CheckpointError, load_checkpoint
from s3prl_distill.formats import read_student
from s3prl_distill.formats.export import export_checkpoint
from s3prl_distill.checkpoint import METADATA_KEY, SAFETENSORS_FORMAT, is_safetensors_file
from s3prl_distill.formats.safetensors_format import save_safetensors_student
from s3prl_distill.profiler import UpstreamSpec, load_upstream

from helpers import random_waves

BEFORE = Path(__file__).resolve().parent / "data" / "before_issue17"
# upstream entry -> tiny checkpoint of that family (ours, or s3prl's distiller format for DistilHuBERT)
FAMILIES = {"distilhubert": "distilhubert", "fithubert": "fithubert", "deepthin": "deepthin",
            "deepthin_fbank": "deepthin_fbank", "shallowwide": "shallowwide", "dphubert": "dphubert",
            "skill": "skill", "student": "deepthin"}


def no_pickle(monkeypatch) -> None:
    """Make every torch.load (ours calls the original directly) fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called while reading a safetensors student")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(checkpoint_module, "_original_torch_load", refuse)


def outputs(entry: str, ckpt: Path):
    upstream = load_upstream(UpstreamSpec(f"{entry}_local", str(ckpt))).eval()
    with torch.no_grad():
        out = upstream(random_waves([16000, 11000], seed=3))
    return out["hidden_states"], out.get("pad_mask") if hasattr(out, "get") else None


@pytest.mark.parametrize("entry", sorted(FAMILIES))
def test_round_trip_of_every_family(entry, tmp_path, monkeypatch):
    source = BEFORE / f"{FAMILIES[entry]}.ckpt"
    target = tmp_path / "student.bin"  # no .safetensors suffix: recognised by content
    summary = export_checkpoint(source, "safetensors", target)
    assert summary["format"] == "safetensors" and is_safetensors_file(target)
    assert not is_safetensors_file(source)

    expected = read_student(load_checkpoint(source), str(source))
    expected_hidden, expected_mask = outputs(entry, source)

    no_pickle(monkeypatch)
    read = read_student(load_checkpoint(target), str(target))
    assert (read.family, read.config) == (expected.family, expected.config)
    assert read.state.keys() == expected.state.keys()
    for key, value in expected.state.items():
        assert read.state[key].dtype == value.dtype and torch.equal(read.state[key], value), key
    hidden, mask = outputs(entry, target)
    assert len(hidden) == len(expected_hidden)
    for ours, theirs in zip(hidden, expected_hidden):
        assert torch.equal(ours, theirs)
    if expected_mask is not None:
        assert torch.equal(mask, expected_mask)


def test_fbank_statistics_travel_in_the_file(tmp_path):
    target = export_checkpoint(BEFORE / "deepthin_fbank.ckpt", "safetensors", tmp_path / "s.safetensors")["output"]
    state = load_checkpoint(target)["Student"]
    statistics = [key for key in state if key.startswith("fbank.")]
    assert statistics, sorted(state)
    assert any(state[key].abs().sum() > 0 for key in statistics)


def write_tiny(path: Path, metadata) -> Path:
    save_file({"w": torch.ones(2)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("metadata, message", [
    (None, "no 'format' entry"),
    ({"format": "something/else"}, "format 'something/else'"),
    ({"format": SAFETENSORS_FORMAT}, f"no '{METADATA_KEY}' entry"),
    ({"format": SAFETENSORS_FORMAT, METADATA_KEY: "{not json"}, "not valid JSON"),
    ({"format": SAFETENSORS_FORMAT, METADATA_KEY: json.dumps({"Family": "student"})}, "lacks Format, StudentConfig"),
    ({"format": SAFETENSORS_FORMAT, METADATA_KEY: "[1]"}, "not a JSON object"),
])
def test_bad_metadata_is_a_clear_error_naming_the_file(tmp_path, monkeypatch, metadata, message):
    path = write_tiny(tmp_path / "bad.st", metadata)
    no_pickle(monkeypatch)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_invalid_config_in_metadata_names_the_file(tmp_path):
    source = load_checkpoint(BEFORE / "deepthin.ckpt")
    config = read_student(source, "deepthin").config
    path = save_safetensors_student("student", config, source["Student"], tmp_path / "x.st")
    with safe_open_metadata(path) as (tensors, metadata):
        header = json.loads(metadata[METADATA_KEY])
        header["StudentConfig"]["encoder"]["num_layers"] = "many"
        metadata[METADATA_KEY] = json.dumps(header)
        save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="num_layers") as error:
        load_upstream(UpstreamSpec("student_local", str(path)))
    assert str(path) in str(error.value)


class safe_open_metadata:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as file:
            return {key: file.get_tensor(key) for key in file.keys()}, dict(file.metadata())

    def __exit__(self, *args) -> None:
        return None


def test_truncated_file_names_the_file(tmp_path):
    path = export_checkpoint(BEFORE / "skill.ckpt", "safetensors", tmp_path / "s.safetensors")["output"]
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_wrong_family_is_refused_as_for_a_ckpt(tmp_path):
    path = export_checkpoint(BEFORE / "skill.ckpt", "safetensors", tmp_path / "s.safetensors")["output"]
    with pytest.raises(CheckpointError, match="dphubert expects"):
        load_upstream(UpstreamSpec("dphubert_local", path))


@pytest.mark.parametrize("to", ["safetensors", "dphubert", "onnx"])
def test_an_export_onto_its_own_checkpoint_is_refused_and_the_checkpoint_kept(tmp_path, to):
    run = tmp_path / "run"
    run.mkdir()
    source = run / "states-6.ckpt"
    source.write_bytes((BEFORE / "skill.ckpt").read_bytes())
    before = source.read_bytes()
    for given in (source, run):  # the file, or its run directory (whose latest checkpoint it is)
        with pytest.raises(CheckpointError, match=rf"--output {source} is the checkpoint being exported"):
            export_checkpoint(given, to, source)
    assert source.read_bytes() == before
