"""Bartoldson, Morcos, Barbu & Erlebacher (2020), "The Generalization-Stability Tradeoff in Neural
Network Pruning" (NeurIPS 33): VGG11-BN on CIFAR-10, Fig. 2.

Claims checked (over the paper's Fig. 2 VGG methods, Prune_S at the small and the large iterative
rate and Prune_L at the large one; runs = methods x seeds):

1. mean pruning stability and best test accuracy after the last pruning event are negatively
   correlated across runs (Pearson's r, 95% interval by Fisher's z; Kendall's tau beside it);
2. the least stable method generalises best: Prune_L at the large rate beats Prune_S at the small
   rate in best test accuracy (paired by seed, t-interval of the difference);
3. the premise: the methods span stability, Prune_S at the small rate being more stable than
   Prune_L at the large one (paired difference of mean stability).

Each run is one ``structured`` schedule run (:mod:`prunelab.pruning.structured_schedule`) with the
``stability`` analysis; the method is read from ``prune.schedule_options.target`` / ``.period``
and labelled with its nominal rate (the largest fraction of a layer's filters one event removes).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scipy import stats

from prunelab.analysis.stability import stability_correlations
from prunelab.experiments.reproductions.base import Claim, Report, Reproduction, register, sweep_dict
from prunelab.experiments.reproductions.common import fmt_mean_std, mean_ci, seeds_of
from prunelab.models import vgg_width as _vgg_width  # noqa: F401  (registers vgg_scaled)
from prunelab.pruning import structured_schedule as _structured  # noqa: F401  (registers the schedule)
from prunelab.pruning.structured_schedule import TARGET_NAMES, StructuredOptions
from prunelab.report.plots import save_figure, scatter_figure

NAME = "stability"
STABILITY = "stability.mean_stability"
ACCURACY = "stability.best_test_acc"
GAP = "stability.generalization_gap"
EVENTS = "stability.num_events"
PAPER = "Bartoldson et al. 2020, The Generalization-Stability Tradeoff in Neural Network Pruning (NeurIPS)"


def _option(row: Mapping[str, Any], key: str) -> Any:
    value = row.get(f"prune.schedule_options.{key}")
    return StructuredOptions.model_fields[key].default if value in (None, "") else value


def _plans(mode: str) -> list[dict[str, Any]]:
    return sweep_dict(NAME, mode).get("prune", {}).get("schedule_options", {}).get("layers", [])


def method_of(row: Mapping[str, Any], mode: str) -> tuple[str, float, str]:
    """(target, nominal rate, label) of a run; ``("none", 0, "No Pruning")`` for a run without layer plans."""
    if row.get("prune.schedule_options.layers") in (None, ""):
        return "none", 0.0, "No Pruning"
    target, period = str(_option(row, "target")), int(_option(row, "period"))
    rate = StructuredOptions(layers=_plans(mode), period=period).nominal_rate()
    return target, rate, f"{TARGET_NAMES.get(target, target)} {100 * rate:.2g}%"


def correlation_ci(r: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Fisher-z interval of Pearson's r over n pairs; (r, r) when |r| = 1, (nan, nan) for n < 4 or r = nan."""
    if n < 4 or not math.isfinite(r):
        return math.nan, math.nan
    if abs(r) >= 1:
        return r, r
    z, half = math.atanh(r), stats.norm.ppf(0.5 + confidence / 2) / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def _sign_verdict(low: float, high: float, expect_positive: bool) -> str:
    """reproduced if the interval lies on the paper's side of 0, not reproduced if on the other, else inconclusive."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if (low > 0) if expect_positive else (high < 0):
        return "reproduced"
    if (high < 0) if expect_positive else (low > 0):
        return "not reproduced"
    return "inconclusive"


def _fmt_ci(m: float, low: float, high: float, digits: int = 2, scale: float = 1.0, unit: str = "points") -> str:
    if not math.isfinite(low):
        return f"{scale * m:+.{digits}f} {unit} (no interval)"
    return f"{scale * m:+.{digits}f} [{scale * low:+.{digits}f}, {scale * high:+.{digits}f}] {unit}"


def _paired(rows: Sequence[Mapping[str, Any]], a: str, b: str, column: str) -> list[float]:
    """Per seed: value of method ``a`` minus value of method ``b`` (seeds with both)."""
    by = {(r["_label"], r.get("seed")): float(r[column]) for r in rows if r.get(column) not in (None, "")}
    seeds = sorted({s for (_, s) in by}, key=str)
    return [by[(a, s)] - by[(b, s)] for s in seeds if (a, s) in by and (b, s) in by]


def report(rows: Sequence[Mapping[str, Any]], mode: str) -> Report:
    labelled = _labelled(rows, mode)
    pruned = [r for r in labelled if r["_target"] != "none"]
    fig2 = _fig2_runs(pruned)
    rates = sorted({r["_rate"] for r in fig2})
    small, large = (rates[0], rates[-1]) if rates else (math.nan, math.nan)
    label_of = {(r["_target"], r["_rate"]): r["_label"] for r in labelled}
    s_small, l_large = label_of.get(("smallest", small), "Prune_S (small rate)"), label_of.get(
        ("largest", large), "Prune_L (large rate)")
    n = len(fig2)
    claims = []

    c, lo, hi = _fig2_correlation(fig2)
    interval = f"95% CI {lo:.2f} to {hi:.2f}" if math.isfinite(lo) else "no interval below 4 runs"
    ours = (f"Pearson r = {c['pearson_r']:.2f} ({interval}), Kendall tau = {c['kendall_tau']:.2f} "
            f"(p = {c['kendall_p']:.2g}) over {n} runs" if math.isfinite(c["pearson_r"])
            else f"not computable over {n} run(s)")
    claims.append(Claim("stability and best test accuracy are negatively correlated",
                        "negative (Fig. 2, VGG11-BN, 10 seeds)", ours, _sign_verdict(lo, hi, expect_positive=False),
                        "over the Prune_S and Prune_L runs"))

    d_acc = _paired(labelled, l_large, s_small, ACCURACY)
    m, lo, hi = mean_ci(d_acc)
    claims.append(Claim(f"the least stable method generalises best: {l_large} > {s_small}",
                        "Prune_L 13% has the highest, Prune_S 1% the lowest accuracy of the pruned runs (Fig. 2)",
                        f"accuracy difference {_fmt_ci(m, lo, hi, 2, 100)} over {len(d_acc)} seed(s)",
                        _sign_verdict(lo, hi, expect_positive=True)))

    d_st = _paired(labelled, s_small, l_large, STABILITY)
    m, lo, hi = mean_ci(d_st)
    claims.append(Claim(f"premise: {s_small} is more stable than {l_large}",
                        "Prune_S 1% the most, Prune_L 13% the least stable (Fig. 2)",
                        f"stability difference {_fmt_ci(m, lo, hi, 2)} over {len(d_st)} seed(s)",
                        _sign_verdict(lo, hi, expect_positive=True)))

    if mode == "quick":
        for claim in claims:
            claim.verdict, claim.note = "smoke run", "quick mode checks the pipeline, not the claim"

    table = []
    order = sorted({(r["_target"] != "none", r["_rate"], r["_target"], r["_label"]) for r in labelled})
    for *_, label in order:
        rs = [r for r in labelled if r["_label"] == label]
        stab = [float(r[STABILITY]) for r in rs]
        m, lo, hi = mean_ci(stab)
        table.append({
            "method": label, "runs": len(rs),
            "mean stability %": f"{m:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) else ""),
            "best test acc % after pruning": fmt_mean_std([r[ACCURACY] for r in rs], 100.0),
            "gen. gap %": fmt_mean_std([r[GAP] for r in rs if r.get(GAP) not in (None, "")], 100.0),
            "events": f"{statistics.fmean(float(r[EVENTS]) for r in rs):.1f}",
        })
    first = rows[0] if rows else {}
    kw = str(first.get("model_kwargs", ""))
    width = dict(p.split("=", 1) for p in kw.split(";") if "=" in p).get("width", "?")
    subset = first.get("train_subset") or "all"
    setting = (f"VGG11-BN at width x{width} on {subset} CIFAR-10 training images (full test set), "
               f"{first.get('train.epochs', '?')} epochs of Adam lr {first.get('train.lr', '?')}, filters of the last "
               f"four convolutions pruned during training (L2 scores); {seeds_of(rows)} seed(s), {len(rows)} run(s); "
               f"mode {mode}. Intervals: 95%, t over seeds (differences paired by seed), Fisher z for r.")
    return Report("Generalization-stability tradeoff (Bartoldson et al. 2020)", setting, claims, table,
                  ["method", "runs", "mean stability %", "best test acc % after pruning", "gen. gap %", "events"])


def _fig2_runs(labelled: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The runs of the paper's Fig. 2 correlation: Prune_S and Prune_L (not Prune_R, not unpruned)."""
    return [r for r in labelled if r["_target"] in ("smallest", "largest")]


