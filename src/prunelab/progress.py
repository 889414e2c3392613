"""Progress for long work anywhere in the library: a live bar on a terminal, plain lines otherwise.

``track(items, total, label)`` yields the items and reports progress on stderr; ``Meter(total,
label)`` is the same for a loop that is not over a sequence (``meter.set(done)``, ``meter.close()``).
On a terminal it is a rich bar; when stderr is not a terminal (a log file, CI) it is a plain line
``label: i/n (x%), elapsed, ~eta left`` at most every ``every`` seconds and at the end.
``enabled=False`` reports nothing. It lives in the lowest layer so that analyses, pruning and
training can all use it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Meter:
    """How much of ``total`` is done, shown on ``stream`` (stderr) as the module docstring says."""

    def __init__(self, total: int | None, label: str = "working", *, enabled: bool = True,
                 stream: TextIO | None = None, every: float = 10.0) -> None:
        self.total, self.label, self.enabled, self.every = total, label, enabled, every
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self.last = time.perf_counter()
        self._bar: Any = None
        if enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=Console(file=self.stream), transient=True)
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()

    def set(self, done: int) -> None:
        self.done = done
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
            return
        now = time.perf_counter()
        if now - self.last >= self.every or (self.total is not None and done >= self.total):
            self.last = now
            self._line(now)

    def advance(self, n: int = 1) -> None:
        self.set(self.done + n)

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        if self.total:
            eta = elapsed / max(self.done, 1) * max(self.total - self.done, 0)
            print(f"{self.label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), "
                  f"{_hms(elapsed)} elapsed, ~{_hms(eta)} left", file=self.stream, flush=True)
        else:
            print(f"{self.label}: {self.done} done, {_hms(elapsed)} elapsed", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def track(items: Iterable[T], total: int | None = None, label: str = "working", *, enabled: bool = True,
          stream: TextIO | None = None, every: float = 10.0) -> Iterator[T]:
    """Yield ``items`` while showing how many of ``total`` (default ``len(items)``) are done."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    meter = Meter(total, label, enabled=enabled, stream=stream, every=every)
    try:
        for item in items:
            yield item
            meter.advance()
    finally:
        meter.close()
