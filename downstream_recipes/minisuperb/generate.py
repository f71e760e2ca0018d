"""The mini-SUPERB generator: plans every requested task from one seed, synthesises, writes the metadata."""

from __future__ import annotations

import json
import logging
import shutil
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import commands, iemocap, librispeech, voxceleb
from .espeak import DEFAULT_VARIANTS, DEFAULT_VOICES, validate_names
from .jobs import TaskPlan, run_jobs
from .sizes import SIZES, MiniSuperbSize

logger = logging.getLogger(__name__)

TASKS: Tuple[str, ...] = ("pr", "asr", "ks", "sid", "er")
MARKER = ".minisuperb"
MANIFEST = "minisuperb.json"

Planner = Callable[[Path, MiniSuperbSize, np.random.Generator, Sequence[str], Sequence[str]], TaskPlan]
# PR and ASR share one corpus, so they map to one "corpus" entry, planned once.
_CORPORA: Dict[str, Tuple[Planner, Tuple[str, ...]]] = {
    "librispeech": (librispeech.plan_librispeech, librispeech.OWNED_DIRS),
    "speech_commands": (commands.plan_speech_commands, commands.OWNED_DIRS),
    "voxceleb1": (voxceleb.plan_voxceleb1, voxceleb.OWNED_DIRS),
    "iemocap": (iemocap.plan_iemocap, iemocap.OWNED_DIRS),
}
_CORPUS_OF_TASK = {"pr": "librispeech", "asr": "librispeech", "ks": "speech_commands", "sid": "voxceleb1",
                   "er": "iemocap"}


def _corpus_rng(seed: int, corpus: str) -> np.random.Generator:
    # One stream per corpus, keyed by a stable hash of its name: a corpus comes out the same whichever other
    # tasks are generated alongside it.
    return np.random.default_rng([seed, zlib.crc32(corpus.encode("utf-8"))])


def _check_claimable(directory: Path) -> None:
    """Refuse a non-empty ``directory`` that this generator did not make (it could be a real data set)."""
    if directory.exists() and not (directory / MARKER).is_file():
        if not directory.is_dir() or any(directory.iterdir()):
            raise FileExistsError(
                f"{directory} exists and was not made by the mini-SUPERB generator; refusing to overwrite it"
            )


def _claim(directory: Path) -> None:
    """Replace ``directory`` with an empty one carrying this generator's marker (checked claimable before)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("made by s3prl_distill.downstream_recipes.minisuperb; safe to delete\n")


def _resolve_size(size: Union[str, MiniSuperbSize]) -> Tuple[str, MiniSuperbSize]:
    if isinstance(size, MiniSuperbSize):
        return "custom", size
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    return size, SIZES[size]


def generate_minisuperb(
    output: Path,
    tasks: Sequence[str] = TASKS,
    size: Union[str, MiniSuperbSize] = "small",
    seed: int = 0,
    jobs: int = 2,
    progress: bool = True,
    voices: Optional[Sequence[str]] = None,
    variants: Optional[Sequence[str]] = None,
) -> Dict[str, Dict[str, Path]]:
    """Generate the mini-SUPERB corpora for ``tasks`` under ``output``; returns, per task, the paths its s3prl
    config needs (keys named after the config fields, e.g. ``{"asr": {"libri_root", "bucket_file", "dict_path"}}``).

    ``size`` is a name in ``SIZES`` or a ``MiniSuperbSize``. Everything random derives from ``seed``: the same
    arguments give byte-identical text files and sample-identical audio, whatever ``jobs`` is. ``voices`` and
    ``variants`` (espeak-ng names, validated) make up the speaker pool; defaults: ``DEFAULT_VOICES`` x
    ``DEFAULT_VARIANTS``. Directories this generator made before are replaced; others are never overwritten.
    """
    output = Path(output)
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    size_name, settings = _resolve_size(size)
    voices = list(voices) if voices is not None else list(DEFAULT_VOICES)
    variants = list(variants) if variants is not None else list(DEFAULT_VARIANTS)
    if not voices or not variants:
        raise ValueError("at least one voice and one variant are needed")
    validate_names(voices, variants)  # before anything touches the disk

    corpora = sorted({_CORPUS_OF_TASK[task] for task in tasks})
    owned = [output / name for corpus in corpora for name in _CORPORA[corpus][1]]
    for directory in owned:  # all checked before any is touched
        _check_claimable(directory)
    output.mkdir(parents=True, exist_ok=True)
    for directory in owned:
        _claim(directory)

    started = time.perf_counter()
    plans: Dict[str, TaskPlan] = {}
    for corpus in corpora:
        planner = _CORPORA[corpus][0]
        plans[corpus] = planner(output, settings, _corpus_rng(seed, corpus), voices, variants)
    all_jobs: List = [job for corpus in corpora for job in plans[corpus].jobs]
    logger.info("mini-SUPERB %s (seed %d): %d audio files for %s into %s", size_name, seed, len(all_jobs),
                ", ".join(corpora), output)
    lengths = run_jobs(all_jobs, workers=jobs, progress=progress)

    paths: Dict[str, Dict[str, Path]] = {}
    for corpus in corpora:
        paths.update(plans[corpus].finalize(lengths))
    result = {task: paths[task] for task in TASKS if task in tasks}
    manifest = {
        "seed": seed, "size": size_name, "settings": settings.as_dict(), "tasks": list(result),
        "voices": voices, "variants": variants,
        "paths": {task: {key: str(path.relative_to(output)) for key, path in entries.items()}
                  for task, entries in result.items()},
    }
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("mini-SUPERB written in %.1f s", time.perf_counter() - started)
    return result
