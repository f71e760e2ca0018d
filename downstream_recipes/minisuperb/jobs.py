"""Planned synthesis jobs and the worker pool that runs them, plus the speaker pools every task draws from.

Everything random is decided while planning, in the main thread, from seeded generators; a job carries its own seed
for the randomness of its post-processing. So the output does not depend on the number of workers or on the order in
which jobs finish.
"""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from s3prl_distill.progress import progress as show_progress

from .audio import OUTPUT_GAIN, write_audio
from .espeak import Prosody, synthesize

logger = logging.getLogger(__name__)

# Post-processing of one synthesised utterance: (16 kHz float samples, the job's own generator) -> samples to write.
Finish = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class SynthJob:
    """One audio file to produce: speak ``text`` with ``prosody``, pass it through ``finish``, write ``path``."""

    path: Path
    text: str
    prosody: Prosody
    seed: int = 0
    finish: Optional[Finish] = None

    def run(self) -> int:
        """Synthesise, post-process and write the file; returns its length in samples."""
        samples = synthesize(self.text.lower(), self.prosody) * OUTPUT_GAIN
        if self.finish is not None:
            samples = self.finish(samples, np.random.default_rng(self.seed))
        return write_audio(self.path, samples)


@dataclass(frozen=True)
class ArrayJob:
    """One audio file that needs no speech (e.g. noise): ``make(generator)`` gives its samples."""

    path: Path
    make: Callable[[np.random.Generator], np.ndarray]
    seed: int = 0

    def run(self) -> int:
        """Make and write the file; returns its length in samples."""
        return write_audio(self.path, self.make(np.random.default_rng(self.seed)))


def run_jobs(
    jobs: Sequence, workers: int = 2, progress: bool = True, description: str = "mini-SUPERB"
) -> Dict[Path, int]:
    """Run every job (threads: the heavy part is the espeak-ng subprocess); returns each output path's length."""
    lengths: Dict[Path, int] = {}
    bar = show_progress(total=len(jobs), desc=description, unit="file", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1:
            for job in jobs:
                lengths[job.path] = job.run()
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(job.run): job for job in jobs}
                try:
                    for future in as_completed(futures):
                        lengths[futures[future].path] = future.result()
                        bar.update()
                except BaseException:
                    # Fail fast (a bad espeak-ng call, Ctrl-C) instead of waiting for thousands of queued jobs.
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        bar.close()
    return lengths


def job_seed(rng: np.random.Generator) -> int:
    """A fresh 63-bit seed for a job's own generator, drawn from the planning generator."""
    return int(rng.integers(0, 2 ** 63 - 1))


def speaker_pool(
    rng: np.random.Generator,
    count: int,
    voices: Sequence[str],
    variants: Sequence[str],
    pitch_range: Tuple[float, float] = (30, 70),
    speed_range: Tuple[float, float] = (145, 190),
) -> List[Prosody]:
    """``count`` speakers with distinct (voice, variant, pitch) settings, in random order.

    Voice x variant combinations are used once each before any is reused; a reused combination gets a pitch from a
    different band of ``pitch_range``, so no two speakers share all three.
    """
    combos = list(itertools.product(voices, variants))
    if not combos:
        raise ValueError("no voices/variants to build speakers from")
    order = [combos[i] for i in rng.permutation(len(combos))]
    rounds = -(-count // len(order))
    low, high = pitch_range
    band = (high - low) / rounds
    speakers = []
    for index in range(count):
        round_index, combo_index = divmod(index, len(order))
        voice, variant = order[combo_index]
        pitch = low + band * round_index + rng.uniform(0, band)
        speed = rng.uniform(*speed_range)
        speakers.append(Prosody(voice=voice, variant=variant, pitch=int(round(pitch)), speed=int(round(speed))))
    return speakers


def jitter(base: Prosody, rng: np.random.Generator, pitch: float = 4, speed: float = 10) -> Prosody:
    """``base`` with small random per-utterance changes of pitch and speed."""
    return Prosody(
        voice=base.voice, variant=base.variant,
        pitch=int(round(base.pitch + rng.uniform(-pitch, pitch))),
        speed=int(round(base.speed + rng.uniform(-speed, speed))),
        amplitude=base.amplitude, word_gap=base.word_gap,
    )


@dataclass
class TaskPlan:
    """A task's planned audio jobs and the step that writes its text files once the audio lengths are known."""

    jobs: List
    finalize: Callable[[Dict[Path, int]], Dict[str, Dict[str, Path]]]
