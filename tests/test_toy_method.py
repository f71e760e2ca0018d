"""A method is a plug-in: a recipe module written at run time, one ``register_method`` call, and the config, the
runner and the exported checkpoint accept it with no edit anywhere else. Then the registry validates the
``method`` section and the method's check of the student runs when the config loads, before any teacher."""

import importlib.util
import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from s3prl_distill.checkpoint import load_checkpoint
from s3prl_distill.errors import ConfigError
from s3prl_distill.formats.native import NATIVE_FORMAT
from s3prl_distill.pretrain import runner
from s3prl_distill.pretrain.config import load_config, validate_config
from s3prl_distill.pretrain.methods import METHODS, register_method, registered_method
from s3prl_distill.pretrain.metrics import read_metrics
from s3prl_distill.registry import build_upstream

from helpers import random_waves, write_teacher_and_utterances

# The whole recipe of a new method, as a user would write it in pretrain/toy/recipe.py.
TOY_RECIPE = '''
"""Toy method: L1 of every layerwise head against its teacher layer."""

from typing import Dict, List, Literal

from pydantic import Field

from s3prl_distill.losses import LossTerm, regression_term
from s3prl_distill.model.config import StrictModel, StudentConfig
from s3prl_distill.pretrain.method import DistillationBatch, Method, require_head


class ToyMethodConfig(StrictModel):
    name: Literal["toy"] = "toy"
    weight: float = Field(1.0, gt=0.0)


class Toy(Method):
    @classmethod
    def check_student(cls, config: ToyMethodConfig, student: StudentConfig) -> None:
        require_head(config.name, student, "layerwise")

    def __init__(self, config: ToyMethodConfig, student: StudentConfig) -> None:
        self.check_student(config, student)
        self.config = config
        self.target_layers: List[int] = list(student.prediction_head.target_layers)
        self.prediction_indices: List[int] = list(range(len(self.target_layers)))

    def losses(self, batch: DistillationBatch) -> Dict[str, LossTerm]:
        term = regression_term(batch.student.predictions, batch.targets, batch.valid, "l1", self.config.weight)
        return {"toy_l1": term.labelled(self.target_layers)}
'''

TEACHER_LAYERS = 3  # write_random_hubert's tiny HuBERT
STUDENT = {
    "feature_extractor": {"conv_layers": "[(32,10,5)] + [(32,3,2)]*4 + [(32,2,2)]*2"},
    "encoder": {"num_layers": 2, "embed_dim": 48, "ffn_dim": 96, "num_heads": 4, "pos_conv_kernel": 16,
                "pos_conv_groups": 4},
    # The last teacher layers, one head per student layer.
    "prediction_head": {"type": "layerwise", "target_layers": [2, 3], "out_dim": 48},
}


@pytest.fixture(scope="module")
def toy_module(tmp_path_factory):
    """The toy recipe module, imported from a temporary folder."""
    folder = tmp_path_factory.mktemp("toy_plugin")
    (folder / "toy_recipe.py").write_text(textwrap.dedent(TOY_RECIPE))
    spec = importlib.util.spec_from_file_location("toy_recipe", folder / "toy_recipe.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_recipe"] = module  # MethodSpec.folder finds the recipe's folder through it
    spec.loader.exec_module(module)
    yield module
    del sys.modules["toy_recipe"]


@pytest.fixture
def toy(toy_module):
    """The toy method, registered for one test (the one line a new method adds to pretrain/methods.py)."""
    with registered_method("toy", toy_module.ToyMethodConfig, toy_module.Toy, family="student") as method:
        assert method.folder == Path(toy_module.__file__).parent
        yield method
    assert "toy" not in METHODS


