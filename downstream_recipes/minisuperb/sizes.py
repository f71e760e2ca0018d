"""How much of each mini-SUPERB task to generate."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class MiniSuperbSize:
    """Counts for every task; ``(speakers, utterances per speaker)`` pairs for the LibriSpeech splits."""

    # PR + ASR (one LibriSpeech-style corpus)
    librispeech_train: Tuple[int, int]  # train-clean-100
    librispeech_eval: Tuple[int, int]  # dev-clean and test-clean, each
    librispeech_other: Tuple[int, int]  # dev-other and test-other (noisy), each
    librispeech_chapters: int  # chapters per speaker (utterances are spread over them)
    # KS (Speech Commands v1)
    ks_train_speakers: int  # speakers whose hash puts them in s3prl's train split
    ks_dev_speakers: int  # speakers whose hash puts them in s3prl's dev split
    ks_repeats: int  # clips per keyword per train/dev speaker
    ks_unknown_per_speaker: int  # non-keyword clips per speaker (the `_unknown_` class)
    ks_test_speakers: int
    ks_test_silence: int  # 1 s noise clips in test/_silence_
    ks_noise_seconds: float  # length of each `_background_noise_` file
    # SID (VoxCeleb1)
    sid_speakers: int
    sid_utterances: Tuple[int, int, int]  # per speaker: train, dev, test
    sid_videos: int  # "YouTube ids" per speaker
    # ER (IEMOCAP): 5 sessions x 2 speakers (F, M) x 4 emotions x this many utterances
    er_utterances: int
    er_dialogs: int  # dialog folders per session

    def as_dict(self) -> Dict[str, object]:
        """The settings as plain JSON-able values."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


SIZES: Dict[str, MiniSuperbSize] = {
    # Seconds: for CI and unit tests; every split and class still gets data.
    "tiny": MiniSuperbSize(
        librispeech_train=(4, 4), librispeech_eval=(2, 2), librispeech_other=(1, 2), librispeech_chapters=1,
        ks_train_speakers=4, ks_dev_speakers=2, ks_repeats=1, ks_unknown_per_speaker=2, ks_test_speakers=2,
        ks_test_silence=2, ks_noise_seconds=1.5,
        sid_speakers=4, sid_utterances=(3, 1, 1), sid_videos=2,
        er_utterances=1, er_dialogs=2,
    ),
    # The default: enough for a downstream model to learn something; builds in under 2 minutes on 2 cores.
    "small": MiniSuperbSize(
        librispeech_train=(50, 30), librispeech_eval=(8, 20), librispeech_other=(4, 20), librispeech_chapters=2,
        ks_train_speakers=54, ks_dev_speakers=6, ks_repeats=1, ks_unknown_per_speaker=4, ks_test_speakers=16,
        ks_test_silence=16, ks_noise_seconds=10.0,
        sid_speakers=24, sid_utterances=(24, 4, 4), sid_videos=4,
        er_utterances=20, er_dialogs=4,
    ),
    # Several minutes: closer to a real benchmark's class balance and speaker count.
    "medium": MiniSuperbSize(
        librispeech_train=(100, 60), librispeech_eval=(20, 30), librispeech_other=(10, 30), librispeech_chapters=3,
        ks_train_speakers=180, ks_dev_speakers=20, ks_repeats=2, ks_unknown_per_speaker=6, ks_test_speakers=50,
        ks_test_silence=50, ks_noise_seconds=30.0,
        sid_speakers=60, sid_utterances=(40, 6, 6), sid_videos=6,
        er_utterances=40, er_dialogs=6,
    ),
}
