"""A student defined relative to its teacher (``follow_teacher``) and the config-time check of a student against its
teacher's checkpoint: the shipped recipe configs with any teacher of their family, one error listing every key."""

from pathlib import Path

import pytest
import torch
import yaml

from s3prl_distill.errors import ConfigError
from s3prl_distill.formats.architecture import read_architecture
from s3prl_distill.formats.s3prl_hubert import HUBERT_BASE, write_random_hubert
from s3prl_distill.formats.s3prl_wavlm import WAVLM_BASE_PLUS, write_random_wavlm
from s3prl_distill.model import StudentModel
from s3prl_distill.model.fbank import fbank_statistics
from s3prl_distill.pretrain.config import load_config, validate_config
from s3prl_distill.pretrain.follow_teacher import fit_to_teacher, layer_scale
from s3prl_distill.pretrain.methods import build_method
from s3prl_distill.pretrain.teacher import Teacher, initialise_student

from helpers import random_waves

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(path.relative_to(ROOT / "pretrain")) for path in (ROOT / "pretrain").glob("*/config*.yaml"))


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """TINY_HUBERT: 3 layers of width 48, a 32-channel CNN, 4 heads, 16 codewords."""
    return write_random_hubert(tmp_path_factory.mktemp("teacher") / "teacher.ckpt", num_labels=16)


@pytest.fixture(scope="module")
def base_shaped_teacher(tmp_path_factory) -> Path:
    """A file in hubert_local's format with HuBERT Base's model config and codebook shapes: what the architecture
    reader reads (the other weights are not needed to read it)."""
    path = tmp_path_factory.mktemp("base") / "hubert_base_shape.ckpt"
    torch.save({"task_cfg": {}, "model_cfg": dict(HUBERT_BASE), "dictionaries_symbols": [],
                "model_weight": {"label_embs_concat": torch.zeros(504, 256), "final_proj.weight": torch.zeros(256, 768),
                                 "final_proj.bias": torch.zeros(256)}}, path)
    return path


@pytest.fixture(scope="module")
def wavlm_base_plus_shaped_teacher(tmp_path_factory) -> Path:
    """idem in wavlm_local's format with WavLM Base+'s config (SKILL's teacher)."""
    path = tmp_path_factory.mktemp("wavlm") / "wavlm_base_plus_shape.pt"
    torch.save({"cfg": dict(WAVLM_BASE_PLUS), "model": {}}, path)
    return path


