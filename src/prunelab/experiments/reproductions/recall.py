"""Good, Lin, Yu, Sieg, Fergurson, Zhe, Wieczorek & Serra (NeurIPS 2022), "Recall Distortion in Neural
Network Pruning and the Undecayed Pruning Algorithm": intensification of recall under IMP.

The paper's hypothesis (abstract): pruning makes recall relatively worse for a class whose recall is
below the accuracy and relatively better for one above it (*intensification*); summarised per model
by the expected model-level intensification ratio E[alpha_t] as a function of the pruning ratio t.
**Where alpha comes from:** the name and the role of alpha (a model-level intensification ratio, > 1/2
meaning intensification) are the paper's; its formula here is prunelab's
(:mod:`prunelab.analysis.recall`, reasoning in docs/stability_and_recall.md), written without the
paper's text at hand: alpha = the fraction of classes whose recall/accuracy ratio moved further from 1
in the direction it already deviated, among the classes that deviated and moved. It is not a
transcription of the paper's definition.

Claims (the abstract's), each per criterion (magnitude, upa) and tested on one summary per seed, with
a 95% t-interval over seeds (:func:`prunelab.experiments.reproductions.common.mean_ci`):

1. de-intensification at low ratios: the seed's mean alpha over the rounds with ratio <= 0.5 is < 1/2;
2. intensification at high ratios: the seed's mean alpha over the rounds with ratio >= 0.95 is > 1/2;
3. intensification grows with the ratio: the seed's least-squares slope of alpha on the ratio is > 0;
4. upa intensifies less than magnitude: the seed's mean alpha over all rounds, upa minus magnitude
   (same dense model), is < 0.

Verdict: *reproduced* when the interval lies on the claimed side, *not reproduced* when it lies on the
other side, *inconclusive* when it contains the neutral value (or with fewer than two seeds). When no
round falls in a band (a short run), the lowest / highest ratio run stands for it (stated in the row).

Rows: either one row per run of the ``imp_rounds`` schedule with the ``recall_rounds`` analysis
(columns ``recall_rounds.r<k>.*``), or one row per ``imp`` run with the ``recall`` analysis
(``recall.intensification_ratio`` at ``prune.sparsity``).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunelab.experiments.reproductions.base import Claim, Report, Reproduction, register
from prunelab.experiments.reproductions.common import mean_ci
from prunelab.pruning import imp_rounds as _imp_rounds  # noqa: F401  (registers the imp_rounds schedule)

CRITERIA = ("magnitude", "upa")
LOW, HIGH = 0.5, 0.95
PREFIX = "recall_rounds."


@dataclass(frozen=True)
class Observation:
    """One pruned model: a round of an IMP run."""

    criterion: str
    seed: Any
    sparsity: float
    accuracy: float
    alpha: float
    beta: float
    recall: tuple[float, ...]


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _recall(v: Any) -> tuple[float, ...]:
    if isinstance(v, str):
        return tuple(float(x) for x in v.split(";") if x.strip())
    if isinstance(v, (int, float)):
        return (float(v),)
    return tuple(float(x) for x in v or ())


def observations(rows: Sequence[Mapping[str, Any]]) -> list[Observation]:
    """Every pruned model of the rows (each round of an ``imp_rounds`` run, or each ``imp`` run)."""
    out = []
    for r in rows:
        crit, seed = str(r.get("prune.criterion")), r.get("seed")
        n = r.get(PREFIX + "rounds")
        if n is not None and not (isinstance(n, float) and math.isnan(n)):
            for k in range(1, int(n) + 1):
                p = f"{PREFIX}r{k:02d}."
                out.append(Observation(crit, seed, round(_num(r[p + "sparsity"]), 4), _num(r[p + "test_accuracy"]),
                                       _num(r[p + "intensification_ratio"]), _num(r[p + "distortion_slope"]),
                                       _recall(r.get(p + "per_class_recall"))))
        elif "recall.intensification_ratio" in r:
            out.append(Observation(crit, seed, round(_num(r["prune.sparsity"]), 4), _num(r.get("test_accuracy")),
                                   _num(r["recall.intensification_ratio"]), _num(r.get("recall.distortion_slope")),
                                   _recall(r.get("per_class_recall"))))
    return out


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.fmean(vals) if vals else math.nan


def _per_seed(obs: Sequence[Observation], crit: str, keep) -> dict[Any, float]:
    """seed -> mean alpha over this criterion's observations with ``keep(sparsity)``."""
    cells: dict[Any, list[float]] = defaultdict(list)
    for o in obs:
        if o.criterion == crit and keep(o.sparsity):
            cells[o.seed].append(o.alpha)
    return {s: m for s, v in cells.items() if not math.isnan(m := _nanmean(v))}


