"""The device check (issue 19): training, resume, upstreams and s3prl's runner on the device under test.

The device is ``S3PRL_DISTILL_TEST_DEVICE`` (``cuda`` or ``cpu``; default ``cuda`` where available, else ``cpu``).
``benchmarks/gpu_check.sh`` runs this module (``-m device_check``) on a GPU machine and, in CI, on the CPU, so both
modes run the same code; what only CUDA has (fp16 with loss scaling, the sync debug mode, CUDA-vs-CPU equality) is
skipped on the CPU with its reason. Everything goes through the production paths: the pretrain ``Trainer`` with
``runner.precision``, the ``*_local`` upstream entries, ``python -m s3prl.run_downstream --device``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch
import yaml

from s3prl_distill.audio_lists import write_length_csvs
from s3prl_distill.checkpoint import load_checkpoint, save_checkpoint
from s3prl_distill.formats.fairseq import teacher_copy_config
from s3prl_distill.formats.native import export_student
from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT
from s3prl_distill.losses import combine
from s3prl_distill.model import (StudentConfig, StudentModel, armhubert_config, maskhubert_config, pruning_student_config,
                                 starhubert_config, with_fbank_front_end)
from s3prl_distill.model.fbank import fbank_statistics
from s3prl_distill.model.pruning import prune
from s3prl_distill.pretrain.runner import Trainer

from helpers import (BF16_RELATIVE_TOLERANCE, TINY_STUDENT, gated_student, make_trainer, random_waves,
                     relative_deviation, tiny_deepthin, tiny_fithubert, tiny_armhubert, tiny_shallowwide, tiny_star,
                     write_audio_tree, write_s3prl_distiller_checkpoint)

DEVICE_VARIABLE = "S3PRL_DISTILL_TEST_DEVICE"
DEVICE = os.environ.get(DEVICE_VARIABLE) or ("cuda" if torch.cuda.is_available() else "cpu")
# cuBLAS reads it when its first handle is made: deterministic GEMM workspaces for the exact-resume test.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# One intra-op thread: the models are tiny (on a GPU the host only launches kernels).
pytestmark = [pytest.mark.device_check, pytest.mark.usefixtures("on_device", "one_thread")]
needs_cuda = pytest.mark.skipif(DEVICE != "cuda", reason=f"needs CUDA ({DEVICE_VARIABLE}={DEVICE})")

RECIPES = ["distilhubert", "fithubert", "asr_distill", "asr_distill_fbank", "dphubert", "skill", "star", "armhubert"]
PRECISIONS = ["bf16", pytest.param("fp16", marks=pytest.mark.skipif(
    DEVICE != "cuda", reason="fp16 trains with loss scaling on CUDA only (elsewhere the runner falls back to fp32)"))]
# BAD_STEP (0-based) gets non-finite gradients. 12 steps: on an H100 the toy students' fp16 gradients overflowed
# at scales 2^16 down to 2^10 (asr_distill, armhubert: steps 0-5), and each stage must still train twice after.
STEPS, BAD_STEP, FRONT_END_STEPS = 12, 6, 3
# Upstream outputs, fp32 on CUDA against the CPU: TF32 is off by default for matmuls; summation order still differs.
FP32_ATOL, FP32_RTOL = 1e-4, 1e-4


@pytest.fixture
def on_device(monkeypatch):
    """Fails a run that asks for CUDA where there is none; trains on the CPU when asked, even beside a GPU."""
    if DEVICE not in ("cuda", "cpu"):
        pytest.fail(f"{DEVICE_VARIABLE}={DEVICE!r}: expected cuda or cpu")
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"{DEVICE_VARIABLE}=cuda but torch {torch.__version__} sees no CUDA device")
    if DEVICE == "cpu" and torch.cuda.is_available():
        monkeypatch.setattr("s3prl_distill.pretrain.trainer.training_device", lambda local_rank=0: torch.device("cpu"))


@pytest.fixture(scope="module")
def one_batch(setup, tmp_path_factory) -> Dict[str, Path]:
    """4 utterances in one batch of 4, uncropped: every step sees the same batch (padded: the lengths differ)."""
    folder = tmp_path_factory.mktemp("one_batch")
    audio = write_audio_tree(folder / "audio", count=4, seed=1)
    write_length_csvs(audio, folder / "len_for_bucket", progress=False)
    return {"root": audio, "bucket_dir": folder / "len_for_bucket"}


def recipe_config(setup: Dict[str, Path], recipe: str) -> dict:
    """The ``setup`` fixture's run (tiny hubert_local teacher, generated audio) with ``recipe``'s tiny student."""
    config = yaml.safe_load(setup["config"].read_text())
    config["scheduler"] = {"name": "constant"}  # the step after the bad one must still train
    codewords = load_checkpoint(setup["teacher"])["model_weight"]["label_embs_concat"].shape[0]
    if recipe == "fithubert":
        config.update(student=tiny_fithubert(out_dim=48).to_dict(), student_init={},
                      method={"name": "fithubert", "hint_layers": [1, 2]})
    elif recipe in ("asr_distill", "asr_distill_fbank"):
        fbank = recipe == "asr_distill_fbank"
        method = {"name": "asr_distill", "discriminative_weight": 0.5}
        if fbank:
            method["front_end_steps"] = FRONT_END_STEPS
        config.update(student=tiny_deepthin(("logits", codewords), fbank=fbank).to_dict(), student_init={},
                      method=method)
    elif recipe in ("dphubert", "skill"):
        groups = [[0], [1, 2, 3]] if recipe == "dphubert" else [[0, 1], [2, 3]]
        student = pruning_student_config(teacher_copy_config(TINY_HUBERT), target_groups=groups)
        config.update(student=student.to_dict(), student_init={"whole": True},
                      method={"name": recipe, "target_sparsity": 0.3, "sparsity_warmup_steps": 4},
                      optimizer={"lr": 2.0e-3, "weight_decay": 0.0})
    elif recipe == "armhubert":  # masking distillation (the teacher's masked pass) on an attention-reusing student
        config.update(student=tiny_armhubert(reuse=True).to_dict(), student_init={},
                      method={"name": "armhubert", "hint_layers": [1, 2], "mask_length": 3})
    elif recipe == "star":  # no heads: Gram matrices of the hidden states, computed in fp32 under autocast
        config.update(student=tiny_star().to_dict(), student_init={},
                      method={"name": "star", "teacher_layers": [1, 2, 3]})
    else:
        assert recipe == "distilhubert", recipe
    return config


def trainer_for(setup, tmp_path: Path, recipe: str, precision: str, overrides: str, data=None) -> Trainer:
    config = recipe_config(setup, recipe)
    config["runner"]["precision"] = precision
    if data is not None:
        config["data"].update(root=str(data["root"]), bucket_dir=str(data["bucket_dir"]), max_length=24000)
    path = tmp_path / f"{recipe}.yaml"
    path.write_text(yaml.safe_dump(config))
    trainer = make_trainer({"config": path}, tmp_path / "run", overrides)
    assert (trainer.device.type, trainer.precision) == (DEVICE, precision)
    return trainer


def floating_weights(trainer: Trainer) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.student.state_dict().items() if v.is_floating_point()}


def same(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_mixed_precision_training_steps(setup, one_batch, tmp_path, recipe, precision):
    """Finite, decreasing loss on a repeated batch; the step with non-finite gradients changes no weight (and, in
    fp16, halves the loss scale); every other step trains, except, in fp16, the steps whose scaled gradients overflow
    while GradScaler backs off from its initial 2^16 (each changes nothing and halves the scale): they come before a
    stage's first update, and once a stage trains only the bad step is skipped."""
    trainer = trainer_for(setup, tmp_path, recipe, precision,
                          f"config.runner.total_steps={STEPS},,config.runner.log_step={STEPS},,"
                          f"config.runner.save_step={STEPS}", one_batch)
    original_losses = trainer.task.losses
    before_step: List[Dict[str, torch.Tensor]] = []
    scales: List[float] = []
    losses: List[torch.Tensor] = []

    def losses_with_a_bad_step(*args, **kwargs):
        before_step.append(floating_weights(trainer))
        scales.append(trainer.scaler.get_scale())
        terms = original_losses(*args, **kwargs)
        if trainer.step == BAD_STEP:  # NaN loss, so NaN in every gradient
            first = next(iter(terms))
            terms[first] = dataclasses.replace(terms[first], sums=terms[first].sums * float("nan"))
        losses.append(combine(terms).detach().float())
        return terms

    trainer.task.losses = losses_with_a_bad_step
    trainer.train()
    before_step.append(floating_weights(trainer))
    scales.append(trainer.scaler.get_scale())
    values = [float(loss) for loss in losses]
    assert len(values) == STEPS and math.isnan(values[BAD_STEP])
    assert all(math.isfinite(v) for i, v in enumerate(values) if i != BAD_STEP), values
    # A skipped update is one after which the loss scale halved (fp16); without loss scaling only the bad step.
    skipped = {step for step in range(STEPS) if scales[step + 1] == scales[step] / 2}
    # The fbank variant's front-end stage comes first.
    boundary = FRONT_END_STEPS if recipe == "asr_distill_fbank" else 0
    stages = [stage for stage in (range(0, boundary), range(boundary, STEPS)) if stage]
    if precision == "fp16":
        assert scales[0] == 2.0 ** 16, scales  # loss scaling is on
        assert BAD_STEP in skipped, scales  # and backs off at the bad step
        for stage in stages:
            trained = [step for step in stage if step not in skipped]
            late = [step for step in skipped - {BAD_STEP} if step in stage and trained and step > trained[0]]
            assert not late, f"fp16 overflowed at steps {late} after the scale had settled: {scales}"
    else:
        assert set(scales) == {1.0}
        skipped = {BAD_STEP}
    for step in range(STEPS):
        if step in skipped:
            assert same(before_step[step], before_step[step + 1]), f"skipped step {step} changed weights ({scales})"
        else:
            assert not same(before_step[step], before_step[step + 1]), f"step {step} did not train ({scales})"
    # Each stage trains at least twice and lowers its own loss on the repeated batch.
    for stage in stages:
        trained = [step for step in stage if step not in skipped]
        finite = [values[step] for step in stage if math.isfinite(values[step])]
        assert len(trained) >= 2, f"steps {list(stage)}: only {trained} trained ({scales})"
        assert finite[-1] < finite[0], (values, scales)
    if precision == "fp16":
        saved = load_checkpoint(tmp_path / "run" / f"states-{STEPS}.ckpt")["Scaler"]
        assert saved["scale"] == scales[-1] and saved["_growth_tracker"] == STEPS - 1 - max(skipped)
    assert int(trainer.skipped_updates) == 0  # the window was logged and reset at the last step