def _load(name: str, teacher: Path, teacher_name: str = "hubert_local"):
    return load_config(ROOT / "pretrain" / name, f"config.teacher.name={teacher_name},,config.teacher.ckpt={teacher}")


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_config_with_hubert_base_is_what_it_says(name, base_shaped_teacher, wavlm_base_plus_shaped_teacher):
    """With the teacher the recipes were written for, following it changes nothing (the papers' settings stay)."""
    skill = name == "dphubert/config_skill.yaml"
    written = _load(name, wavlm_base_plus_shaped_teacher if skill else base_shaped_teacher,
                    "wavlm_local" if skill else "hubert_local")
    followed = fit_to_teacher(written)
    assert followed.follow_teacher is None
    assert followed.student.to_dict() == written.student.to_dict()
    assert followed.method.model_dump() == written.method.model_dump()


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "dphubert/config_skill.yaml"])
def test_a_shipped_config_follows_a_small_teacher_and_its_student_initialises_and_trains(name, tiny_teacher):
    config = fit_to_teacher(_load(name, tiny_teacher))
    student, head = config.student, config.student.prediction_head
    if head is not None:
        assert head.out_dim == 48
        assert max(head.target_layers) == 3  # the teacher's last layer, wherever it was written as 12
    else:  # STaR: no heads; its own map of student to teacher layers follows the teacher
        assert config.method.teacher_layers == [1, 2, 3]
    follow = _load(name, tiny_teacher).follow_teacher
    if follow.cnn:
        assert student.feature_extractor.conv_layers == [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2
    if follow.width:
        assert (student.encoder.embed_dim, student.encoder.ffn_dim, student.encoder.num_heads) == (48, 96, 4)
        assert (student.encoder.pos_conv_kernel, student.encoder.pos_conv_groups) == (16, 4)
    assert student.encoder.num_layers == (3 if follow.depth else 2)
    if name.startswith("distilhubert") or name.endswith("shallowwide.yaml"):
        assert head.target_layers == [1, 2, 3]  # 4, 8, 12 of 12 -> ceil(l * 3 / 12)
    if name.startswith("fithubert"):
        assert config.method.hint_layers == [1, 2]
    if student.codeword_head is not None:
        assert student.codeword_head.out_dim == 16  # the rows of the teacher's label embeddings

    # What the run then does: build the teacher and the student, copy what student_init asks, take a step's loss.
    torch.manual_seed(0)
    teacher = Teacher(config.teacher)
    model = StudentModel(student)
    initialise_student(model, teacher, config.student_init)
    method = build_method(config.method, student)
    waves = torch.stack(random_waves([3200, 3200]))
    lengths = torch.tensor([3200, 3200])
    if model.fbank is not None:  # what the runner computes from training data before the first step
        model.fbank.set_statistics(*fbank_statistics(list(waves), model.fbank.num_mel_bins))
    hidden = teacher(waves, lengths, method.teacher_layer_zero)
    assert len(hidden) == 4 and all(state.shape[-1] == 48 for state in hidden)
    output = model(waves, lengths)
    if head is None:
        assert output.predictions is None and len(output.layer_outputs) == student.encoder.num_layers == 3
    else:
        assert output.predictions is not None and output.predictions.shape[-1] == 48


def test_every_mismatch_is_listed_at_once_before_anything_loads(tiny_teacher, tmp_path, monkeypatch):
    """The README's command of old with the small teacher: one error naming each key, its value and the teacher's,
    raised by the runner before the teacher is built or a directory is made."""
    from s3prl_distill.pretrain import runner

    config = _load("distilhubert/config.yaml", tiny_teacher).to_dict()
    config["follow_teacher"] = None
    path = tmp_path / "fixed.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(runner, "Trainer", lambda *args, **kwargs: pytest.fail("the run started"))
    with pytest.raises(ConfigError) as caught:
        runner.run(str(path), "run", str(tmp_path / "exp"))
    message = str(caught.value)
    for line in ("student.prediction_head.out_dim: 768 here; the teacher: 48",
                 "student.prediction_head.target_layers: [4, 8, 12] here; the teacher: only hidden states 0..3",
                 "student.feature_extractor.conv_layers: [(512,10,5)",
                 "student.encoder.embed_dim: 768 here; the teacher: 48",
                 "student.encoder.ffn_dim: 3072 here; the teacher: 96",
                 "student.encoder.num_heads: 12 here; the teacher: 4",
                 "student.encoder.pos_conv_kernel: 128 here; the teacher: 16",
                 "student.encoder.pos_conv_groups: 16 here; the teacher: 4"):
        assert line in message, message
    assert "follow_teacher" in message
    assert not (tmp_path / "exp").exists()


def test_a_student_that_fits_passes_and_one_setting_off_is_named_alone(tiny_teacher):
    config = fit_to_teacher(_load("distilhubert/config.yaml", tiny_teacher)).to_dict()
    assert fit_to_teacher(validate_config(config, "followed")).student.encoder.embed_dim == 48
    config["student"]["encoder"]["pos_conv_kernel"] = 8
    with pytest.raises(ConfigError) as caught:
        fit_to_teacher(validate_config(config, "one off"))
    rows = [line for line in str(caught.value).splitlines() if line.startswith("  ")]
    assert rows == ["  student.encoder.pos_conv_kernel: 8 here; the teacher: 16"]


def test_following_needs_a_teacher_checkpoint_it_can_read(tmp_path):
    missing = tmp_path / "nowhere.ckpt"
    with pytest.raises(ConfigError, match=f"follow_teacher: .*{missing}.* no local checkpoint file"):
        fit_to_teacher(_load("distilhubert/config.yaml", missing))
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ConfigError, match="follow_teacher: .*cannot read a model architecture"):
        fit_to_teacher(_load("distilhubert/config.yaml", other))


