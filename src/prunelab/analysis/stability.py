"""Stability of a pruned training run and its relation to generalisation (Bartoldson, Morcos, Barbu &
Erlebacher, "The Generalization-Stability Tradeoff in Neural Network Pruning", NeurIPS 2020).

Functions of a training history (the rows :func:`prunelab.train.fit` returns, with the
``instability`` / ``post_prune_acc`` columns that :class:`prunelab.pruning.instability.PruningEvents`
adds on pruning epochs) and of many runs' summaries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prunelab.errors import PrunelabError


def instability(acc_before: float, acc_after: float) -> float:
    """(acc_before - acc_after) / acc_before (Bartoldson et al. 2020, Sec. 3); NaN if acc_before = 0."""
    return (acc_before - acc_after) / acc_before if acc_before > 0 else math.nan

@dataclass(frozen=True)
class StabilitySummary:
    """One run: mean stability (%), generalisation (best test accuracy at or after the last pruning
    event; the post-pruning accuracy counts for the event epoch), and the gap train - test there."""

    mean_stability: float
    mean_instability: float
    num_events: int
    last_event_epoch: int | None
    best_test_acc: float
    best_epoch: int
    generalization_gap: float

    def to_row(self) -> dict[str, Any]:
        return dict(self.__dict__)


def stability_summary(history: Iterable[Mapping[str, Any]]) -> StabilitySummary:
    """Summarise a :func:`prunelab.train.fit` history whose rows carry ``instability`` and
    ``post_prune_acc`` on pruning epochs (from a :class:`PruningEvents` callback).

    As the authors' analysis (``figures_and_tables/utils.py``): stability = 100 (1 - instability) per
    event, averaged over events; a run without events is 100% stable and its best accuracy is over
    all evaluated epochs.
    """
    rows = [dict(r) for r in history]
    if not rows:
        raise PrunelabError("history is empty: nothing to summarise")
    events = [r for r in rows if r.get("instability") is not None]
    values = [float(r["instability"]) for r in events]
    mean_inst = sum(values) / len(values) if values else 0.0
    last = max((int(r["epoch"]) for r in events), default=None)
    best_acc, best_row = -1.0, None
    for r in rows:
        if last is not None and int(r["epoch"]) < last:
            continue
        acc = r.get("post_prune_acc") if r.get("instability") is not None else r.get("test_acc")
        if acc is not None and float(acc) > best_acc:
            best_acc, best_row = float(acc), r
    if best_row is None:
        raise PrunelabError("no evaluated epoch at or after the last pruning event (set eval_every=1)")
    gap = float(best_row["train_acc"]) - best_acc if best_row.get("train_acc") is not None else math.nan
    return StabilitySummary(100.0 * (1.0 - mean_inst), mean_inst, len(events), last, best_acc,
                            int(best_row["epoch"]), gap)


def stability_correlations(stability: Sequence[float], accuracy: Sequence[float]) -> dict[str, float]:
    """Pearson's r and Kendall's tau (with two-sided p-values) between per-run stability and accuracy.

    NaN when fewer than 3 runs or either variable is constant.
    """
    if len(stability) != len(accuracy):
        raise PrunelabError(f"need paired values, got {len(stability)} stabilities and {len(accuracy)} accuracies")
    out = {"n": float(len(stability)), "pearson_r": math.nan, "pearson_p": math.nan,
           "kendall_tau": math.nan, "kendall_p": math.nan}
    if len(stability) < 3 or len(set(stability)) < 2 or len(set(accuracy)) < 2:
        return out
    from scipy import stats  # here, not at import: scipy.stats costs ~0.5 s and only this needs it

    r = stats.pearsonr(stability, accuracy)
    t = stats.kendalltau(stability, accuracy)
    out.update(pearson_r=float(r.statistic), pearson_p=float(r.pvalue),
               kendall_tau=float(t.statistic), kendall_p=float(t.pvalue))
    return out
