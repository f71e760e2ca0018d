"""A sweep's progress inside its runs: the step each s3prl run has reached, and the sweep's ETA.

s3prl's downstream runner draws a tqdm bar ``overall`` over ``runner.total_steps`` on its stderr, which a sweep
sends to the experiment's ``train.log``. :class:`StepReader` reads that stream as it is written and finds the
latest ``overall: ... n/total`` update; :class:`SweepProgress` keeps every experiment's state and writes the
sweep bar's postfix, e.g. ``pr step 40/100 ETA 0:31 | ks starting | sweep ETA 12:30``.

The sweep's ETA counts training steps: the steps still to train over all experiments (from each one's config),
divided by the rate of this sweep so far (steps trained per wall-clock second since it started, start-up and
evaluation included, every parallel run counted), so it is rough until a few runs have finished.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from s3prl_distill.progress import format_duration

# tqdm's line for s3prl's bar: "overall:  40%|████      | 40/100 [00:31<00:46,  1.29it/s]" (the percentage and
# the bar are absent when tqdm cannot size them).
OVERALL_PATTERN = re.compile(r"overall:\s*(?:\d+%\|[^|\r\n]*\|)?\s*(\d+)/(\d+)\b")


def overall_steps(text: str) -> List[Tuple[int, int]]:
    """Every ``(step, total)`` of s3prl's ``overall`` bar in ``text``, in order."""
    return [(int(step), int(total)) for step, total in OVERALL_PATTERN.findall(text)]


class StepReader:
    """Fed a subprocess's output in arbitrary chunks; calls ``on_step(step, total)`` whenever s3prl's ``overall``
    bar moves. tqdm ends each redraw with ``\\r`` (or ``\\n``), so only whole redraws are matched."""

    def __init__(self, on_step: Callable[[int, int], None]) -> None:
        self.on_step = on_step
        self._pending = ""
        self.last: Optional[Tuple[int, int]] = None

    def feed(self, text: str) -> None:
        text = self._pending + text
        cut = max(text.rfind("\r"), text.rfind("\n"))
        self._pending = text[cut + 1:]
        if len(self._pending) > 4096:  # a line that never ends is no tqdm redraw
            self._pending = self._pending[-4096:]
        for step_total in overall_steps(text[:cut + 1]):
            if step_total != self.last:
                self.last = step_total
                self.on_step(*step_total)

    def close(self) -> None:
        """The stream ended: a last redraw without its line end still counts."""
        pending, self._pending = self._pending, ""
        if pending:
            self.feed(pending + "\n")


@dataclass
class RunState:
    name: str
    total_steps: int  # from the experiment's config
    phase: str = "waiting"  # waiting, starting, training, evaluating, done
    step: Optional[int] = None
    first_seen: Optional[Tuple[float, int]] = None  # (time, step) of the first step seen in this sweep
    latest_seen: Optional[Tuple[float, int]] = None

    def steps_left(self) -> int:
        if self.phase in ("done", "evaluating"):
            return 0
        return max(0, self.total_steps - (self.step or 0))

    def eta(self) -> Optional[float]:
        if self.first_seen is None or self.latest_seen is None:
            return None
        (start, first), (now, latest) = self.first_seen, self.latest_seen
        if latest <= first or now <= start or latest >= self.total_steps:  # no rate yet, or nothing left
            return None
        return (self.total_steps - latest) * (now - start) / (latest - first)


class SweepProgress:
    """Thread-safe state of a sweep's runs; ``on_change(postfix)`` is called whenever a run moves."""

    def __init__(self, runs: Dict[str, int], on_change: Callable[[str], None] = lambda _: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.runs = {name: RunState(name, total) for name, total in runs.items()}
        self.on_change = on_change
        self._clock = clock
        self._start = clock()
        self._trained = 0  # steps trained in this sweep, over every run
        self._lock = threading.Lock()

    def starting(self, name: str) -> None:
        self._set(name, "starting")

    def evaluating(self, name: str) -> None:
        self._set(name, "evaluating")

    def done(self, name: str) -> None:
        self._set(name, "done")

    def step(self, name: str, step: int, total: int) -> None:
        """s3prl's bar of run ``name`` reached ``step`` of ``total`` (a resumed run starts above 0)."""
        with self._lock:
            run = self.runs[name]
            now = self._clock()
            if run.first_seen is None:
                run.first_seen = (now, step)
            elif run.step is not None and step > run.step:
                self._trained += step - run.step
            run.total_steps, run.step, run.phase = total, step, "training"
            run.latest_seen = (now, step)
            postfix = self._postfix()
        self.on_change(postfix)

    def _set(self, name: str, phase: str) -> None:
        with self._lock:
            self.runs[name].phase = phase
            postfix = self._postfix()
        self.on_change(postfix)

    def postfix(self) -> str:
        with self._lock:
            return self._postfix()

    def sweep_eta(self) -> Optional[float]:
        with self._lock:
            return self._sweep_eta()

    def _sweep_eta(self) -> Optional[float]:
        elapsed = self._clock() - self._start
        left = sum(run.steps_left() for run in self.runs.values())
        if self._trained == 0 or elapsed <= 0 or left == 0:  # no rate yet, or only evaluations left
            return None
        return left * elapsed / self._trained

    def _postfix(self) -> str:
        parts = []
        for run in self.runs.values():
            if run.phase == "training":
                eta = run.eta()
                parts.append(f"{run.name} step {run.step}/{run.total_steps}"
                             + (f" ETA {format_duration(eta)}" if eta is not None else ""))
            elif run.phase in ("starting", "evaluating"):
                parts.append(f"{run.name} {run.phase}")
        eta = self._sweep_eta()
        if eta is not None:
            parts.append(f"sweep ETA {format_duration(eta)}")
        return " | ".join(parts)
