"""``s3prl-distill bench``: every distillation method of the package from one teacher, on generated mini-SUPERB.

The demo's data and teacher stages (:mod:`.demo`), then every student distilled from the **same** small HuBERT teacher
at a comparable size (backbone parameters matched to the DistilHuBERT-shaped student's, see :func:`matched_width`),
the five SUPERB tasks through s3prl's unmodified runner for every row and downstream seed, the low-resource PR
measurement, and one table (Markdown + JSON + PNG). Stages, each cached in the work directory (an interrupted run
resumes where it stopped; every student and every SUPERB experiment is its own cached unit):

1. ``data`` and ``teacher``: the demo's stages (or those of a finished demo work directory, ``--from-demo``);
2. ``students``: each row's pretrain config from the shipped recipe configs, validated and fitted to the teacher
   before anything trains; SKILL's layer groups from ``layer-similarity`` on the teacher; DPHuBERT and SKILL:
   joint distillation + pruning, ``prune``, then the final distillation;
3. ``superb``: every row x downstream seed, plus PR with 10 % of its training utterances for deep-thin KL 0 / 0.4;
4. ``profile``: MACs per second of audio and CPU time relative to the teacher;
5. ``report``: ``results.md``, ``results.png``, ``bench.json`` (per-seed values, means, sd, SUPERB score, the
   protocol's teacher-vs-control margins, the low-resource comparison, sizes, per-stage times, command, commit).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple

import torch
import yaml
from pydantic import Field

from s3prl_distill.checkpoint import file_sha256
from s3prl_distill.errors import UserError, validated
from s3prl_distill.model import StudentModel
from s3prl_distill.model.config import StrictModel
from s3prl_distill.pretrain.config import PretrainConfig, validate_config
from s3prl_distill.pretrain.config_files import merge, read_configs
from s3prl_distill.pretrain.follow_teacher import fit_to_teacher
from s3prl_distill.pretrain.hubert_teacher import HubertTeacherConfig
from s3prl_distill.progress import progress as show_progress

from .demo import (SHORT_RUN, SHORT_RUN_LEARNING_RATES, SMALL_ASR_HEAD, SMALL_BATCHES, data_stage, inference_ratios,
                   load_upstreams, stage_digest, student_configs, student_run_config, teacher_stage, train_student,
                   tree_digest)
from .bench_report import ROW_KEYS, STUDENT_KEYS, TASK_KEYS, render_bench
from .superb.runner import SweepSpec, run_sweeps

logger = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parents[1] / "pretrain"


class BenchSettings(StrictModel):
    """One bench run's sizes (a preset, optionally overridden by a YAML file of these keys; unknown keys are
    errors). Recorded in the work directory: a resumed run with other settings is refused."""

    data_size: str  # mini-SUPERB size (tiny | small | medium)
    teacher_steps: int = Field(ge=1)
    teacher_batch: int = Field(ge=1)
    student_steps: int = Field(ge=1)  # every student; DPHuBERT / SKILL: the joint distillation + pruning stage
    final_distill_steps: int = Field(ge=1)  # DPHuBERT / SKILL's final distillation of the pruned student
    student_batch: int = Field(ge=1)
    student_lr: float = Field(gt=0)  # every student (comparable runs); the final distillation uses half (DPHuBERT's)
    kl_weight: float = Field(0.4, ge=0)  # Wang et al.'s discriminative loss weight for the "KL" rows
    tasks: List[Literal["pr", "asr", "ks", "sid", "er"]] = Field(default_factory=lambda: list(TASK_KEYS),
                                                                   min_length=1)  # the table's task columns
    superb_steps: int = Field(ge=1)
    superb_task_steps: Dict[str, int] = Field(default_factory=dict)  # exceptions to superb_steps
    superb_learning_rates: Dict[str, float] = Field(default_factory=lambda: dict(SHORT_RUN_LEARNING_RATES))
    superb_settings: List[str] = Field(default_factory=lambda: SMALL_ASR_HEAD + SHORT_RUN)  # TASK:key=value
    er_folds: Optional[List[str]] = None  # None: all five (SUPERB's protocol)
    protocol_seeds: List[int] = Field(min_length=1)  # teacher, random-weight teacher, fbank, low-resource PR
    seeds: List[int] = Field(min_length=1)  # every other row
    low_resource_fraction: float = Field(0.1, gt=0, le=1)  # of PR's training utterances
    skill_groups: int = Field(3, ge=1)  # SKILL's number of layer groups (layer-similarity)
    calibration_utterances: int = Field(16, ge=2)  # layer-similarity's calibration set
    timing_seconds: float = Field(gt=0)  # utterance length of the MACs count and the time measurement
    size_tolerance: float = Field(0.15, gt=0)  # a student's backbone vs the reference's, for the table's note
    asr_max_wer: float = Field(0.8, gt=0, le=1)  # "ASR must learn": the teacher's mean WER below this
    jobs: int = Field(2, ge=1)  # SUPERB experiments at once (CPU)


PRESETS: Dict[str, BenchSettings] = {
    # The CI smoke run: the demo's tiny data and teacher (a tiny demo work directory can be reused), one seed.
    "tiny": BenchSettings(data_size="tiny", teacher_steps=4, teacher_batch=4, student_steps=3, final_distill_steps=2,
                          student_batch=4, student_lr=5.0e-4, superb_steps=1,
                          superb_settings=SMALL_ASR_HEAD + SHORT_RUN + SMALL_BATCHES, er_folds=["fold1"],
                          protocol_seeds=[1], seeds=[1], skill_groups=2, calibration_utterances=4,
                          timing_seconds=1.0),
    # The multi-hour run, made in parts (README, "The bench"). The quick demo's corpora, a teacher trained 3x longer
    # than the demo's, students 4x. SUPERB: 400 steps (ASR 1000: measured on this teacher, dev WER 89 / 79 / 74 % at
    # 500 / 750 / 1000 steps against the control's 97 / 95 / 95 %). ER evaluates every 50 steps: s3prl's emotion
    # expert seeds torch with 0 for its train/dev split, so the downstream seed reaches ER's training only through
    # the reseeding at each evaluation (two seeds evaluated only at the end trained identically, measured).
    "full": BenchSettings(data_size="small", teacher_steps=2000, teacher_batch=8, student_steps=1000,
                          final_distill_steps=500, student_batch=8, student_lr=5.0e-4, superb_steps=400,
                          superb_task_steps={"asr": 1000},
                          superb_settings=SMALL_ASR_HEAD + SHORT_RUN + SMALL_BATCHES + ["er:runner.eval_step=50"],
                          er_folds=["fold1"], protocol_seeds=[1, 2, 3], seeds=[1], skill_groups=3,
                          calibration_utterances=32, timing_seconds=4.0),
}


def load_settings(preset: str, config: Optional[Path] = None) -> BenchSettings:
    """``preset``'s settings, with the keys of the YAML file ``config`` replacing them (validated)."""
    if preset not in PRESETS:
        raise UserError(f"--preset {preset!r}: choose from {', '.join(PRESETS)}")
    values = PRESETS[preset].model_dump()
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise UserError(f"--config {path}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise UserError(f"--config {path}: expected a mapping of bench settings")
        values.update(loaded)
    return validated(BenchSettings, values, f"bench settings ({preset}{' + ' + str(config) if config else ''})")


@dataclass(frozen=True)
class Row:
    key: str  # its directories' name
    label: str  # the table's
    upstream: str  # s3prl upstream entry
    ckpt: Optional[Path]
    seeds: Tuple[int, ...]
    kind: str = "student"  # teacher | control | floor | student


# ---------------------------------------------------------------------------------------------------------------------
# Students: configs from the shipped recipes, at a comparable size


def recipe_config(recipe: str, base: Dict, overlay: Dict, extra_files: Tuple[Path, ...] = ()) -> Dict:
    """The shipped recipe ``pretrain/<recipe>`` (with its ``extends`` base, then ``extra_files``), ``base`` (the
    bench's runner / optimizer / teacher / data sections) and ``overlay`` (the row's own changes) deep-merged."""
    return merge(merge(read_configs([RECIPES / recipe, *extra_files]), base), overlay)


def fitted(config: Dict, what: str) -> PretrainConfig:
    """``config`` validated and fitted to its teacher, as the pretrain runner will run it (errors name ``what``)."""
    return fit_to_teacher(validate_config(config, what))


def backbone_parameters(config: Dict, what: str) -> int:
    """The student's parameters without its training heads (what s3prl's upstream keeps for most families)."""
    return StudentModel(fitted(config, what).student).num_parameters()


def matched_width(make: Callable[[int], Dict], target: int, step: int, limit: int, what: str) -> Tuple[int, int]:
    """The width (a multiple of ``step`` up to ``limit``) whose student's backbone is closest to ``target``
    parameters, by bisection (the count grows with the width); returns (width, parameters)."""
    low, high = 1, max(1, limit // step)
    counts: Dict[int, int] = {}

    def count(multiple: int) -> int:
        if multiple not in counts:
            counts[multiple] = backbone_parameters(make(multiple * step), f"{what} at width {multiple * step}")
        return counts[multiple]

    while low < high:
        middle = (low + high) // 2
        if count(middle) < target:
            low = middle + 1
        else:
            high = middle
    candidates = [m for m in (low - 1, low) if m >= 1]
    best = min(candidates, key=lambda m: abs(count(m) - target))
    return best * step, count(best)


class StudentPlan:
    """Every student row's pretrain config, validated and fitted to the teacher before anything trains."""

    def __init__(self, settings: BenchSettings, teacher: Path, teacher_model: Dict, libri: Path, buckets: Path,
                 seed: int, device: str, skill_groups: Path) -> None:
        self.settings = settings
        steps = settings.student_steps

        def base(parts: Optional[Dict] = None) -> Dict:
            return student_run_config(parts or {}, teacher, libri, buckets, steps, settings.student_batch, seed,
                                      device, lr=settings.student_lr)

        heads = int(teacher_model["encoder_attention_heads"])
        width = int(teacher_model["encoder_embed_dim"])
        demo_students = student_configs(teacher_model)
        distil = base(demo_students["distilhubert"])
        self.reference = backbone_parameters(distil, "bench DistilHuBERT config")

        # FitHuBERT: the demo's shape, its width (= FFN width) matched to the reference.
        def fit_at(thin: int) -> Dict:
            return base(student_configs(teacher_model, thin_width=thin)["fithubert"])

        fit_width, _ = matched_width(fit_at, self.reference, 2 * heads, 4 * width, "bench FitHuBERT config")

        # Wang et al.'s deep-thin student: one layer per teacher layer (the recipe follows the depth), width = FFN
        # width matched to the reference; heads and positional convolution as the teacher's.
        pos_groups = int(teacher_model["conv_pos_groups"])

        def thin_encoder(thin: int) -> Dict:
            return {"embed_dim": thin, "ffn_dim": thin, "num_heads": heads,
                    "pos_conv_kernel": int(teacher_model["conv_pos"]), "pos_conv_groups": pos_groups}

        def deep_thin(thin: int, kl: float) -> Dict:
            return recipe_config("asr_distill/config.yaml", base(),
                                 {"student": {"encoder": thin_encoder(thin)},
                                  "method": {"discriminative_weight": kl}})

        thin_width, _ = matched_width(lambda w: deep_thin(w, settings.kl_weight), self.reference,
                                      math.lcm(heads, pos_groups), 4 * width, "bench deep-thin config")
        fbank = recipe_config("asr_distill/config_fbank.yaml", base(),
                              {"student": {"encoder": thin_encoder(thin_width)},
                               "method": {"discriminative_weight": settings.kl_weight,
                                          "front_end_steps": max(1, steps // 10)}})  # the recipe's 10 %
        shallow = recipe_config("asr_distill/config_shallowwide.yaml", base(),
                                {"method": {"discriminative_weight": settings.kl_weight}})

        # DPHuBERT / SKILL: the teacher pruned to the reference's size. Their sparsity counts every parameter of the
        # gated copy of the teacher (DPHuBERT's expected size), so the target is taken from that count.
        def pruned(recipe: str, extra: Tuple[Path, ...], sparsity: float) -> Dict:
            return recipe_config(recipe, base(), {
                "teacher": {"name": "hubert_local", "ckpt": str(teacher)},
                "student": {"encoder": {"relative_position": None}},
                "method": {"target_sparsity": sparsity, "sparsity_warmup_steps": max(1, steps // 10)}}, extra)

        unpruned = backbone_parameters(pruned("dphubert/config.yaml", (), 0.5), "bench DPHuBERT config")
        sparsity = min(0.99, max(0.0, 1.0 - self.reference / unpruned))
        dphubert = pruned("dphubert/config.yaml", (), sparsity)
        skill = pruned("dphubert/config_skill.yaml", (skill_groups,), sparsity)
        # The combination none of the papers tried: SKILL's grouped targets (mean of each group of similar teacher
        # layers) on Wang et al.'s deep-thin student, trained from scratch without pruning.
        novel = recipe_config("dphubert/config_skill.yaml", base(), {
            "teacher": {"name": "hubert_local", "ckpt": str(teacher)},
            "student": {"encoder": {**thin_encoder(thin_width), "relative_position": None}, "pruning": None},
            "student_init": {"whole": False},
            "follow_teacher": {"cnn": True, "width": False, "depth": True, "layers_of": None}}, (skill_groups,))

        # key -> (label, upstream, config, pruned)
        self.students: Dict[str, Tuple[str, str, Dict, bool]] = {
            "distilhubert": ("DistilHuBERT", "distilhubert_local", distil, False),
            "fithubert": ("FitHuBERT", "fithubert_local", fit_at(fit_width), False),
            "deepthin_kl0": ("deep-thin, KL 0 (Wang et al.)", "deepthin_local", deep_thin(thin_width, 0.0), False),
            "deepthin_kl": (f"deep-thin, KL {settings.kl_weight:g} (Wang et al.)", "deepthin_local",
                            deep_thin(thin_width, settings.kl_weight), False),
            "deepthin_fbank": ("deep-thin, fbank front end, two-stage (Wang et al.)", "deepthin_fbank_local", fbank,
                               False),
            "shallowwide": (f"shallow-wide, KL {settings.kl_weight:g} (Wang et al.)", "shallowwide_local", shallow,
                            False),
            "dphubert": ("DPHuBERT (pruned teacher)", "dphubert_local", dphubert, True),
            "skill": ("SKILL (pruned teacher)", "skill_local", skill, True),
            "novel_skill_deepthin": ("new: SKILL groups on a deep-thin student", "skill_local", novel, False),
        }
        if tuple(self.students) != STUDENT_KEYS:  # --rows and the table's order name students by these keys
            raise RuntimeError(f"StudentPlan's students {tuple(self.students)} differ from STUDENT_KEYS")
        self.sizes = {key: backbone_parameters(config, f"bench {key} config")
                      for key, (_, _, config, _) in self.students.items()}
        self.shapes = {"reference_parameters": self.reference, "fithubert_width": fit_width,
                       "deepthin_width": thin_width, "target_sparsity": sparsity,
                       # a copy: train_students replaces the pruned rows' entries of self.sizes by the pruned sizes,
                       # and these planned sizes must stay what every part of a run agrees on (bench-merge checks)
                       "unpruned_parameters": unpruned, "backbone_parameters_before_training": dict(self.sizes)}


def skill_groups_stage(stage: Path, teacher: Path, libri: Path, settings: BenchSettings, device: str) -> Path:
    """SKILL's groups of similar teacher layers (``layer-similarity``: linear CKA + contiguous clustering) on a
    calibration set from the training split; cached in ``stage/similarity``."""
    from s3prl_distill.pretrain.config import TeacherConfig
    from s3prl_distill.pretrain.dphubert.layer_similarity import analyse_layers, find_audio

    output = stage / "similarity"
    snippet = output / "skill_groups.yaml"
    if not snippet.is_file():
        files = find_audio(libri / "train-clean-100")
        analyse_layers(TeacherConfig(name="hubert_local", ckpt=str(teacher)), files, output,
                       utterances=settings.calibration_utterances, groups=settings.skill_groups, contiguous=True,
                       max_seconds=3.0, device=device, data=str(libri / "train-clean-100"))
    return snippet


def train_students(stage: Path, plan: StudentPlan, settings: BenchSettings, timings: Dict[str, float],
                   keys: Tuple[str, ...] = STUDENT_KEYS) -> Dict[str, Path]:
    """The students ``keys`` (each one cached and resumable on its own); DPHuBERT / SKILL: distil + prune, prune,
    final distillation (their ``plan.sizes`` become the pruned students'). Returns each row's final checkpoint."""
    from s3prl_distill.pretrain.dphubert.prune import prune_checkpoint

    checkpoints: Dict[str, Path] = {}
    chosen = [(key, entry) for key, entry in plan.students.items() if key in keys]
    with show_progress(total=len(chosen), desc="bench students", unit="students") as bar:
        for key, (_, _, config, is_pruned) in chosen:
            start = time.perf_counter()
            timing = stage / f"{key}.seconds.json"  # the time it took when it trained (a resumed run skips it)
            final = train_student(stage, key, config, f"bench {key} config")
            if is_pruned:
                pruned_dir = stage / f"{key}_pruned"
                if not (pruned_dir / "pruning.yaml").is_file():
                    prune_checkpoint(final, pruned_dir, final_steps=settings.final_distill_steps)
                # what the table compares: the pruned student, not the gated copy of the teacher it came from
                plan.sizes[key] = int(yaml.safe_load((pruned_dir / "pruning.yaml").read_text())["params_pruned"])
                final_config = yaml.safe_load((pruned_dir / "final_distill.yaml").read_text())
                steps = settings.final_distill_steps
                final_config["runner"].update(save_step=steps, log_step=max(1, steps // 10), keep_last=1)
                final_config["optimizer"]["lr"] = settings.student_lr / 2  # DPHuBERT's stage 2: 1e-4 after 2e-4
                final = train_student(stage, f"{key}_final", final_config, f"bench {key} final distillation config")
            checkpoints[key] = final
            if not timing.is_file():
                timing.write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
            timings[f"student {key}"] = json.loads(timing.read_text())["seconds"]
            bar.update()
    return checkpoints


# ---------------------------------------------------------------------------------------------------------------------
# SUPERB


def low_resource_data(data: Path, target: Path, fraction: float) -> Path:
    """A data root whose PR training split holds every ``round(1 / fraction)``-th utterance of ``data``'s (sorted,
    so the same ones each time; at least one), the rest (dev, test, lexicon) linked to ``data``'s. Cached."""
    done = target / "done.json"
    if done.is_file():
        return target
    libri = target / "LibriSpeech"
    train = libri / "train-clean-100"
    source = data / "LibriSpeech" / "train-clean-100"
    files = sorted(source.rglob("*.flac"))
    if not files:
        raise UserError(f"{source}: no .flac files to take the low-resource PR split from")
    every = max(1, round(1 / fraction))
    kept = files[::every]
    transcripts: Dict[Path, List[str]] = {}
    for file in kept:
        folder = train / file.parent.relative_to(source)
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / file.name
        if not link.exists():
            link.symlink_to(file)
        transcript = next(file.parent.glob("*.trans.txt"))
        lines = [line for line in transcript.read_text().splitlines() if line.split(" ", 1)[0] == file.stem]
        transcripts.setdefault(folder / transcript.name, []).extend(lines)
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    for name in ("dev-clean", "test-clean"):
        if not (libri / name).exists():
            (libri / name).symlink_to(data / "LibriSpeech" / name)
    if not (target / "pr").exists():
        (target / "pr").symlink_to(data / "pr")
    done.write_text(json.dumps({"utterances": len(kept), "of": len(files)}))
    return target


def sweep_specs(rows: List[Row], data: Path, exproot: Path, settings: BenchSettings, device: str,
                tasks: Tuple[str, ...] = TASK_KEYS, prefix: str = "") -> List[Tuple[Row, int, SweepSpec]]:
    """One sweep per row and downstream seed, each in ``exproot/<prefix><row>_seed<seed>``."""
    specs = []
    for row in rows:
        for seed in row.seeds:
            specs.append((row, seed, SweepSpec(
                upstream=row.upstream, data_root=str(data), name=f"{prefix}{row.key}_seed{seed}", label=row.label,
                tasks=list(tasks), folds=list(settings.er_folds) if settings.er_folds and "er" in tasks else None,
                ckpt=str(row.ckpt) if row.ckpt else None, exproot=str(exproot), device=device,
                steps=settings.superb_steps, task_steps=dict(settings.superb_task_steps),
                learning_rates=dict(settings.superb_learning_rates), settings=list(settings.superb_settings),
                num_workers=1, seed=seed)))
    return specs


def profile_rows(rows: List[Row], seconds: float, path: Path) -> Dict[str, Any]:
    """MACs per second of audio (one utterance of ``seconds``, the features s3prl's runner reads) and CPU time
    relative to the first row (the demo's interleaved measurement); cached in ``path``."""
    from s3prl_distill.profiler import count_macs

    if path.is_file():
        return json.loads(path.read_text())
    start = time.perf_counter()
    upstreams = [(row.label, row.upstream, row.ckpt) for row in rows]
    models = load_upstreams(upstreams)
    wave = 0.1 * torch.randn(int(16000 * seconds), generator=torch.Generator().manual_seed(0))
    macs = {}
    for label, model in show_progress(models.items(), total=len(models), desc="bench MACs", unit="upstreams"):
        model.eval()
        macs[label] = count_macs(model, [wave])[0] / seconds
    timing = inference_ratios(upstreams, seconds)
    spreads = timing.ratio_spreads()
    record = {"macs_per_second": macs,
              "time_ratio": {label: (1.0 if label == timing.reference else spreads[label].median)
                             for label, _, _ in upstreams},
              "time_cell": {label: ("1.00" if label == timing.reference else spreads[label].format())
                            for label, _, _ in upstreams},
              "timing": timing.to_json(), "method": timing.method(), "conditions": timing.conditions(),
              "seconds": round(time.perf_counter() - start, 1)}
    path.write_text(json.dumps(record, indent=2))
    return record


def _commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


# The settings that decide what the trained stages (data, teacher, students) hold: a resumed run must keep them.
# Every other setting may change between invocations: SUPERB's own settings get their own experiment directory
# (superb_root), seeds and tasks add experiments, the low-resource split and the profile are named by their values,
# the rest only changes the report.
TRAINED_STAGE_KEYS = ("data_size", "teacher_steps", "teacher_batch", "student_steps", "final_distill_steps",
                      "student_batch", "student_lr", "kl_weight", "skill_groups", "calibration_utterances")
SUPERB_KEYS = ("superb_steps", "superb_task_steps", "superb_learning_rates", "superb_settings", "er_folds")


def _record_settings(workdir: Path, settings: BenchSettings, seed: int) -> None:
    """Write the run's settings, or refuse a work directory whose trained stages were made with other settings
    (they would be reported under these)."""
    path = workdir / "bench_settings.json"
    current = {"seed": seed, **settings.model_dump()}
    if path.is_file():
        saved = json.loads(path.read_text())
        differences = [f"{key}: {saved.get(key)!r} there, {current[key]!r} now" for key in ("seed", *TRAINED_STAGE_KEYS)
                       if saved.get(key) != current[key]]
        if differences:
            raise UserError(f"{workdir} holds a bench run whose data, teacher or students were made with other "
                            f"settings ({'; '.join(differences)}); use another --workdir")
    path.write_text(json.dumps(current, indent=2))


def superb_root(workdir: Path, settings: BenchSettings) -> Path:
    """The SUPERB experiments' directory for these SUPERB settings: ``stage_superb/<digest>`` (its
    ``settings.json`` says which), so that a run with other task steps or learning rates reuses the students and
    leaves the earlier experiments where they are."""
    chosen = {key: getattr(settings, key) for key in SUPERB_KEYS}
    text = json.dumps(chosen, sort_keys=True)
    root = workdir / "stage_superb" / hashlib.sha256(text.encode()).hexdigest()[:10]
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps(chosen, indent=2, sort_keys=True))
    return root


def selected_rows(rows: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """``--rows``: the chosen row keys in the table's order (all by default); an unknown key is an error."""
    if not rows:
        return ROW_KEYS
    unknown = [key for key in rows if key not in ROW_KEYS]
    if unknown:
        raise UserError(f"--rows {' '.join(unknown)}: no such row; choose from {', '.join(ROW_KEYS)}")
    return tuple(key for key in ROW_KEYS if key in rows)


def run_bench(workdir: Path, preset: str = "tiny", config: Optional[Path] = None, seed: int = 0,
              device: str = "cpu", from_demo: Optional[Path] = None,
              command: Optional[List[str]] = None, rows: Optional[Sequence[str]] = None,
              teacher_ckpt: Optional[Path] = None) -> Dict[str, Path]:
    """Run (or resume) the bench in ``workdir``; returns the paths of ``results.md``, ``results.png`` and
    ``bench.json``. ``from_demo``: a finished demo work directory whose data and teacher stages are used (they must
    have been made with this preset's data size and teacher settings). ``rows``: only these rows (keys of
    :data:`~.bench_report.ROW_KEYS`) are trained, evaluated and reported, e.g. :data:`~.bench_report.PROTOCOL_ROWS`
    to check that the protocol discriminates before any student trains; a later invocation with more rows reuses
    what they made. ``teacher_ckpt``: an earlier run's teacher checkpoint, used instead of training one, so that a
    run can be made in parts on separate machines and merged (``bench-merge`` checks that the parts share data,
    teacher and settings)."""
    chosen = selected_rows(rows)
    settings = load_settings(preset, config)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _record_settings(workdir, settings, seed)
    timings: Dict[str, float] = {}

    # 1. data and teacher: the demo's stages, here or in the demo's directory
    source = workdir
    if from_demo is not None:
        source = Path(from_demo).resolve()
        for stage in ("stage_data", "stage_teacher"):
            if not (source / stage / "done.json").is_file():
                raise UserError(f"--from-demo {source}: its {stage} is not finished (run s3prl-distill demo there "
                                "first, with the same preset size)")
    libri, buckets, timings["data"] = data_stage(source, settings.data_size, seed)
    teacher_config = HubertTeacherConfig(steps=settings.teacher_steps, batch_size=settings.teacher_batch, seed=seed)
    teacher, random_teacher, timings["teacher"] = teacher_stage(source, libri, buckets, teacher_config, teacher_ckpt)
    data = libri.parent
    digests = {"data_digest": stage_digest(source / "stage_data", "digest", lambda: tree_digest(data)),
               "teacher_sha256": stage_digest(source / "stage_teacher", "teacher_sha256",
                                              lambda: file_sha256(teacher))}

    # 2. students: every config built, validated and fitted before anything trains
    stage = workdir / "stage_students"
    stage.mkdir(exist_ok=True)
    start = time.perf_counter()
    groups = skill_groups_stage(stage, teacher, libri, settings, device)
    plan = StudentPlan(settings, teacher, teacher_config.model, libri, buckets, seed, device, groups)
    (stage / "shapes.json").write_text(json.dumps(plan.shapes, indent=2))
    timings["student configs and SKILL groups"] = round(time.perf_counter() - start, 1)
    checkpoints = train_students(stage, plan, settings, timings, keys=chosen)

    protocol = tuple(settings.protocol_seeds)
    table = [Row("teacher", "teacher (HuBERT, pretrained)", "hubert_local", teacher, protocol, "teacher"),
             Row("random_teacher", "teacher, random weights", "hubert_local", random_teacher, protocol, "control")]
    table += [Row(key, label, upstream, checkpoints[key], tuple(settings.seeds))
              for key, (label, upstream, _, _) in plan.students.items() if key in chosen]
    table.append(Row("fbank", "fbank (s3prl)", "fbank", None, protocol, "floor"))
    rows = [row for row in table if row.key in chosen]

    # 3. SUPERB: every row x seed, and PR on 10 % of its training utterances for deep-thin KL 0 / KL > 0
    start = time.perf_counter()
    exproot = superb_root(workdir, settings)
    specs = sweep_specs(rows, data, exproot, settings, device, tasks=tuple(settings.tasks))
    percent = round(100 * settings.low_resource_fraction)
    low_data = low_resource_data(data, workdir / f"data_pr{percent}", settings.low_resource_fraction)
    low_rows = [Row(row.key, row.label, row.upstream, row.ckpt, protocol) for row in rows
                if row.key in ("deepthin_kl0", "deepthin_kl")]
    low_specs = sweep_specs(low_rows, low_data, exproot, settings, device, tasks=("pr",), prefix=f"pr{percent}_")
    run_dirs = run_sweeps([spec for _, _, spec in specs + low_specs],
                          jobs=1 if device.startswith("cuda") else settings.jobs, desc="bench SUPERB")
    timings["superb (this invocation)"] = round(time.perf_counter() - start, 1)
    results = [json.loads((run_dir / "results.json").read_text()) for run_dir in run_dirs]
    # every experiment's own wall time (train + evaluate, from its done.json), whichever invocation ran it
    timings["superb (sum over experiments)"] = round(sum(entry["train_s"] + entry["evaluate_s"] for result in results
                                                         for entry in result["tasks"].values()), 1)

    # 4. profile: CPU times relative to the teacher, which is timed even when a --rows subset leaves it out (each
    # subset has its own file: its rows are timed together)
    timed = rows if rows[0].key == "teacher" else [table[0], *rows]
    subset = "" if chosen == ROW_KEYS else "_" + hashlib.sha256(" ".join(chosen).encode()).hexdigest()[:8]
    profile = profile_rows(timed, settings.timing_seconds,
                           workdir / f"stage_profile_{settings.timing_seconds:g}s{subset}.json")
    timings["profile"] = profile["seconds"]

    # 5. report
    facts = bench_facts(preset, settings, seed, rows, specs, low_specs, results, profile, plan, timings,
                        command or sys.argv, digests)
    return render_bench(facts, workdir)


def bench_facts(preset: str, settings: BenchSettings, seed: int, rows: List[Row],
                specs: List[Tuple[Row, int, SweepSpec]], low_specs: List[Tuple[Row, int, SweepSpec]],
                results: List[dict], profile: Dict[str, Any], plan: StudentPlan, timings: Dict[str, float],
                command: List[str], digests: Dict[str, str]) -> Dict[str, Any]:
    """What this run measured, as :func:`~.bench_report.render_bench` (and ``bench-merge``) read it."""
    values: Dict[str, Dict[str, List[float]]] = {row.key: {} for row in rows}
    parameters: Dict[str, int] = {}
    for (row, _, _), result in zip(specs, results):
        parameters[row.key] = result["parameters"]
        for task, entry in result["tasks"].items():
            values[row.key].setdefault(task, []).append(entry["value"])
    low: Dict[str, List[float]] = {}
    for (row, _, _), result in zip(low_specs, results[len(specs):]):
        low.setdefault(row.key, []).append(result["tasks"]["pr"]["value"])
    return {
        "preset": preset, "seed": seed, "settings": settings.model_dump(), "command": command, "commit": _commit(),
        **digests, "rows_selected": [row.key for row in rows], "all_rows": len(rows) == len(ROW_KEYS),
        "rows": [{"key": row.key, "label": row.label, "upstream": row.upstream,
                  "ckpt": str(row.ckpt) if row.ckpt else None, "kind": row.kind, "seeds": list(row.seeds),
                  "parameters": parameters[row.key], "backbone_parameters": plan.sizes.get(row.key),
                  "macs_per_second_of_audio": profile["macs_per_second"][row.label],
                  "time_vs_teacher": profile["time_ratio"][row.label], "time_cell": profile["time_cell"][row.label],
                  "values": values[row.key]} for row in rows],
        "low_resource_values": low, "sizes": plan.shapes,
        "profile": {k: profile[k] for k in ("method", "conditions")}, "stage_seconds": dict(timings), "parts": [],
    }
