"""The LibriSpeech-style corpus shared by PR (s3prl ``-d ctc`` with the ``libriphone`` corpus) and ASR (``-d asr``).

Layout::

    LibriSpeech/<split>/<spk>/<chap>/<spk>-<chap>-<utt>.flac
    LibriSpeech/<split>/<spk>/<chap>/<spk>-<chap>.trans.txt     "<spk>-<chap>-<utt> WORDS\\n" per file
    len_for_bucket/<split>.csv                                     ",file_path,length,label", longest first
    asr/char.dict                                                  fairseq dictionary over s3prl's 28 symbols
    pr/lexicon.txt, pr/phoneme.txt                                 CMUdict lexicon and s3prl's phone vocabulary

``dev-other`` and ``test-other`` are generated for real (their own speakers, noise mixed in at 5-15 dB SNR), since
s3prl's default ASR config evaluates on them.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .audio import NOISE_KINDS, mix_at_snr, noise
from .jobs import SynthJob, TaskPlan, job_seed, jitter, speaker_pool
from .sizes import MiniSuperbSize
from .text import PHONEME_VOCAB, SentenceGrammar, load_vocabulary, write_char_dict, write_lexicon

TRAIN_SPLIT = "train-clean-100"
SPLITS: Tuple[str, ...] = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other")
OWNED_DIRS: Tuple[str, ...] = ("LibriSpeech", "len_for_bucket", "asr", "pr")


@dataclass(frozen=True)
class _Utterance:
    split: str
    speaker: int
    chapter: int
    index: int
    text: str

    @property
    def uid(self) -> str:
        return f"{self.speaker}-{self.chapter}-{self.index:04d}"

    @property
    def relative(self) -> str:
        """Path relative to the LibriSpeech root, the form s3prl's bucket CSVs use."""
        return f"{self.split}/{self.speaker}/{self.chapter}/{self.uid}.flac"


def _add_noise(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "other" condition: a random background noise at 5-15 dB SNR."""
    kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
    return mix_at_snr(samples, noise(kind, samples.size, rng), float(rng.uniform(5, 15)))


def plan_librispeech(
    output: Path, size: MiniSuperbSize, rng: np.random.Generator, voices: Sequence[str], variants: Sequence[str]
) -> TaskPlan:
    """Plan the LibriSpeech corpus and its PR/ASR metadata under ``output``."""
    root = output / "LibriSpeech"
    shape = {
        TRAIN_SPLIT: size.librispeech_train,
        "dev-clean": size.librispeech_eval, "test-clean": size.librispeech_eval,
        "dev-other": size.librispeech_other, "test-other": size.librispeech_other,
    }
    total_speakers = sum(speakers for speakers, _ in shape.values())
    # Speakers are disjoint across splits, as in LibriSpeech; ids are LibriSpeech-like integers.
    speaker_ids = [int(i) for i in rng.choice(np.arange(100, 10000), size=total_speakers, replace=False)]
    voices_of = speaker_pool(rng, total_speakers, voices, variants)
    grammar = SentenceGrammar(rng)
    utterances: List[_Utterance] = []
    jobs: List[SynthJob] = []
    next_speaker = 0
    for split in SPLITS:
        speakers, per_speaker = shape[split]
        for _ in range(speakers):
            speaker, base = speaker_ids[next_speaker], voices_of[next_speaker]
            next_speaker += 1
            chapters = sorted(int(c) for c in rng.choice(np.arange(1000, 100000), size=size.librispeech_chapters,
                                                         replace=False))
            for index in range(per_speaker):
                chapter = chapters[index % len(chapters)]
                utterance = _Utterance(split, speaker, chapter, index, grammar.sentence())
                utterances.append(utterance)
                jobs.append(SynthJob(
                    path=root / utterance.relative, text=utterance.text, prosody=jitter(base, rng),
                    seed=job_seed(rng), finish=_add_noise if split.endswith("-other") else None,
                ))

    def finalize(lengths: Dict[Path, int]) -> Dict[str, Dict[str, Path]]:
        by_chapter: Dict[Path, List[_Utterance]] = defaultdict(list)
        for utterance in utterances:
            by_chapter[(root / utterance.relative).parent].append(utterance)
        for directory, members in by_chapter.items():
            lines = [f"{u.uid} {u.text}\n" for u in sorted(members, key=lambda u: u.uid)]
            (directory / f"{members[0].speaker}-{members[0].chapter}.trans.txt").write_text("".join(lines))

        bucket_dir = output / "len_for_bucket"
        bucket_dir.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            rows = [(lengths[root / u.relative], u.relative, u.uid) for u in utterances if u.split == split]
            # s3prl buckets by length, longest first; ties broken by path so the file is reproducible.
            rows.sort(key=lambda row: (-row[0], row[1]))
            body = "".join(f"{i},{path},{length},{uid}\n" for i, (length, path, uid) in enumerate(rows))
            (bucket_dir / f"{split}.csv").write_text(",file_path,length,label\n" + body)

        dict_path = write_char_dict(output / "asr" / "char.dict",
                                    [u.text for u in utterances if u.split == TRAIN_SPLIT])
        lexicon = write_lexicon(output / "pr" / "lexicon.txt", load_vocabulary().words())
        vocab_file = output / "pr" / "phoneme.txt"
        shutil.copyfile(PHONEME_VOCAB, vocab_file)
        return {
            "pr": {"path": root, "lexicon": lexicon, "vocab_file": vocab_file},
            "asr": {"libri_root": root, "bucket_file": bucket_dir, "dict_path": dict_path},
        }

    return TaskPlan(jobs=jobs, finalize=finalize)
