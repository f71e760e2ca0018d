"""``s3prl-distill demo``: the whole product offline, on an embedded default.

Stages, each cached in the work directory and skipped when already done (an interrupted run resumes):

1. ``data``: generate mini-SUPERB (espeak-ng);
2. ``teacher``: pretrain a small HuBERT on its LibriSpeech-style training set (MFCC k-means targets, masked
   prediction), saved for ``hubert_local``; plus the same model with random weights, as a control;
3. ``students``: distil a DistilHuBERT-shaped and a FitHuBERT-shaped student, scaled to the teacher, with our runner;
4. ``superb``: the five tasks for the teacher, the random teacher, both students and s3prl's ``fbank``;
5. ``report``: one table (metric per task, parameters, inference time relative to the teacher) as Markdown + PNG.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import yaml

from s3prl_distill.formats.s3prl_hubert import build_hubert, save_hubert_checkpoint
from s3prl_distill.model.config import format_conv_layers, parse_conv_layers
from s3prl_distill.pretrain.config import validate_config
from s3prl_distill.pretrain.follow_teacher import layer_scale
from s3prl_distill.audio_lists import read_length_csvs
from s3prl_distill.pretrain.hubert_teacher import HubertTeacherConfig, train_hubert_teacher
from s3prl_distill.checkpoint import file_sha256, latest_step_checkpoint, load_checkpoint
from s3prl_distill.errors import UserError
from s3prl_distill.profiling import InterleavedTiming
from s3prl_distill.pretrain.runner import run as run_pretrain

from .minisuperb import generate_minisuperb
from .superb.report import write_report
from .superb.runner import SweepSpec, run_sweeps

logger = logging.getLogger(__name__)

# SUPERB's ASR head (2 x BLSTM 1024) takes minutes per step on a CPU; the demo uses a small one for every upstream.
SMALL_ASR_HEAD = ["asr:downstream_expert.modelrc.project_dim=128", "asr:downstream_expert.modelrc.RNNs.dim=[128,128]"]
# SUPERB trains for 30k-200k steps; a demo run has hundreds, so no gradient accumulation and learning rates raised
# tenfold where SUPERB's are 1e-4 (PR's linear head already uses 1e-2). Same for every upstream.
SHORT_RUN = [f"{task}:runner.gradient_accumulate_steps=1" for task in ("pr", "sid", "er")]
SHORT_RUN_LEARNING_RATES = {"asr": 1.0e-3, "ks": 1.0e-3, "sid": 1.0e-3, "er": 1.0e-3}
# CPU-sized batches for the tiny and quick presets (full keeps SUPERB's).
SMALL_BATCHES = ["pr:downstream_expert.corpus.batch_size=8", "asr:downstream_expert.datarc.train_batch_size=8",
                 "ks:downstream_expert.datarc.batch_size=16", "er:downstream_expert.datarc.train_batch_size=8"]


@dataclass(frozen=True)
class DemoPreset:
    data_size: str
    teacher_steps: int
    teacher_batch: int
    student_steps: int
    student_batch: int
    superb_steps: int
    superb_task_steps: Dict[str, int]  # exceptions to superb_steps
    small_batches: bool  # SMALL_BATCHES instead of SUPERB's batch sizes
    er_folds: Optional[Tuple[str, ...]]  # None = all five (SUPERB's protocol)
    timing_seconds: float  # utterance length of the inference-time measurement


# quick: sized for 2 CPU cores: 15.5 and 29 min measured on two sessions' machines (README: stage times).
PRESETS: Dict[str, DemoPreset] = {
    "tiny": DemoPreset("tiny", teacher_steps=4, teacher_batch=4, student_steps=3, student_batch=4, superb_steps=2,
                       superb_task_steps={}, small_batches=True, er_folds=("fold1",), timing_seconds=1.0),
    "quick": DemoPreset("small", teacher_steps=600, teacher_batch=8, student_steps=250, student_batch=8,
                        # ASR does not learn within a few hundred CPU steps (WER 100% for every upstream at 100 steps,
                        # measured), so quick spends little on it; SID and ER have the longest utterances.
                        superb_steps=100, superb_task_steps={"asr": 40, "sid": 70, "er": 70}, small_batches=True,
                        er_folds=("fold1",), timing_seconds=4.0),
    "full": DemoPreset("medium", teacher_steps=4000, teacher_batch=8, student_steps=3000, student_batch=8,
                       superb_steps=2000, superb_task_steps={}, small_batches=False, er_folds=None, timing_seconds=10.0),
}


def _done(stage: Path) -> bool:
    return (stage / "done.json").is_file()


def _finish(stage: Path, record: dict) -> None:
    (stage / "done.json").write_text(json.dumps(record, indent=2))


def data_stage(workdir: Path, size: str, seed: int) -> Tuple[Path, Path, float]:
    """Stage ``data``: mini-SUPERB of ``size`` under ``workdir/data`` (skipped when done, and refused when the
    finished one was generated with another size or seed). Returns (LibriSpeech folder, length CSV folder, seconds
    it took)."""
    data, stage = workdir / "data", workdir / "stage_data"
    stage.mkdir(exist_ok=True)
    record = {"size": size, "seed": seed}
    if not _done(stage):
        start = time.perf_counter()
        generate_minisuperb(data, size=size, seed=seed)
        _finish(stage, {"seconds": time.perf_counter() - start, **record, "digest": tree_digest(data)})
    done = json.loads((stage / "done.json").read_text())
    _check_same(stage, done, record)
    return data / "LibriSpeech", data / "len_for_bucket", done["seconds"]


def tree_digest(root: Path) -> str:
    """SHA-256 over every file under ``root`` (relative path and bytes, in path order): two work directories hold
    the same generated data exactly when their digests agree (the bench's parts are checked with it)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\t{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def stage_digest(stage: Path, key: str, compute: Callable[[], str]) -> str:
    """``key`` of a finished stage's ``done.json``, computed and added there when a stage finished before it was
    recorded."""
    path = stage / "done.json"
    done = json.loads(path.read_text())
    if key not in done:
        done[key] = compute()
        path.write_text(json.dumps(done, indent=2))
    return done[key]


def teacher_stage(workdir: Path, libri: Path, buckets: Path, config: HubertTeacherConfig,
                  trained: Optional[Path] = None) -> Tuple[Path, Path, float]:
    """Stage ``teacher``: the small HuBERT trained on the training set, and the same architecture with random weights
    (the control), in ``workdir/stage_teacher`` (skipped when done; refused when done with another config). Returns
    (teacher, random teacher, seconds it took). ``trained``: a teacher this config already trained (an earlier
    run's, e.g. the one committed with the bench's results), copied instead of training one; its SHA-256 is recorded
    and a finished stage holding another teacher is refused."""
    stage = workdir / "stage_teacher"
    stage.mkdir(exist_ok=True)
    teacher, random_teacher = stage / "teacher.ckpt", stage / "random_teacher.ckpt"
    record: Dict[str, object] = {"config": config.model_dump()}
    if trained is not None:
        record["teacher_sha256"] = _checked_teacher(Path(trained), config)
    if not _done(stage):
        start = time.perf_counter()
        if trained is None:
            items = read_length_csvs(libri, buckets, ["train-clean-100"])
            train_hubert_teacher(items, teacher, config)
        else:
            shutil.copyfile(trained, teacher)
            record["copied_from"] = str(Path(trained).resolve())
        torch.manual_seed(config.seed + 1)
        model, task_cfg, dictionaries = build_hubert(dict(config.model), num_labels=config.clusters)
        save_hubert_checkpoint(model, dict(config.model), task_cfg, dictionaries, random_teacher)
        _finish(stage, {"seconds": time.perf_counter() - start, **record, "teacher_sha256": file_sha256(teacher)})
    done = json.loads((stage / "done.json").read_text())
    _check_same(stage, done, {key: value for key, value in record.items() if key != "copied_from"})
    return teacher, random_teacher, done["seconds"]


def _checked_teacher(path: Path, config: HubertTeacherConfig) -> str:
    """``path``'s SHA-256 after checking it is a ``hubert_local`` checkpoint of ``config``'s architecture (a teacher
    of another shape would silently change every row); errors name the file."""
    if not path.is_file():
        raise UserError(f"--teacher {path}: no such file")
    saved = load_checkpoint(path, what="--teacher")
    if not isinstance(saved, dict) or "model_cfg" not in saved or "model_weight" not in saved:
        raise UserError(f"--teacher {path}: not a hubert_local checkpoint (no model_cfg / model_weight)")
    differences = [f"{key}: {saved['model_cfg'].get(key)!r} there, {value!r} here"
                   for key, value in config.model.items() if saved["model_cfg"].get(key) != value]
    if differences:
        raise UserError(f"--teacher {path}: another architecture than this run's teacher ({'; '.join(differences)})")
    return file_sha256(path)


def _check_same(stage: Path, done: dict, record: dict) -> None:
    """A finished stage made with other settings would be silently reused: refuse it, naming what differs. Stages
    finished before their settings were recorded are taken as they are."""
    differences = [f"{key}: {done[key]!r} there, {value!r} now" for key, value in record.items()
                   if key in done and done[key] != value]
    if differences:
        raise UserError(f"{stage} was made with other settings ({'; '.join(differences)}): use another work "
                        "directory, or delete that stage to redo it")


def student_run_config(parts: Dict, teacher: Path, libri: Path, buckets: Path, steps: int, batch: int, seed: int,
                       device: str, lr: float = 5.0e-4) -> Dict:
    """A student's pretrain config: ``parts`` (its student / method sections, see :func:`student_configs`) with the
    demo's runner, optimizer, teacher and data sections."""
    return {
        "runner": {"total_steps": steps, "log_step": max(1, steps // 10), "save_step": steps, "keep_last": 1,
                   "seed": seed, "precision": "bf16" if device == "cuda" else "fp32"},
        "optimizer": {"lr": lr},
        "scheduler": {"warmup_proportion": 0.07},
        "teacher": {"name": "hubert_local", "ckpt": str(teacher)},
        "data": {"root": str(libri), "bucket_dir": str(buckets), "sets": ["train-clean-100"],
                 "train_batch_size": batch, "max_length": 48000, "num_workers": 2},
        **parts,
    }


def train_student(stage: Path, name: str, config: Dict, what: str) -> Path:
    """Train (or resume, or skip when finished) the student of ``config`` in ``stage/name``; returns its final
    checkpoint. ``config`` is validated first (``what`` names it in errors) and written to ``stage/name.yaml``."""
    steps = int(config["runner"]["total_steps"])
    expdir = stage / name
    final = expdir / f"states-{steps}.ckpt"
    if not final.is_file():
        validate_config(config, what)
        config_path = stage / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        previous = latest_step_checkpoint(expdir)
        run_pretrain(None if previous else str(config_path), name, str(stage), None,
                     str(previous) if previous else None)
    return final


def student_configs(teacher_model: Dict, thin_width: Optional[int] = None) -> Dict[str, Dict]:
    """DistilHuBERT- and FitHuBERT-shaped students (and their recipes) scaled to the teacher's size. ``thin_width``:
    the FitHuBERT student's width (and FFN width); by default FitHuBERT's 480/768 of the teacher's."""
    layers, width = int(teacher_model["encoder_layers"]), int(teacher_model["encoder_embed_dim"])
    heads, ffn = int(teacher_model["encoder_attention_heads"]), int(teacher_model["encoder_ffn_embed_dim"])
    conv = parse_conv_layers(teacher_model["conv_feature_layers"])
    channels = conv[-1][0]
    distil = {
        "student": {
            "feature_extractor": {"conv_layers": format_conv_layers(conv), "grad_mult": 0.1},
            "encoder": {"num_layers": 2, "embed_dim": width, "ffn_dim": ffn, "num_heads": heads,
                        "pos_conv_kernel": int(teacher_model["conv_pos"]),
                        "pos_conv_groups": int(teacher_model["conv_pos_groups"])},
            # DistilHuBERT's 4/8/12 of 12 layers, rescaled as follow_teacher.layers_of rescales them
            "prediction_head": {"type": "expand_last", "target_layers": layer_scale(12, layers)([4, 8, 12]),
                                "out_dim": width},
        },
        "student_init": {"feature_extractor": True, "feature_projection": True, "pos_conv": True, "layers": 2},
        "method": {"name": "distilhubert"},
    }
    thin = thin_width or max(8, (width * 5 // 8) // (2 * heads) * 2 * heads)  # 480/768, divisible by heads, groups
    fit_conv = (f"[({channels // 4},10,5)] + [({channels // 2},1,1)] + [({channels // 2},3,2)]*4 + "
                f"[({channels},1,1)] + [({channels},2,2)]*2")
    fit = {
        "student": {
            "feature_extractor": {"conv_layers": fit_conv, "grad_mult": 1.0},
            "feature_layer_norm": True,
            "feature_dropout": 0.05,
            "encoder": {"num_layers": layers, "embed_dim": thin, "ffn_dim": thin, "num_heads": heads,
                        "pos_conv_kernel": int(teacher_model["conv_pos"]), "pos_conv_groups": heads,
                        "time_reduction": {"index": 0, "factor": 2}},
            "prediction_head": {"type": "layerwise", "target_layers": list(range(1, layers + 1)), "out_dim": width},
        },
        "student_init": {},
        "method": {"name": "fithubert", "hint_layers": list(range(1, layers))},
    }
    return {"distilhubert": distil, "fithubert": fit}


def demo_upstreams(teacher: Path, random_teacher: Path,
                   students: Dict[str, Path]) -> List[Tuple[str, str, Optional[Path]]]:
    """The demo's rows, in its order, as (label, s3prl upstream, checkpoint); the first is the reference of the
    time column. ``students``: the final checkpoint of each family (``distilhubert``, ``fithubert``)."""
    return [
        ("teacher (HuBERT, pretrained)", "hubert_local", teacher),
        ("teacher, random weights", "hubert_local", random_teacher),
        ("DistilHuBERT-shaped student", "distilhubert_local", students["distilhubert"]),
        ("FitHuBERT-shaped student", "fithubert_local", students["fithubert"]),
        ("fbank (s3prl)", "fbank", None),
    ]


def run_demo(workdir: Path, preset: str = "quick", seed: int = 0, device: str = "cpu") -> Dict[str, Path]:
    settings = PRESETS[preset]
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}

    # 1. data, 2. teacher (+ the same architecture with random weights, the control)
    libri, buckets, data_seconds = data_stage(workdir, settings.data_size, seed)
    timings["data"] = data_seconds
    teacher_config = HubertTeacherConfig(steps=settings.teacher_steps, batch_size=settings.teacher_batch, seed=seed)
    teacher, random_teacher, timings["teacher"] = teacher_stage(workdir, libri, buckets, teacher_config)
    data = libri.parent

    # 3. students
    stage = workdir / "stage_students"
    stage.mkdir(exist_ok=True)
    checkpoints: Dict[str, Path] = {}
    start = time.perf_counter()
    for family, parts in student_configs(teacher_config.model).items():
        config = student_run_config(parts, teacher, libri, buckets, settings.student_steps, settings.student_batch,
                                    seed, device)
        checkpoints[family] = train_student(stage, family, config, f"demo {family} config")
    timings["students"] = time.perf_counter() - start

    # 4. SUPERB for every upstream
    upstreams = demo_upstreams(teacher, random_teacher, checkpoints)
    specs = [SweepSpec(upstream=upstream, data_root=str(data), name=f"upstream{index}", label=label,
                       tasks=["pr", "asr", "ks", "sid", "er"], folds=list(settings.er_folds or []) or None,
                       ckpt=str(ckpt) if ckpt else None, exproot=str(workdir / "stage_superb"), device=device,
                       steps=settings.superb_steps, task_steps=dict(settings.superb_task_steps),
                       learning_rates=SHORT_RUN_LEARNING_RATES,
                       settings=SMALL_ASR_HEAD + SHORT_RUN + (SMALL_BATCHES if settings.small_batches else []),
                       num_workers=1)
             for index, (label, upstream, ckpt) in enumerate(upstreams)]
    start = time.perf_counter()
    # On a CPU two experiments at a time use the cores better than one with two threads (much of a short run is
    # single-threaded start-up); one GPU runs them one by one.
    run_dirs = run_sweeps(specs, jobs=1 if device.startswith("cuda") else 2, desc="SUPERB (demo)")
    results = [json.loads((run_dir / "results.json").read_text()) for run_dir in run_dirs]
    timings["superb"] = time.perf_counter() - start

    # 5. report, with inference time relative to the teacher
    timing = inference_ratios(upstreams, settings.timing_seconds)
    (workdir / "timing.json").write_text(json.dumps(timing.to_json(), indent=2))
    spreads = timing.ratio_spreads()
    # The teacher's own cell is 1 by definition, so it carries no spread.
    cells = ["1.00" if label == timing.reference else spreads[label].format() for label, _, _ in upstreams]
    batch = f"{len(upstreams)} upstreams on 4 × {settings.timing_seconds:g} s of audio"
    logger.info("time / teacher: %s", ", ".join(f"{label} {cell}" for (label, _, _), cell in zip(upstreams, cells)))
    paths = write_report(results, workdir, title=f"s3prl-distill demo ({preset})",
                         extra_columns={"time / teacher": cells},
                         notes=[f"`time / teacher`: forward + hidden states, {batch}; {timing.method()}. "
                                f"Measured on {timing.conditions()}. Raw per-round times: `timing.json`."])
    (workdir / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2))
    return paths


def inference_ratios(upstreams, seconds: float) -> InterleavedTiming:
    """Each upstream's forward time relative to the first (the teacher), as s3prl's runner would load it: 4
    utterances of ``seconds``, rounds interleaved on one thread. At least 15 rounds, and rounds for about five
    times the utterance length in seconds (20 s at the quick preset's 4 s), so the tiny preset stays fast."""
    from s3prl_distill.profiling import interleaved_times

    models = load_upstreams(upstreams)
    generator = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(int(16000 * seconds), generator=generator) for _ in range(4)]
    return interleaved_times(models, wavs, reference=upstreams[0][0], threads=1, min_rounds=15,
                             budget_s=5.0 * seconds)


def load_upstreams(upstreams) -> Dict[str, torch.nn.Module]:
    """``(label, s3prl upstream, checkpoint)`` rows loaded through s3prl's hub, as its runner loads them."""
    from s3prl_distill import register

    register()
    import s3prl.hub as hub

    return {label: getattr(hub, name)(ckpt=str(ckpt) if ckpt else None, model_config=None, refresh=False)
            for label, name, ckpt in upstreams}
