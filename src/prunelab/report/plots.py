"""Plots made from a results table on disk (never from in-memory state).

:func:`accuracy_vs_compression` reads ``results.csv`` and saves test accuracy against compression:

* one series per method: the config columns that vary over the table, except the seed and the
  sparsity (usually criterion, allocation, schedule); the columns with one value go into the title;
* one point per target sparsity (``prune.sparsity``; without that column, per compression value):
  the mean over the seeds, with error bars of the sample standard deviation where a point has more
  than one seed; the legend says how many seeds (``n=3``);
* x = compression (all parameters / non-zero parameters) on a log axis; where the table has
  ``effective_compression`` that differs from the direct one, a second panel (same y axis) shows
  accuracy against effective compression;
* the dense baseline as a dashed horizontal line: the ``dense_test_accuracy`` column (the runner's
  mean over seeds) if filled in, else the mean accuracy of the rows with sparsity 0, else no line;
* the legend outside the axes; 10+ series get distinct colours (tab20) and markers.

:func:`accuracy_figure` builds the same figure without saving it and returns a :class:`PlotSummary`
(what was drawn), for tests and callers that want to check or change the figure.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from prunelab.errors import PrunelabError
from prunelab.report.tables import (
    SEED_COLUMNS,
    SPARSITY_COLUMNS,
    columns_of,
    general,
    is_config_column,
    read_results,
    varying,
)
from prunelab.utils import atomic_write_bytes

#: Method columns named by value only in a legend label; other varying config columns as ``key=value``.
PRIMARY_METHOD_COLUMNS = ("prune.criterion", "prune.allocation", "prune.schedule")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7: coprime with 10 and 20 colours
X_LABELS = {"compression": "compression (all parameters / non-zero)",
            "effective_compression": "effective compression"}


@dataclass
class Series:
    """One method: per point the mean x, mean accuracy, its standard deviation and the seed count."""

    label: str
    method: dict[str, Any]
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    yerr: list[float] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    x_effective: list[float] = field(default_factory=list)  # nan where not available

    @property
    def seeds(self) -> str:
        lo, hi = min(self.n), max(self.n)
        return f"n={lo}" if lo == hi else f"n={lo}-{hi}"


@dataclass
class PlotSummary:
    """What a plot shows (the figure is in ``figure`` until it is saved and closed)."""

    series: list[str]  # legend labels without the seed count, in legend order
    points: dict[str, int]  # label -> number of points
    seeds: dict[str, list[int]]  # label -> seeds per point
    error_bars: bool  # some point has more than one seed, so error bars were drawn
    baseline: list[float]  # y of the dense baseline line(s); empty: no line
    baseline_source: str | None  # "dense_test_accuracy", "sparsity 0 rows" or None
    panels: list[str]  # the x column of each panel
    method_columns: list[str]  # the columns that tell the series apart
    constant: dict[str, Any]  # method columns with one value (in the title)
    skipped: int = 0  # points not drawn because their compression is infinite
    path: Path | None = None
    figure: Figure | None = field(default=None, repr=False)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _unset(v: Any) -> bool:
    """A method option a run did not set: blank, None, NaN or an empty mapping / list."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return True
    return isinstance(v, str) and v.strip() in ("", "-", "{}", "[]")


def _label(method: dict[str, Any], constant: dict[str, Any]) -> str:
    """The varying method values (``snip / erk``, ``lr=0.05``); with none, the criterion or "all runs"."""
    parts = [general(v) if c in PRIMARY_METHOD_COLUMNS else f"{c.rsplit('.', 1)[-1]}={general(v)}"
             for c, v in method.items() if c in PRIMARY_METHOD_COLUMNS or not _unset(v)]
    if not parts and constant.get("prune.criterion") is not None:
        parts = [general(constant["prune.criterion"])]
    return " / ".join(parts) or "all runs"


