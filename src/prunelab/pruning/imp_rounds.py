"""IMP that records every round, and the OpenLTH counting convention of "prune 20% of what remains".

**Schedule ``imp_rounds``.** The ``imp`` schedule (Frankle & Carbin 2019) with one addition: after
each round's retraining the test split is evaluated and a history row is appended::

    {"stage": "round<k>", "round": k, "round_sparsity": s_k, "round_test_accuracy": a_k,
     "round_per_class_recall": [r_0, ..., r_{C-1}]}

so one run to the last round gives the accuracy and per-class recall after *every* round (what
recall-distortion studies need, Good et al. 2022), where a sweep of ``imp`` runs to each round's
sparsity would retrain rounds 1..k again for every k (k(k+1)/2 rounds instead of k). The
``recall_rounds`` analysis (:mod:`prunelab.analysis.stages`) turns these rows into columns. Masks, rewinding
and retraining are exactly ``imp``'s (same calls in the same order), so the final model equals the
``imp`` run with the same config. Options: ``rewind_iteration`` (as ``imp``). The rate is the
context's ``imp_rate`` (0.2: the experiment runner fills it for ``imp`` only), until the runner passes
this schedule's options (see the note in ``ImpRoundsOptions``).

**Counting conventions** (:func:`imp_levels`). prunelab's ``imp`` prunes ``rate`` of the remaining
*prunable* weights per round: level_k = 1 - (1 - rate)^k of the prunable weights (round 1 of
LeNet-300-100 with the output layer excluded: round(0.2 * 265,200) = 53,040 weights). The OpenLTH
framework (facebookresearch/open_lth ``pruning/sparse_global.py``, used unchanged by the undecayed-
pruning code of Good et al., AidanGood/undecayed-lth) counts differently:

    number_of_remaining_weights = sum of the current mask over ALL prunable layers, including the
                                  layers in pruning_layers_to_ignore (never pruned);
    number_of_weights_to_prune  = ceil(pruning_fraction * number_of_remaining_weights);
    threshold = sort(|w| of the non-ignored, unpruned weights)[number_of_weights_to_prune];
    keep |w| > threshold

so one round prunes ``ceil(rate * (remaining + ignored)) + 1`` weights (the ``+ 1`` is the weight at
the threshold, which ``>`` drops; ties at the threshold would add more): 53,241 on LeNet-300-100's
first round (ceil(0.2 * 266,200) + 1). Because the ignored output layer keeps counting, the two
conventions drift apart: after 20 rounds OpenLTH has pruned 99.22% of the hidden weights (ours:
98.85%), and by round 25 it has pruned all of them. ``counting="openlth"`` reproduces those counts
as sparsity levels of the prunable weights (exact: ``prunelab.prune`` keeps N - round(s N)).
"""

from __future__ import annotations

from prunelab.analysis.evaluate import evaluate
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.pruning.schedules import (
    COUNTINGS,
    SCHEDULES,
    ImpOptions,
    ScheduleContext,
    ScheduleResult,
    imp_levels,
    imp_levels_for,
    openlth_prune_counts,
    train_stage,
    weight_counts,
)

__all__ = ["COUNTINGS", "imp_levels", "imp_rounds", "openlth_prune_counts", "weight_counts"]

class ImpRoundsOptions(ImpOptions):
    """IMP recording test accuracy and per-class recall after every round: ``imp``'s options."""


def round_record(ctx: ScheduleContext, round_index: int, masks: Masks) -> dict:
    """The history row of one finished round: its sparsity, test accuracy and per-class recall."""
    ev = evaluate(ctx.model, ctx.data.x_test, ctx.data.y_test)
    return {"stage": f"round{round_index}", "round": round_index, "round_sparsity": masks.sparsity(),
            "round_test_accuracy": ev.accuracy, "round_per_class_recall": [float(r) for r in ev.per_class_recall]}


def _prune_round(ctx: ScheduleContext, level: float, masks: Masks | None) -> Masks:
    """``ctx.prune_fn(model, level, masks)``; where that fails because the runner's prune_fn also passes the
    run's ``exclude`` with ``masks`` (which ``prune`` refuses), prune from scratch instead and check the
    result is nested in ``masks``. For criteria that score pruned (zero) weights lowest -- magnitude,
    upa, snip -- the nested check holding makes it the same selection as pruning among the kept weights:
    every weight pruned before is pruned again, and the extra ones are the lowest-scored kept weights
    (ties by index, as ``keep_top``). A criterion for which the check fails raises."""
    if masks is None:
        return ctx.prune_fn(ctx.model, level, None)
    try:
        return ctx.prune_fn(ctx.model, level, masks)
    except PrunelabError as err:
        if "not both" not in str(err):
            raise
    new = ctx.prune_fn(ctx.model, level, None)
    revived = sum(int((new[n].bool() & ~masks[n].bool()).sum()) for n in masks)
    if set(new) != set(masks) or revived:
        raise PrunelabError(f"imp_rounds: pruning from scratch revived {revived} weight(s) (the criterion does not "
                            "score pruned weights lowest); it needs a runner whose prune_fn accepts masks with exclude")
    return new


@SCHEDULES.register("imp_rounds", options=ImpRoundsOptions)
def imp_rounds(ctx: ScheduleContext) -> ScheduleResult:
    """``imp`` with a test evaluation (accuracy, per-class recall) recorded after every round."""
    opts = ctx.options if isinstance(ctx.options, ImpOptions) else ImpOptions(rate=ctx.imp_rate)
    dense = ctx.dense()
    ctx.model.load_state_dict(dense.final)
    levels = imp_levels_for(ctx, opts)
    history = list(dense.history)
    events = []
    masks: Masks | None = None
    for round_index, level in enumerate(levels, start=1):
        masks = _prune_round(ctx, level, masks)
        ctx.model.load_state_dict(dense.rewind)  # rewind the kept weights
        masks.apply(ctx.model)
        events.append({"stage": f"round{round_index}", "sparsity": masks.sparsity(), "round": round_index})
        history += train_stage(ctx, ctx.finetune, masks, f"round{round_index}")
        history.append(round_record(ctx, round_index, masks))
    if masks is None:  # target sparsity 0: the dense model is the result
        masks = Masks.ones(ctx.model)
    return ScheduleResult(masks, history, events)
