"""``s3prl-distill submit``: pack a finished sweep into the SUPERB leaderboard's ``predict.zip`` layout (as s3prl's
``submit/submit.py`` builds it) and write the efficiency figures the leaderboard asks for.

Layout inside the zip (``predict/`` as its top folder): ``pr_public/predict.ark``, ``asr_public/predict.ark``,
``ks_public/predict.txt``, ``sid_public/predict.txt``, ``er_fold{1..5}_public/predict.txt`` (ER is scored only with
all five folds).
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from s3prl_distill.errors import UserError

from .metrics import prediction_file
from .tasks import TASKS, experiment_name

logger = logging.getLogger(__name__)

SUBMISSION_FILES = ("predict", "predict.zip", "efficiency.json")  # what submit writes into its output folder
STAGING_NAME = ".submit.partial"


class SubmissionExistsError(UserError, FileExistsError):
    """The output folder already holds a submission (``--force`` replaces it)."""


LEADERBOARD_NAMES = {"pr": "pr_public/predict.ark", "asr": "asr_public/predict.ark", "ks": "ks_public/predict.txt",
                     "sid": "sid_public/predict.txt"}


def collect_predictions(run_dir: Path, out_dir: Path) -> List[str]:
    """Copy each evaluated task's prediction file to ``out_dir/predict/...`` (a folder that must not exist yet);
    returns the relative paths."""
    run_dir, predict = Path(run_dir), Path(out_dir) / "predict"
    if predict.exists():
        raise SubmissionExistsError(f"{predict} already exists")
    written = []
    for key, task in TASKS.items():
        units = [(experiment_name(task, fold), fold, f"er_{fold}_public/predict.txt") for fold in task.folds] \
            if task.folds else [(experiment_name(task), None, LEADERBOARD_NAMES[key])]
        present = [(name, fold, target) for name, fold, target in units if (run_dir / name / "done.json").is_file()]
        if not present:
            continue
        if task.folds and len(present) != len(task.folds):
            logger.warning("ER has %d of 5 folds evaluated; the leaderboard scores ER only with all five", len(present))
        for name, fold, target in present:
            source = prediction_file(task, run_dir / name, fold)
            if not source.is_file():
                raise FileNotFoundError(f"{source} is missing: was {run_dir / name} evaluated on the test split?")
            destination = predict / target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
            written.append(str(destination.relative_to(out_dir)))
    if not written:
        raise FileNotFoundError(f"{run_dir} holds no evaluated task (no <task>/done.json)")
    return written


def zip_predictions(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    archive = out_dir / "predict.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in sorted((out_dir / "predict").rglob("*")):
            if path.is_file():
                handle.write(path, path.relative_to(out_dir))
    return archive


def efficiency(upstream: str, ckpt: Optional[str], model_config: Optional[str],
               seconds: Sequence[float] = (1.0, 5.0, 10.0)) -> Dict[str, object]:
    """Parameters and multiply-accumulates of the upstream's forward pass, counted as ``s3prl-distill profile``
    does (torch's FLOP counter, attention included on CPU; MACs = FLOPs / 2) on single utterances of fixed lengths."""
    from s3prl_distill.profiler import UpstreamSpec, count_macs, length_key, load_upstream, profile_waves

    model = load_upstream(UpstreamSpec(upstream, ckpt, model_config)).eval()
    figures: Dict[str, object] = {"upstream": upstream, "ckpt": ckpt,
                                  "parameters": sum(p.numel() for p in model.parameters()), "macs": {}}
    for length in seconds:
        figures["macs"][length_key(length)] = count_macs(model, profile_waves(length, 1, torch.device("cpu")))[0]
    return figures


def submit(run_dir: Path, out_dir: Path, seconds: Sequence[float] = (1.0, 5.0, 10.0),
           force: bool = False) -> Dict[str, Path]:
    """predict/ + predict.zip + efficiency.json for the sweep in ``run_dir``.

    An ``out_dir`` that already holds any of them is refused unless ``force``; then the old ones are replaced only
    once the new submission is complete. Everything is built in ``out_dir/.submit.partial`` first, after the
    upstream has loaded (its efficiency figures): a missing checkpoint or prediction stops the command with the
    previous submission untouched."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    sweep = json.loads((run_dir / "sweep.json").read_text()) if (run_dir / "sweep.json").is_file() else None
    if sweep is None:
        raise FileNotFoundError(f"{run_dir}/sweep.json does not exist: is it an `s3prl-distill superb` run?")
    existing = [name for name in SUBMISSION_FILES if (out_dir / name).exists()]
    if existing and not force:
        raise SubmissionExistsError(
            f"{out_dir} already holds a submission ({', '.join(existing)}): choose another -o, or pass --force to "
            "replace it once the new one is complete")
    figures = efficiency(sweep["upstream"], sweep.get("ckpt"), sweep.get("model_config"), seconds)
    staging = out_dir / STAGING_NAME
    if staging.exists():  # left by an interrupted submit: only this command writes there
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    figures["files"] = collect_predictions(run_dir, staging)
    zip_predictions(staging)
    (staging / "efficiency.json").write_text(json.dumps(figures, indent=2))
    for name in SUBMISSION_FILES:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        (staging / name).rename(target)
    staging.rmdir()
    return {"zip": out_dir / "predict.zip", "efficiency": out_dir / "efficiency.json"}
