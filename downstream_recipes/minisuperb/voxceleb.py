"""SID: a VoxCeleb1 look-alike for s3prl's ``voxceleb1`` task.

Layout::

    VoxCeleb1/dev/wav/id1XXXX/<ytid>/<nnnnn>.wav     train (1) and dev (2) utterances
    VoxCeleb1/test/wav/id1XXXX/<ytid>/<nnnnn>.wav    test (3) utterances
    VoxCeleb1/veri_test_class.txt                     "<1|2|3> idXXXXX/<ytid>/<nnnnn>.wav" per utterance

Speaker folders are ``id10001`` upwards without gaps (s3prl's label is ``int(id[2:]) - 10001`` over 1251 outputs).
Every speaker is a distinct (voice, variant, pitch) setting and speaks in all three splits.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .jobs import SynthJob, TaskPlan, job_seed, jitter, speaker_pool
from .sizes import MiniSuperbSize
from .text import SentenceGrammar

FIRST_SPEAKER = 10001
MAX_SPEAKERS = 1251  # s3prl's SID head has this many outputs
OWNED_DIRS: Tuple[str, ...] = ("VoxCeleb1",)
_YTID_ALPHABET = np.array(list(string.ascii_letters + string.digits))


def plan_voxceleb1(
    output: Path, size: MiniSuperbSize, rng: np.random.Generator, voices: Sequence[str], variants: Sequence[str]
) -> TaskPlan:
    """Plan the SID corpus and its split file under ``output / "VoxCeleb1"``."""
    if not 1 <= size.sid_speakers <= MAX_SPEAKERS:
        raise ValueError(f"sid_speakers must be in 1..{MAX_SPEAKERS}, got {size.sid_speakers}")
    root = output / "VoxCeleb1"
    grammar = SentenceGrammar(rng)
    speakers = speaker_pool(rng, size.sid_speakers, voices, variants, pitch_range=(20, 80))
    lines: List[Tuple[str, int]] = []
    jobs: List[SynthJob] = []
    for offset, base in enumerate(speakers):
        speaker = f"id{FIRST_SPEAKER + offset}"
        videos = ["".join(rng.choice(_YTID_ALPHABET, size=11)) for _ in range(max(1, size.sid_videos))]
        next_number = {video: 1 for video in videos}
        for split_code, count in zip((1, 2, 3), size.sid_utterances):
            for _ in range(count):
                video = videos[int(rng.integers(len(videos)))]
                # Numbered per video across all splits, so a relative path names exactly one file.
                relative = f"{speaker}/{video}/{next_number[video]:05d}.wav"
                next_number[video] += 1
                subset = "test" if split_code == 3 else "dev"
                lines.append((relative, split_code))
                # Two sentences per utterance: VoxCeleb clips are several seconds long.
                text = f"{grammar.sentence()} {grammar.sentence()}"
                jobs.append(SynthJob(path=root / subset / "wav" / relative, text=text,
                                     prosody=jitter(base, rng, pitch=2, speed=8), seed=job_seed(rng)))

    def finalize(lengths: Dict[Path, int]) -> Dict[str, Dict[str, Path]]:
        meta = root / "veri_test_class.txt"
        meta.write_text("".join(f"{code} {relative}\n" for relative, code in sorted(lines)))
        return {"sid": {"file_path": root, "meta_data": meta}}

    return TaskPlan(jobs=jobs, finalize=finalize)
