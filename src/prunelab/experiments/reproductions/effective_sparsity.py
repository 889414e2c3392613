"""Vysogorets & Kempe (2023), "Connectivity Matters" (JMLR 24): effective vs direct sparsity.

Claims checked (the paper's Sec. 4 and Fig. 2-4, on LeNet-300-100 / MNIST):

1. random pruning with uniform per-layer quotas disconnects the network at high compression: at
   1000x direct compression its effective compression is orders of magnitude higher (or infinite);
2. SynFlow shows (practically) no gap: effective = direct compression;
3. among random quotas, IGQ (their ideal gas quotas) gives the best accuracy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from prunelab.experiments.reproductions.base import Claim, Report, Reproduction, register
from prunelab.experiments.reproductions.common import compression_of, fmt_mean_std, fmt_x, group, method_label, seeds_of

METHODS = ["random-uniform", "random-erk", "random-igq", "magnitude", "snip", "synflow"]


def _gap(r: Mapping[str, Any]) -> float:
    eff, direct = float(r["effective.effective_compression"]), float(r["effective.direct_compression"])
    return math.inf if math.isinf(eff) else eff / direct


def report(rows: Sequence[Mapping[str, Any]], mode: str) -> Report:
    comps = sorted({compression_of(r) for r in rows})
    top = max(comps)
    by = lambda r: (method_label(r), compression_of(r))
    eff = group(rows, by, lambda r: float(r["effective.effective_compression"]))
    acc = group(rows, by, lambda r: r.get("test_accuracy"))
    gaps = group(rows, by, _gap)
    claims = []
    uni = gaps.get(("random-uniform", top), [])
    disconnected = sum(math.isinf(g) for g in uni)
    finite = [g for g in uni if math.isfinite(g)]
    ours = (f"at {top:g}x direct: disconnected in {disconnected} of {len(uni)} seeds"
            + (f"; effective/direct {min(finite):.3g}-{max(finite):.3g} in the others" if finite else ""))
    big = bool(uni) and all(math.isinf(g) or g >= 10 for g in uni)
    claims.append(Claim("random-uniform disconnects at high compression",
                        "effective >> direct (orders of magnitude) at 1000x", ours,
                        "reproduced" if big else "not reproduced"))
    syn = [g for (m, _), gs in gaps.items() if m == "synflow" for g in gs]
    if syn:
        worst = max(syn)
        claims.append(Claim("SynFlow has no gap", "effective = direct", f"effective/direct {min(syn):.4g}-{worst:.4g}",
                            "reproduced" if worst <= 1.05 else "not reproduced"))
    best_at = {}
    for c in comps:
        means = {m: statistics.fmean(acc[(m, c)]) for m in METHODS[:3] if (m, c) in acc}
        if means:
            best = max(means.values())
            best_at[c] = [m for m, v in means.items() if v >= best - 1e-12]
    igq_best = sum("random-igq" in v for v in best_at.values())
    claims.append(Claim("IGQ is the best random quota", "IGQ best at every compression",
                        f"IGQ best or tied at {igq_best} of {len(best_at)} compressions "
                        f"({', '.join(f'{c:g}x: {v[0]}' for c, v in best_at.items())})",
                        "reproduced" if best_at and igq_best == len(best_at) else
                        "inconclusive" if igq_best else "not reproduced"))
    if mode == "quick":
        for c in claims:
            c.verdict, c.note = "smoke run", "quick mode checks the pipeline, not the claim"
    table = []
    for m in METHODS:
        for c in comps:
            if (m, c) in eff:
                table.append({"method": m, "direct": f"{c:g}x",
                              "effective": fmt_x(statistics.fmean(eff[(m, c)]) if all(map(math.isfinite, eff[(m, c)]))
                                                 else math.inf),
                              "accuracy %": fmt_mean_std(acc.get((m, c), []), 100.0)})
    n = seeds_of(rows)
    setting = (f"LeNet-300-100 on MNIST, pruned at initialisation, {n} seed(s), compressions "
               f"{', '.join(f'{c:g}' for c in comps)}; mode {mode}.")
    return Report("Effective sparsity (Vysogorets & Kempe 2023)", setting, claims, table,
                  ["method", "direct", "effective", "accuracy %"])


register(Reproduction(
    name="effective-sparsity",
    paper="Vysogorets & Kempe 2023, Connectivity Matters (JMLR 24)",
    claim="random-uniform disconnects at 1000x; SynFlow has no gap; IGQ is the best random quota",
    sweep="effective_sparsity.toml",
    report=report,
    data="mnist",
    time={"quick": "~1 min CPU", "default": "~3 min CPU with --executor processes --jobs 2 (90 runs, measured 3.1 min on 2 cores)", "full": "~3 h CPU, ~25 min GPU"},
))
