"""Timing upstream forwards fairly on a shared machine."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional

import torch


def forward_time_samples(
    models: Mapping[str, torch.nn.Module], wavs: List[torch.Tensor], repeats: int = 5, warmup: int = 1,
    synchronize: Optional[Callable[[], None]] = None,
) -> Dict[str, List[float]]:
    """Every timed forward (s) per model on ``wavs``, after ``warmup`` untimed forwards each. Repeats are interleaved
    across models, so a noisy moment hits all of them rather than one. ``synchronize`` (e.g.
    ``torch.cuda.synchronize``) runs before each clock read: an asynchronous device would otherwise be timed while it
    is still queueing work."""
    sync = synchronize if synchronize is not None else (lambda: None)
    times: Dict[str, List[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model.eval()
            for _ in range(warmup):
                model(wavs)
        for _ in range(repeats):
            for name, model in models.items():
                sync()
                start = time.perf_counter()
                model(wavs)
                sync()
                times[name].append(time.perf_counter() - start)
    return times


def forward_times(
    models: Mapping[str, torch.nn.Module], wavs: List[torch.Tensor], repeats: int = 5, warmup: int = 1,
    synchronize: Optional[Callable[[], None]] = None,
) -> Dict[str, float]:
    """Median forward time (s) per model on ``wavs``, after ``warmup`` warm-up forwards each. Repeats are interleaved
    across models, so a noisy moment hits all of them rather than one."""
    samples = forward_time_samples(models, wavs, repeats, warmup, synchronize)
    return {name: statistics.median(values) for name, values in samples.items()}
