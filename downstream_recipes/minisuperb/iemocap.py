"""ER: an IEMOCAP look-alike for s3prl's ``emotion`` task, with emotions acted through prosody.

Layout::

    IEMOCAP/Session<N>/sentences/wav/<dialog>/<utt>.wav                 N = 1..5
    IEMOCAP/meta_data/Session<N>/{train,test}_meta_data.json            fold N: test = session N, train = the rest

Each session has a female and a male speaker (``Ses0NF``, ``Ses0NM``) as in IEMOCAP. An emotion shows in the delivery
(it shifts the speaker's pitch, speed, loudness and word gap, with per-utterance jitter on top, so no single knob gives
it away) and, as in IEMOCAP, whose transcripts alone predict much of its labels, in the words: most utterances open
with one of the emotion's interjections.

Why both: with emotions in the delivery alone (stronger shifts than now), a random-weight HuBERT told them apart as
well as the pretrained one (test accuracy 59 / 62 % against 61 / 59 %, two seeds, 400 steps; measured on the bench's
teacher), so ER could not rank upstreams; what a pretrained model adds is content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .espeak import FEMALE_VARIANTS, MALE_VARIANTS, Prosody
from .jobs import SynthJob, TaskPlan, job_seed, speaker_pool
from .sizes import MiniSuperbSize
from .text import SentenceGrammar

EMOTIONS: Tuple[str, ...] = ("neu", "hap", "ang", "sad")
LABELS: Dict[str, int] = {emotion: index for index, emotion in enumerate(EMOTIONS)}
SESSIONS = 5
OWNED_DIRS: Tuple[str, ...] = ("IEMOCAP",)


@dataclass(frozen=True)
class EmotionStyle:
    """How an emotion changes a speaker's delivery."""

    pitch_shift: float  # added to the speaker's -p
    speed_factor: float  # multiplies the speaker's -s
    amplitude: float  # -a
    word_gap: int  # -g, in 10 ms units


STYLES: Dict[str, EmotionStyle] = {
    "neu": EmotionStyle(pitch_shift=0, speed_factor=1.0, amplitude=100, word_gap=0),
    "hap": EmotionStyle(pitch_shift=11, speed_factor=1.1, amplitude=112, word_gap=0),
    "ang": EmotionStyle(pitch_shift=-3, speed_factor=1.08, amplitude=140, word_gap=0),
    "sad": EmotionStyle(pitch_shift=-9, speed_factor=0.87, amplitude=80, word_gap=2),
}
# The words of each emotion (all in CMUdict) and how often an utterance opens with one: a partial cue, as in speech.
INTERJECTIONS: Dict[str, Tuple[str, ...]] = {
    "neu": ("WELL", "OKAY", "SO", "RIGHT"),
    "hap": ("HOORAY", "WONDERFUL", "YES", "GREAT"),
    "ang": ("STOP", "ENOUGH", "NONSENSE", "NO"),
    "sad": ("ALAS", "SORRY", "SIGH", "OH"),
}
INTERJECTION_RATE = 0.7


def emotional_text(sentence: str, emotion: str, rng: np.random.Generator) -> str:
    """``sentence``, opened with one of ``emotion``'s interjections at :data:`INTERJECTION_RATE`."""
    if rng.random() >= INTERJECTION_RATE:
        return sentence
    words = INTERJECTIONS[emotion]
    return f"{words[int(rng.integers(len(words)))]} {sentence}"


def emotional_prosody(base: Prosody, emotion: str, rng: np.random.Generator) -> Prosody:
    """``base`` speaking with ``emotion``'s style plus per-utterance jitter."""
    style = STYLES[emotion]
    return Prosody(
        voice=base.voice, variant=base.variant,
        pitch=int(round(base.pitch + style.pitch_shift + rng.uniform(-5, 5))),
        speed=int(round(base.speed * style.speed_factor * rng.uniform(0.93, 1.07))),
        amplitude=int(round(style.amplitude * rng.uniform(0.9, 1.1))),
        word_gap=style.word_gap + int(rng.integers(0, 2)),
    )


def _gendered(variants: Sequence[str], wanted: Sequence[str]) -> List[str]:
    # Fall back to every given variant when the caller's pool has none of this gender.
    return [v for v in variants if v in wanted] or list(variants)


def plan_iemocap(
    output: Path, size: MiniSuperbSize, rng: np.random.Generator, voices: Sequence[str], variants: Sequence[str]
) -> TaskPlan:
    """Plan the ER corpus and its five folds' metadata under ``output / "IEMOCAP"``."""
    root = output / "IEMOCAP"
    grammar = SentenceGrammar(rng)
    # Pitch ranges leave room for the emotion shifts inside espeak-ng's 0..99.
    female = speaker_pool(rng, SESSIONS, voices, _gendered(variants, FEMALE_VARIANTS), pitch_range=(45, 65),
                          speed_range=(150, 175))
    male = speaker_pool(rng, SESSIONS, voices, _gendered(variants, MALE_VARIANTS), pitch_range=(30, 50),
                        speed_range=(150, 175))
    entries: List[Dict[str, str]] = []
    jobs: List[SynthJob] = []
    dialog_count = max(1, size.er_dialogs)
    for session in range(1, SESSIONS + 1):
        prefix = f"Ses{session:02d}"
        dialogs = [f"{prefix}{'FM'[k % 2]}_impro{k + 1:02d}" for k in range(dialog_count)]
        turn_numbers = {(dialog, gender): 0 for dialog in dialogs for gender in "FM"}
        for gender, base in (("F", female[session - 1]), ("M", male[session - 1])):
            for emotion in EMOTIONS:
                for _ in range(size.er_utterances):
                    dialog = dialogs[int(rng.integers(dialog_count))]
                    number = turn_numbers[(dialog, gender)]
                    turn_numbers[(dialog, gender)] += 1
                    relative = f"Session{session}/sentences/wav/{dialog}/{dialog}_{gender}{number:03d}.wav"
                    entries.append({"path": relative, "label": emotion, "speaker": f"{prefix}{gender}"})
                    jobs.append(SynthJob(path=root / relative, text=emotional_text(grammar.sentence(), emotion, rng),
                                         prosody=emotional_prosody(base, emotion, rng), seed=job_seed(rng)))

    def finalize(lengths: Dict[Path, int]) -> Dict[str, Dict[str, Path]]:
        meta_root = root / "meta_data"
        ordered = sorted(entries, key=lambda entry: entry["path"])
        for session in range(1, SESSIONS + 1):
            folder = meta_root / f"Session{session}"
            folder.mkdir(parents=True, exist_ok=True)
            test_prefix = f"Session{session}/"
            for split, members in (
                ("train", [e for e in ordered if not e["path"].startswith(test_prefix)]),
                ("test", [e for e in ordered if e["path"].startswith(test_prefix)]),
            ):
                document = {"labels": LABELS, "meta_data": members}
                (folder / f"{split}_meta_data.json").write_text(json.dumps(document, indent=2) + "\n")
        return {"er": {"root": root, "meta_data": meta_root}}

    return TaskPlan(jobs=jobs, finalize=finalize)
