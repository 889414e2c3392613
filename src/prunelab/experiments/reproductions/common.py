"""Helpers the reproduction reports share: grouping rows, means with intervals, method labels."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from scipy import stats


def method_label(row: Mapping[str, Any]) -> str:
    """``random-erk`` for random pruning (the quota is the method), else the criterion's name."""
    crit, alloc = str(row.get("prune.criterion")), str(row.get("prune.allocation"))
    return f"{crit}-{alloc}" if crit == "random" else crit


def compression_of(row: Mapping[str, Any]) -> float:
    """The requested direct compression 1 / (1 - sparsity), rounded as papers print it (31.6, 316)."""
    s = float(row["prune.sparsity"])
    c = 1.0 / (1.0 - s)
    return float(f"{c:.3g}")


def group(rows: Iterable[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Any],
          value: Callable[[Mapping[str, Any]], float | None]) -> dict[Any, list[float]]:
    out: dict[Any, list[float]] = defaultdict(list)
    for r in rows:
        v = value(r)
        if v is not None:
            out[key(r)].append(float(v))
    return dict(out)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a t-interval over seeds; (mean, nan, nan) for fewer than two values."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan, math.nan
    m = statistics.fmean(vals) if all(math.isfinite(v) for v in vals) else math.inf
    if len(vals) < 2 or not math.isfinite(m):
        return m, math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
    return m, m - half, m + half


def fmt_mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    vals = [scale * float(v) for v in values]
    if not vals:
        return ""
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.fmean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def fmt_x(v: float) -> str:
    """A compression factor: ``∞`` when no input-output path is left."""
    return "∞" if math.isinf(v) else f"{v:.3g}"


def seeds_of(rows: Iterable[Mapping[str, Any]]) -> int:
    return len({r.get("seed") for r in rows})
