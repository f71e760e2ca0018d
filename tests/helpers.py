"""Plain helpers shared by the test modules (fixtures live in ``conftest.py``): tiny model configs, generated audio
and checkpoints, and the subprocess launchers of our commands and s3prl's runner."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

import numpy as np
import soundfile
import torch

from s3prl_distill.audio_lists import SAMPLE_RATE
from s3prl_distill.formats.fairseq import teacher_copy_config
from s3prl_distill.formats.s3prl_hubert import TINY_HUBERT
from s3prl_distill.formats.s3prl_wavlm import TINY_WAVLM
from s3prl_distill.model import (PruningConfig, StudentConfig, StudentModel, armhubert_config, deepthin_config,
                                 fithubert_config, maskhubert_config, pruning_student_config, shallowwide_config,
                                 starhubert_config, with_codeword_head, with_fbank_front_end)
from s3prl_distill.pretrain.config import load_config
from s3prl_distill.pretrain.runner import Trainer

if TYPE_CHECKING:
    from s3prl_distill.pretrain.task import DistillationTask


# --- processes ---------------------------------------------------------------------------------------------------------

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# max |bf16 - fp32| / rms(fp32) per output state of a tiny upstream under ``precision: bf16``: measured at most 0.11
# on the CPU (tests/test_bf16.py: MaskHuBERT's head outputs; STaRHuBERT 0.10, FitHuBERT and ARMHuBERT 0.08, the
# HuBERT-shaped students 0.08). bf16 keeps 8 significant bits (relative rounding 2^-9), and the largest elements of a
# state are several times its rms, so a few roundings per layer reach ~10% of the rms at worst.
BF16_RELATIVE_TOLERANCE = 0.2


def relative_deviation(reference: torch.Tensor, state: torch.Tensor) -> float:
    """max |state - reference| over the reference's rms (``profiling.state_deviations``)."""
    from s3prl_distill.profiling import state_deviations

    return state_deviations([reference], [state])[0]["relative"]


