"""Span masks for masking distillation, drawn like fairseq's ``compute_mask_indices`` (the HuBERT teacher's own
masking in sungnyun/ARMHuBERT), from a generator that depends only on (run seed, step, DDP rank, draw within the
step): an exactly resumed run draws the same masks with no extra checkpoint state.

Per row, over its ``n`` valid (unpadded) frames: ``int(mask_prob * n / span_length + u)`` spans (``u`` uniform in
[0, 1): random rounding, so the expected masked fraction is ``mask_prob`` when the spans fit), at least
``MIN_SPANS`` (none at all when ``mask_prob`` is 0); each of ``span_length`` frames (``static``) or of a length drawn uniformly from 0..2·span_length
(``uniform``, fairseq's ``uniform`` with ``mask_other`` 0, the official configs' choice). With ``no_overlap``, spans
are placed longest first, each in a free stretch chosen with probability proportional to its length among those it
fits in, keeping ``min_space`` unmasked frames to the spans already placed; spans that no longer fit are dropped.
Otherwise span starts are distinct random frames and spans may overlap (and are cut at the row's end).
"""

from __future__ import annotations

import hashlib
import random
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

MIN_SPANS = 2  # fairseq HuBERT's apply_mask passes min_masks=2
SPAN_LENGTH_CHOICES = ("static", "uniform")


def mask_rng(seed: int, step: int, rank: int, draw: int) -> random.Random:
    """The generator of one batch's mask: a pure function of the run's seed, the step, the DDP rank and the draw's
    index within the step (gradient accumulation draws several masks per step)."""
    digest = hashlib.blake2b(f"{seed}/{step}/{rank}/{draw}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def _span_lengths(count: int, span_length: int, kind: str, rng: random.Random) -> List[int]:
    if kind == "static":
        return [span_length] * count
    return [rng.randint(0, 2 * span_length) for _ in range(count)]


def _non_overlapping(valid: int, lengths: List[int], min_space: int, rng: random.Random) -> List[Tuple[int, int]]:
    free = [(0, valid)]  # stretches [start, end) a span may cover
    spans = []
    for length in sorted(lengths, reverse=True):
        if length == 0:  # masks nothing
            continue
        fitting = [index for index, (start, end) in enumerate(free) if end - start >= length]
        if not fitting:
            break  # the rest are no longer: none fits either
        chosen = rng.choices(fitting, weights=[free[i][1] - free[i][0] for i in fitting])[0]
        start, end = free.pop(chosen)
        begin = rng.randint(start, end - length)
        spans.append((begin, begin + length))
        free += [part for part in ((start, begin - min_space), (begin + length + min_space, end)) if part[1] > part[0]]
    return spans


def _overlapping(valid: int, lengths: List[int], rng: random.Random) -> List[Tuple[int, int]]:
    shortest = min(lengths)
    starts = max(valid - shortest, 1)  # a span may start where the shortest one still fits
    chosen = rng.sample(range(starts), min(len(lengths), starts))
    return [(begin, min(begin + length, valid)) for begin, length in zip(chosen, lengths)]


def span_mask(valid_frames: Sequence[int], frames: int, mask_prob: float, span_length: int, rng: random.Random,
              span_lengths: str = "static", no_overlap: bool = False, min_space: int = 0) -> Tensor:
    """(B, frames) bool, True on masked frames; row b is masked within its first ``valid_frames[b]`` frames only."""
    if span_lengths not in SPAN_LENGTH_CHOICES:
        raise ValueError(f"span_lengths must be one of {SPAN_LENGTH_CHOICES}, not {span_lengths!r}")
    mask = torch.zeros(len(valid_frames), frames, dtype=torch.bool)
    if mask_prob <= 0:  # as fairseq's apply_mask: no masking at all (not even MIN_SPANS spans)
        return mask
    for row, valid in enumerate(valid_frames):
        valid = min(int(valid), frames)
        if valid <= 0:
            continue
        count = max(MIN_SPANS, int(mask_prob * valid / span_length + rng.random()))
        lengths = _span_lengths(count, span_length, span_lengths, rng)
        if sum(lengths) == 0:  # as fairseq: never an empty mask because every drawn length was 0
            lengths[0] = min(span_length, valid - 1)
        spans = _non_overlapping(valid, lengths, min_space, rng) if no_overlap else _overlapping(valid, lengths, rng)
        for begin, end in spans:
            mask[row, begin:end] = True
    return mask