def method_columns(rows: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """(config columns that vary, except seed and sparsity; the method columns with one value)."""
    cols = [c for c in columns_of(rows) if is_config_column(c) and c not in SEED_COLUMNS
            and c not in SPARSITY_COLUMNS]
    vary = varying(rows, cols)
    ordered = [c for c in PRIMARY_METHOD_COLUMNS if c in vary] + [c for c in vary if c not in PRIMARY_METHOD_COLUMNS]
    constant = {c: rows[0].get(c) for c in PRIMARY_METHOD_COLUMNS if c in cols and c not in vary}
    return ordered, constant


def aggregate(rows: Sequence[dict[str, Any]]) -> tuple[list[Series], list[str], dict[str, Any], int]:
    """Series (first-seen order) with one point per sparsity, mean and std over seeds; the method
    columns; the constant ones; the number of points left out for infinite compression."""
    by, constant = method_columns(rows)
    point_key = "prune.sparsity" if any(r.get("prune.sparsity") is not None for r in rows) else None
    groups: dict[tuple, dict[Any, list[dict[str, Any]]]] = {}
    for r in rows:
        method = tuple(repr(r.get(c)) for c in by)
        key = r.get(point_key) if point_key else float(f"{_num(r['compression']):.6g}")
        groups.setdefault(method, {}).setdefault(key, []).append(r)
    series, skipped = [], 0
    for points in groups.values():
        first = next(iter(points.values()))[0]
        s = Series(label="", method={c: first.get(c) for c in by})
        s.label = _label(s.method, constant)
        stats = []
        for members in points.values():
            xs = np.array([_num(r["compression"]) for r in members])
            if not np.all(np.isfinite(xs)):
                skipped += 1
                continue
            accs = np.array([_num(r["test_accuracy"]) for r in members])
            eff = np.array([_num(r.get("effective_compression")) for r in members])
            stats.append((float(xs.mean()), float(accs.mean()),
                          float(accs.std(ddof=1)) if len(accs) > 1 else 0.0, len(accs),
                          float(eff.mean()) if np.all(np.isfinite(eff)) else math.nan))
        if not stats:
            continue
        stats.sort()
        s.x, s.y, s.yerr, s.n, s.x_effective = (list(v) for v in zip(*stats))
        series.append(s)
    return series, by, constant, skipped


def dense_baseline(rows: Sequence[dict[str, Any]]) -> tuple[list[float], str | None]:
    """The dense accuracy to draw: ``dense_test_accuracy`` (its distinct values), else the mean over
    rows with sparsity 0, else none (never a made-up line)."""
    dense = sorted({round(_num(r.get("dense_test_accuracy")), 12) for r in rows
                    if r.get("dense_test_accuracy") is not None})
    if dense:
        return dense, "dense_test_accuracy"
    col = next((c for c in ("prune.sparsity", "sparsity") if any(r.get(c) is not None for r in rows)), None)
    zero = [_num(r["test_accuracy"]) for r in rows if col and r.get(col) == 0]
    if zero:
        return [float(np.mean(zero))], "sparsity 0 rows"
    return [], None


def _colours(n: int) -> list:
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    tab20 = plt.get_cmap("tab20")
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # the 10 strong colours, then their light twins
    return [tab20(order[i % 20]) for i in range(n)]


def _log_ticks(ax, xs: Sequence[float]) -> None:
    """Log x axis with plain-number labels; enough of them to read a value, not so many they touch."""
    ax.set_xscale("log")
    xs = [x for x in xs if np.isfinite(x) and x > 0]
    decades = math.log10(max(xs) / min(xs)) if xs else 1.0
    subs = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0) if decades < 0.7 else (1.0, 2.0, 5.0) if decades < 3.5 \
        else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def accuracy_figure(csv_path: str | Path, title: str | None = None) -> tuple[Figure, PlotSummary]:
    """The accuracy-vs-compression figure of a results table (see the module docstring), unsaved.

    Raises :class:`PrunelabError` for a table it cannot plot (empty, header only, binary, missing
    ``test_accuracy``/``compression``, a non-numeric accuracy or compression, nothing finite to plot).
    """
    rows = read_results(csv_path)
    series, by, constant, skipped = aggregate(rows)
    if not series:
        raise PrunelabError(f"results table {str(csv_path)!r}: no run has a finite compression to plot "
                            f"(compression=inf in every row: no weight kept)")
    baseline, source = dense_baseline(rows)
    has_eff = "effective_compression" in columns_of(rows) and any(
        np.isfinite(xe) and not math.isclose(xe, x, rel_tol=1e-9)
        for s in series for x, xe in zip(s.x, s.x_effective))
    panels = ["compression"] + (["effective_compression"] if has_eff else [])
    error_bars = any(n > 1 for s in series for n in s.n)

    n_rows_legend = len(series) + bool(baseline)
    ncols = 1 if n_rows_legend <= 18 else 2
    height = max(4.2, 0.22 * math.ceil(n_rows_legend / ncols) + 1.4)
    fig, axes = plt.subplots(1, len(panels), sharey=True, squeeze=False, layout="constrained",
                             figsize=(4.6 * len(panels) + 2.2 * ncols, height))
    axes = list(axes[0])
    colours = _colours(len(series))
    same_n = len({s.seeds for s in series}) == 1  # then the legend title says n once
    for ax, xcol in zip(axes, panels):
        for i, s in enumerate(series):
            xs = np.array(s.x if xcol == "compression" else s.x_effective)
            keep = np.isfinite(xs)
            ax.errorbar(xs[keep], np.array(s.y)[keep],
                        yerr=np.array(s.yerr)[keep] if error_bars else None,
                        color=colours[i], marker=MARKERS[i % len(MARKERS)], markersize=5, linewidth=1.4,
                        capsize=3 if error_bars else 0, elinewidth=1,
                        label=textwrap.fill(s.label if same_n else f"{s.label} ({s.seeds})", 40))
        for j, y in enumerate(baseline):
            ax.axhline(y, color="0.3", linestyle="--", linewidth=1.2, zorder=1,
                       label=(f"dense ({', '.join(f'{v:.3f}' for v in baseline)})" if j == 0 else None))
        _log_ticks(ax, [x for s in series for x in (s.x if xcol == "compression" else s.x_effective)])
        ax.set_xlabel(X_LABELS[xcol])
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
    axes[0].set_ylabel("test accuracy" + (" (mean ± std over seeds)" if error_bars else ""))
    handles, labels = axes[0].get_legend_handles_labels()
    primary = [c.rsplit(".", 1)[-1] for c in by if c in PRIMARY_METHOD_COLUMNS]
    legend_title = " / ".join(primary + (["options"] if len(primary) < len(by) else []))
    if same_n:
        n = series[0].seeds
        n = f"{n} seed" if n == "n=1" else f"{n} seeds"
        legend_title = f"{legend_title} ({n})" if legend_title else n
    fig.legend(handles, labels, loc="outside right upper", ncols=ncols, fontsize=8, title=legend_title,
               title_fontsize=8, frameon=False)
    head = [title] if title else []
    if constant:
        head.append(", ".join(f"{c.rsplit('.', 1)[-1]}={general(v)}" for c, v in constant.items()))
    if head:
        fig.suptitle("\n".join(head), fontsize=10)
    if skipped:
        # supxlabel: constrained layout keeps room for it (a free fig.text would overlap the x label)
        fig.supxlabel(f"not shown: {skipped} point(s) with infinite compression (no weight kept)",
                      fontsize=7, color="0.3")
    summary = PlotSummary(
        series=[s.label for s in series], points={s.label: len(s.x) for s in series},
        seeds={s.label: list(s.n) for s in series}, error_bars=error_bars, baseline=baseline,
        baseline_source=source, panels=panels, method_columns=by, constant=constant, skipped=skipped,
        figure=fig)
    return fig, summary


