"""Riera, Rey, Serra, Puertas & Pujol (CPAIOR 2022), "Training Thinner and Deeper Neural Networks:
Jumpstart Regularization": dead units with and without jumpstart on deep thin MLPs.

Claims checked (each architecture trained from the same initial weights with and without jumpstart):

1. jumpstart removes the dead units (and all-dead layers) that plain training leaves in deep thin
   networks (the reduction in % of the units, paired by seed, pooled over the architectures where
   plain training leaves any);
2. per architecture: with jumpstart the network trains better (test accuracy gain, paired by seed);
3. a network twice as deep and half as wide (same number of hidden units, fewer parameters) trained
   with jumpstart reaches the accuracy of the wider one trained plainly (within 1 point).

Intervals are 95% t-intervals over seeds (:func:`common.mean_ci`) of per-seed differences.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from prunelab.experiments.reproductions.base import Claim, Report, Reproduction, register
from prunelab.experiments.reproductions.common import fmt_mean_std, mean_ci, seeds_of

MARGIN = 1.0  # points: "reaches the accuracy" of claim 3 = not worse by more than this
SMOKE = "quick mode checks the pipeline, not the claim"
PAPER = ("without jumpstart, deep thin ReLU networks often fail to train (units and whole layers die); with it "
         "they train, so a thinner and deeper network reaches the accuracy of a wider one with fewer parameters")


def arch_of(row: Mapping[str, Any]) -> tuple[int, int]:
    """(depth, width) of the run's mlp (``model_kwargs`` reads ``widths=[8, 8, ...]`` in a row)."""
    kw = row.get("model_kwargs")
    ws = [int(w) for w in kw["widths"]] if isinstance(kw, Mapping) else [int(w) for w in re.findall(r"\d+", str(kw or ""))]
    return len(ws), (ws[0] if ws else 0)


def method_of(row: Mapping[str, Any]) -> str:
    v = row.get("train.jumpstart")
    return "jumpstart" if v not in (None, "") and float(v) > 0 else "plain"


def _f(row: Mapping[str, Any], key: str) -> float | None:
    v = row.get(key)
    return None if v in (None, "") else float(v)


def _interval(m: float, lo: float, hi: float, n: int, unit: str) -> str:
    if math.isnan(lo):
        return f"{m:+.2f}{unit} (n={n}, no interval)"
    return f"{m:+.2f}{unit}, 95% CI [{lo:+.2f}, {hi:+.2f}] (n={n})"


def _sign(lo: float, hi: float) -> str:
    if math.isnan(lo):
        return "inconclusive"
    return "reproduced" if lo > 0 else "not reproduced" if hi < 0 else "inconclusive"


def paired(by: Mapping[tuple[tuple[int, int], str], dict[int, Mapping[str, Any]]], a: tuple, b: tuple,
           key: str, scale: float = 1.0) -> list[float]:
    """Per-seed ``scale * (row_a[key] - row_b[key])`` for the seeds both groups ran."""
    ra, rb = by.get(a, {}), by.get(b, {})
    out = []
    for seed in sorted(set(ra) & set(rb)):
        va, vb = _f(ra[seed], key), _f(rb[seed], key)
        if va is not None and vb is not None:
            out.append(scale * (va - vb))
    return out