def test_skill_follows_a_small_wavlm_with_its_own_groups_and_refuses_merged_ones(tmp_path):
    teacher = write_random_wavlm(tmp_path / "wavlm.pt")
    config = _load("dphubert/config_skill.yaml", teacher, "wavlm_local").to_dict()
    with pytest.raises(ConfigError, match="target layer 12 but the student has hidden states 0..3"):
        fit_to_teacher(validate_config(config, "skill, groups of WavLM Base+"))
    config["follow_teacher"]["layers_of"] = 12
    with pytest.raises(ConfigError, match=r"target_groups .* overlap .*layer-similarity"):
        fit_to_teacher(validate_config(config, "skill, groups rescaled"))
    config["student"]["prediction_head"]["target_groups"] = [[0, 1], [2, 3]]  # groups of this teacher's layers
    config["follow_teacher"]["layers_of"] = None
    followed = fit_to_teacher(validate_config(config, "skill"))
    assert followed.student.prediction_head.target_groups == [[0, 1], [2, 3]]
    assert followed.student.encoder.relative_position.num_buckets == 32  # the teacher's bias, as a copy needs
    student = StudentModel(followed.student)
    assert initialise_student(student, Teacher(followed.teacher), followed.student_init) == ["the whole backbone"]


@pytest.mark.parametrize("layers", range(1, 13))
def test_layer_scaling(layers):
    scale = layer_scale(12, layers)
    assert scale(list(range(1, 13))) == list(range(1, layers + 1))  # a head per layer stays a head per layer
    distil = scale([4, 8, 12])
    assert distil[-1] == layers and distil == sorted(set(distil)) and len(distil) == min(3, layers)
    assert scale([0, 12]) == [0, layers]
    assert layer_scale(12, 12)([3, 5, 7]) == [3, 5, 7]


def test_the_architecture_reader_reads_a_student_checkpoint_too(tmp_path, tiny_teacher):
    """A student of ours as the teacher: its backbone, heads left out."""
    from s3prl_distill.formats.native import export_student

    config = fit_to_teacher(_load("distilhubert/config.yaml", tiny_teacher))
    model = StudentModel(config.student)
    path = tmp_path / "student.ckpt"
    torch.save(export_student("distilhubert", model.config, model.state_dict()), path)
    architecture = read_architecture(path)
    assert architecture.backbone.prediction_head is None and architecture.codewords is None
    assert architecture.backbone.encoder == config.student.encoder
    assert read_architecture(tiny_teacher).codewords == 16


def test_s3prls_runner_expert_follows_the_teacher_and_saves_the_student_it_trains(tiny_teacher, tmp_path):
    """run_pretrain.py's path: the expert reads the -g sections (here the shipped recipe's, as link-pretrain writes
    config_model.yaml), follows the teacher it builds, and hands s3prl the resolved sections to save and resume."""
    from s3prl_distill.pretrain.s3prl_expert import S3prlPretrainExpert

    full = yaml.safe_load((ROOT / "pretrain" / "distilhubert" / "config.yaml").read_text())
    sections = {key: full[key] for key in ("teacher", "student", "student_init", "follow_teacher", "method")}
    sections["teacher"]["ckpt"] = str(tiny_teacher)
    data = {"root": str(tmp_path), "bucket_dir": str(tmp_path), "sets": ["none"]}
    expert = S3prlPretrainExpert(data, sections, device="cpu")
    assert expert.task.student.config.encoder.embed_dim == 48
    saved = expert.upstream_config
    assert saved["follow_teacher"] is None and saved["student"]["prediction_head"]["target_layers"] == [1, 2, 3]
    resumed = S3prlPretrainExpert(data, saved, device="cpu")  # s3prl's -e hands Upstream_Config back
    assert resumed.task.student.config == expert.task.student.config
