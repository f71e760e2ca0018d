"""KS: a Speech Commands v1 look-alike for s3prl's ``speech_commands`` task.

Layout::

    speech_commands/train/<word>/<speaker>_nohash_<n>.wav        10 keywords + other words (-> `_unknown_`)
    speech_commands/train/_background_noise_/<kind>_noise.wav    the `_silence_` source, each >= 1 s
    speech_commands/test/<class>/*.wav                            exactly the 12 classes s3prl knows

s3prl splits the train root into train and dev by hashing the speaker part of each file name; speaker ids are drawn
until the wanted number falls on each side (ids hashing into the discarded 10-20 % band are skipped).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np

from .audio import NOISE_KINDS, TARGET_RATE, fit_to_length, mix_at_snr, noise, trim_silence
from .jobs import ArrayJob, SynthJob, TaskPlan, job_seed, speaker_pool
from .sizes import MiniSuperbSize

KEYWORDS: Tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# Speech Commands v1's auxiliary words, all outside the 10 keywords.
UNKNOWN_WORDS: Tuple[str, ...] = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine", "one", "seven",
    "sheila", "six", "three", "tree", "two", "wow", "zero",
)
CLASSES: Tuple[str, ...] = KEYWORDS + ("_unknown_", "_silence_")
OWNED_DIRS: Tuple[str, ...] = ("speech_commands",)
CLIP_SAMPLES = TARGET_RATE  # one second
_MAX_UTTERANCES_PER_CLASS = 2 ** 27 - 1  # the constant of the Speech Commands split rule


def hash_partition(file_name: str) -> str:
    """Which side of the Speech Commands split a file falls on: ``"dev"``, ``"test"`` (dropped by s3prl) or
    ``"train"``; the same rule s3prl's ``split_dataset`` applies to the speaker part of the name."""
    speaker = file_name.split("_nohash_")[0]
    digest = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    percentage = (digest % (_MAX_UTTERANCES_PER_CLASS + 1)) * (100.0 / _MAX_UTTERANCES_PER_CLASS)
    if percentage < 10:
        return "dev"
    return "test" if percentage < 20 else "train"


def _speaker_ids(rng: np.random.Generator, wanted: Dict[str, int], taken: Set[str]) -> Dict[str, List[str]]:
    """Draw 8-hex-digit speaker ids until each partition in ``wanted`` has its count."""
    found: Dict[str, List[str]] = {side: [] for side in wanted}
    while any(len(found[side]) < count for side, count in wanted.items()):
        candidate = f"{int(rng.integers(0, 2 ** 32)):08x}"
        side = hash_partition(candidate)
        if candidate in taken or side not in found or len(found[side]) >= wanted[side]:
            continue
        taken.add(candidate)
        found[side].append(candidate)
    return found


def _word_clip(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A one-second clip: the word at a random offset over faint background noise (30-50 dB SNR)."""
    clip = fit_to_length(trim_silence(samples), CLIP_SAMPLES, rng)
    kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
    return mix_at_snr(clip, noise(kind, CLIP_SAMPLES, rng), float(rng.uniform(30, 50)))


def _noise_maker(kind: str, length: int, level: float):
    def make(rng: np.random.Generator) -> np.ndarray:
        return level * noise(kind, length, rng) / 0.1
    return make


def plan_speech_commands(
    output: Path, size: MiniSuperbSize, rng: np.random.Generator, voices: Sequence[str], variants: Sequence[str]
) -> TaskPlan:
    """Plan the KS train and test roots under ``output / "speech_commands"``."""
    base = output / "speech_commands"
    train_root, test_root = base / "train", base / "test"
    taken: Set[str] = set()
    train_ids = _speaker_ids(rng, {"train": size.ks_train_speakers, "dev": size.ks_dev_speakers}, taken)
    speakers = train_ids["train"] + train_ids["dev"]
    # Test speakers may hash anywhere: the test root is read as is, without the split rule.
    test_speakers = []
    while len(test_speakers) < size.ks_test_speakers:
        candidate = f"{int(rng.integers(0, 2 ** 32)):08x}"
        if candidate not in taken:
            taken.add(candidate)
            test_speakers.append(candidate)
    # Speech Commands has thousands of speakers; the voice pool is small, so combinations repeat across speakers.
    voices_of = speaker_pool(rng, len(speakers) + len(test_speakers), voices, variants, pitch_range=(25, 80),
                             speed_range=(130, 210))

    jobs: List = []

    def say(path: Path, word: str, prosody) -> None:
        jobs.append(SynthJob(path=path, text=word, prosody=prosody, seed=job_seed(rng), finish=_word_clip))

    for speaker, prosody in zip(speakers, voices_of):
        for word in KEYWORDS:
            for n in range(size.ks_repeats):
                say(train_root / word / f"{speaker}_nohash_{n}.wav", word, prosody)
        for word in rng.choice(UNKNOWN_WORDS, size=size.ks_unknown_per_speaker, replace=False):
            say(train_root / str(word) / f"{speaker}_nohash_0.wav", str(word), prosody)
    for kind in NOISE_KINDS:
        length = max(CLIP_SAMPLES, int(round(size.ks_noise_seconds * TARGET_RATE)))
        jobs.append(ArrayJob(path=train_root / "_background_noise_" / f"{kind}_noise.wav",
                             make=_noise_maker(kind, length, 0.1), seed=job_seed(rng)))

    for speaker, prosody in zip(test_speakers, voices_of[len(speakers):]):
        for word in KEYWORDS:
            say(test_root / word / f"{speaker}_nohash_0.wav", word, prosody)
        for word in rng.choice(UNKNOWN_WORDS, size=size.ks_unknown_per_speaker, replace=False):
            say(test_root / "_unknown_" / f"{word}_{speaker}_nohash_0.wav", str(word), prosody)
    for index in range(size.ks_test_silence):
        kind = NOISE_KINDS[index % len(NOISE_KINDS)]
        # From near-digital silence to clearly audible background, like the real `_silence_` test clips.
        level = float(10 ** rng.uniform(-3.5, -1))
        jobs.append(ArrayJob(path=test_root / "_silence_" / f"{kind}_{index:04d}_nohash_0.wav",
                             make=_noise_maker(kind, CLIP_SAMPLES, level), seed=job_seed(rng)))

    def finalize(lengths: Dict[Path, int]) -> Dict[str, Dict[str, Path]]:
        # Every class folder exists even when a size leaves it empty, so s3prl's test reader sees all 12.
        for name in CLASSES:
            (test_root / name).mkdir(parents=True, exist_ok=True)
        return {"ks": {"speech_commands_root": train_root, "speech_commands_test_root": test_root}}

    return TaskPlan(jobs=jobs, finalize=finalize)