@needs_cuda
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_no_host_device_sync_between_logs(setup, one_batch, tmp_path, recipe, precision):
    """Between two logs a step never waits for the GPU. Outside the check: the log and checkpoint, and the teacher
    forward, an s3prl upstream taking a list of waveforms (host-side by design; a teacher cache avoids it), and so
    masking distillation's masked teacher pass (its mask drawn on the host). The runs
    use the fused AdamW: AdamW_with_schedule (the shipped DistilHuBERT, FitHuBERT and ASR configs) has no AMP hooks,
    so GradScaler reads its skip decision once a step (see Trainer.__init__)."""
    trainer = trainer_for(setup, tmp_path, recipe, precision, "config.runner.total_steps=4,,config.runner.log_step=4,,"
                                                              "config.runner.save_step=4", one_batch)

    def unchecked(function):
        def call(*args, **kwargs):
            torch.cuda.set_sync_debug_mode(0)
            try:
                return function(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")
        return call

    trainer._log, trainer.save = unchecked(trainer._log), unchecked(trainer.save)
    trainer.task.teacher_hidden_states = unchecked(trainer.task.teacher_hidden_states)
    trainer.task._masked_pass = unchecked(trainer.task._masked_pass)  # masking distillation's second teacher pass
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert trainer.step == 4 and (tmp_path / "run" / "states-4.ckpt").exists()


@pytest.fixture
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.mark.usefixtures("deterministic")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_exact_resume_on_the_device(setup, tmp_path, precision):
    """Killed after step 2 and resumed: the weights at step 4 equal an uninterrupted run's, bit for bit (dropout on,
    4 batches an epoch, the loss scale and optimizer state restored)."""
    full = trainer_for(setup, tmp_path, "distilhubert", precision,
                       "config.runner.total_steps=4,,config.runner.save_step=2,,config.runner.log_step=2")
    full.train()
    expected = load_checkpoint(tmp_path / "run" / "states-4.ckpt")
    path = tmp_path / "run" / "states-2.ckpt"
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    Trainer(full.config, resumed_dir, load_checkpoint(path), path).train()
    actual = load_checkpoint(resumed_dir / "states-4.ckpt")
    assert expected["Distiller"].keys() == actual["Distiller"].keys()
    for key, value in expected["Distiller"].items():
        assert torch.equal(value, actual["Distiller"][key]), key
    assert expected["Scaler"] == actual["Scaler"]


@needs_cuda
def test_positional_convolution_runs_in_fp32_under_cuda_autocast():
    """cuDNN's bf16 kernel for the 128-tap grouped convolution is 20x slower than its fp32 one (H100): under
    autocast the convolution takes its input in float32 and computes exactly what the fp32 module does on it."""
    from s3prl_distill.model.encoder import ConvPositionalEmbedding

    torch.manual_seed(0)
    embedding = ConvPositionalEmbedding(64, 16, 4, weight_norm=True).cuda()
    x = torch.randn(2, 50, 64, device="cuda").bfloat16()
    with torch.no_grad():
        expected = embedding(x.float())
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cuda", dtype=dtype):
                actual = embedding(x)
            assert actual.dtype == torch.float32
            torch.testing.assert_close(actual, expected)


# --- upstreams ---------------------------------------------------------------------------------------------------

def student_model(config: StudentConfig) -> StudentModel:
    torch.manual_seed(0)
    model = StudentModel(config)
    if model.fbank is not None:
        model.fbank.set_statistics(*fbank_statistics(random_waves([16000, 8000]), 80))
    return model


def toy_recycled(config: StudentConfig) -> StudentConfig:
    """An ARMHuBERT / MaskHuBERT / STaRHuBERT factory config at toy size: 3 layers of 48, reuse pattern cut to them."""
    data = config.to_dict()
    data["feature_extractor"]["conv_layers"] = "[(16,10,5)] + [(16,1,1)] + [(16,3,2)]*4 + [(48,1,1)] + [(48,2,2)]*2"
    data["encoder"].update(num_layers=3, embed_dim=48, ffn_dim=96, num_heads=4, pos_conv_kernel=16, pos_conv_groups=4)
    if data["encoder"]["attention_reuse"] is not None:
        data["encoder"]["attention_reuse"] = data["encoder"]["attention_reuse"][:3]
    if data["prediction_head"] is not None:
        data["prediction_head"].update(out_dim=32, target_layers=[1, 2, 3])
    return StudentConfig.from_dict(data, "toy student")


def native_checkpoint(path: Path, family: str, model: StudentModel) -> Path:
    return save_checkpoint(export_student(family, model.config, model.state_dict()), path)


@pytest.fixture(scope="module")
def upstream_checkpoints(tmp_path_factory) -> Dict[str, Path]:
    """A checkpoint for every ``*_local`` entry of ours, and s3prl's ``distiller_local`` on DistilHuBERT's."""
    folder = tmp_path_factory.mktemp("upstreams")
    distiller = write_s3prl_distiller_checkpoint(folder / "distiller.ckpt")
    students = {
        "fithubert_local": ("fithubert", student_model(tiny_fithubert())),
        "deepthin_local": ("asr_distill", student_model(tiny_deepthin(codeword=None))),
        "deepthin_fbank_local": ("asr_distill", student_model(tiny_deepthin(codeword=None, fbank=True))),
        "shallowwide_local": ("asr_distill", student_model(tiny_shallowwide(codeword=None))),
        "shallowwide_fbank_local": ("asr_distill",
                                    student_model(with_fbank_front_end(tiny_shallowwide(codeword=None)))),
        # Pruned students (gates applied, as `s3prl-distill prune` writes them): HuBERT- and WavLM-shaped.
        "dphubert_local": ("dphubert", prune(gated_student(wavlm=False))),
        "skill_local": ("skill", prune(gated_student(wavlm=True))),
        "student_local": ("student", student_model(StudentConfig.from_dict(TINY_STUDENT))),
        "armhubert_local": ("armhubert", student_model(toy_recycled(armhubert_config()))),
        "maskhubert_local": ("maskhubert", student_model(toy_recycled(maskhubert_config()))),
        "starhubert_local": ("starhubert", student_model(toy_recycled(starhubert_config()))),
    }
    checkpoints = {name: native_checkpoint(folder / f"{name}.ckpt", family, model)
                   for name, (family, model) in students.items()}
    # s3prl's own model code reads DistilHuBERT's checkpoint too.
    return {"distilhubert_local": distiller, "distiller_local": distiller, **checkpoints}


UPSTREAMS = ["distilhubert_local", "distiller_local", "fithubert_local", "deepthin_local", "deepthin_fbank_local",
             "shallowwide_local", "shallowwide_fbank_local", "dphubert_local", "skill_local", "student_local",
             "armhubert_local", "maskhubert_local", "starhubert_local"]


def test_every_local_entry_is_checked():
    from s3prl_distill.registry import upstream_names

    ours = [name for name in upstream_names() if name.endswith("_local")]
    assert sorted(ours) == sorted(set(UPSTREAMS) - {"distiller_local"})


def hidden_states(name: str, checkpoint: Path, device: str, options: Optional[Path] = None) -> List[torch.Tensor]:
    """The upstream's hidden states for a padded batch, built as s3prl's runner builds it (``options``: its ``-g``)."""
    from s3prl_distill.registry import build_upstream

    upstream = build_upstream(name, str(checkpoint), None if options is None else str(options)).to(device).eval()
    waves = [wave.to(device) for wave in random_waves([16000, 11000])]
    with torch.no_grad():
        states = upstream(waves)["hidden_states"]
    assert all(state.dtype == torch.float32 for state in states), (name, [state.dtype for state in states])
    return [state.cpu() for state in states]


@pytest.mark.parametrize("name", UPSTREAMS)
def test_upstream_runs_on_the_device(upstream_checkpoints, name):
    states = hidden_states(name, upstream_checkpoints[name], DEVICE)
    assert len(states) >= 2
    assert all(state.ndim == 3 and state.shape[0] == 2 and torch.isfinite(state).all() for state in states)


@pytest.fixture
def strict_fp32_convolutions():
    """cuDNN convolutions in fp32, not TF32 (torch's default lets cuDNN use TF32: about 1e-3 relative error)."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous


@needs_cuda
@pytest.mark.usefixtures("strict_fp32_convolutions")
@pytest.mark.parametrize("name", UPSTREAMS)
def test_upstream_on_cuda_equals_cpu(upstream_checkpoints, name):
    on_cpu = hidden_states(name, upstream_checkpoints[name], "cpu")
    on_cuda = hidden_states(name, upstream_checkpoints[name], "cuda")
    assert len(on_cpu) == len(on_cuda)
    differences = [float((actual - expected).abs().max()) for expected, actual in zip(on_cpu, on_cuda)]
    for layer, (expected, actual) in enumerate(zip(on_cpu, on_cuda)):
        torch.testing.assert_close(actual, expected, atol=FP32_ATOL, rtol=FP32_RTOL,
                                   msg=lambda message: f"{name} layer {layer} (max-abs per layer {differences}): {message}")


@pytest.mark.parametrize("name", [name for name in UPSTREAMS if name != "distiller_local"])  # s3prl's: no option
def test_bf16_upstream_on_the_device_is_close_to_fp32_on_the_cpu(upstream_checkpoints, name, tmp_path):
    """``precision: bf16`` (from a ``-g`` file) on the device under test, against the fp32 forward on the CPU: float32
    outputs, every hidden state within BF16_RELATIVE_TOLERANCE of its rms, and not equal to fp32 (bf16 really ran)."""
    options = tmp_path / "bf16.yaml"
    options.write_text("precision: bf16\n")
    on_cpu = hidden_states(name, upstream_checkpoints[name], "cpu")
    in_bf16 = hidden_states(name, upstream_checkpoints[name], DEVICE, options)
    assert len(on_cpu) == len(in_bf16)
    deviations = [relative_deviation(expected, got) for expected, got in zip(on_cpu, in_bf16)]
    assert max(deviations) < BF16_RELATIVE_TOLERANCE, (name, deviations)
    assert max(deviations) > 0, name


# --- s3prl's downstream runner -----------------------------------------------------------------------------------

def test_s3prl_downstream_runner_trains_20_steps_on_the_device(tmp_path, emotion_setup, session_distiller_ckpt):
    """As a sweep runs it: a child forked from the experiment server, which imported s3prl's hub (whose log_stft
    expert asks torch.cuda.is_available() at import) without initialising CUDA, so the child can."""
    from s3prl_distill.downstream_recipes.superb.runner import run_experiment_process

    corpus, config = emotion_setup
    expdir = tmp_path / "exp"
    train = ["-m", "train", "-u", "distilhubert_local", "-k", str(session_distiller_ckpt), "-d", "emotion",
             "-c", str(config), "-p", str(expdir), "--device", DEVICE,
             "-o", "config.runner.total_steps=20,,config.runner.save_step=20,,config.runner.eval_step=20"]
    plan = {"train": train, "expdir": str(expdir), "best": "states-20.ckpt", "split": "test", "device": DEVICE}
    run_experiment_process(plan, [tmp_path / "train.log", tmp_path / "evaluate.log"])
    assert f"--device {DEVICE}" in (tmp_path / "evaluate.log").read_text().splitlines()[0]
    states = torch.load(expdir / "states-20.ckpt", map_location="cpu", weights_only=False)
    assert states["Step"] == 20
    assert torch.isfinite(states["Featurizer"]["weights"]).all()
