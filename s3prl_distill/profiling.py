"""Timing upstream forwards fairly on a shared machine."""

from __future__ import annotations

import statistics
import time
from typing import Dict, List, Mapping

import torch


def forward_times(models: Mapping[str, torch.nn.Module], wavs: List[torch.Tensor], repeats: int = 5) -> Dict[str, float]:
    """Median forward time (s) per model on ``wavs``, after one warm-up each. Repeats are interleaved across models,
    so a noisy moment hits all of them rather than one."""
    times: Dict[str, List[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model.eval()(wavs)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(wavs)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
