"""Cai et al. (CPAIOR 2023), "Getting Away with More Network Pruning: From Sparsity to Geometry and
Linear Regions": per-layer densities chosen by the expected linear-region bound (``lr_bound``) beat
the same density in every layer (``uniform``).

Claims checked (the paper's Sec. 6, 2 x 100 MLP on MNIST, hidden layers pruned by magnitude inside
each layer, output dense):

1. lr_bound is more accurate than uniform after fine-tuning, by 0.2 to 14.1 points depending on the
   density (paper's gains below), on average over the densities 7.3 points;
2. the same per density (one claim per density);
3. the mechanism: lr_bound's layer densities have a higher expected region bound (Theorem 1) than
   uniform's (so lr_bound did what it is meant to do).

Accuracy gains are paired by seed (both allocations prune the same dense model of that seed); the
interval is a 95% t-interval over seeds (:func:`common.mean_ci`).
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
from prunelab.pruning import lr_bound_hidden as _lr_bound_hidden  # noqa: F401  (registers the allocation)

#: Cai et al. (2023): accuracy gain of lr_bound over uniform, MNIST 2 x 100, in points, per density.
PAPER_GAIN_MNIST_2X100 = {0.01: 0.2, 0.005: 1.5, 0.0025: 6.5, 0.001: 14.1, 0.00075: 11.8, 0.0005: 11.3,
                          0.0001: 5.6}
PAPER_MEAN_GAIN = statistics.fmean(PAPER_GAIN_MNIST_2X100.values())
LR_BOUND = ("lr_bound", "lr_bound_hidden")
SMOKE = "quick mode checks the pipeline, not the claim"


def density_of(row: Mapping[str, Any]) -> float:
    """The overall density of the hidden layers, 1 - sparsity, as the paper prints it (0.00075)."""
    return float(f"{1.0 - float(row['prune.sparsity']):.6g}")


def width_of(row: Mapping[str, Any]) -> int:
    """The first hidden width of the run's mlp (``model_kwargs`` is ``widths=[100, 100]`` in a row)."""
    kw = row.get("model_kwargs")
    if isinstance(kw, Mapping):
        return int(kw["widths"][0])
    found = re.findall(r"\d+", str(kw or ""))
    return int(found[0]) if found else 100


def allocation_of(row: Mapping[str, Any]) -> str:
    a = str(row.get("prune.allocation"))
    return "lr_bound" if a in LR_BOUND else a


def _num(row: Mapping[str, Any], key: str) -> float | None:
    v = row.get(key)
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _interval(m: float, lo: float, hi: float, n: int, unit: str = " points") -> str:
    if math.isnan(lo):
        return f"{m:+.2f}{unit} (n={n}, no interval)"
    return f"{m:+.2f}{unit}, 95% CI [{lo:+.2f}, {hi:+.2f}] (n={n})"


def _verdict(lo: float, hi: float, m: float) -> str:
    """Sign test of a gain on its interval: > 0 reproduced, <= 0 not, straddling 0 inconclusive."""
    if math.isnan(lo):
        return "inconclusive"
    if lo > 0:
        return "reproduced"
    if hi <= 0:
        return "not reproduced"
    return "inconclusive"


def gains(rows: Sequence[Mapping[str, Any]], width: int) -> dict[float, dict[int, float]]:
    """density -> seed -> (lr_bound - uniform) test accuracy in points, for seeds that ran both."""
    acc: dict[tuple[float, int], dict[str, float]] = defaultdict(dict)
    for r in rows:
        if width_of(r) != width or r.get("test_accuracy") is None:
            continue
        acc[(density_of(r), int(r["seed"]))][allocation_of(r)] = float(r["test_accuracy"])
    out: dict[float, dict[int, float]] = defaultdict(dict)
    for (d, seed), a in acc.items():
        if "uniform" in a and "lr_bound" in a:
            out[d][seed] = 100.0 * (a["lr_bound"] - a["uniform"])
    return dict(out)


def _values(rows, width: int, alloc: str, density: float, key: str) -> list[float]:
    return [v for r in rows if width_of(r) == width and allocation_of(r) == alloc and density_of(r) == density
            and (v := _num(r, key)) is not None]


def _mean(values: Sequence[float], digits: int = 1) -> str:
    return f"{statistics.fmean(values):.{digits}f}" if values else ""