def _fig2_correlation(fig2: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], float, float]:
    """Stability vs best accuracy over ``fig2``: the correlations and the Fisher-z interval of r."""
    c = stability_correlations([float(r[STABILITY]) for r in fig2], [float(r[ACCURACY]) for r in fig2])
    lo, hi = correlation_ci(c["pearson_r"], len(fig2))
    return c, lo, hi


def _labelled(rows: Sequence[Mapping[str, Any]], mode: str) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        target, rate, label = method_of(r, mode)
        out.append({**r, "_target": target, "_rate": rate, "_label": label})
    return out


def figures(rows: Sequence[Mapping[str, Any]], mode: str, folder: Path) -> list[Path]:
    """``stability_vs_accuracy.png``, the paper's Fig. 2: one point per pruned run, mean pruning stability
    (x) against best test accuracy after the last pruning event (y), a colour per method, the
    least-squares line and Pearson's r with its Fisher-z interval over the Prune_S / Prune_L runs (the
    correlation claim's runs) in the title. Runs without a stability value (no pruning) are not drawn."""
    labelled = [r for r in _labelled(rows, mode) if r["_target"] != "none"
                and r.get(STABILITY) not in (None, "") and r.get(ACCURACY) not in (None, "")]
    if not labelled:
        return []
    order = sorted({(r["_rate"], r["_target"], r["_label"]) for r in labelled})
    groups = {label: ([float(r[STABILITY]) for r in labelled if r["_label"] == label],
                      [100.0 * float(r[ACCURACY]) for r in labelled if r["_label"] == label])
              for *_, label in order}
    fig2 = _fig2_runs(labelled)
    c, lo, hi = _fig2_correlation(fig2)
    r_txt = (f"Pearson r = {c['pearson_r']:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) else "")
             + f" over the {len(fig2)} Prune_S / Prune_L runs" if math.isfinite(c["pearson_r"])
             else "r not computable")
    fig = scatter_figure(groups, xlabel="mean pruning stability (%)",
                         ylabel="best test accuracy after the last pruning event (%)",
                         title=f"Generalization-stability (Bartoldson et al. 2020, Fig. 2 setting, {mode}): {r_txt}")
    return [save_figure(fig, Path(folder) / "stability_vs_accuracy.png")]


register(Reproduction(
    name=NAME,
    paper=PAPER,
    claim="mean pruning stability and best test accuracy are negatively correlated (VGG11-BN / CIFAR-10, Fig. 2)",
    sweep="stability.toml",
    report=report,
    figures=figures,
    data="cifar10",
    time={"quick": "~30 s CPU", "default": "~3 h CPU (12 runs of ~15 min, 1 core)",
          "full": "~45 h on one GPU (50 runs x 325 epochs of full VGG11-BN; does not fit 10 min)"},
))
