"""Serra, Kumar & Ramalingam (CPAIOR 2020), "Lossless Compression of Deep Neural Networks" (and the
NeurIPS 2021 follow-up): units that are stable over the input domain are removed or folded exactly.

Claims checked (MNIST MLPs trained with an L1 penalty, the `exact` analysis on [0, 1]^784):

1. the compression is exact: the smaller network computes the same function (verified on the test
   set and 10^4 random points of the box);
2. CPAIOR 2020, Table 1, 2 x 100 with L1 = 5e-4: 97.14% test accuracy ...
3. ... and 30.8% "network compression" = hidden units removed / hidden units (36.7 + 24.9 of 200),
   compared with ``exact.neurons_removed_fraction`` (connections removed are shown beside it);
4. a stronger L1 penalty makes more units stable: compression grows with L1 (every architecture).

A paper figure is compared with the 95% t-interval of our mean over seeds by an equivalence rule:
*reproduced* when the whole interval lies within the tolerance around the paper's value (0.5 points of
accuracy, 2 points of compression), *not reproduced* when it lies wholly outside, *inconclusive* when
it straddles an edge or there is a single seed. The paper's recipe is the ``full`` mode; the
``default`` mode is the reduced CPU recipe (25 epochs, constant lr), compared with the same figures.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from prunelab.experiments.reproductions.base import Claim, Report, Reproduction, register
from prunelab.experiments.reproductions.common import fmt_mean_std, mean_ci, seeds_of

#: CPAIOR 2020, Table 1, MNIST 2 x 100, L1 = 5e-4.
PAPER = {"accuracy": 0.9714, "units_removed": 0.308, "per_layer": (36.7, 24.9)}
PAPER_L1 = 5e-4
ACC_TOL, UNITS_TOL = 0.005, 0.02  # equivalence margins: 0.5 points of accuracy, 2 points of compression
SMOKE = "quick mode checks the pipeline, not the claim"


def widths_of(row: Mapping[str, Any]) -> tuple[int, ...]:
    """The hidden widths of the run's mlp (``model_kwargs`` reads ``widths=[100, 100]`` in a row)."""
    kw = row.get("model_kwargs")
    if isinstance(kw, Mapping):
        return tuple(int(w) for w in kw["widths"])
    return tuple(int(w) for w in re.findall(r"\d+", str(kw or "")))


def arch_of(row: Mapping[str, Any]) -> str:
    """``2 x 100`` (depth x width) for equal widths, else ``100-50``."""
    ws = widths_of(row)
    if ws and len(set(ws)) == 1:
        return f"{len(ws)} x {ws[0]}"
    return "-".join(map(str, ws)) or "?"


def l1_of(row: Mapping[str, Any]) -> float:
    v = row.get("train.l1")
    return 0.0 if v in (None, "") else float(v)


