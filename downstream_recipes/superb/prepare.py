"""Preparing and checking the public corpora in the layout :mod:`.tasks` expects, before any training starts.

s3prl's own failures on a wrong layout are bare ``IndexError``/``KeyError`` deep inside a dataset (e.g. its issue
#362); each check here names the first thing that is wrong and what was expected instead.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import soundfile

from .tasks import LayoutError

logger = logging.getLogger(__name__)

KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
KS_CLASSES = KEYWORDS + ["_unknown_", "_silence_"]
ER_LABELS = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
_EMO_LINE = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\w+)\t")


def iemocap_meta_data(iemocap_root: Path, output: Optional[Path] = None) -> Path:
    """``meta_data/Session<N>/{train,test}_meta_data.json`` for the 5 folds from IEMOCAP's own label files
    (``Session<N>/dialog/EmoEvaluation/*.txt``), keeping neu/hap/ang/sad with excited merged into happy, as SUPERB."""
    root = Path(iemocap_root)
    output = Path(output) if output else root / "meta_data"
    items: Dict[int, List[dict]] = {}
    for session in range(1, 6):
        labels_dir = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        if not labels_dir.is_dir():
            raise LayoutError(f"IEMOCAP: {labels_dir} does not exist (expected the IEMOCAP_full_release layout)")
        items[session] = []
        for label_file in sorted(labels_dir.glob("*.txt")):
            dialog = label_file.stem
            for line in label_file.read_text(errors="replace").splitlines():
                match = _EMO_LINE.match(line)
                if not match:
                    continue
                utterance, emotion = match.groups()
                emotion = "hap" if emotion == "exc" else emotion
                if emotion not in ER_LABELS:
                    continue
                relative = f"Session{session}/sentences/wav/{dialog}/{utterance}.wav"
                if not (root / relative).is_file():
                    raise LayoutError(f"IEMOCAP: {label_file} lists {utterance}, but {root / relative} does not exist")
                speaker = f"Ses0{session}{utterance.split('_')[-1][0]}"
                items[session].append({"path": relative, "label": emotion, "speaker": speaker})
        if not items[session]:
            raise LayoutError(f"IEMOCAP: no neu/hap/exc/ang/sad utterances found in {labels_dir}")
    for session in range(1, 6):
        folder = output / f"Session{session}"
        folder.mkdir(parents=True, exist_ok=True)
        train = [item for other in range(1, 6) if other != session for item in items[other]]
        for name, meta in (("train", train), ("test", items[session])):
            (folder / f"{name}_meta_data.json").write_text(json.dumps({"labels": ER_LABELS, "meta_data": meta}))
    logger.info("IEMOCAP meta data written to %s (%d utterances)", output, sum(len(v) for v in items.values()))
    return output


def check_voxceleb1(voxceleb_root: Path, split_file: Optional[Path] = None) -> Path:
    """Every line of the identification split (``<1|2|3> idXXXXX/<yt>/<n>.wav``) must resolve under
    ``dev/wav`` or ``test/wav`` (s3prl raises a bare IndexError otherwise, its issue #362). A split file given
    elsewhere (VoxCeleb's ``iden_split.txt``) is copied to ``<root>/veri_test_class.txt``, where the config reads it."""
    root = Path(voxceleb_root)
    target = root / "veri_test_class.txt"
    source = Path(split_file) if split_file else target
    if not source.is_file():
        raise LayoutError(f"VoxCeleb1: split file {source} does not exist (VoxCeleb1's iden_split.txt)")
    for number, line in enumerate(source.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in {"1", "2", "3"} or not parts[1].startswith("id"):
            raise LayoutError(f"VoxCeleb1: {source}:{number}: expected '<1|2|3> idXXXXX/<video>/<n>.wav', got {line!r}")
        if not any((root / part / "wav" / parts[1]).is_file() for part in ("dev", "test")):
            raise LayoutError(f"VoxCeleb1: {source}:{number}: {parts[1]} is in neither {root}/dev/wav nor {root}/test/wav")
        speaker = int(parts[1][2:7]) - 10001
        if not 0 <= speaker < 1251:
            raise LayoutError(f"VoxCeleb1: {source}:{number}: speaker {parts[1][:7]} is outside id10001..id11251")
    if source != target:
        shutil.copyfile(source, target)
    return target


def check_speech_commands(root: Path) -> None:
    """Train root ``<word>/*.wav`` with the 10 keywords and ``_background_noise_`` (each file >= 1 s); test root
    ``<class>/*.wav`` with exactly s3prl's 12 class names (another name is a KeyError in s3prl)."""
    train, test = Path(root) / "train", Path(root) / "test"
    for word in KEYWORDS:
        if not any((train / word).glob("*.wav")):
            raise LayoutError(f"Speech Commands: no {train / word}/*.wav (keyword {word!r})")
    noise = sorted((train / "_background_noise_").glob("*.wav"))
    if not noise:
        raise LayoutError(f"Speech Commands: no {train / '_background_noise_'}/*.wav (the _silence_ class)")
    for path in noise:
        if soundfile.info(str(path)).frames < 16000:
            raise LayoutError(f"Speech Commands: background noise {path} is shorter than 1 s (16000 samples)")
    if not test.is_dir():
        raise LayoutError(f"Speech Commands: test root {test} does not exist")
    for folder in sorted(p for p in test.iterdir() if p.is_dir()):
        if folder.name not in KS_CLASSES:
            raise LayoutError(f"Speech Commands: test folder {folder} is not one of s3prl's classes {KS_CLASSES}")


def prepare_data_root(data_root: Path, tasks: List[str], voxceleb_split: Optional[Path] = None,
                      num_workers: Optional[int] = None) -> Dict[str, object]:
    """Create what can be derived (ASR length CSVs, IEMOCAP meta data, the VoxCeleb1 split file) and check the rest;
    returns the config values :func:`.tasks.data_values` resolves, so a later ``superb`` run starts cleanly
    (``num_workers`` None: :func:`s3prl_distill.options.default_num_workers`)."""
    from s3prl_distill.audio_lists import write_length_csvs
    from s3prl_distill.options import default_num_workers

    from .tasks import data_values

    root = Path(data_root)
    if "asr" in tasks and not (root / "len_for_bucket").is_dir():
        libri = root / "LibriSpeech"
        if not libri.is_dir():
            raise LayoutError(f"LibriSpeech: {libri} does not exist")
        write_length_csvs(libri, root / "len_for_bucket",
                          sets=["train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other"]
                          if (libri / "dev-other").is_dir() else ["train-clean-100", "dev-clean", "test-clean"])
    if "er" in tasks and not (root / "IEMOCAP" / "meta_data").is_dir():
        iemocap_meta_data(root / "IEMOCAP")
    if "sid" in tasks:
        check_voxceleb1(root / "VoxCeleb1", voxceleb_split)
    if "ks" in tasks:
        check_speech_commands(root / "speech_commands")
    return data_values(root, tasks, default_num_workers() if num_workers is None else num_workers)