@pytest.fixture(scope="module")
def run_config(tmp_path_factory):
    """A toy run: a random tiny HuBERT teacher and eight generated utterances."""
    folder = tmp_path_factory.mktemp("toy_run")
    teacher, _, _ = write_teacher_and_utterances(folder, [8000 + 1000 * i for i in range(8)])
    return {
        "runner": {"total_steps": 2, "log_step": 1, "save_step": 2, "seed": 5},
        "optimizer": {"lr": 1.0e-3},
        "teacher": {"name": "hubert_local", "ckpt": str(teacher)},
        "student": STUDENT,
        "method": {"name": "toy", "weight": 0.5},
        "data": {"root": str(folder / "audio"), "bucket_dir": str(folder / "len_for_bucket"), "sets": ["train-tiny"],
                 "train_batch_size": 4, "max_length": 8000, "num_workers": 0},
    }


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_method_registered_at_run_time_is_a_config_section(toy, run_config, tmp_path):
    config = load_config(write_yaml(tmp_path / "run.yaml", run_config))
    assert isinstance(config.method, toy.config) and config.method.weight == 0.5
    assert config.to_dict()["method"] == {"name": "toy", "weight": 0.5}  # what config.yaml and RunConfig hold
    with pytest.raises(ConfigError, match=r"method\.bogus: unknown key"):
        validate_config({**run_config, "method": {"name": "toy", "bogus": 1}}, "run.yaml")
    with pytest.raises(ConfigError, match=r"method\.weight: Input should be greater than 0"):
        validate_config({**run_config, "method": {"name": "toy", "weight": 0}}, "run.yaml")
    with pytest.raises(ConfigError, match=r"method\.name: 'tyo' is not a registered method \(known: distilhubert, "
                                          r".*skill, star, toy; did you mean toy\?\)"):
        validate_config({**run_config, "method": {"name": "tyo"}}, "run.yaml")


def test_the_methods_check_of_the_student_runs_before_any_teacher(toy, run_config, tmp_path, monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was built before the config was refused")

    monkeypatch.setattr("s3prl_distill.pretrain.task.Teacher", no_teacher)
    wrong = {**run_config, "student": {**STUDENT, "prediction_head": {**STUDENT["prediction_head"],
                                                                      "type": "expand_last", "target_layers": [3]}}}
    path = write_yaml(tmp_path / "wrong.yaml", wrong)
    with pytest.raises(ConfigError, match=r"invalid pretrain config .*wrong.yaml: method: the toy method needs "
                                          r"student.prediction_head of type layerwise"):
        runner.run([str(path)], "wrong", exproot=str(tmp_path))
    assert not (tmp_path / "wrong").exists()
    # A built-in method: the same check, from its recipe, at load time.
    distil = {**wrong, "student": STUDENT, "method": {"name": "distilhubert"}}
    with pytest.raises(ConfigError, match=r"method: the distilhubert method needs student.prediction_head of type "
                                          r"expand_last, not layerwise"):
        load_config(write_yaml(tmp_path / "distil.yaml", distil))


def test_the_toy_method_trains_through_the_runner_and_loads_as_an_upstream(toy, run_config, tmp_path):
    expdir = runner.run([str(write_yaml(tmp_path / "run.yaml", run_config))], "toy", exproot=str(tmp_path))
    records = read_metrics(expdir)
    assert [record["step"] for record in records] == [1, 2]
    for record in records:  # each head's L1 logged; the loss is their mean times method.weight
        assert math.isfinite(record["loss"]) and record["loss"] > 0
        per_layer = [record[f"toy_l1/layer{layer}"] for layer in (2, 3)]
        assert record["loss"] == pytest.approx(0.5 * sum(per_layer) / 2, rel=1e-5)

    path = expdir / "states-2.ckpt"
    checkpoint = load_checkpoint(path)
    assert checkpoint["Format"] == NATIVE_FORMAT and checkpoint["Family"] == "student"  # the registration's
    assert checkpoint["RunConfig"]["method"] == {"name": "toy", "weight": 0.5}

    # The generic upstream loads it as s3prl's runner would (-u student_local -k CKPT): no upstream folder needed.
    upstream = build_upstream("student_local", str(path)).eval()
    with torch.no_grad():
        outputs = upstream(random_waves([16000, 12000], seed=1))
    assert len(outputs["hidden_states"]) == STUDENT["encoder"]["num_layers"] + 1
    assert outputs["last_hidden_state"].shape == (2, 49, 48)
    assert all(torch.isfinite(state).all() for state in outputs["hidden_states"])


def test_a_method_registers_only_under_a_name_its_config_accepts(toy):
    with pytest.raises(ValueError, match=r"register_method\('toy2'\): ToyMethodConfig needs a field `name: "
                                         r"Literal\[\.\.\.\]` that accepts 'toy2'"):
        register_method("toy2", toy.config, toy.recipe, family="student")
    assert "toy2" not in METHODS


def test_an_unregistered_method_is_refused_with_the_registered_names(run_config, tmp_path):
    assert "toy" not in METHODS  # registered by the toy fixture only
    with pytest.raises(ConfigError, match=r"method\.name: 'toy' is not a registered method \(known: "
                                          + ", ".join(METHODS)):
        load_config(write_yaml(tmp_path / "run.yaml", run_config))
