"""Early-bird tickets: You et al. (ICLR 2020, "Drawing Early-Bird Tickets") and You et al. (TMLR 2022,
"Max-Affine Spline Insights Into Deep Network Pruning"), VGG-16-BN on CIFAR-10.

Claims checked:

1. the partition early bird (TMLR 2022: spline partition, distance < 0.16 over 3 epochs) comes early
   in training;
2. the channel-mask early bird (ICLR 2020: network-slimming masks, distance <= 0.1 over 4 epochs)
   comes early in training;
3. an early-bird ticket, pruned and retrained for the rest of the dense budget, matches or beats
   pruning the fully trained network and fine-tuning it (network slimming), per rule, paired by
   (seed, p);
4. the partition early bird comes no later than the channel-mask one.

Every run is one ``slimming`` schedule run (:mod:`prunelab.pruning.slimming`) with the ``ticket``
analysis (:mod:`prunelab.analysis.stages`); the ticket kind is
``prune.schedule_options.ticket``, p is ``prune.sparsity`` (the fraction of channels removed).

"Early" has to be judged in the compressed schedules of the reduced modes, where the 3-epoch window
alone is 1/8 of a 24-epoch run: a rule is *reproduced* when it fires in every seed within the first
quarter of training, *inconclusive* when it fires in every seed before the first learning-rate drop
but later than that, and *not reproduced* otherwise (the paper: epoch 13-15 of 160, under 10 %).
"Matches" allows one accuracy point: *reproduced* when the 95% interval of (EB - trained) lies above
-1 point, *not reproduced* when it lies below, *inconclusive* otherwise or with one pair (no interval).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from prunelab.experiments.reproductions.base import Claim, Report, Reproduction, register
from prunelab.experiments.reproductions.common import fmt_mean_std, mean_ci, seeds_of
from prunelab.models import vgg_width as _vgg_width  # noqa: F401  (registers vgg_scaled)
from prunelab.pruning import slimming as _slimming  # noqa: F401  (registers the schedule)
from prunelab.pruning.slimming import SlimmingOptions

NAME = "earlybird"
MATCH = 0.01  # "matches": within one accuracy point
EARLY = 0.25  # "early" in a compressed schedule: within the first quarter of training
RULES = {"partition": "partition early bird (spline, TMLR 2022)", "mask": "channel-mask early bird (ICLR 2020)"}


def _num(v: Any) -> float | None:
    return None if v in (None, "") else float(v)


def ticket_of(row: Mapping[str, Any]) -> str:
    v = row.get("prune.schedule_options.ticket")
    return SlimmingOptions.model_fields["ticket"].default if v in (None, "") else str(v)


def _first_drop(row: Mapping[str, Any]) -> float:
    ms = str(row.get("train.milestones") or "")
    vals = [float(m) for m in ms.split(";") if m.strip()]
    return min(vals) if vals else math.inf


def _early_claim(rows: Sequence[Mapping[str, Any]], rule: str) -> Claim:
    """Where ``rule`` fired, per (seed, p), as a fraction of the dense training epochs."""
    col = f"ticket.eb_{rule}_epoch"
    best: dict[tuple, tuple[int, tuple[float | None, float, float]]] = {}
    for r in rows:
        if col not in r:
            continue
        epoch = _num(r.get(col))
        # the run whose ticket is this rule, else one that trained to the end; a run that stopped at the
        # other rule's early bird only counts where it saw this one too
        rank = 0 if ticket_of(r) == rule else 1 if ticket_of(r) == "trained" else 2
        if rank == 2 and epoch is None:
            continue
        key = (r.get("seed"), r.get("prune.sparsity") if rule == "mask" else None)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, (epoch, float(r.get("train.epochs") or math.nan), _first_drop(r)))
    seen = {k: v for k, (_, v) in best.items()}
    if not seen:
        return Claim(f"the {RULES[rule]} comes early", "about epoch 13-15 of 160 (< 10 %)", "not watched",
                     "inconclusive")
    fractions = [e / t for e, t, _ in seen.values() if e is not None]
    missing = sum(e is None for e, _, _ in seen.values())
    before_drop = all(e is not None and e <= d for e, _, d in seen.values())
    m, lo, hi = mean_ci(fractions)
    epochs = sorted(int(e) for e, _, _ in seen.values() if e is not None)
    total = int(next(iter(seen.values()))[1])
    ours = (f"epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))} of {total} ({100 * m:.0f} %"
            + (f", 95% CI {100 * lo:.0f}-{100 * hi:.0f} %" if math.isfinite(lo) else "") + ")"
            if fractions else "never")
    if missing:
        ours += f"; not found in {missing} of {len(seen)}"
    if not missing and fractions and max(fractions) <= EARLY:
        verdict = "reproduced"
    elif not missing and before_drop:
        verdict = "inconclusive"
    else:
        verdict = "not reproduced"
    return Claim(f"the {RULES[rule]} comes early", "about epoch 13-15 of 160 (< 10 % of training)", ours, verdict,
                 f"{len(seen)} seed/p pair(s); rule: every one within {EARLY:.0%} of training")


def _match_claim(rows: Sequence[Mapping[str, Any]], rule: str) -> Claim | None:
    trained = {(r.get("seed"), r.get("prune.sparsity")): float(r["test_accuracy"])
               for r in rows if ticket_of(r) == "trained"}
    diffs, skipped = [], 0
    for r in rows:
        if ticket_of(r) != rule:
            continue
        key = (r.get("seed"), r.get("prune.sparsity"))
        if str(r.get("ticket.eb_found")).lower() not in ("true", "1"):
            skipped += 1
            continue
        if key in trained:
            diffs.append(float(r["test_accuracy"]) - trained[key])
    if not diffs and not skipped:
        return None
    m, lo, hi = mean_ci(diffs)
    if not diffs:
        ours, verdict = f"no early bird found in {skipped} run(s): nothing to compare", "not reproduced"
    else:
        ours = f"EB - trained = {100 * m:+.2f} points" + (
            f" (95% CI {100 * lo:+.2f} to {100 * hi:+.2f})" if math.isfinite(lo) else " (one pair: no interval)")
        ours += f" over {len(diffs)} (seed, p) pair(s)" + (f"; {skipped} run(s) found no early bird" if skipped else "")
        if not math.isfinite(lo):
            verdict = "inconclusive"
        elif lo >= -MATCH:
            verdict = "reproduced"
        elif hi < -MATCH:
            verdict = "not reproduced"
        else:
            verdict = "inconclusive"
    return Claim(f"{rule} EB ticket matches or beats pruning the fully trained net",
                 "EB tickets match or beat network slimming at p = 0.3-0.7 (ICLR 2020, Fig. 5 / Table 2)",
                 ours, verdict, f"matching = within {100 * MATCH:.0f} point")


def _order_claim(rows: Sequence[Mapping[str, Any]]) -> Claim:
    pairs = {}
    for r in rows:
        p_, m_ = _num(r.get("ticket.eb_partition_epoch")), _num(r.get("ticket.eb_mask_epoch"))
        if ticket_of(r) == "trained" and p_ is not None and m_ is not None:  # the run that watched to the end
            pairs[(r.get("seed"), r.get("prune.sparsity"))] = (p_, m_)
    earlier = sum(p_ <= m_ for p_, m_ in pairs.values())
    ours = (f"partition at or before mask in {earlier} of {len(pairs)} (seed, p): "
            + ", ".join(f"{int(p_)} vs {int(m_)}" for p_, m_ in pairs.values()) if pairs else "no seed with both")
    verdict = ("inconclusive" if not pairs else "reproduced" if earlier == len(pairs)
               else "not reproduced" if earlier == 0 else "inconclusive")
    return Claim("the partition early bird comes no later than the mask one",
                 "the spline partition settles as early as the channel masks (TMLR 2022)", ours, verdict)


def report(rows: Sequence[Mapping[str, Any]], mode: str) -> Report:
    claims = [_early_claim(rows, "partition"), _early_claim(rows, "mask")]
    claims += [c for c in (_match_claim(rows, rule) for rule in ("partition", "mask")) if c is not None]
    claims.append(_order_claim(rows))
    if mode == "quick":
        for c in claims:
            c.verdict, c.note = "smoke run", "quick mode checks the pipeline, not the claim"
    table = []
    ratios = sorted({float(r["prune.sparsity"]) for r in rows})
    for ticket in ("partition", "mask", "trained"):
        for p in ratios:
            rs = [r for r in rows if ticket_of(r) == ticket and float(r["prune.sparsity"]) == p]
            if not rs:
                continue
            found = [r for r in rs if ticket == "trained" or str(r.get("ticket.eb_found")).lower() in ("true", "1")]
            table.append({
                "ticket": ticket, "p": p, "runs": len(rs),
                "EB found": "-" if ticket == "trained" else f"{len(found)}/{len(rs)}",
                "pruned at epoch": fmt_mean_std([r["ticket.epoch"] for r in rs], 1.0, 1),
                "epochs dense + retrain": " / ".join(sorted({f"{int(r['ticket.dense_epochs'])} + "
                                                             f"{int(r['ticket.retrain_epochs'])}" for r in rs})),
                "channels kept": f"{statistics.fmean(float(r['ticket.channels_kept']) for r in rs):.3f}",
                "dense acc %": fmt_mean_std([r["ticket.dense_test_acc"] for r in rs], 100.0),
                "before retraining %": fmt_mean_std([r["ticket.pruned_test_acc"] for r in rs], 100.0),
                "final acc %": fmt_mean_std([r["test_accuracy"] for r in rs], 100.0),
            })
    first = rows[0] if rows else {}
    kw = dict(p.split("=", 1) for p in str(first.get("model_kwargs", "")).split(";") if "=" in p)
    setting = (f"VGG-{kw.get('depth', '?')}-BN at width x{kw.get('width', '?')} on {first.get('train_subset') or 'all'} "
               f"CIFAR-10 training images (full test set), {first.get('train.epochs', '?')} epochs (lr drops at "
               f"{str(first.get('train.milestones', '')).replace(';', ', ')}), p = {', '.join(f'{p:g}' for p in ratios)} "
               f"of the conv channels (BatchNorm-scale ranking, global); {seeds_of(rows)} seed(s); mode {mode}. "
               "Intervals: 95% t over (seed, p) pairs.")
    return Report("Early-bird tickets (You et al. 2020, 2022)", setting, claims, table,
                  ["ticket", "p", "runs", "EB found", "pruned at epoch", "epochs dense + retrain", "channels kept",
                   "dense acc %", "before retraining %", "final acc %"])


register(Reproduction(
    name=NAME,
    paper="You et al. 2020, Drawing Early-Bird Tickets (ICLR); You et al. 2022, Max-Affine Spline Insights (TMLR)",
    claim="early-bird tickets come early and match pruning the fully trained network (VGG-16-BN / CIFAR-10)",
    sweep="earlybird.toml",
    report=report,
    data="cifar10",
    time={"quick": "~30 s CPU", "default": "~15 min CPU (1 core)",
          "full": "~16 h on one GPU (3 seeds x 3 ratios x 3 tickets of full VGG-16-BN, 160 + up to 160 epochs; "
                  "does not fit 10 min)"},
))
