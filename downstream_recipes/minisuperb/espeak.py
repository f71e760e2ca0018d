"""espeak-ng as a speech source: discovering its voices and variants, validating names, synthesising one utterance.

espeak-ng silently falls back when it does not know a name (an unknown variant is ignored, an unknown voice becomes
``en``; exit code 0, nothing on stderr), so every name is checked against what the installed espeak-ng reports
before anything is synthesised.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .audio import TARGET_RATE, parse_wav_bytes, resample

ESPEAK = "espeak-ng"
INSTALL_HINT = "install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS)"

# The English voices of espeak-ng's own data (``gmw/``); MBROLA voices need extra packages and are left out.
DEFAULT_VOICES: Tuple[str, ...] = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)
MALE_VARIANTS: Tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8")
FEMALE_VARIANTS: Tuple[str, ...] = ("f1", "f2", "f3", "f4", "f5")
DEFAULT_VARIANTS: Tuple[str, ...] = MALE_VARIANTS + FEMALE_VARIANTS

# Variant names this module accepts at all: espeak-ng ships a few with spaces ("Mr serious"), which do not survive
# the ``VOICE+VARIANT`` syntax reliably.
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Prosody:
    """How one utterance is spoken: espeak-ng voice, variant and its ``-p``/``-s``/``-a``/``-g`` knobs."""

    voice: str
    variant: Optional[str] = None
    pitch: int = 50  # -p, 0..99
    speed: int = 175  # -s, words per minute, 80..450
    amplitude: int = 100  # -a, 0..200
    word_gap: int = 0  # -g, pause between words in units of 10 ms

    @property
    def voice_spec(self) -> str:
        """The ``-v`` argument: ``VOICE`` or ``VOICE+VARIANT``."""
        return f"{self.voice}+{self.variant}" if self.variant else self.voice

    def command(self, text: str) -> List[str]:
        """The espeak-ng command line that speaks ``text`` to standard output as WAV."""
        return [
            ESPEAK, "-v", self.voice_spec,
            "-p", str(int(np.clip(self.pitch, 0, 99))),
            "-s", str(int(np.clip(self.speed, 80, 450))),
            "-a", str(int(np.clip(self.amplitude, 0, 200))),
            "-g", str(max(0, int(self.word_gap))),
            "--stdout", text,
        ]


def espeak_available() -> bool:
    """Whether an ``espeak-ng`` executable is on ``PATH``."""
    return shutil.which(ESPEAK) is not None


def _run_espeak(arguments: Sequence[str]) -> str:
    if not espeak_available():
        raise RuntimeError(f"{ESPEAK} was not found on PATH; {INSTALL_HINT}")
    completed = subprocess.run([ESPEAK, *arguments], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"`{ESPEAK} {' '.join(arguments)}` failed ({completed.returncode}): {completed.stderr}")
    return completed.stdout


@functools.lru_cache(maxsize=None)
def espeak_data_dir() -> Path:
    """espeak-ng's data directory, as its ``--version`` line reports it (``... Data at: <dir>``)."""
    match = re.search(r"Data at:\s*(.+?)\s*$", _run_espeak(["--version"]), flags=re.MULTILINE)
    if match is None:
        raise RuntimeError(f"could not find the data directory in `{ESPEAK} --version`")
    return Path(match.group(1))


@functools.lru_cache(maxsize=None)
def _voices() -> Tuple[str, ...]:
    names = set()
    # Columns: Pty Language Age/Gender VoiceName File [Other Languages]; the voice table is fixed-format text.
    for line in _run_espeak(["--voices=en"]).splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5:
            continue
        language, voice_file = fields[1], fields[4]
        if voice_file.startswith("mb/") or voice_file.startswith("!v/") or language == "variant":
            continue  # MBROLA voices (need mbrola + its voice files) and variants are not voices here
        names.add(language)
        # "(en 2)" style aliases that resolve to this same espeak voice file.
        names.update(re.findall(r"\(([A-Za-z0-9-]+) \d+\)", line))
    return tuple(sorted(names))


def available_voices() -> List[str]:
    """English voice names usable with ``-v`` on this machine, from ``espeak-ng --voices=en`` (MBROLA left out)."""
    return list(_voices())


@functools.lru_cache(maxsize=None)
def _variants() -> Tuple[str, ...]:
    directory = espeak_data_dir() / "voices" / "!v"
    if not directory.is_dir():
        raise RuntimeError(f"espeak-ng's variant directory {directory} does not exist")
    return tuple(sorted(p.name for p in directory.iterdir() if p.is_file() and _VARIANT_NAME.match(p.name)))


def available_variants() -> List[str]:
    """Voice variant names (``VOICE+VARIANT``), the files in espeak-ng's ``voices/!v`` directory."""
    return list(_variants())


def validate_voice(spec: str) -> Tuple[str, Optional[str]]:
    """Split ``VOICE`` or ``VOICE+VARIANT`` and check both names exist; raises ``ValueError`` naming a bad one."""
    voice, _, variant = spec.partition("+")
    if voice not in _voices():
        raise ValueError(f"unknown espeak-ng voice {voice!r} (in {spec!r}); available: {', '.join(_voices())}")
    if variant and variant not in _variants():
        raise ValueError(
            f"unknown espeak-ng variant {variant!r} (in {spec!r}); available: {', '.join(_variants())}"
        )
    return voice, (variant or None)


def validate_names(voices: Iterable[str], variants: Iterable[str]) -> None:
    """Check plain voice names and plain variant names; raises ``ValueError`` naming every unknown one."""
    bad_voices = [v for v in voices if v not in _voices()]
    bad_variants = [v for v in variants if v not in _variants()]
    problems = []
    if bad_voices:
        problems.append(f"unknown espeak-ng voice(s) {', '.join(map(repr, bad_voices))}")
    if bad_variants:
        problems.append(f"unknown espeak-ng variant(s) {', '.join(map(repr, bad_variants))}")
    if problems:
        raise ValueError(
            "; ".join(problems) + f". Voices: {', '.join(_voices())}. Variants: {', '.join(_variants())}"
        )


def synthesize(text: str, prosody: Prosody) -> np.ndarray:
    """Speak ``text`` with ``prosody``: float64 samples in [-1, 1] at 16 kHz, mono."""
    completed = subprocess.run(prosody.command(text), capture_output=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"espeak-ng failed ({completed.returncode}) on {text!r} with {prosody}: "
            f"{completed.stderr.decode(errors='replace')}"
        )
    samples, rate = parse_wav_bytes(completed.stdout)
    if samples.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {text!r} with {prosody}")
    return resample(samples, rate, TARGET_RATE)
