"""LibriSpeech phone recognition data for s3prl's ``ctc`` task, as s3prl 0.4.18's ``corpus/libriphone.py`` reads it.

Layout: ``<path>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` with ``<speaker>-<chapter>.trans.txt``
beside it (lines ``<utterance id> WORDS``). Words become phones through the lexicon files (``WORD PH PH ...``; the first
pronunciation of a word wins). Items are ``(audio path, token ids)``, sorted by token count, longest first; with
``bucket_size > 1`` an item is a list of ``bucket_size`` consecutive pairs, as the task's collate function expects.

Unlike s3prl's file, problems are reported with their file: a word missing from the lexicon, a phone missing from the
vocabulary, an audio file without a transcript line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

from torch.utils.data import Dataset

logger = logging.getLogger(__name__)


def read_lexicon(files: Sequence[Union[str, Path]], vocabulary) -> Dict[str, List[str]]:
    lexicon: Dict[str, List[str]] = {}
    for file in files:
        with open(file) as handle:
            for number, line in enumerate(handle, 1):
                word, *phones = line.split()
                if not phones:
                    continue
                unknown = [p for p in phones if p not in vocabulary]
                if unknown:
                    raise ValueError(f"{file}:{number}: phones {unknown} of {word!r} are not in the phone vocabulary")
                lexicon.setdefault(word, phones)  # first pronunciation wins, for a deterministic target
    return lexicon


def read_transcripts(folder: Path) -> Dict[str, Tuple[str, Path]]:
    """utterance id -> (words, transcript file) for every ``*.trans.txt`` under ``folder``."""
    transcripts = {}
    for file in sorted(folder.rglob("*.trans.txt")):
        for line in file.read_text().splitlines():
            if line.strip():
                utterance, _, words = line.strip().partition(" ")
                transcripts[utterance] = (words, file)
    return transcripts


class LibriPhoneDataset(Dataset):
    def __init__(
        self, split: Sequence[str], tokenizer, bucket_size: int, path: str, lexicon: Sequence[str],
        ascending: bool = False, **kwargs,
    ) -> None:
        self.bucket_size = bucket_size
        vocabulary = getattr(tokenizer, "_vocab2idx", None) or {}
        word_to_phones = read_lexicon(lexicon, vocabulary)
        pairs = []
        for name in split:
            folder = Path(path) / name
            audio = sorted(folder.rglob("*.flac"))
            if not audio:
                raise FileNotFoundError(f"libriphone: no .flac files under {folder}")
            transcripts = read_transcripts(folder)
            for file in audio:
                if file.stem not in transcripts:
                    raise ValueError(f"libriphone: {file} has no line in its {file.parent}/*.trans.txt")
                words, source = transcripts[file.stem]
                phones = []
                for word in words.split():
                    if word not in word_to_phones:
                        raise KeyError(f"libriphone: word {word!r} of {file.stem} ({source}) is not in the lexicon")
                    phones += word_to_phones[word]
                pairs.append((str(file), tokenizer.encode(" ".join(phones))))
        pairs.sort(key=lambda pair: len(pair[1]), reverse=not ascending)
        self.file_list = [f for f, _ in pairs]
        self.text = [t for _, t in pairs]
        logger.info("libriphone %s: %d utterances", list(split), len(pairs))

    def __getitem__(self, index: int):
        if self.bucket_size > 1:
            index = min(len(self.file_list) - self.bucket_size, index)
            end = index + self.bucket_size
            return list(zip(self.file_list[index:end], self.text[index:end]))
        return self.file_list[index], self.text[index]

    def __len__(self) -> int:
        return len(self.file_list)
