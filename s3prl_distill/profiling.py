"""Timing upstream forwards fairly on a shared machine."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

# The feature s3prl's downstream runner reads by default (``-s hidden_states``).
DEFAULT_FEATURE = "hidden_states"


def upstream_features(model: torch.nn.Module, wavs: List[torch.Tensor], feature: Optional[str] = DEFAULT_FEATURE) -> Any:
    """What s3prl's downstream runner costs per batch: the forward, then reading the selected feature. An upstream
    may compute an output only when it is read (our FitHuBERT runs its heads for ``last_hidden_state`` only), so
    timing the forward alone would miss that work. ``feature=None``: the forward only."""
    outputs = model(wavs)
    if feature is None:
        return outputs
    if feature not in outputs:
        raise KeyError(f"{type(model).__name__} has no output {feature!r}; it has {', '.join(outputs)}")
    return outputs[feature]


def forward_time_samples(
    models: Mapping[str, torch.nn.Module], wavs: List[torch.Tensor], repeats: int = 5, warmup: int = 1,
    synchronize: Optional[Callable[[], None]] = None, feature: Optional[str] = DEFAULT_FEATURE,
) -> Dict[str, List[float]]:
    """Every timed forward (s) per model on ``wavs``, after ``warmup`` untimed forwards each. Repeats are interleaved
    across models, so a noisy moment hits all of them rather than one. ``synchronize`` (e.g.
    ``torch.cuda.synchronize``) runs before each clock read: an asynchronous device would otherwise be timed while it
    is still queueing work. Each timed call is :func:`upstream_features` (forward + reading ``feature``)."""
    sync = synchronize if synchronize is not None else (lambda: None)
    times: Dict[str, List[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model.eval()
            for _ in range(warmup):
                upstream_features(model, wavs, feature)
        for _ in range(repeats):
            for name, model in models.items():
                sync()
                start = time.perf_counter()
                upstream_features(model, wavs, feature)
                sync()
                times[name].append(time.perf_counter() - start)
    return times


def forward_times(
    models: Mapping[str, torch.nn.Module], wavs: List[torch.Tensor], repeats: int = 5, warmup: int = 1,
    synchronize: Optional[Callable[[], None]] = None, feature: Optional[str] = DEFAULT_FEATURE,
) -> Dict[str, float]:
    """Median forward time (s) per model on ``wavs``, after ``warmup`` warm-up forwards each. Repeats are interleaved
    across models, so a noisy moment hits all of them rather than one."""
    samples = forward_time_samples(models, wavs, repeats, warmup, synchronize, feature)
    return {name: statistics.median(values) for name, values in samples.items()}
