"""Timing upstream forwards fairly on a shared machine, and comparing their outputs."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .errors import MissingFeatureError

logger = logging.getLogger(__name__)

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
        raise MissingFeatureError(f"{type(model).__name__} has no output {feature!r}; it has {', '.join(outputs)}")
    return outputs[feature]


def state_deviations(reference: Sequence[torch.Tensor], states: Sequence[torch.Tensor]) -> List[Dict[str, float]]:
    """How far each of ``states`` is from its ``reference`` (e.g. a bf16 forward's hidden states against fp32's on the
    same input), per state: ``max_abs`` = max |state - reference|, ``rms_reference``, ``relative`` = max_abs over
    that rms (the worst element, in units of the state's typical size) and ``mean_abs_relative`` = mean |difference|
    over the same rms (the typical element's error). Computed in float32 on the states' device."""
    if len(reference) != len(states):
        raise ValueError(f"{len(states)} states against {len(reference)} reference states")
    rows = []
    for index, (expected, got) in enumerate(zip(reference, states)):
        if got.shape != expected.shape:
            raise ValueError(f"state {index}: shape {tuple(got.shape)} against {tuple(expected.shape)}")
        difference = (got.float() - expected.float()).abs()
        rms = float(expected.float().pow(2).mean().sqrt())
        if rms == 0.0:
            raise ValueError(f"reference state {index} is all zeros: no scale to measure its deviation against")
        max_abs = float(difference.max())
        rows.append({"max_abs": max_abs, "rms_reference": rms, "relative": max_abs / rms,
                     "mean_abs_relative": float(difference.mean()) / rms})
    return rows


def device_synchronizer(device: Union[str, torch.device]) -> Callable[[], None]:
    """What to call before reading a clock on ``device``: a CUDA device runs queued work asynchronously, so it is
    waited for; anywhere else there is nothing to wait for."""
    target = torch.device(device)
    if target.type == "cuda":
        return lambda: torch.cuda.synchronize(target)
    return lambda: None


def rotated(names: List[str], round_index: int) -> List[str]:
    """``names`` starting at position ``round_index`` (cyclically): over rounds, every model takes every position
    alike, so none always runs first, on caches the previous round left cold or warm."""
    if not names:
        return []
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def forward_time_samples(
    models: Mapping[str, torch.nn.Module], wavs: List[torch.Tensor], repeats: int = 5, warmup: int = 1,
    synchronize: Optional[Callable[[], None]] = None, feature: Optional[str] = DEFAULT_FEATURE,
) -> Dict[str, List[float]]:
    """Every timed forward (s) per model on ``wavs``, after ``warmup`` untimed forwards each. Repeats are interleaved
    across models, so a noisy moment hits all of them rather than one. ``synchronize`` (e.g.
    ``torch.cuda.synchronize``) runs before each clock read: an asynchronous device would otherwise be timed while it
    is still queueing work. Each timed call is :func:`upstream_features` (forward + reading ``feature``). For ratios
    between models on a shared machine, :func:`interleaved_times` is the sturdier measurement."""
    sync = synchronize if synchronize is not None else (lambda: None)
    times: Dict[str, List[float]] = {name: [] for name in models}
    with torch.no_grad():
        _warm_up(models, wavs, warmup, feature)
        for repeat in range(repeats):
            for name in rotated(list(models), repeat):
                times[name].append(_timed_forward(models[name], wavs, feature, sync))
    return times


def _warm_up(models: Mapping[str, torch.nn.Module], wavs: List[torch.Tensor], warmup: int,
             feature: Optional[str]) -> None:
    """Eval mode, then ``warmup`` untimed forwards per model (first-call allocations and lazy set-up)."""
    for model in models.values():
        model.eval()
        for _ in range(warmup):
            upstream_features(model, wavs, feature)


def _timed_forward(model: torch.nn.Module, wavs: List[torch.Tensor], feature: Optional[str],
                   sync: Callable[[], None]) -> float:
    """Seconds of one :func:`upstream_features` call, the device synchronised before each clock read."""
    sync()
    start = time.perf_counter()
    upstream_features(model, wavs, feature)
    sync()
    return time.perf_counter() - start


def forward_times(
    models: Mapping[str, torch.nn.Module], wavs: List[torch.Tensor], repeats: int = 5, warmup: int = 1,
    synchronize: Optional[Callable[[], None]] = None, feature: Optional[str] = DEFAULT_FEATURE,
) -> Dict[str, float]:
    """Median forward time (s) per model on ``wavs``, after ``warmup`` warm-up forwards each. Repeats are interleaved
    across models, so a noisy moment hits all of them rather than one."""
    samples = forward_time_samples(models, wavs, repeats, warmup, synchronize, feature)
    return {name: statistics.median(values) for name, values in samples.items()}


def cpu_name() -> Optional[str]:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows, else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def load_average() -> Optional[Tuple[float, float, float]]:
    """The 1-, 5- and 15-minute load averages, or None where the system does not report them."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class Spread:
    """A median with its interquartile range (``low`` = first quartile, ``high`` = third)."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        if not values:
            raise ValueError("no values to summarise")
        median = statistics.median(values)
        if len(values) < 2:
            return cls(median, median, median)
        # "inclusive" keeps the quartiles within the observed range, so low <= median <= high always holds.
        low, _, high = statistics.quantiles(values, n=4, method="inclusive")
        return cls(median, low, high)

    def format(self, digits: int = 2) -> str:
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}–{self.high:.{digits}f})"


@dataclass
class InterleavedTiming:
    """What :func:`interleaved_times` measured: one time per model per round, and how.

    Ratios are taken within a round (model / reference, timed moments apart), then summarised over rounds: a load
    change between rounds scales both times of a round and cancels in their ratio."""

    reference: str
    threads: int
    warmup: int
    budget_s: float
    times: Dict[str, List[float]]  # seconds, one per round, in round order
    order: List[List[str]]  # the order the models ran in, per round
    load_before: Optional[Tuple[float, float, float]] = None
    load_after: Optional[Tuple[float, float, float]] = None
    cpu: Optional[str] = field(default_factory=cpu_name)

    @property
    def rounds(self) -> int:
        return len(self.order)

    def ratios(self) -> Dict[str, List[float]]:
        """Per model, its time over the reference's in each round."""
        reference = self.times[self.reference]
        return {name: [value / base for value, base in zip(values, reference)] for name, values in self.times.items()}

    def ratio_spreads(self) -> Dict[str, Spread]:
        return {name: Spread.of(values) for name, values in self.ratios().items()}

    def time_spreads(self) -> Dict[str, Spread]:
        return {name: Spread.of(values) for name, values in self.times.items()}

    def method(self) -> str:
        """The measurement in words, for a report."""
        return (f"{self.threads} torch thread{'s' if self.threads != 1 else ''}, {self.warmup} warm-up "
                f"forward{'s' if self.warmup != 1 else ''} per model, then {self.rounds} rounds, each timing every "
                f"model once in an order rotated per round; "
                f"median of the per-round ratios to {self.reference!r}, interquartile range in brackets")

    def conditions(self) -> str:
        """The machine and its load when measured, in words."""
        cpu = self.cpu or "unknown CPU"
        loads = "; ".join(f"load average {label} {', '.join(f'{v:.2f}' for v in load)} (1/5/15 min)"
                          for label, load in (("before", self.load_before), ("after", self.load_after)) if load)
        return f"{cpu}, {os.cpu_count()} logical CPUs" + (f"; {loads}" if loads else "")

    def to_json(self) -> Dict[str, Any]:
        return {
            "reference": self.reference, "threads": self.threads, "warmup": self.warmup, "budget_s": self.budget_s,
            "rounds": self.rounds, "cpu": self.cpu, "cpu_count": os.cpu_count(),
            "load_average_before": self.load_before, "load_average_after": self.load_after,
            "method": self.method(),
            "ratio_to_reference": {name: vars(spread) for name, spread in self.ratio_spreads().items()},
            "time_s": {name: vars(spread) for name, spread in self.time_spreads().items()},
            "order": self.order, "times_s": self.times,
        }


def interleaved_times(
    models: Mapping[str, torch.nn.Module], wavs: List[torch.Tensor], reference: Optional[str] = None,
    threads: Optional[int] = 1, min_rounds: int = 15, budget_s: float = 20.0, max_rounds: int = 500, warmup: int = 1,
    synchronize: Optional[Callable[[], None]] = None, feature: Optional[str] = DEFAULT_FEATURE,
) -> InterleavedTiming:
    """Time every model's :func:`upstream_features` on ``wavs`` so that ratios hold on a busy machine.

    After ``warmup`` untimed forwards per model, rounds run until at least ``min_rounds`` are done and the timed
    rounds have used ``budget_s`` seconds (never more than ``max_rounds``). Each round times every model once, the
    starting model rotating from round to round, so background load and position effects (caches, clock boost) fall
    on all models alike. ``threads`` fixes torch's intra-op thread count for the measurement (restored afterwards;
    None keeps the current one): 1 by default, because with more threads a shared machine's other work decides how
    many cores a forward gets. ``reference`` (default: the first model) is the denominator of the ratios."""
    names = list(models)
    if not names:
        raise ValueError("no models to time")
    reference = names[0] if reference is None else reference
    if reference not in models:
        raise KeyError(f"reference {reference!r} is not among the models: {', '.join(names)}")
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {min_rounds} and {max_rounds}")
    sync = synchronize if synchronize is not None else (lambda: None)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used_threads = torch.get_num_threads()
        load_before = load_average()
        times: Dict[str, List[float]] = {name: [] for name in names}
        order: List[List[str]] = []
        with torch.no_grad():
            _warm_up(models, wavs, warmup, feature)
            spent = 0.0
            while len(order) < min_rounds or (spent < budget_s and len(order) < max_rounds):
                round_order = rotated(names, len(order))
                for name in round_order:
                    elapsed = _timed_forward(models[name], wavs, feature, sync)
                    times[name].append(elapsed)
                    spent += elapsed
                order.append(round_order)
        timing = InterleavedTiming(reference=reference, threads=used_threads, warmup=warmup, budget_s=budget_s,
                                   times=times, order=order, load_before=load_before, load_after=load_average())
    finally:
        torch.set_num_threads(previous_threads)
    logger.info("timed %d model(s) in %d interleaved rounds on %d thread(s)", len(names), timing.rounds, used_threads)
    return timing
