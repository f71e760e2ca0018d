"""Progress for every loop of ours: a tqdm bar on a terminal, periodic log lines otherwise.

A tqdm bar redraws itself with ``\\r``; in a log file or a CI console every redraw is kept, so a long run fills
its log with thousands of half-lines. :func:`progress` gives the bar when stderr is a terminal and a
:class:`LogProgress` otherwise: the same calls (``update``, ``set_postfix``, ``set_postfix_str``, ``close``,
iteration, ``with``), written as one ``logging`` line (``desc: n/total unit (p%), rate, elapsed, ETA | postfix``)
at most every ``S3PRL_DISTILL_PROGRESS_INTERVAL`` seconds (default 30), plus a last line when a loop that took
a while ends.

``S3PRL_DISTILL_PROGRESS=bar`` or ``=log`` forces one form (e.g. ``log`` under a terminal multiplexer that keeps
scroll-back).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Iterable, Iterator, Optional

from tqdm import tqdm

logger = logging.getLogger("s3prl_distill.progress")

MODE_ENV = "S3PRL_DISTILL_PROGRESS"
INTERVAL_ENV = "S3PRL_DISTILL_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0
# A loop shorter than this that never logged a periodic line ends silently (reading 16 headers needs no line).
FINAL_LINE_AFTER_S = 2.0


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (or ``M:SS`` under an hour), as tqdm writes durations."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def use_bar(stream: Any = None) -> bool:
    """Whether progress is drawn as a bar: ``S3PRL_DISTILL_PROGRESS`` if set, else whether ``stream`` (stderr,
    where tqdm draws) is a terminal."""
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in ("bar", "log"):
        return mode == "bar"
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def interval_from_environment() -> float:
    text = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(text) if text else DEFAULT_INTERVAL_S
    except ValueError:
        logger.warning("%s=%r is not a number of seconds; using %g", INTERVAL_ENV, text, DEFAULT_INTERVAL_S)
        return DEFAULT_INTERVAL_S
    return max(0.0, value)


class LogProgress:
    """The subset of tqdm's interface our loops use, reported as periodic log lines (thread-safe)."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[float] = None,
                 desc: Optional[str] = None, unit: str = "it", initial: float = 0, disable: bool = False,
                 interval: Optional[float] = None, show_eta: bool = True,
                 log: logging.Logger = logger, clock=time.monotonic) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc or "progress"
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.disable = disable
        self.interval = interval_from_environment() if interval is None else interval
        self.show_eta = show_eta
        self.postfix = ""
        self.lines_logged = 0
        self._log = log
        self._clock = clock
        self._start = clock()
        self._last_line = self._start
        self._closed = False
        self._lock = threading.Lock()

    # --- tqdm's interface --------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LogProgress without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        with self._lock:
            self.n += n
        self._maybe_log()

    def set_postfix(self, ordered_dict: Optional[dict] = None, refresh: bool = True, **values: Any) -> None:
        items = {**(ordered_dict or {}), **values}
        self.set_postfix_str(", ".join(f"{key}={value}" for key, value in items.items()), refresh)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        with self._lock:
            self.postfix = str(text)
        self._maybe_log()

    def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self) -> None:
        self._maybe_log()

    def write(self, text: str) -> None:
        self._log.info("%s", text)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            elapsed = self._clock() - self._start
            if self.disable or (self.lines_logged == 0 and elapsed < FINAL_LINE_AFTER_S):
                return
            self._emit(self._clock())

    # --- the lines ---------------------------------------------------------------------------------------------

    def _maybe_log(self) -> None:
        if self.disable:
            return
        with self._lock:
            now = self._clock()
            if self._closed or now - self._last_line < self.interval:
                return
            self._emit(now)

    def _emit(self, now: float) -> None:
        self._last_line = now
        self.lines_logged += 1
        self._log.info("%s", self.line(now))

    def line(self, now: Optional[float] = None) -> str:
        """``desc: n/total unit (p%), rate, elapsed, ETA | postfix`` as of ``now``."""
        now = self._clock() if now is None else now
        elapsed = now - self._start
        done = self.n - self.initial  # a resumed loop's rate counts only this run's work
        count = f"{_number(self.n)}/{_number(self.total)}" if self.total else _number(self.n)
        parts = [f"{self.desc}: {count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        details = []
        if self.show_eta and done > 0 and elapsed > 0:
            rate = done / elapsed
            details.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}")
        details.append(f"elapsed {format_duration(elapsed)}")
        if self.show_eta and self.total and self.n < self.total and done > 0 and elapsed > 0:
            details.append(f"ETA {format_duration((self.total - self.n) * elapsed / done)}")
        text = ", ".join([parts[0], *details])
        return f"{text} | {self.postfix}" if self.postfix else text


def _number(value: Optional[float]) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def progress(iterable: Optional[Iterable] = None, *, total: Optional[float] = None, desc: Optional[str] = None,
             unit: str = "it", initial: float = 0, disable: bool = False, show_eta: bool = True,
             **bar_options: Any):
    """A tqdm bar on a terminal, a :class:`LogProgress` otherwise (see the module's doc). ``bar_options`` (e.g.
    ``dynamic_ncols``, ``leave``) only concern the bar. ``show_eta=False``: no rate and no ETA (a caller that
    reports a better estimate in its postfix)."""
    if use_bar():
        if not show_eta:
            bar_options.setdefault("bar_format", "{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}{postfix}]")
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, **bar_options)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                       show_eta=show_eta)