def import_benchmark(name: str) -> Iterator[ModuleType]:
    """A fixture body: the script ``benchmarks/<name>.py`` imported as a module (benchmarks import their sibling
    scripts by name, so the folder is on ``sys.path`` while the fixture lives, and taken off after)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def python_env(autoload: bool = True, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("S3PRL_DISTILL_NO_AUTOLOAD", None)
    if not autoload:
        env["S3PRL_DISTILL_NO_AUTOLOAD"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_python(
    args: List[str], autoload: bool = True, cwd: Optional[Path] = None, timeout: int = 600,
    extra_env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """Run the interpreter under test in a fresh process (start-up hooks included)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=python_env(autoload, extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pretrain(args: List[str], cwd: Path, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    """``python -m s3prl_distill.pretrain ARGS`` in a fresh process."""
    return run_python(["-m", "s3prl_distill.pretrain", *args], cwd=cwd, timeout=timeout, **kwargs)


def random_waves(lengths: List[int], seed: int = 0) -> List[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(n, generator=generator) for n in lengths]


def write_audio_tree(root: Path, count: int = 16, seed: int = 0) -> Path:
    """LibriSpeech-like tree of 16 kHz mono FLAC files of 0.5-1.5 s (harmonic tones + noise)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        path = root / "train-tiny" / str(100 + i % 4) / f"{100 + i % 4}-{i:04d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(16000 * rng.uniform(0.5, 1.5))) / 16000
        f0 = rng.uniform(100, 300)
        wave = sum(0.1 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 4)) + 0.01 * rng.standard_normal(t.size)
        soundfile.write(path, wave.astype(np.float32), 16000)
    return root


def write_teacher_and_utterances(folder: Path, lengths: List[int], seed: int = 3) -> Tuple[Path, Path, Path]:
    """A random tiny hubert_local teacher and one generated utterance per length in ``folder/audio/train-tiny``:
    (teacher checkpoint, audio root, length-CSV folder) for a run's ``teacher`` and ``data`` sections."""
    from s3prl_distill.audio_lists import write_length_csvs
    from s3prl_distill.formats.s3prl_hubert import write_random_hubert

    teacher = write_random_hubert(folder / "teacher.ckpt", seed=0)
    audio = folder / "audio" / "train-tiny"
    audio.mkdir(parents=True)
    for index, wave in enumerate(random_waves(lengths, seed=seed)):
        soundfile.write(audio / f"utt{index}.flac", wave.numpy(), 16000)
    write_length_csvs(folder / "audio", folder / "len_for_bucket", progress=False)
    return teacher, folder / "audio", folder / "len_for_bucket"


def online_and_cached_tasks(config, cache: Path, **task_options) -> Tuple["DistillationTask", "DistillationTask"]:
    """Two tasks of ``config`` with the same student (its weights, eval mode: no dropout), one taking its targets
    from the teacher, the other from the teacher cache at ``cache``."""
    from s3prl_distill.pretrain.task import DistillationTask
    from s3prl_distill.pretrain.teacher_cache import TeacherCache

    sections = (config.teacher, config.student, config.student_init, config.method, torch.device("cpu"))
    torch.manual_seed(0)
    online = DistillationTask(*sections, **task_options)
    cached = DistillationTask(*sections, TeacherCache(cache), **task_options)
    cached.student.load_state_dict(online.student.state_dict())
    online.student.eval(), cached.student.eval()
    return online, cached


def write_audio(path: Path, length: int, sample_rate: int = SAMPLE_RATE, channels: int = 1, seed: int = 0) -> Path:
    """A short noise file (16-bit PCM, so the float values read back are exact multiples of 1/32768)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (length,) if channels == 1 else (length, channels)
    soundfile.write(str(path), 0.5 * rng.uniform(-1, 1, size=shape), sample_rate, subtype="PCM_16")
    return path


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- students and checkpoints ------------------------------------------------------------------------------------------

# A DistilHuBERT-shaped student small enough for CI: the HuBERT CNN layout (stride 320, receptive field 400) with
# thin channels, 2 layers, expand-last heads on teacher layers [1, 2, 3].
TINY_DISTILLER_CONFIG = {
    "extractor_mode": "default",
    "extractor_conv_feature_layers": "[(32,10,5)] + [(32,3,2)]*4 + [(32,2,2)]*2",
    "extractor_dropout": 0.0,
    "feature_grad_mult": 0.1,
    "conv_pos": 16,
    "conv_pos_groups": 4,
    "encoder_layers": 2,
    "encoder_embed_dim": 48,
    "encoder_ffn_embed_dim": 96,
    "encoder_attention_heads": 4,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "attention_type": "original",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
    "encoder_layerdrop": 0.0,
    "final_dim": 48,
    "out_layer_type": "expand-last",
    "out_layer_inter_dim": -1,
    "n_tasks": 3,
    "task_emb_type": "expand-last",
    "pred_layer_id": [1, 2, 3],
    "loss_type": "l1",
    "cosine_loss": 1.0,
    "feat_pen_loss": 0.0,
    "init_teacher_conv_layers": False,
    "init_teacher_encoder_layers": False,
}

def s3prl_distiller_model(config: Dict, seed: int = 0):
    """s3prl's own DistillerModel (the reference implementation), randomly initialised."""
    from s3prl.upstream.distiller.model import DistillerConfig, DistillerModel

    torch.manual_seed(seed)
    return DistillerModel(DistillerConfig(config))


def write_s3prl_distiller_checkpoint(path: Path, config: Optional[Dict] = None, seed: int = 0) -> Path:
    """A checkpoint written by s3prl's model code in the layout its ``distiller_local`` reads."""
    config = dict(TINY_DISTILLER_CONFIG if config is None else config)
    model = s3prl_distiller_model(config, seed)
    torch.save({"Config": {"distiller": config}, "Distiller": model.state_dict()}, path)
    return path


TINY_STUDENT = {
    "feature_extractor": {"conv_layers": "[(32,10,5)] + [(32,3,2)]*4 + [(32,2,2)]*2", "grad_mult": 0.1},
    "encoder": {"num_layers": 2, "embed_dim": 48, "ffn_dim": 96, "num_heads": 4, "pos_conv_kernel": 16,
                "pos_conv_groups": 4},
    "prediction_head": {"type": "expand_last", "target_layers": [1, 2, 3], "inner_dim": 48, "out_dim": 48},
}


def tiny_fithubert(layers: int = 3, out_dim: int = 48) -> StudentConfig:
    data = fithubert_config().to_dict()
    data["feature_extractor"]["conv_layers"] = "[(16,10,5)] + [(24,1,1)] + [(24,3,2)]*4 + [(32,1,1)] + [(32,2,2)]*2"
    data["encoder"].update(num_layers=layers, embed_dim=48, ffn_dim=48, num_heads=4, pos_conv_kernel=16,
                           pos_conv_groups=4)
    data["prediction_head"] = {"type": "layerwise", "target_layers": list(range(1, layers + 1)), "out_dim": out_dim}
    return StudentConfig.from_dict(data)


TINY_ASR_CNN = "[(32,10,5)] + [(32,3,2)]*4 + [(32,2,2)]*2"


def tiny_star(layers: int = 3, width: int = 32) -> StudentConfig:
    """STaRHuBERT's shape (starhubert_config: no heads) at toy size, narrower than TINY_HUBERT (48)."""
    data = starhubert_config().to_dict()
    data["feature_extractor"]["conv_layers"] = (f"[(16,10,5)] + [(16,1,1)] + [(16,3,2)]*4 + [({width},1,1)] + "
                                                f"[({width},2,2)]*2")
    data["encoder"].update(num_layers=layers, embed_dim=width, ffn_dim=2 * width, num_heads=4, pos_conv_kernel=16,
                           pos_conv_groups=4)
    return StudentConfig.from_dict(data, "tiny STaRHuBERT")


def tiny_armhubert(reuse: bool = False, out_dim: int = 48) -> StudentConfig:
    """A 3-layer ARMHuBERT (``reuse``: layer 2 reuses layer 1's attention map) or MaskHuBERT student of width 24,
    with its mask embedding and heads predicting teacher layers 1-3 (TINY_HUBERT's width 48)."""
    data = (armhubert_config() if reuse else maskhubert_config()).to_dict()
    data["feature_extractor"]["conv_layers"] = "[(16,10,5)] + [(16,1,1)] + [(16,3,2)]*4 + [(24,1,1)] + [(24,2,2)]*2"
    data["encoder"].update(num_layers=3, embed_dim=24, ffn_dim=40, num_heads=4, pos_conv_kernel=8, pos_conv_groups=4,
                           attention_reuse=[False, True, False] if reuse else None)
    data["prediction_head"].update(target_layers=[1, 2, 3], out_dim=out_dim)
    return StudentConfig.from_dict(data, "tiny ARMHuBERT" if reuse else "tiny MaskHuBERT")


def tiny_deepthin(codeword=("logits", 504), fbank: bool = False) -> StudentConfig:
    """A tiny Wang et al. deep-thin student (3 layers of 40), optionally with the fbank front end and a codeword head."""
    data = deepthin_config(teacher_dim=48).to_dict()
    data["feature_extractor"]["conv_layers"] = TINY_ASR_CNN
    data["encoder"].update(num_layers=3, embed_dim=40, ffn_dim=40, num_heads=4, pos_conv_kernel=16,
                           pos_conv_groups=4)
    data["prediction_head"]["target_layers"] = [1, 2, 3]
    config = StudentConfig.from_dict(data)
    config = with_fbank_front_end(config) if fbank else config
    return with_codeword_head(config, *codeword) if codeword else config


def tiny_shallowwide(codeword=("cosine", 16)) -> StudentConfig:
    """A tiny Wang et al. shallow-wide student (2 layers of 48), optionally with a codeword head."""
    data = shallowwide_config(teacher_dim=48).to_dict()
    data["feature_extractor"]["conv_layers"] = TINY_ASR_CNN
    data["encoder"].update(num_layers=2, embed_dim=48, ffn_dim=96, num_heads=4, pos_conv_kernel=16, pos_conv_groups=4)
    data["prediction_head"].update(target_layers=[1, 3], inner_dim=48)
    config = StudentConfig.from_dict(data)
    return with_codeword_head(config, *codeword) if codeword else config


ALL_GATES = PruningConfig(attention_layers=True, ffn_layers=True)


def gated_student(wavlm: bool, pruning: PruningConfig = ALL_GATES, seed: int = 0) -> StudentModel:
    """A tiny teacher copy with every kind of gate, log_alpha spread so that some units of each kind are off."""
    config = pruning_student_config(teacher_copy_config(TINY_WAVLM if wavlm else TINY_HUBERT),
                                    target_groups=[[0], [1, 2, 3]], pruning=pruning)
    torch.manual_seed(seed)
    model = StudentModel(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("log_alpha"):
                parameter.normal_(0.5, 3.0)
    return model


def torchaudio_reference(wavlm: bool):
    """A tiny torchaudio model (the code DPHuBERT's is derived from) and its DPHuBERT-format checkpoint."""
    from torchaudio.models import wav2vec2_model, wavlm_model

    common = dict(extractor_mode="group_norm", extractor_conv_layer_config=[(32, 10, 5)] + [(32, 3, 2)] * 4 +
                  [(32, 2, 2)] * 2, extractor_conv_bias=False, encoder_embed_dim=48, encoder_projection_dropout=0.0,
                  encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=3,
                  encoder_attention_dropout=0.0, encoder_ff_interm_features=96, encoder_ff_interm_dropout=0.0,
                  encoder_dropout=0.0, encoder_layer_norm_first=False, encoder_layer_drop=0.0, aux_num_out=None)
    torch.manual_seed(3)
    if wavlm:
        model = wavlm_model(**common, encoder_num_heads=4, encoder_num_buckets=32, encoder_max_distance=64)
    else:
        model = wav2vec2_model(**common, encoder_num_heads=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "gru_rel_pos_const" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    state = dict(model.state_dict())
    state["feature_extractor.dummy_weight"] = torch.ones(32)
    config = {**common, "encoder_use_attention": [True] * 3, "encoder_use_feed_forward": [True] * 3,
              "encoder_ff_interm_features": [96] * 3, "normalize_waveform": False,
              "extractor_prune_conv_channels": False, "encoder_prune_attention_heads": False,
              "encoder_prune_attention_layer": False, "encoder_prune_feed_forward_intermediate": False,
              "encoder_prune_feed_forward_layer": False}
    if wavlm:
        # DPHuBERT's WavLM attention has separate q/k/v projections where torchaudio has one in_proj.
        for index in range(3):
            prefix = f"encoder.transformer.layers.{index}.attention."
            weight, bias = state.pop(prefix + "attention.in_proj_weight"), state.pop(prefix + "attention.in_proj_bias")
            for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3), bias.chunk(3)):
                state[f"{prefix}{name}.weight"], state[f"{prefix}{name}.bias"] = w, b
            for part in ("weight", "bias"):
                state[f"{prefix}out_proj.{part}"] = state.pop(f"{prefix}attention.out_proj.{part}")
        config.update(encoder_total_num_heads=[4] * 3, encoder_remaining_heads=[[0, 1, 2, 3]] * 3,
                      encoder_num_buckets=32, encoder_max_distance=64)
    else:
        config.update(encoder_num_heads=[4] * 3, encoder_head_dim=12)
    return model.eval(), {"config": config, "state_dict": state}


# --- the pretrain Trainer and s3prl's downstream runner ----------------------------------------------------------------

def make_trainer(setup: dict, expdir: Path, overrides: str) -> Trainer:
    """A Trainer in this process (no CLI) on the ``setup`` fixture's config with ``overrides``."""
    expdir.mkdir(parents=True, exist_ok=True)
    return Trainer(load_config(setup["config"], overrides), expdir)


def s3prl_checkout(folder: Path) -> Path:
    """A folder shaped like a git checkout of s3prl (``<checkout>/s3prl/run_downstream.py``), built from the
    installed s3prl package; returns the directory users run ``python3 run_downstream.py`` in."""
    import s3prl

    package = Path(s3prl.__file__).parent
    target = folder / "s3prl-checkout" / "s3prl"
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def linked_checkout(folder: Path) -> Path:
    """A copy of s3prl shaped like its git checkout, with our recipes linked in by ``s3prl-distill link-pretrain``
    (in-process: the command's own code, without a second interpreter start)."""
    from s3prl_distill.cli import main

    workdir = s3prl_checkout(folder)
    main(["link-pretrain", str(workdir.parent)])
    for recipe in ("distilhubert", "fithubert", "asr_distill", "dphubert"):
        for name in ("pretrain_expert.py", "config_model.yaml", "config_runner.yaml"):  # the last two generated
            assert (workdir / "pretrain" / recipe / name).is_file(), (recipe, name)
    return workdir


def s3prl_run_pretrain(workdir: Path, *arguments: str) -> None:
    """s3prl's own ``run_pretrain.py`` in the checkout ``workdir`` (CPU), which must succeed."""
    result = run_python(["run_pretrain.py", *arguments, "--device", "cpu"], cwd=workdir,
                        extra_env={"PYTHONPATH": str(workdir.parent)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def launch(way: str, arguments: List[str], tmp_path: Path) -> Tuple[Path, subprocess.CompletedProcess]:
    """s3prl's downstream runner started ``way``: from a checkout, as ``-m s3prl.run_downstream``, or by our CLI."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if way == "checkout":
        workdir = s3prl_checkout(tmp_path)
        command = ["run_downstream.py", *arguments]
        # PYTHONPATH: what `pip install -e` of the checkout provides; bytecode is written so that the test can tell
        # which s3prl was imported.
        env = {"PYTHONPATH": str(workdir.parent), "PYTHONDONTWRITEBYTECODE": ""}
    elif way == "module":
        workdir, command, env = tmp_path, ["-m", "s3prl.run_downstream", *arguments], {}
    else:
        workdir, command, env = tmp_path, [str(Path(sys.executable).parent / "s3prl-distill"), "downstream", *arguments], {}
    return workdir, run_python(command, cwd=workdir, extra_env=env, timeout=900)


def featurizer_weights_after_training(upstream: str, checkpoint: Path, emotion_setup: Tuple[Path, Path],
                                      tmp_path: Path, model_config: Optional[Path] = None) -> torch.Tensor:
    """Train 2 steps of the toy ER task with s3prl's runner on ``upstream`` (``-g model_config`` when given); the
    weighted-sum weights it learnt."""
    corpus, emotion_config = emotion_setup
    expdir = tmp_path / "exp"
    train = ["-m", "train", "-u", upstream, "-k", str(checkpoint), "-d", "emotion", "-c", str(emotion_config),
             "-p", str(expdir), "--device", "cpu"] + (["-g", str(model_config)] if model_config else [])
    _, result = launch("module", train, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (expdir / "states-2.ckpt").is_file()
    return torch.load(expdir / "states-2.ckpt", weights_only=False)["Featurizer"]["weights"]
