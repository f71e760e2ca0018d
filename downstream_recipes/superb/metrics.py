"""SUPERB metrics computed from the prediction files s3prl's runner writes in ``-m evaluate`` (the same files the
leaderboard scores), so a result never depends on parsing logs."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import editdistance

from .tasks import Task


def _read_pairs(path: Path) -> Dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"prediction file {path} does not exist (did -m evaluate run?)")
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, _, value = line.strip().partition(" ")
            pairs[key] = value
    return pairs


def error_rate(hypothesis_file: Path, reference_file: Path) -> float:
    """Σ edit distance / Σ reference length over space-separated tokens (phones for PER, words for WER)."""
    hypotheses, references = _read_pairs(hypothesis_file), _read_pairs(reference_file)
    missing = sorted(set(references) - set(hypotheses))
    if missing:
        raise ValueError(f"{hypothesis_file}: no hypothesis for {missing[:3]}")
    errors = sum(editdistance.eval(hypotheses[k].split(), references[k].split()) for k in references)
    total = sum(len(references[k].split()) for k in references)
    return errors / max(total, 1)


def accuracy(predict_file: Path, truth_file: Path) -> float:
    predicted, truth = _read_pairs(predict_file), _read_pairs(truth_file)
    if not truth:
        raise ValueError(f"{truth_file} is empty")
    return sum(predicted.get(k) == label for k, label in truth.items()) / len(truth)


def task_metric(task: Task, expdir: Path, fold: Optional[str] = None) -> float:
    """The task's test metric from an evaluated experiment directory (error rates as fractions)."""
    expdir = Path(expdir)
    if task.key == "pr":
        return error_rate(expdir / "test-hyp.ark", expdir / "test-ref.ark")
    if task.key == "asr":
        return error_rate(expdir / "test-clean-noLM-hyp.ark", expdir / "test-clean-noLM-ref.ark")
    if task.key == "er":
        return accuracy(expdir / f"test_{fold}_predict.txt", expdir / f"test_{fold}_truth.txt")
    return accuracy(expdir / "test_predict.txt", expdir / "test_truth.txt")


def prediction_file(task: Task, expdir: Path, fold: Optional[str] = None) -> Path:
    """The file the SUPERB leaderboard wants for this task (see s3prl's submit/submit.py)."""
    names = {"pr": "test-hyp.ark", "asr": "test-clean-noLM-hyp.ark", "ks": "test_predict.txt",
             "sid": "test_predict.txt", "er": f"test_{fold}_predict.txt"}
    return Path(expdir) / names[task.key]
