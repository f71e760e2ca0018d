"""STaR: the temporal-Gram-matrix losses against the formula (per utterance, padding cropped), their invariances, the
config's refusals, a run of the recipe through our runner (online and from a teacher cache), and the exported
student in the ``starhubert_local`` upstream."""

import math
from pathlib import Path

import pytest
import torch
import yaml

from s3prl_distill.checkpoint import load_checkpoint, save_checkpoint
from s3prl_distill.errors import ConfigError
from s3prl_distill.formats.native import export_student
from s3prl_distill.losses import combine, temporal_gram
from s3prl_distill.model import StudentModel, starhubert_config
from s3prl_distill.model.pruning import prune
from s3prl_distill.model.student import HEAD_PREFIXES, StudentOutput
from s3prl_distill.pretrain import runner
from s3prl_distill.pretrain.config import load_config, validate_config
from s3prl_distill.pretrain.method import DistillationBatch
from s3prl_distill.pretrain.methods import build_method
from s3prl_distill.pretrain.metrics import metric_values, read_metrics
from s3prl_distill.pretrain.star.recipe import STaRMethodConfig
from s3prl_distill.pretrain.teacher_cache import TeacherCache, build_teacher_cache, required_layers
from s3prl_distill.registry import build_upstream

from helpers import gated_student, online_and_cached_tasks, random_waves, tiny_star, write_teacher_and_utterances

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the losses against the formula -----------------------------------------------------------------------------------

def reference_gram(left: torch.Tensor, right: torch.Tensor, normalisation: str) -> torch.Tensor:
    """One utterance's (T, D) frames -> (T, T), written out from the definition."""
    left, right = left.double(), right.double()
    if normalisation == "cosine":
        left = left / left.norm(dim=-1, keepdim=True)
        right = right / right.norm(dim=-1, keepdim=True)
    gram = left @ right.T
    return gram / left.shape[-1] if normalisation == "width" else gram


def reference_loss(student, teacher, lengths, pairs, normalisation, distance) -> float:
    """Mean over the layer pairs of the mean over every utterance's valid frame pairs of the Gram difference:
    ``pairs`` lists (student input, student output, teacher input, teacher output) hidden-state indices."""
    total = 0.0
    for s_in, s_out, t_in, t_out in pairs:
        error, count = 0.0, 0
        for b, length in enumerate(lengths):
            ours = reference_gram(student[s_in][b, :length], student[s_out][b, :length], normalisation)
            theirs = reference_gram(teacher[t_in][b, :length], teacher[t_out][b, :length], normalisation)
            difference = ours - theirs
            error += float((difference.pow(2) if distance == "mse" else difference.abs()).sum())
            count += length * length
        total += error / count
    return total / len(pairs)