def save_figure(fig: Figure, out_path: str | Path, dpi: int = 150) -> Path:
    """Save ``fig`` atomically (format from the suffix: .png, .pdf, .svg) and close it."""
    out_path = Path(out_path)
    fmt = out_path.suffix.lstrip(".").lower() or "png"
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=dpi)
    except ValueError as exc:  # unknown format
        raise PrunelabError(f"cannot save a plot as {out_path.name!r}: {exc}") from None
    finally:
        plt.close(fig)
    atomic_write_bytes(out_path, buf.getvalue())
    return out_path


def plot_accuracy_vs_compression(csv_path: str | Path, out_path: str | Path,
                                 title: str | None = None) -> PlotSummary:
    """:func:`accuracy_figure` saved to ``out_path``; the summary (with ``path``) of what was drawn."""
    fig, summary = accuracy_figure(csv_path, title)
    summary.path = save_figure(fig, out_path)
    summary.figure = None
    return summary


def accuracy_vs_compression(csv_path: str | Path, out_path: str | Path, title: str | None = None) -> Path:
    """Save the accuracy-vs-compression plot of ``csv_path`` to ``out_path``; return the path."""
    return plot_accuracy_vs_compression(csv_path, out_path, title).path


def scatter_figure(groups: dict[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str, ylabel: str,
                   title: str | None = None, fit: bool = True) -> Figure:
    """One point per run, one colour and marker per group (``label -> (xs, ys)``), unsaved; ``fit``
    adds the least-squares line over all points (dashed), the line a correlation coefficient
    summarises. Raises :class:`PrunelabError` when no group has a finite point."""
    clean = {}
    for label, (xs, ys) in groups.items():
        pts = [(float(x), float(y)) for x, y in zip(xs, ys) if np.isfinite(float(x)) and np.isfinite(float(y))]
        if pts:
            clean[label] = pts
    if not clean:
        raise PrunelabError("nothing to plot: no group has a point with finite x and y")
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    colours = _colours(len(clean))
    for i, (label, pts) in enumerate(clean.items()):
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colours[i], marker=MARKERS[i % len(MARKERS)],
                   s=36, label=f"{label} (n={len(pts)})", zorder=3)
    every = [p for pts in clean.values() for p in pts]
    xs, ys = np.array([p[0] for p in every]), np.array([p[1] for p in every])
    if fit and len(every) >= 2 and np.ptp(xs) > 0:
        slope, intercept = np.polyfit(xs, ys, 1)
        grid = np.linspace(xs.min(), xs.max(), 50)
        ax.plot(grid, slope * grid + intercept, color="0.3", linestyle="--", linewidth=1.2, zorder=2,
                label=f"least squares (slope {slope:+.3g})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.35)
    ax.legend(fontsize=8, frameon=False, loc="best")
    if title:
        ax.set_title(textwrap.fill(title, 70), fontsize=9)
    return fig


def paper_comparison_figure(ours: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
                            paper: dict[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str, ylabel: str,
                            title: str | None = None, extra: dict[str, tuple[Sequence[float], Sequence[float],
                                                                           Sequence[float]]] | None = None,
                            x_of: Any = None, tick_labels: dict[float, str] | None = None) -> Figure:
    """Our curves beside a paper's numbers, unsaved: per method (a colour each) our means with sd error
    bars (solid, filled markers; ``ours[label] = (xs, means, sds)``) and the paper's values (dashed,
    hollow markers, ``paper[label] = (xs, ys)``); ``extra[label] = (xs, means, sds)`` adds our points
    drawn in a method's colour as stars (``label`` is ``"<method> <what>"``, the method's colour found
    by its first word). ``x_of`` maps an x value to its position (e.g. sparsity -> 1/(1 - s) on a log
    axis, set by ``tick_labels = {x: label}`` at the data's x values). Raises :class:`PrunelabError`
    when there is nothing to draw."""
    if not ours and not paper:
        raise PrunelabError("nothing to plot: no series of ours and none of the paper")
    pos = (lambda v: float(v)) if x_of is None else x_of
    methods = list(dict.fromkeys([*ours, *paper]))
    colours = dict(zip(methods, _colours(len(methods))))
    fig, ax = plt.subplots(figsize=(7.4, 4.6), layout="constrained")
    handles = []  # legend order: each method's ours then paper, then the extra points
    for i, m in enumerate(methods):
        c, marker = colours[m], MARKERS[i % len(MARKERS)]
        if m in ours:
            xs, ys, sd = ours[m]
            handles.append(ax.errorbar([pos(x) for x in xs], ys, yerr=sd, color=c, marker=marker, markersize=5,
                                       linewidth=1.4, capsize=3, elinewidth=1, label=f"{m} (ours)"))
        if m in paper:
            xs, ys = paper[m]
            handles += ax.plot([pos(x) for x in xs], ys, color=c, marker=marker, markersize=7, linestyle="--",
                               linewidth=1, markerfacecolor="none", label=f"{m} (paper)")
    for label, (xs, ys, sd) in (extra or {}).items():
        c = colours.get(label.split(" ")[0], "0.2")
        handles.append(ax.errorbar([pos(x) for x in xs], ys, yerr=sd, color=c, marker="*", markersize=10,
                                   linestyle="none", capsize=3, elinewidth=1, label=label))
    if tick_labels:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([pos(x) for x in tick_labels]))
        ax.xaxis.set_major_formatter(FixedFormatter(list(tick_labels.values())))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.35)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              borderaxespad=0)
    if title:
        ax.set_title(textwrap.fill(title, 70), fontsize=9)
    return fig
