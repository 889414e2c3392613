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


def published_mean_p(values: Sequence[float], published: float, runs: int) -> float:
    """Two-sided p-value that a published mean of ``runs`` runs and our mean of ``values`` come from one
    normal distribution: the pooled two-sample t-test with the published runs' sd taken as ours (papers
    give means only), ``t = (mean - published) / (sd * sqrt(1/n + 1/runs))`` on ``n - 1`` degrees of
    freedom. With ``sd == 0`` it is 1 when the means agree and 0 otherwise; nan for fewer than two values."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n < 2 or runs < 1:
        return math.nan
    gap, sd = statistics.fmean(vals) - published, statistics.stdev(vals)
    if sd == 0:
        return 1.0 if abs(gap) < 1e-12 else 0.0
    t = gap / (sd * math.sqrt(1 / n + 1 / runs))
    return float(2 * stats.t.sf(abs(t), n - 1))


def outside_one_sd_probability(n: int, runs: int) -> float:
    """Chance that a published mean of ``runs`` runs lies more than our sample sd from our mean of ``n``
    seeds when both are draws of one normal distribution: ``|gap| / (sd sqrt(1/n + 1/runs))`` is t with
    ``n - 1`` degrees of freedom, so it is ``P(|t| > 1 / sqrt(1/n + 1/runs))`` (0.189 for 5 and 5)."""
    if n < 2 or runs < 1:
        return math.nan
    return float(2 * stats.t.sf(1 / math.sqrt(1 / n + 1 / runs), n - 1))


def holm_rejected(pvalues: Mapping[Any, float], alpha: float = 0.05) -> set[Any]:
    """Holm's step-down procedure (Holm 1979): the keys whose hypotheses are rejected at family-wise
    error ``alpha``. Sorted ascending, the k-th smallest p (k from 0) is rejected while
    ``p <= alpha / (m - k)``; the first that is not stops the procedure."""
    m = len(pvalues)
    out: set[Any] = set()
    for k, (key, p) in enumerate(sorted(pvalues.items(), key=lambda kv: kv[1])):
        if not p <= alpha / (m - k):
            break
        out.add(key)
    return out
