"""``run_sweep``: expand a sweep, run it on an executor, keep ``results.csv`` and the plot current.

Before any training: the output folder must be writable, every method name and option valid (the
configs validate them), and explicit per-layer allocations must name layers the model has. Then the
executor computes the runs (``local`` by default; ``processes`` with ``jobs``; ``ray``), a progress
display follows the sweep (runs done / running / left, elapsed, estimate; plain lines when the
output is not a terminal), and after every finished run ``results.csv`` is rebuilt from all the
run folders under ``OUT/runs`` -- so it always equals what is on disk and a second sweep into the
same folder adds its rows without dropping the first one's. ``sweeps/<hash>.json`` records each
sweep that wrote to the folder.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prunelab.errors import PrunelabError
from prunelab.experiments.config import RunConfig, SweepConfig, identity_hash
from prunelab.experiments.executors import EXECUTORS
from prunelab.experiments.runner import DataCache, build_model, check_writable, collect_rows
from prunelab.pruning.allocation import validate_allocation
from prunelab.report.plots import accuracy_vs_compression
from prunelab.report.tables import write_csv
from prunelab.utils import atomic_write_json


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]  # this sweep's runs, in sweep order
    csv_path: Path  # every finished run of the folder
    plot_path: Path | None
    computed: int
    found: int


class SweepProgress:
    """One display for the whole sweep: a rich bar on a terminal, a plain line per run otherwise."""

    def __init__(self, total: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total, self.done, self.running = total, 0, 0
        self.started = time.time()
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()
        self._bar: Progress | None = None
        if self.live:
            self._bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[running]} running"), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=Console(file=self.stream))
            self._task = self._bar.add_task("sweep", total=total, running=0)
            self._bar.start()

    def start(self, cfg: RunConfig) -> None:
        self.running += 1
        if self._bar is not None:
            self._bar.update(self._task, running=self.running)

    def finish(self, cfg: RunConfig, row: dict[str, Any], computed: bool) -> None:
        self.done += 1
        self.running = max(0, self.running - 1)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, running=self.running)
        elif self.enabled:
            elapsed = time.time() - self.started
            left = self.total - self.done
            eta = elapsed / self.done * left if self.done else 0.0
            acc = row.get("test_accuracy")
            what = "computed" if computed else "found"
            print(f"sweep: {self.done}/{self.total} done, {self.running} running, {left - self.running} waiting; "
                  f"{_hms(elapsed)} elapsed, ~{_hms(eta)} left | {what} {describe(cfg)}"
                  + (f" acc={acc:.4f}" if isinstance(acc, float) else ""), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def describe(cfg: RunConfig) -> str:
    """``magnitude/global s=0.9 seed=0``: a run in a progress line."""
    p = cfg.prune
    alloc = p.allocation if isinstance(p.allocation, str) else "explicit"
    return f"{p.schedule}:{p.criterion}/{alloc} s={p.sparsity:g} seed={cfg.seed} [{cfg.run_hash()[:8]}]"


def validate_runs(runs: list[RunConfig]) -> None:
    """Checks that need the model (explicit allocations name its layers), before anything trains."""
    seen: set[str] = set()
    cache = DataCache()
    for cfg in runs:
        if isinstance(cfg.prune.allocation, dict):
            key = identity_hash({"m": cfg.model, "k": cfg.model_kwargs, "d": cfg.dataset, "a": cfg.prune.allocation,
                                 "x": cfg.prune.exclude, "s": cfg.prune.sparsity})
            if key in seen:
                continue
            seen.add(key)
            ds = cache.get(cfg.model_copy(update={"device": "cpu"}), __import__("torch").device("cpu"))
            validate_allocation(build_model(cfg, ds), cfg.prune.allocation, cfg.prune.sparsity,
                                exclude=tuple(cfg.prune.exclude))


def summarize(out_dir: Path, order: dict[str, int], title: str | None) -> tuple[Path, Path | None]:
    """Rebuild ``results.csv`` (every finished run of the folder) and its plot."""
    rows = collect_rows(out_dir, order)
    csv_path = write_csv(out_dir / "results.csv", rows)
    plot = None
    if rows:
        plot = accuracy_vs_compression(csv_path, out_dir / "accuracy_vs_compression.png", title=title)
    return csv_path, plot


def run_sweep(
    sweep: SweepConfig,
    out_dir: str | Path,
    *,
    executor: str = "local",
    jobs: int = 1,
    address: str | None = None,
    progress: bool = True,
    force: bool = False,
    on_run: Callable[[int, int, dict[str, Any], bool], None] | None = None,
    stream: TextIO | None = None,
    **executor_options: Any,
) -> SweepResult:
    """Run every config of the sweep (finding finished ones) on ``executor``; write results.csv and the plot."""
    out = check_writable(out_dir)
    runs = sweep.expand()
    validate_runs(runs)
    name = EXECUTORS.canonical(executor)
    if name == "local" and jobs != 1:
        name = "processes"
    order = {cfg.run_hash(): i for i, cfg in enumerate(runs)}
    atomic_write_json(out / "sweeps" / f"{identity_hash(sweep.model_dump(mode='json'))}.json",
                      sweep.model_dump(mode="json"))
    title = f"{sweep.base.model} on {sweep.base.dataset}"
    display = SweepProgress(len(runs), enabled=progress, stream=stream)
    rows: dict[str, dict[str, Any]] = {}
    computed = found = 0
    try:
        it = EXECUTORS.get(name)(runs, out, progress=progress and name == "local", force=force, jobs=jobs,
                                 address=address, on_start=display.start, **executor_options)
        for cfg, row, did in it:
            rows[cfg.run_hash()] = row
            computed += did
            found += not did
            display.finish(cfg, row, did)
            if on_run:
                on_run(len(rows) - 1, len(runs), row, did)
            write_csv(out / "results.csv", collect_rows(out, order))  # current after every run
    finally:
        display.close()
    csv_path, plot = summarize(out, order, title)
    ordered = [rows[h] for h in order if h in rows]
    if len(ordered) != len(runs):
        raise PrunelabError(f"the executor returned {len(ordered)} of {len(runs)} runs")
    return SweepResult(ordered, csv_path, plot, computed, found)