def _truth(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v in ("True", "False"):
        return v == "True"
    if isinstance(v, (int, float)):
        return bool(v)
    return None


def per_layer(row: Mapping[str, Any]) -> list[int]:
    """``exact.neurons_removed_per_layer`` (``31,15`` in a row; a single layer reads back as a number)."""
    v = row.get("exact.neurons_removed_per_layer")
    if v is None or v == "":
        return []
    return [int(x) for x in str(v).split(",") if x.strip()]


def equivalence(values: Sequence[float], paper: float, tol: float) -> tuple[str, float, float, float]:
    """(verdict, mean, low, high): the 95% interval of the mean against ``paper`` +- ``tol``."""
    m, lo, hi = mean_ci(values)
    if math.isnan(lo):
        return "inconclusive", m, lo, hi
    if paper - tol <= lo and hi <= paper + tol:
        return "reproduced", m, lo, hi
    if hi < paper - tol or lo > paper + tol:
        return "not reproduced", m, lo, hi
    return "inconclusive", m, lo, hi


def _pct_interval(m: float, lo: float, hi: float, n: int) -> str:
    if math.isnan(lo):
        return f"{100 * m:.2f}% (n={n}, no interval)"
    return f"{100 * m:.2f}%, 95% CI [{100 * lo:.2f}, {100 * hi:.2f}] (n={n})"


def report(rows: Sequence[Mapping[str, Any]], mode: str) -> Report:
    rows = [r for r in rows if r.get("exact.neurons_removed_fraction") not in (None, "")]
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(arch_of(r), l1_of(r))].append(r)
    archs = sorted({a for a, _ in groups}, key=lambda a: (len(a), a))
    l1s = sorted({l1 for _, l1 in groups})
    claims: list[Claim] = []

    verified = [_truth(r.get("exact.verified")) for r in rows]
    ok = sum(v is True for v in verified)
    claims.append(Claim("the compressed network computes the same function",
                        "lossless (same outputs on every input of the domain)",
                        f"verified on the test set + 10^4 box points for {ok} of {len(rows)} networks",
                        "reproduced" if rows and ok == len(rows) else "not reproduced" if rows else "inconclusive"))

    target = groups.get(("2 x 100", PAPER_L1), [])
    if target and str(target[0].get("dataset")) == "mnist":
        n = len(target)
        acc = [float(r["test_accuracy"]) for r in target]
        verdict, m, lo, hi = equivalence(acc, PAPER["accuracy"], ACC_TOL)
        claims.append(Claim("2 x 100, L1 5e-4: test accuracy (within 0.5 points)", f"{100 * PAPER['accuracy']:.2f}%",
                            _pct_interval(m, lo, hi, n), verdict))
        units = [float(r["exact.neurons_removed_fraction"]) for r in target]
        verdict, m, lo, hi = equivalence(units, PAPER["units_removed"], UNITS_TOL)
        layers = list(zip(*[per_layer(r) for r in target if per_layer(r)]))
        shown = " + ".join(f"{statistics.fmean(v):.1f}" for v in layers)
        conn = [float(r["exact.connections_removed_fraction"]) for r in target]
        claims.append(Claim("2 x 100, L1 5e-4: network compression = hidden units removed (within 2 points)",
                            f"{100 * PAPER['units_removed']:.1f}% ({PAPER['per_layer'][0]} + {PAPER['per_layer'][1]} "
                            "of 200 units)",
                            _pct_interval(m, lo, hi, n) + (f" ({shown} of 200 units)" if shown else ""), verdict,
                            f"connections removed {100 * statistics.fmean(conn):.1f}%"))

    if len(l1s) > 1:
        trend_ok, broken = 0, []
        for a in archs:
            means = [statistics.fmean(float(r["exact.neurons_removed_fraction"]) for r in groups[(a, l1)])
                     for l1 in l1s if (a, l1) in groups]
            if len(means) < 2:
                continue
            if all(y >= x - 1e-12 for x, y in itertools.pairwise(means)) and means[-1] > means[0]:
                trend_ok += 1
            else:
                broken.append(a)
        total = trend_ok + len(broken)
        claims.append(Claim("stronger L1, more hidden units removed", "compression grows with L1",
                            f"non-decreasing in L1 (and up overall) for {trend_ok} of {total} architectures"
                            + (f"; not for {', '.join(broken)}" if broken else ""),
                            "reproduced" if total and not broken else "not reproduced" if total else "inconclusive"))
    if mode == "quick":
        for c in claims:
            c.verdict, c.note = "smoke run", SMOKE

    table = []
    for a in archs:
        for l1 in l1s:
            g = groups.get((a, l1))
            if not g:
                continue
            layers = list(zip(*[per_layer(r) for r in g if per_layer(r)]))

            def mean_of(key: str, g=g) -> str:
                vals = [float(r[key]) for r in g if r.get(key) not in (None, "")]
                return f"{statistics.fmean(vals):.1f}" if vals else ""

            table.append({
                "network": a, "L1": f"{l1:g}", "seeds": len(g),
                "test acc %": fmt_mean_std([float(r["test_accuracy"]) for r in g], 100.0),
                "hidden units removed %": fmt_mean_std([float(r["exact.neurons_removed_fraction"]) for r in g], 100.0),
                "units removed per layer": " + ".join(f"{statistics.fmean(v):.1f}" for v in layers),
                "connections removed %": fmt_mean_std([float(r["exact.connections_removed_fraction"]) for r in g],
                                                      100.0),
                "stably active": mean_of("exact.stably_active"), "stably inactive": mean_of("exact.stably_inactive"),
                "unresolved": mean_of("exact.unresolved"),
            })
    recipes = sorted({(r.get("train.epochs"), r.get("train.lr_schedule"), str(r.get("train.milestones") or ""))
                      for r in rows}, key=str)
    recipe = "; ".join(f"{e} epochs, {s} lr" + (f" (x0.1 at epochs {m.replace(';', ', ')})" if m else "")
                       for e, s, m in recipes)
    datasets = sorted({str(r.get("dataset")) for r in rows})
    setting = (f"ReLU MLPs ({', '.join(archs)}) on {', '.join(datasets)} pixels in [0, 1], SGD lr 0.01 momentum 0.9 "
               f"batch 128, {recipe}; L1 {', '.join(f'{v:g}' for v in l1s)}; stable units over the box by per-unit "
               f"HiGHS MILPs (unresolved units kept); {seeds_of(rows)} seed(s), 95% t-intervals over seeds; mode {mode}. "
               "Paper (CPAIOR 2020): 2 x 100, L1 5e-4, 121 epochs with a step decay (the full mode).")
    cols = ["network", "L1", "seeds", "test acc %", "hidden units removed %", "units removed per layer",
            "connections removed %", "stably active", "stably inactive", "unresolved"]
    return Report("Exact compression by ReLU stability (Serra, Kumar & Ramalingam 2020)", setting, claims, table, cols)


register(Reproduction(
    name="exact-compression",
    paper="Serra, Kumar & Ramalingam 2020, Lossless Compression of Deep Neural Networks (CPAIOR)",
    claim="stable ReLUs over [0, 1]^784 remove 30.8% of the hidden units of a 2 x 100 MNIST MLP (L1 5e-4, 97.14%) exactly",
    sweep="exact_compression.toml",
    report=report,
    data="mnist",
    time={"quick": "~10 s CPU (digits)", "default": "~22 min CPU (1 core; ~11 min per seed)",
          "full": "~6 min GPU (estimate: 10 x 121 epochs of 2 x 100, MILPs on CPU); ~19 min CPU"},
))
