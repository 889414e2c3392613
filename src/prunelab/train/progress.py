"""Training progress on stderr: a live rich bar on a terminal, periodic plain lines otherwise.

On a terminal (``rich.console.Console.is_terminal``, which also honours ``FORCE_TERMINAL`` /
``TTY_COMPATIBLE``; a dumb terminal counts as none) the bar shows steps, elapsed time, the time left
and the last epoch's loss/accuracy. When stderr is a log file or a CI pipe a live bar would be
garbage, so the same rich ``Progress`` runs headless (``disable=True``: it still keeps the task's
elapsed time and speed, hence rich's ETA) and :class:`ProgressBar` prints plain lines::

    train epoch 3/10 step 150/500 loss 0.4321 acc 0.912 test_acc 0.905 elapsed 0:00:12 eta 0:00:28

one after the first epoch, then at an epoch end whenever :data:`PLAIN_INTERVAL_S` seconds have
passed since the last line, and after the last epoch. An epoch longer than the interval also gets
``step`` lines in between (without loss/accuracy, which the loop reads only once per epoch).
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: seconds between two plain progress lines (when stderr is not a terminal)
PLAIN_INTERVAL_S = 10.0
#: seconds between two hand-overs of the step count to rich (keeps the per-step cost to a clock read)
_FLUSH_S = 0.1


def _hms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return str(timedelta(seconds=int(round(seconds))))


class ProgressBar:
    """Progress over optimizer steps: live on a terminal, plain lines when not, nothing when disabled.

    ``console`` defaults to ``rich.console.Console(stderr=True)`` (which writes to whatever
    ``sys.stderr`` is at the time). ``completed`` steps are already done (a resumed run).
    """

    def __init__(self, enabled: bool, total: int, *, total_epochs: int | None = None, completed: int = 0,
                 interval: float | None = None, console: Console | None = None) -> None:
        self.mode: str | None = None
        if not enabled:
            return
        self.console = console if console is not None else Console(stderr=True)
        live = self.console.is_terminal and not self.console.is_dumb_terminal
        self.mode = "live" if live else "plain"
        self.total, self.total_epochs = total, total_epochs
        self.interval = PLAIN_INTERVAL_S if interval is None else float(interval)
        self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=self.console, transient=False, disable=not live)
        self.task = self.progress.add_task("train", total=total, completed=completed, info="")
        self.done = completed
        self._pending = 0
        self._flushed = self._last_line = time.monotonic()
        self._epoch: int | None = None
        self._lines = 0
        self.progress.start()

    # -- the loop's calls ---------------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (1-based) starts."""
        if self.mode is not None:
            self._epoch = epoch

    def advance(self) -> None:
        """One optimizer step done (costs a clock read; rich hears of steps at most every 0.1 s)."""
        if self.mode is None:
            return
        self._pending += 1
        self.done += 1
        now = time.monotonic()
        if now - self._flushed >= _FLUSH_S:
            self._flush(now)
            if self.mode == "plain" and now - self._last_line >= self.interval:
                self._line(self._where(), now)

    def show(self, row: dict[str, Any], last: bool = False) -> None:
        """An epoch ended with history ``row``; ``last``: training ends after it."""
        if self.mode is None:
            return
        now = time.monotonic()
        self._flush(now)
        info = f"loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
        for key in ("val_acc", "test_acc"):
            if row.get(key) is not None:
                info += f" {key} {row[key]:.3f}"
        if self.mode == "live":
            self.progress.update(self.task, info=f"epoch {self._epoch_text(row['epoch'])} {info}")
        elif last or self._lines == 0 or now - self._last_line >= self.interval:
            eta = 0.0 if last else None
            self._line(f"{self._where(row['epoch'])} {info}", now, eta)

    def note(self, text: str) -> None:
        """A one-off message (e.g. "resuming from ..."), above the bar or as a plain line."""
        if self.mode == "live":
            self.progress.console.print(text, markup=False, highlight=False)
        elif self.mode == "plain":
            self.console.out(text, highlight=False)

    def close(self) -> None:
        if self.mode is not None:
            self._flush(time.monotonic())
            self.progress.stop()
            self.mode = None

    # -- helpers -----------------------------------------------------------------------------------
    def _flush(self, now: float) -> None:
        if self._pending:
            self.progress.advance(self.task, self._pending)
            self._pending = 0
        self._flushed = now

    def _epoch_text(self, epoch: int | None) -> str:
        if epoch is None:
            return "?"
        return f"{epoch}/{self.total_epochs}" if self.total_epochs else str(epoch)

    def _where(self, epoch: int | None = None) -> str:
        epoch = self._epoch if epoch is None else epoch
        return f"train epoch {self._epoch_text(epoch)} step {self.done}/{self.total}"

    def _line(self, text: str, now: float, eta: float | None = None) -> None:
        task = self.progress.tasks[0]
        remaining = eta if eta is not None else task.time_remaining
        self.console.out(f"{text} elapsed {_hms(task.elapsed)} eta {_hms(remaining)}", highlight=False)
        self._last_line = now
        self._lines += 1