def report(rows: Sequence[Mapping[str, Any]], mode: str) -> Report:
    rows = [r for r in rows if allocation_of(r) in ("uniform", "lr_bound")]
    widths = sorted({width_of(r) for r in rows})
    datasets = sorted({str(r.get("dataset")) for r in rows})
    paper_setting = datasets == ["mnist"]
    claims: list[Claim] = []
    table: list[dict[str, Any]] = []
    for w in widths:
        g = gains(rows, w)
        dens = sorted(g, reverse=True)
        paper = paper_setting and w == 100
        # 1. mean gain over the densities, per seed (seeds that ran every density)
        seeds = sorted(set.intersection(*(set(g[d]) for d in dens))) if dens else []
        per_seed = [statistics.fmean(g[d][s] for d in dens) for s in seeds]
        if per_seed:
            m, lo, hi = mean_ci(per_seed)
            claims.append(Claim(
                f"2 x {w}: lr_bound more accurate than uniform (mean over {len(dens)} densities)",
                f"+{PAPER_MEAN_GAIN:.1f} points (mean of the paper's gains)" if paper else "lr_bound more accurate",
                _interval(m, lo, hi, len(per_seed)), _verdict(lo, hi, m),
                ("paper's mean " + ("inside" if lo <= PAPER_MEAN_GAIN <= hi else "outside") + " our interval")
                if paper and not math.isnan(lo) else ""))
        # 2. per density (the paper's numbers exist for 2 x 100 on MNIST)
        if paper:
            for d in dens:
                vals = list(g[d].values())
                m, lo, hi = mean_ci(vals)
                pg = PAPER_GAIN_MNIST_2X100.get(d)
                note = ""
                if pg is not None and not math.isnan(lo):
                    note = "paper's gain " + ("inside" if lo <= pg <= hi else "outside") + " our interval"
                claims.append(Claim(f"2 x {w}, density {d:g}: lr_bound more accurate than uniform",
                                    f"{pg:+.1f} points" if pg is not None else "–",
                                    _interval(m, lo, hi, len(vals)), _verdict(lo, hi, m), note))
        # 3. the mechanism: the expected bound of lr_bound's densities is at least uniform's
        higher, worse, n = 0, 0, 0
        for d in dens:
            u = _values(rows, w, "uniform", d, "regions_expected.bound_log2")
            lb = _values(rows, w, "lr_bound", d, "regions_expected.bound_log2")
            if u and lb:
                n += 1
                du, dl = statistics.fmean(u), statistics.fmean(lb)
                higher += dl > du + 1e-9
                worse += dl < du - 1e-9
        if n:
            claims.append(Claim(f"2 x {w}: lr_bound's densities raise the expected region bound",
                                "higher than uniform's (Theorem 1 maximised)",
                                f"higher at {higher}, equal at {n - higher - worse}, lower at {worse} of {n} densities",
                                "reproduced" if worse == 0 and higher > 0 else "not reproduced" if worse else
                                "inconclusive"))
        # the table: a dense row, then one row per density
        dense = [float(r["dense_test_accuracy"]) for r in {int(r["seed"]): r for r in rows
                 if width_of(r) == w and _num(r, "dense_test_accuracy") is not None}.values()]
        if dense:
            table.append({"width": w, "density": "1 (dense)", "uniform acc %": fmt_mean_std(dense, 100.0),
                          "lr_bound acc %": fmt_mean_std(dense, 100.0)})
        for d in dens:
            u_acc = _values(rows, w, "uniform", d, "test_accuracy")
            l_acc = _values(rows, w, "lr_bound", d, "test_accuracy")
            pg = PAPER_GAIN_MNIST_2X100.get(d) if paper else None
            table.append({
                "width": w, "density": f"{d:g}",
                "uniform acc %": fmt_mean_std(u_acc, 100.0), "lr_bound acc %": fmt_mean_std(l_acc, 100.0),
                "gain (points)": f"{statistics.fmean(g[d].values()):+.2f}",
                "paper gain": f"{pg:+.1f}" if pg is not None else "",
                "log2 bound uniform": _mean(_values(rows, w, "uniform", d, "regions_expected.bound_log2")),
                "log2 bound lr_bound": _mean(_values(rows, w, "lr_bound", d, "regions_expected.bound_log2")),
                "line regions uniform": _mean(_values(rows, w, "uniform", d, "line.regions_mean")),
                "line regions lr_bound": _mean(_values(rows, w, "lr_bound", d, "line.regions_mean")),
                "plane regions uniform": _mean(_values(rows, w, "uniform", d, "plane.regions_mean"), 0),
                "plane regions lr_bound": _mean(_values(rows, w, "lr_bound", d, "plane.regions_mean"), 0),
            })
    if mode == "quick":
        for c in claims:
            c.verdict, c.note = "smoke run", SMOKE
    epochs = sorted({(r.get("train.epochs"), r.get("finetune.epochs")) for r in rows}, key=str)
    densities = sorted({density_of(r) for r in rows}, reverse=True)
    setting = (f"2 x W ReLU MLP (W = {', '.join(map(str, widths))}) on {', '.join(datasets)}; SGD lr 0.01, batch 128; "
               f"{', '.join(f'{a} + {b}' for a, b in epochs)} epochs dense + fine-tune (paper 15 + 15); hidden layers "
               f"pruned by magnitude within each layer, output dense; densities {', '.join(f'{d:g}' for d in densities)}; "
               f"{seeds_of(rows)} seed(s), gains paired by seed, 95% t-intervals over seeds; mode {mode}. "
               "Bounds: log2 of Cai et al.'s expected bound at the run's layer densities; regions: exact counts on "
               "segments / a plane through test images.")
    cols = ["width", "density", "uniform acc %", "lr_bound acc %", "gain (points)", "paper gain", "log2 bound uniform",
            "log2 bound lr_bound", "line regions uniform", "line regions lr_bound", "plane regions uniform",
            "plane regions lr_bound"]
    return Report("Linear regions: lr_bound vs uniform (Cai et al. 2023)", setting, claims, table, cols)


register(Reproduction(
    name="linear-regions",
    paper="Cai, Nguyen, Shrestha, Good, Tu, Yu, Zhe & Serra 2023, Getting Away with More Network Pruning (CPAIOR)",
    claim="per-layer densities from the expected linear-region bound (lr_bound) beat uniform densities on MNIST 2 x 100",
    sweep="linear_regions.toml",
    report=report,
    data="mnist",
    time={"quick": "~10 s CPU (digits)", "default": "~7 min CPU (1 core)",
          "full": "~7 min GPU (estimate: 126 runs of 15 epochs; ~50 min CPU)"},
))