def report(rows: Sequence[Mapping[str, Any]], mode: str) -> Report:
    rows = [r for r in rows if r.get("units.dead_units") not in (None, "")]
    by: dict[tuple[tuple[int, int], str], dict[int, Mapping[str, Any]]] = defaultdict(dict)
    for r in rows:
        by[(arch_of(r), method_of(r))][int(r["seed"])] = r
    archs = sorted({a for a, _ in by}, key=lambda a: (a[1], -a[0]))  # thin first, then deep first
    claims: list[Claim] = []

    # 1. dead units: plain - jumpstart as a fraction of the units, paired by seed, pooled over the
    #    architectures where plain training leaves any
    pooled, parts = [], []
    for a in archs:
        plain_dead = [_f(r, "units.dead_units") for r in by.get((a, "plain"), {}).values()]
        units = int(next(iter(by.get((a, "plain"), {}).values()), {}).get("units.units") or a[0] * a[1])
        diffs = paired(by, (a, "plain"), (a, "jumpstart"), "units.dead_units", 100.0 / units)
        if not diffs or not any(v for v in plain_dead):
            continue
        pooled += diffs
        jump = statistics.fmean(_f(r, "units.dead_units") for r in by[(a, "jumpstart")].values())
        plain = statistics.fmean(v for v in plain_dead if v is not None)
        parts.append(f"{a[0]} x {a[1]}: {plain:.1f} -> {jump:.1f} of {units}")
    if pooled:
        m, lo, hi = mean_ci(pooled)
        claims.append(Claim("jumpstart removes the dead units of plain training",
                            "no dead units or layers with jumpstart",
                            "dead units (mean, plain -> jumpstart) " + "; ".join(parts) + "; reduction "
                            + _interval(m, lo, hi, len(pooled), "% of the units")[:-1] + " network-seed pairs)",
                            _sign(lo, hi)))
    else:
        claims.append(Claim("jumpstart removes the dead units of plain training", "no dead units or layers with jumpstart",
                            "plain training left no dead units", "inconclusive"))

    # 2. accuracy gain per architecture
    for a in archs:
        gains = paired(by, (a, "jumpstart"), (a, "plain"), "test_accuracy", 100.0)
        if not gains:
            continue
        m, lo, hi = mean_ci(gains)
        claims.append(Claim(f"{a[0]} x {a[1]}: jumpstart trains better (test accuracy)", "higher with jumpstart",
                            _interval(m, lo, hi, len(gains), " points"), _sign(lo, hi)))

    # 3. deeper and thinner with jumpstart vs the wider network of the same number of units, plain
    for d, w in archs:
        wide = (d // 2, 2 * w)
        if d % 2 or wide not in {x for x, _ in by}:
            continue
        diffs = paired(by, ((d, w), "jumpstart"), (wide, "plain"), "test_accuracy", 100.0)
        if not diffs:
            continue
        m, lo, hi = mean_ci(diffs)
        verdict = ("inconclusive" if math.isnan(lo) else "reproduced" if lo > -MARGIN else
                   "not reproduced" if hi < -MARGIN else "inconclusive")
        claims.append(Claim(f"{d} x {w} with jumpstart reaches {wide[0]} x {wide[1]} plain (within {MARGIN:g} point)",
                            "same accuracy with fewer parameters", _interval(m, lo, hi, len(diffs), " points"),
                            verdict, "difference of accuracies, seeds paired by index"))
    if mode == "quick":
        for c in claims:
            c.verdict, c.note = "smoke run", SMOKE

    table = []
    for a in archs:
        for method in ("plain", "jumpstart"):
            g = list(by.get((a, method), {}).values())
            if not g:
                continue

            def mean_of(key: str, g=g) -> str:
                vals = [v for r in g if (v := _f(r, key)) is not None]
                return f"{statistics.fmean(vals):.1f}" if vals else ""

            table.append({"depth x width": f"{a[0]} x {a[1]}", "params": g[0].get("params", ""), "method": method,
                          "seeds": len(g), "test acc %": fmt_mean_std([float(r["test_accuracy"]) for r in g], 100.0),
                          "dead units": f"{mean_of('units.dead_units')} / {g[0].get('units.units')}",
                          "linear units": mean_of("units.linear_units"),
                          "all-dead layers": mean_of("units.dead_layers")})
    datasets = sorted({str(r.get("dataset")) for r in rows})
    epochs = sorted({str(r.get("train.epochs")) for r in rows})
    strengths = sorted({float(r["train.jumpstart"]) for r in rows if method_of(r) == "jumpstart"})
    setting = (f"ReLU MLPs (depth x width: {', '.join(f'{d} x {w}' for d, w in archs)}) on {', '.join(datasets)}, "
               f"Adam lr 1e-3, batch 128, {', '.join(epochs)} epochs, plain vs jumpstart (lambda "
               f"{', '.join(f'{s:g}' for s in strengths)}) from the same initial weights; dead / linear units counted "
               f"on the training set; {seeds_of(rows)} seed(s), 95% t-intervals over seeds; mode {mode}. "
               f"Paper: {PAPER}.")
    cols = ["depth x width", "params", "method", "seeds", "test acc %", "dead units", "linear units", "all-dead layers"]
    return Report("Jumpstart regularisation on deep thin MLPs (Riera et al. 2022)", setting, claims, table, cols)


register(Reproduction(
    name="jumpstart",
    paper="Riera, Rey, Serra, Puertas & Pujol 2022, Training Thinner and Deeper Neural Networks: Jumpstart Regularization (CPAIOR)",
    claim="jumpstart keeps the units of deep thin MLPs alive (no dead units or layers) and trains them better",
    sweep="jumpstart.toml",
    report=report,
    data="mnist",
    time={"quick": "~10 s CPU (digits)", "default": "~6 min CPU (1 core)",
          "full": "~1 h GPU (estimate: 120 runs of 20 epochs, up to 50 layers; not 10 minutes at this scale), "
                  "~4 h CPU"},
))