def _slopes(obs: Sequence[Observation], crit: str) -> dict[Any, float]:
    """seed -> least-squares slope of alpha on the pruning ratio (needs >= 2 distinct ratios)."""
    pts: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for o in obs:
        if o.criterion == crit and not math.isnan(o.alpha):
            pts[o.seed].append((o.sparsity, o.alpha))
    out = {}
    for seed, p in pts.items():
        x = np.array([a for a, _ in p])
        if len(p) >= 2 and np.ptp(x) > 0:
            y = np.array([b for _, b in p])
            out[seed] = float(np.polyfit(x, y, 1)[0])
    return out


def _verdict(lo: float, hi: float, neutral: float, claimed: str) -> str:
    """``claimed`` is "above" or "below" the neutral value."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    above, below = lo > neutral, hi < neutral
    if (claimed == "above" and above) or (claimed == "below" and below):
        return "reproduced"
    if (claimed == "above" and below) or (claimed == "below" and above):
        return "not reproduced"
    return "inconclusive"


def _ci_text(values: Sequence[float]) -> tuple[str, float, float]:
    m, lo, hi = mean_ci(values)
    if math.isfinite(lo):
        return f"{m:.3f} [{lo:.3f}, {hi:.3f}], {len(values)} seeds", lo, hi
    return f"{m:.3f} ({len(values)} seed{'s' if len(values) != 1 else ''}: no interval)", lo, hi


def _band(ratios: Sequence[float], low: bool) -> tuple[list[float], str]:
    if low:
        inside = [s for s in ratios if s <= LOW + 1e-9]
        return (inside, f"ratios <= {LOW:g}") if inside else ([min(ratios)], f"lowest ratio {min(ratios):g}")
    inside = [s for s in ratios if s >= HIGH - 1e-9]
    return (inside, f"ratios >= {HIGH:g}") if inside else ([max(ratios)], f"highest ratio {max(ratios):g}")


def report(rows: Sequence[Mapping[str, Any]], mode: str) -> Report:
    obs = observations(rows)
    crits = [c for c in CRITERIA if any(o.criterion == c for o in obs)] + sorted(
        {o.criterion for o in obs} - set(CRITERIA))
    ratios = sorted({o.sparsity for o in obs})
    claims: list[Claim] = []
    if ratios:
        for low, claimed, what, paper in ((True, "below", "de-intensification at low ratios", "alpha < 1/2"),
                                          (False, "above", "intensification at high ratios", "alpha > 1/2")):
            band, name = _band(ratios, low)
            for c in crits:
                vals = list(_per_seed(obs, c, lambda s, b=band: any(abs(s - x) < 1e-9 for x in b)).values())
                if vals:
                    txt, lo, hi = _ci_text(vals)
                    claims.append(Claim(f"{what} ({c})", paper, f"mean alpha over {name}: {txt}",
                                        _verdict(lo, hi, 0.5, claimed)))
        for c in crits:
            vals = list(_slopes(obs, c).values())
            if vals:
                txt, lo, hi = _ci_text(vals)
                claims.append(Claim(f"intensification grows with the ratio ({c})", "d alpha / d ratio > 0",
                                    f"per-seed slope of alpha on the ratio: {txt}", _verdict(lo, hi, 0.0, "above")))
        if "magnitude" in crits and "upa" in crits:
            mag, upa = _per_seed(obs, "magnitude", lambda s: True), _per_seed(obs, "upa", lambda s: True)
            diffs = [upa[s] - mag[s] for s in upa if s in mag]
            if diffs:
                txt, lo, hi = _ci_text(diffs)
                claims.append(Claim("upa intensifies less than magnitude", "alpha(upa) < alpha(magnitude)",
                                    f"mean alpha over all ratios, upa - magnitude (paired by seed): {txt}",
                                    _verdict(lo, hi, 0.0, "below")))
    if mode == "quick":
        for c in claims:
            c.verdict, c.note = "smoke run", "quick mode checks the pipeline, not the claim"
    table = []
    cells: dict[tuple[str, float], list[Observation]] = defaultdict(list)
    for o in obs:
        cells[(o.criterion, o.sparsity)].append(o)
    for c in crits:
        for s in ratios:
            group = cells.get((c, s), [])
            if not group:
                continue
            alphas = [o.alpha for o in group if not math.isnan(o.alpha)]
            m, lo, hi = mean_ci(alphas)
            table.append({"criterion": c, "sparsity": f"{s:.4f}", "n": len(group),
                          "accuracy %": f"{100 * statistics.fmean(o.accuracy for o in group):.2f}",
                          "alpha [95% CI]": f"{m:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else ""),
                          "beta": f"{_nanmean([o.beta for o in group]):.3f}"})
    dense = {r.get("seed"): _num(r.get("dense_test_accuracy")) for r in rows}
    dense_vals = [v for v in dense.values() if not math.isnan(v)]
    rounds = max((int(_num(r.get(PREFIX + "rounds"))) for r in rows
                  if not math.isnan(_num(r.get(PREFIX + "rounds")))), default=0)
    epochs = next((r.get("finetune.epochs") for r in rows), "?")
    openlth = any(str(r.get("prune.schedule_options.counting") or "") == "openlth" for r in rows)
    counted = ("the remaining weights counted as OpenLTH does (the output layer too)" if openlth
               else "the remaining prunable weights")
    setting = (f"LeNet-300-100 on MNIST, IMP (20% of {counted} per round, output layer not "
               f"pruned, rewound to initialisation), {len(dense)} seed(s), {rounds or len(ratios)} round(s) to "
               f"{max(ratios, default=0):.4f}, {epochs} epoch(s) per round; dense accuracy "
               + (f"{100 * statistics.fmean(dense_vals):.2f}%" if dense_vals else "n/a")
               + f"; claims on per-seed summaries (low: ratio <= {LOW:g}, high: >= {HIGH:g}); alpha: prunelab's "
               f"formula (prunelab.analysis.recall), written from the paper's hypothesis: the authors' code has none; "
               f"mode {mode}.")
    return Report("Recall distortion under IMP (Good et al. 2022)", setting, claims, table,
                  ["criterion", "sparsity", "n", "accuracy %", "alpha [95% CI]", "beta"])


register(Reproduction(
    name="recall",
    paper="Good, Lin, Yu, Sieg, Fergurson, Zhe, Wieczorek & Serra 2022, Recall Distortion in Neural Network "
          "Pruning and the Undecayed Pruning Algorithm (NeurIPS)",
    claim="de-intensification (alpha < 1/2) at low IMP ratios, intensification at high ones, alpha grows with the "
          "ratio, upa intensifies less than magnitude",
    sweep="recall.toml",
    report=report,
    data="mnist",
    time={"quick": "~10 s CPU", "default": "~45 min CPU (--executor processes --jobs 2), ~1.5 h on 1 core",
          "full": "~1 h GPU, more than the 10-minute budget: 10 runs of 20 rounds x 40 epochs "
          "(estimate, not measured: no GPU was available)"},
))
