"""SKILL-style layer-similarity analysis of a teacher: which of its hidden states say the same thing.

A calibration set of utterances goes through the teacher once; the frames of every hidden state (i = output of
layer i; 0 = DPHuBERT's layer 0, the feature projection's output, as SKILL's targets use it, or with
``layer_zero="transformer_input"`` s3prl's hidden state 0) are compared pairwise with linear CKA (Kornblith et al.,
2019) or the time-averaged cosine similarity, and the layers are grouped by agglomerative clustering of
``1 - similarity`` (SciPy's, or a contiguity-constrained variant where every group is a run of adjacent layers). The
groups are written as the ``student.prediction_head.target_groups`` snippet the pretrain runner reads. The
similarity and clustering themselves are in ``layer_clustering.py``; this module runs the teacher and writes files.

Everything is deterministic: files are sorted and picked evenly spaced, audio is cropped to its first seconds and
frames are kept at a fixed stride, so the same calibration set gives byte-identical ``similarity.npy``,
``groups.json`` and ``skill_groups.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Union

import numpy as np

from .layer_clustering import cluster_with_tree, similarity_matrix
from .options import LINKAGES, MEASURES

if TYPE_CHECKING:
    import torch

    from s3prl_distill.pretrain.config import TeacherConfig

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
AUDIO_SUFFIXES = (".wav", ".flac")


# ----------------------------------------------------------------------------------------------------------------------
# Calibration set
# ----------------------------------------------------------------------------------------------------------------------

def find_audio(data: Union[str, Path]) -> List[Path]:
    """The audio files ``data`` names, sorted by path and without duplicates.

    ``data`` is a directory (searched recursively for ``*.wav`` / ``*.flac``) or a text file listing one audio path per
    line (blank lines and ``#`` comments skipped; relative paths are relative to the list file's folder)."""
    data = Path(data)
    if data.is_dir():
        files = [path for path in data.rglob("*") if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file()]
    elif data.is_file():
        files = []
        for number, line in enumerate(data.read_text().splitlines(), start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            path = Path(entry).expanduser()
            if not path.is_absolute():
                path = data.parent / path
            if not path.is_file():
                raise ValueError(f"--data {data}, line {number}: audio file {path} does not exist")
            files.append(path)
    else:
        raise ValueError(f"--data {data}: no such directory or list file")
    unique = sorted({Path(os.path.abspath(path)) for path in files}, key=str)
    if len(unique) < len(files):
        logger.info("--data %s: %d duplicate paths dropped", data, len(files) - len(unique))
    if not unique:
        what = "no .wav or .flac files under the directory" if data.is_dir() else "the list file names no audio"
        raise ValueError(f"--data {data}: {what}")
    return unique


def choose_evenly(files: Sequence[Path], count: int) -> List[Path]:
    """``count`` files evenly spaced over ``files`` sorted by path (all of them, logged, when there are fewer)."""
    if count < 1:
        raise ValueError(f"--utterances {count}: must be at least 1")
    ordered = sorted(files, key=str)
    if not ordered:
        raise ValueError("--data: no audio files to choose from")
    if count >= len(ordered):
        if count > len(ordered):
            logger.info("--utterances %d: only %d audio files found; using all of them", count, len(ordered))
        return ordered
    return [ordered[(index * len(ordered)) // count] for index in range(count)]


def files_sha1(files: Sequence[Path]) -> str:
    """SHA-1 of the sorted file paths, one per line: identifies the calibration set."""
    text = "\n".join(sorted(str(path) for path in files))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _check_audio(path: Path, max_samples: int) -> int:
    """The samples that will be read from ``path`` (a clear error if it is not 16 kHz mono audio)."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception as error:  # libsndfile's errors vary between versions
        raise ValueError(f"audio file {path} cannot be read: {error}") from error
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        raise ValueError(f"audio file {path} is {info.samplerate} Hz with {info.channels} channel(s); the teacher "
                         f"needs {SAMPLE_RATE} Hz mono (resample it, e.g. sox in.wav -r 16000 -c 1 out.wav)")
    if info.frames <= 0:
        raise ValueError(f"audio file {path} is empty")
    return min(int(info.frames), max_samples)


def read_audio(path: Path, max_seconds: float) -> np.ndarray:
    """The first ``max_seconds`` of a 16 kHz mono file, float32."""
    import soundfile

    samples = _check_audio(path, _max_samples(max_seconds))
    try:
        wave, _ = soundfile.read(str(path), frames=samples, dtype="float32", always_2d=False)
    except Exception as error:
        raise ValueError(f"audio file {path} cannot be read: {error}") from error
    return np.ascontiguousarray(wave, dtype=np.float32)


def _max_samples(max_seconds: float) -> int:
    if not max_seconds > 0:
        raise ValueError(f"--max-seconds {max_seconds}: must be positive")
    return max(1, int(round(max_seconds * SAMPLE_RATE)))


# ----------------------------------------------------------------------------------------------------------------------
# Teacher hidden states
# ----------------------------------------------------------------------------------------------------------------------

def collect_hidden_states(
    teacher: Callable[..., List["torch.Tensor"]],
    files: Sequence[Path],
    max_seconds: float = 10.0,
    max_frames: int = 20000,
    device: str = "cpu",
) -> List[np.ndarray]:
    """Frames of every hidden state over ``files``, each layer stacked to (N, D_l) float64, N <= ``max_frames``.

    ``teacher(waveforms (1, S), lengths (1,))`` must return the hidden states, each (1, T, D). Utterances run one at a
    time; frames are kept at a fixed stride over the whole set (from the expected frame count), so the sample is
    spread evenly over all utterances and is the same on every run."""
    import torch
    from s3prl_distill.progress import progress as show_progress

    if max_frames < 2:
        raise ValueError(f"--max-frames {max_frames}: must be at least 2")
    if not files:
        raise ValueError("no calibration files")
    max_samples = _max_samples(max_seconds)
    samples = [_check_audio(Path(path), max_samples) for path in files]  # every file checked before any forward
    total_samples = sum(samples)

    kept: List[List[np.ndarray]] = []
    seen = 0
    stride = 0
    warned_lengths = False
    for path, count in zip(show_progress(files, desc="layer-similarity", unit="utt"), samples):
        wave = torch.from_numpy(read_audio(Path(path), max_seconds)).unsqueeze(0).to(device)
        lengths = torch.tensor([wave.shape[1]], dtype=torch.long, device=device)
        try:
            states = teacher(wave, lengths)
        except RuntimeError as error:
            raise ValueError(f"the teacher failed on {path} ({wave.shape[1]} samples): {error}") from error
        if not kept:
            kept = [[] for _ in states]
        elif len(states) != len(kept):
            raise ValueError(f"the teacher gave {len(states)} hidden states for {path} but {len(kept)} before")
        frames = min(state.shape[1] for state in states)
        if frames < 1:
            raise ValueError(f"the teacher gave no frames for {path} ({wave.shape[1]} samples): too short")
        if any(state.shape[1] != frames for state in states) and not warned_lengths:
            logger.warning("hidden states differ in length (%s frames for %s); using the first %d frames of each",
                           sorted({state.shape[1] for state in states}), path, frames)
            warned_lengths = True
        if stride == 0:  # the first utterance gives the frame rate; the stride then holds for the whole set
            expected = total_samples * frames / count
            stride = max(1, math.ceil(expected / max_frames))
            logger.info("about %d frames in %d utterances: keeping every %d-th frame", round(expected), len(files),
                        stride)
        index = torch.arange((-seen) % stride, frames, stride, device=states[0].device)
        seen += frames
        for layer, state in enumerate(states):
            kept[layer].append(state[0].index_select(0, index).float().cpu().numpy())

    stacked = [np.concatenate(parts, axis=0) for parts in kept]
    total = stacked[0].shape[0]
    if total > max_frames:  # the first utterance under-estimated the frame count: thin evenly to the cap
        choice = (np.arange(max_frames, dtype=np.int64) * total) // max_frames
        stacked = [layer[choice] for layer in stacked]
    if stacked[0].shape[0] < 2:
        raise ValueError(f"only {stacked[0].shape[0]} frame(s) from {len(files)} utterance(s): similarity needs at "
                         "least 2 (use more or longer utterances)")
    return [layer.astype(np.float64) for layer in stacked]


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------

def skill_groups_yaml(groups: List[List[int]], comment: str, layer_zero: str = "feature_projection") -> str:
    """The pretrain-config snippet: ``student.prediction_head`` with ``target_groups`` (and the hidden state 0 they
    were measured on), after a ``#`` comment line."""
    import yaml

    body = {"student": {"prediction_head": {
        "type": "projection",
        "target_groups": [[int(layer) for layer in group] for group in groups],
        "group_target": "mean",
        "layer_zero": layer_zero,
    }}}
    comment = " ".join(comment.split())  # one line
    return f"# {comment}\n" + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)


def _write_csv(path: Path, similarity: np.ndarray) -> None:
    count = similarity.shape[0]
    lines = ["layer," + ",".join(str(index) for index in range(count))]
    for index in range(count):
        lines.append(str(index) + "," + ",".join(repr(float(value)) for value in similarity[index]))
    path.write_text("\n".join(lines) + "\n")


def plot_similarity(path: Path, similarity: np.ndarray, tree: Optional[np.ndarray], layers: Sequence[int],
                    title: str) -> None:
    """Heatmap of the similarity (left) and the dendrogram of the clustered layers (right), as a PNG."""
    from matplotlib.figure import Figure
    from scipy.cluster.hierarchy import dendrogram

    count = similarity.shape[0]
    figure = Figure(figsize=(11, 4.8))
    heat_axes, tree_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    image = heat_axes.imshow(similarity, cmap="viridis", origin="upper", interpolation="nearest")
    step = max(1, count // 16)
    ticks = list(range(0, count, step))
    heat_axes.set_xticks(ticks)
    heat_axes.set_yticks(ticks)
    heat_axes.set_xlabel("layer")
    heat_axes.set_ylabel("layer")
    heat_axes.set_title("similarity")
    figure.colorbar(image, ax=heat_axes, fraction=0.046, pad=0.04)
    if tree is None:
        tree_axes.text(0.5, 0.5, f"one layer ({layers[0]}): nothing to cluster", ha="center", va="center")
        tree_axes.set_axis_off()
    else:
        dendrogram(tree, labels=[str(layer) for layer in layers], ax=tree_axes, color_threshold=0,
                   above_threshold_color="tab:blue")
        tree_axes.set_xlabel("layer")
        tree_axes.set_ylabel("distance (1 - similarity)")
        tree_axes.set_title("clustering")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def analyse_layers(
    teacher_config: "TeacherConfig",
    files: Sequence[Path],
    output: Path,
    utterances: Optional[int] = None,
    measure: str = "linear_cka",
    linkage: str = "average",
    groups: Optional[int] = None,
    distance_threshold: Optional[float] = None,
    exclude_layer0: bool = False,
    contiguous: bool = False,
    max_seconds: float = 10.0,
    max_frames: int = 20000,
    device: str = "cpu",
    data: Optional[str] = None,
    layer_zero: str = "feature_projection",
) -> dict:
    """Run the analysis and write ``similarity.npy``, ``similarity.csv``, ``groups.json``, ``layer_similarity.png``
    and ``skill_groups.yaml`` to ``output``. Returns the ``groups.json`` content.

    ``files``: calibration audio (16 kHz mono); ``utterances`` of them are taken evenly spaced over the sorted list
    (all when None). ``data`` names the calibration source in the YAML comment (default: the files' common folder).
    ``layer_zero``: which teacher tensor is hidden state 0 (see :class:`~s3prl_distill.pretrain.teacher.Teacher`)."""
    from s3prl_distill.pretrain.teacher import Teacher

    if measure not in MEASURES:
        raise ValueError(f"--measure {measure!r}: expected one of {', '.join(MEASURES)}")
    if linkage not in LINKAGES:
        raise ValueError(f"--linkage {linkage!r}: expected one of {', '.join(LINKAGES)}")
    if (groups is None) == (distance_threshold is None):
        raise ValueError("give exactly one of --groups K and --distance-threshold T")
    if not files:
        raise ValueError("--data: no audio files")
    paths = sorted({Path(os.path.abspath(path)) for path in files}, key=str)
    chosen = choose_evenly(paths, len(paths) if utterances is None else utterances)
    if data is None:
        data = os.path.commonpath([str(path.parent) for path in chosen])
    for path in chosen:  # a bad file fails before the teacher is loaded
        _check_audio(path, _max_samples(max_seconds))

    teacher = Teacher(teacher_config).to(device)
    if layer_zero == "feature_projection":
        teacher.feature_projection_module("--layer-zero transformer_input")  # fails before any audio is read
    states = collect_hidden_states(lambda wave, lengths: teacher(wave, lengths, layer_zero), chosen, max_seconds,
                                   max_frames, device)
    frames = int(states[0].shape[0])
    logger.info("%d hidden states, %d frames from %d utterances; computing %s", len(states), frames, len(chosen),
                measure)
    similarity = similarity_matrix(states, measure)
    del states
    layers = list(range(1 if exclude_layer0 else 0, similarity.shape[0]))
    if not layers:
        raise ValueError("--exclude-layer0: the teacher has only hidden state 0, nothing is left to cluster")
    found, tree = cluster_with_tree(similarity, layers, groups, distance_threshold, linkage, contiguous)
    logger.info("groups: %s", found)

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    np.save(output / "similarity.npy", similarity)
    _write_csv(output / "similarity.csv", similarity)
    result = {
        "groups": found,
        "measure": measure,
        "linkage": linkage,
        "k": groups,
        "threshold": distance_threshold,
        "contiguous": contiguous,
        "exclude_layer0": exclude_layer0,
        "layer_zero": layer_zero,
        "teacher": teacher_config.name,
        "ckpt": teacher_config.ckpt,
        "utterances": len(chosen),
        "frames": frames,
        "files_sha1": files_sha1(chosen),
    }
    (output / "groups.json").write_text(json.dumps(result, indent=2) + "\n")
    comment = (f"layer-similarity: {measure}, {linkage} linkage, {len(found)} groups, {len(chosen)} utterances from "
               f"{data}; teacher {teacher_config.name} {teacher_config.ckpt or ''}").rstrip()
    (output / "skill_groups.yaml").write_text(skill_groups_yaml(found, comment, layer_zero))
    order = sorted(layers) if contiguous else layers
    plot_similarity(output / "layer_similarity.png", similarity, tree, order,
                    f"{teacher_config.name}: {measure}, {linkage} linkage, {len(found)} groups, "
                    f"{len(chosen)} utterances")
    return result