def hand_built_batch(method, depth: int, lengths, frames: int = 11, student_width: int = 6, teacher_width: int = 10,
                     seed: int = 0):
    """A DistillationBatch as the task builds it, on random student / teacher hidden states (teacher has 4)."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    student = [torch.randn(batch, frames, student_width, generator=generator) for _ in range(depth + 1)]
    teacher = [torch.randn(batch, frames + 1, teacher_width, generator=generator) for _ in range(4)]
    output = StudentOutput(features=student[0], layer_outputs=student[1:], last_hidden=student[-1], predictions=None,
                           lengths=torch.tensor(lengths), padding_mask=None, encoder_input=student[0])
    valid = torch.arange(frames)[None, :] < torch.tensor(lengths)[:, None]
    return DistillationBatch(output, method.target_stack(teacher, frames), valid, teacher), student, teacher


@pytest.mark.parametrize("normalisation,distance", [("width", "mse"), ("cosine", "l1"), ("none", "mse")])
def test_losses_equal_the_formula_on_each_utterance_cropped_to_its_length(normalisation, distance):
    # A 2-layer student under a 3-layer teacher: student layer 1 -> teacher 2, layer 2 -> teacher 3.
    config = STaRMethodConfig(teacher_layers=[2, 3], layer_wise_weight=0.5, intra_layer_weight=2.0,
                              normalisation=normalisation, distance=distance)
    method = build_method(config, tiny_star(layers=2))
    assert method.target_layers == [0, 2, 3] and method.prediction_indices == []
    lengths = [11, 7, 4]
    batch, student, teacher = hand_built_batch(method, 2, lengths)
    terms = method.losses(batch)
    assert set(terms) == {"layer_wise", "intra_layer"} and terms["intra_layer"].layers == [2, 3]

    layer_wise = reference_loss(student, teacher, lengths, [(1, 1, 2, 2), (2, 2, 3, 3)], normalisation, distance)
    # Intra-layer: each student layer's input and output against the teacher's block between the mapped layers.
    intra = reference_loss(student, teacher, lengths, [(0, 1, 0, 2), (1, 2, 2, 3)], normalisation, distance)
    assert float(combine({"layer_wise": terms["layer_wise"]})) == pytest.approx(0.5 * layer_wise, rel=1e-4)
    assert float(combine({"intra_layer": terms["intra_layer"]})) == pytest.approx(2.0 * intra, rel=1e-4)
    assert float(combine(terms)) == pytest.approx(0.5 * layer_wise + 2.0 * intra, rel=1e-4)


def test_padded_frames_neither_count_nor_receive_gradients():
    method = build_method(STaRMethodConfig(teacher_layers=[1, 2, 3]), tiny_star())
    batch, student, teacher = hand_built_batch(method, 3, [9, 5])
    for state in student:
        state.requires_grad_(True)
    loss = combine(method.losses(batch))
    loss.backward()
    loss = loss.detach()
    assert all(float(state.grad[1, 5:].abs().max()) == 0.0 for state in student)
    assert all(float(state.grad[1, :5].abs().max()) > 0.0 for state in student)
    # Whatever the padding holds, on either side, the loss is the same.
    noisy_student = [state.detach().clone() for state in student]
    for state in noisy_student:
        state[1, 5:] = 1e3
    noisy_teacher = [state.clone() for state in teacher]
    for state in noisy_teacher:
        state[1, 5:] = -1e3
    output = batch.student._replace(features=noisy_student[0], encoder_input=noisy_student[0],
                                    layer_outputs=noisy_student[1:])
    noisy = batch._replace(student=output, targets=method.target_stack(noisy_teacher, 11))
    assert float(combine(method.losses(noisy))) == pytest.approx(float(loss), rel=1e-5)


@pytest.mark.parametrize("normalisation", ["width", "cosine", "none"])
def test_a_rotation_of_the_channels_changes_nothing_and_the_teacher_rotated_scores_zero(normalisation):
    torch.manual_seed(0)
    config = STaRMethodConfig(teacher_layers=[1, 2, 3], normalisation=normalisation)
    method = build_method(config, tiny_star())
    batch, student, teacher = hand_built_batch(method, 3, [11, 8], student_width=10)
    rotation, _ = torch.linalg.qr(torch.randn(10, 10))  # orthogonal: inner products between frames are kept

    def with_student(states):
        output = batch.student._replace(features=states[0], encoder_input=states[0], layer_outputs=states[1:])
        return float(combine(method.losses(batch._replace(student=output))))

    loss = with_student(student)
    assert loss > 0.01
    assert with_student([state @ rotation for state in student]) == pytest.approx(loss, rel=1e-4)
    # The student's states are the teacher's, rotated: every Gram matrix matches.
    assert with_student([state[:, :11] @ rotation for state in teacher]) == pytest.approx(0.0, abs=1e-8)


def test_gram_is_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    states = torch.randn(2, 3, 40, 64)
    exact = temporal_gram(states, states, None)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = temporal_gram(states.bfloat16(), states.bfloat16(), None)
    assert under_autocast.dtype == torch.float32
    assert torch.allclose(under_autocast, exact, atol=0.05)  # only the inputs' bf16 rounding
    assert torch.equal(temporal_gram(states, states, None), torch.einsum("bntd,bnsd->bnts", states, states) / 64)


# --- the recipe through the runner ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_config(tmp_path_factory):
    """A tiny random HuBERT teacher (3 layers of 48), six generated utterances of different lengths (padded
    batches), the tiny STaRHuBERT student."""
    folder = tmp_path_factory.mktemp("star_run")
    teacher, _, _ = write_teacher_and_utterances(folder, [6000 + 1500 * i for i in range(6)])
    return {
        "runner": {"total_steps": 8, "log_step": 1, "save_step": 8, "seed": 5},
        "optimizer": {"lr": 2.0e-3},
        "scheduler": {"warmup_proportion": 0.0},
        "teacher": {"name": "hubert_local", "ckpt": str(teacher)},
        "student": tiny_star().to_dict(),
        "student_init": {},
        "method": {"name": "star", "teacher_layers": [1, 2, 3]},
        "data": {"root": str(folder / "audio"), "bucket_dir": str(folder / "len_for_bucket"), "sets": ["train-tiny"],
                 "train_batch_size": 6, "max_length": None, "num_workers": 0},
    }


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_star_trains_through_the_runner_and_loads_in_starhubert_local(run_config, tmp_path):
    expdir = runner.run([str(write_yaml(tmp_path / "run.yaml", run_config))], "star", exproot=str(tmp_path))
    records = read_metrics(expdir)
    assert [record["step"] for record in records] == list(range(1, 9))
    for record in records:  # both terms, per teacher layer
        assert all(math.isfinite(record[f"{term}/layer{layer}"]) for term in ("layer_wise", "intra_layer")
                   for layer in (1, 2, 3))
    losses = metric_values(records, "loss")
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]

    path = expdir / "states-8.ckpt"
    checkpoint = load_checkpoint(path)
    assert checkpoint["Family"] == "starhubert"
    student = StudentModel(tiny_star()).eval()
    student.load_state_dict(checkpoint["Student"])
    upstream = build_upstream("starhubert_local", str(path)).eval()
    waves = random_waves([16000, 12000], seed=1)
    with torch.no_grad():
        outputs = upstream(waves)
        reference = student(waves[0][None])
    # STaRHuBERT's features: the 12 (here 3) raw layer outputs; layer_hidden_states adds the transformer input.
    assert len(outputs["hidden_states"]) == 3 and len(outputs["layer_hidden_states"]) == 4
    assert outputs["hidden_states"][0].shape == (2, 49, 32)
    for ours, theirs in zip(outputs["layer_hidden_states"], reference.hidden_states()):
        assert torch.allclose(ours[0, :49], theirs[0], atol=1e-4)


def test_star_from_a_teacher_cache_has_the_online_loss(run_config, tmp_path):
    from s3prl_distill.pretrain.runner import build_data

    config = {**run_config, "data": {**run_config["data"], "max_length": 6000}}  # equal windows: no padding
    loaded = load_config(write_yaml(tmp_path / "run.yaml", config))
    cache = build_teacher_cache(loaded, tmp_path / "cache", batch_size=6, progress=False)
    # The intra-layer TGM of layer 1 reads the teacher's transformer input: every hidden state is cached.
    assert TeacherCache(cache).layers == [0, 1, 2, 3]
    assert required_layers(build_method(loaded.method, loaded.student), 4) == [0, 1, 2, 3]

    data = loaded.data.model_copy(update={"teacher_cache": str(cache)})
    _, _, loader = build_data(data, seed=3, progress=False)
    online, offline = online_and_cached_tasks(loaded, cache)
    waveforms, lengths, targets = next(iter(loader))
    with torch.no_grad():
        expected = combine(online.losses(online.student, waveforms, lengths))
        cached = combine(offline.losses(offline.student, waveforms, lengths, 0, targets))
    assert torch.allclose(expected, cached, rtol=2e-3), (expected, cached)


# --- the config -------------------------------------------------------------------------------------------------------

def test_shipped_config_is_starhubert():
    root = Path(__file__).resolve().parents[1] / "pretrain" / "star"
    config = load_config(root / "config.yaml")
    assert config.student == starhubert_config()
    assert StudentModel(config.student).num_parameters() == 22_308_592
    assert config.method.teacher_layers == list(range(1, 13))
    assert config.optimizer.lr == 5.0e-3 and config.scheduler.warmup_proportion == 0.05
    assert config.data.train_batch_size * config.runner.gradient_accumulate_steps == 144
    method = build_method(config.method, config.student)
    assert method.family == "starhubert" and method.target_layers == list(range(13))


@pytest.mark.parametrize("depth", [True, False])
def test_the_shipped_config_follows_a_24_layer_teacher(depth, tmp_path):
    from s3prl_distill.formats.s3prl_hubert import HUBERT_BASE
    from s3prl_distill.pretrain.follow_teacher import fit_to_teacher

    teacher = tmp_path / "large_shape.ckpt"  # what the architecture reader reads of a 24-layer hubert_local file
    torch.save({"task_cfg": {}, "model_cfg": {**HUBERT_BASE, "encoder_layers": 24}, "dictionaries_symbols": [],
                "model_weight": {}}, teacher)
    root = Path(__file__).resolve().parents[1] / "pretrain" / "star"
    config = fit_to_teacher(load_config(root / "config.yaml", f"config.teacher.ckpt={teacher},,"
                                                              f"config.follow_teacher.depth={str(depth).lower()}"))
    if depth:  # one student layer per teacher layer
        assert config.student.encoder.num_layers == 24 and config.method.teacher_layers == list(range(1, 25))
    else:  # STaRHuBERT's 12 layers, each mapped to every second teacher layer
        assert config.student.encoder.num_layers == 12 and config.method.teacher_layers == list(range(2, 25, 2))


@pytest.mark.parametrize("change,message", [
    ({"method": {"name": "star", "teacher_layers": [1, 2, 3], "gram": "width"}}, r"method\.gram: unknown key"),
    ({"method": {"name": "star", "teacher_layers": [2, 1, 3]}},
     r"method\.teacher_layers: .*teacher layers >= 1 in increasing order.*\[2, 1, 3\]"),
    ({"method": {"name": "star", "teacher_layers": [0, 1, 2]}}, r"method\.teacher_layers: .*>= 1"),
    ({"method": {"name": "star"}},
     r"method: method\.teacher_layers lists 12 teacher layers for a student of 3: give one per student layer "
     r"\(e\.g\. \[4, 8, 12\] for a 12-layer teacher\)"),
    ({"method": {"name": "star", "teacher_layers": [1, 2, 3], "layer_wise_weight": 0, "intra_layer_weight": 0}},
     r"both 0"),
    ({"method": {"name": "star", "teacher_layers": [1, 2, 3], "normalisation": "l2"}},
     r"method\.normalisation: Input should be 'width', 'cosine' or 'none'"),
])
def test_bad_method_sections_are_refused_naming_the_key(run_config, change, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({**run_config, **change}, "run.yaml")


def test_star_trains_a_pruned_student_from_its_checkpoint_without_its_heads(run_config, tmp_path):
    from s3prl_distill.pretrain.task import DistillationTask, load_student_checkpoint

    pruned = prune(gated_student(wavlm=False))
    assert pruned.config.prediction_head is not None  # prune keeps the heads
    path = save_checkpoint(export_student("dphubert", pruned.config, pruned.state_dict()), tmp_path / "pruned.ckpt")
    run = {**run_config, "student_init": {"checkpoint": str(path)}}
    with pytest.raises(ConfigError, match=r"trains no heads .*student_init\.checkpoint that has them"):
        validate_config({**run, "student": pruned.config.to_dict()}, "run.yaml")
    backbone = pruned.config.model_copy(update={"prediction_head": None})
    config = validate_config({**run, "student": backbone.to_dict()}, "run.yaml")
    task = DistillationTask(config.teacher, config.student, config.student_init, config.method, torch.device("cpu"))
    expected = {key: value for key, value in pruned.state_dict().items() if not key.startswith(HEAD_PREFIXES)}
    loaded = task.student.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[key], expected[key]) for key in expected)
    waves = random_waves([9000, 6000], seed=2)
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    with torch.no_grad():
        terms = task.losses(task.student, batch, torch.tensor([9000, 6000]))
    assert set(terms) == {"layer_wise", "intra_layer"} and math.isfinite(float(combine(terms)))
    # Another backbone is still refused, naming the key.
    other = backbone.model_copy(update={"feature_dropout": 0.3})
    with pytest.raises(ValueError, match=r"student_init.checkpoint .*pruned.ckpt holds a student whose config differs"):
        load_student_checkpoint(StudentModel(other), str(path))


def test_students_the_gram_losses_cannot_train_are_refused(run_config):
    data = tiny_star().to_dict()
    data["encoder"]["time_reduction"] = {"index": 0, "factor": 2}
    with pytest.raises(ConfigError, match=r"time_reduction has half as many; set it to null"):
        validate_config({**run_config, "student": data}, "run.yaml")
    data = tiny_star().to_dict()
    data["prediction_head"] = {"type": "layerwise", "target_layers": [1, 2, 3], "out_dim": 48}
    data["mask_embedding"] = True
    with pytest.raises(ConfigError, match=r"trains no heads .* so student\.prediction_head, student\.mask_embedding "
                                          r"would be parameters without gradients"):
        validate_config({**run_config, "student": data}, "run.yaml")
    # Any backbone shape works: shallower, wider than the teacher, with its own layer map.
    data = tiny_star(layers=2, width=64).to_dict()
    config = validate_config({**run_config, "student": data, "method": {"name": "star", "teacher_layers": [1, 3]}},
                             "run.yaml")
    assert build_method(config.method, config.student).target_layers == [0, 1, 3]
