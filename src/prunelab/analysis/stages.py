"""Analyses as a stage of a run: registered functions of (model, masks, data, options) -> one row.

A run of the experiment engine is train -> prune (schedule) -> fine-tune -> evaluate -> analyses.
Each analysis named in a config (``[[analyses]] name = "effective"``, or ``analyses = ["units"]``)
is looked up in :data:`ANALYSES`, its options are validated against the pydantic model it was
registered with (an unknown option is a one-line error naming the valid ones), and the flat dict
it returns is merged into the run's row of ``results.csv`` with every key prefixed by the
analysis' label (its name unless the config gives one): ``effective.effective_sparsity``.

Adding an analysis is one function plus one registration (``docs/adding_an_analysis.md``)::

    class DeadOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        samples: int = Field(1000, gt=0)

    @ANALYSES.register("dead", options=DeadOptions)
    def dead(model, masks, data, options, run) -> dict:
        return {"dead_units": unit_report(model, data.x_train[: options.samples], masks).dead}

The function gets the final (pruned, fine-tuned) model in eval mode, its masks (``None`` for a
dense run), the run's :class:`prunelab.data.Dataset` on the model's device, its validated options,
and a :class:`RunInfo` with what the rest of the run knows (seed, training history, the dense
model's test evaluation). It must not change the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from prunelab.analysis.affine import mlp_layers, widths
from prunelab.analysis.effective import effective_report
from prunelab.analysis.evaluate import EvalResult
from prunelab.analysis.exact import compress, find_stable_neurons, parse_domain
from prunelab.analysis.flatness import flatness
from prunelab.analysis.recall import distortion
from prunelab.analysis.regions import expected_bound, model_bound, regions_summary
from prunelab.analysis.stability import stability_summary
from prunelab.analysis.units import unit_report
from prunelab.errors import PrunelabError
from prunelab.registry import Registry

Row = dict[str, Any]


@dataclass
class RunInfo:
    """What an analysis may read besides (model, masks, data): the run's seed, its training history
    (one dict per epoch, with a ``stage`` column), the final test evaluation and the dense model's."""

    seed: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    final: EvalResult | None = None
    dense: EvalResult | None = None
    config: Mapping[str, Any] = field(default_factory=dict)


AnalysisFn = Callable[[nn.Module, Mapping[str, torch.Tensor] | None, Any, BaseModel, RunInfo], Row]
ANALYSES: Registry[AnalysisFn] = Registry("analysis")


def _split(data: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = getattr(data, f"x_{split}", None), getattr(data, f"y_{split}", None)
    if x is None or y is None:
        raise PrunelabError(f"the dataset has no {split!r} split")
    return x, y


def run_analysis(name: str, model: nn.Module, masks: Mapping[str, torch.Tensor] | None, data: Any,
                 options: Mapping[str, Any] | BaseModel | None = None, run: RunInfo | None = None,
                 label: str | None = None) -> Row:
    """Run one registered analysis and return its row with keys prefixed by ``label`` (or ``name``)."""
    fn = ANALYSES.get(name)
    opts = ANALYSES.parse_options(name, options)
    was_training = model.training
    model.eval()
    try:
        row = fn(model, masks, data, opts, run or RunInfo())
    finally:
        model.train(was_training)
    if not isinstance(row, Mapping):
        raise PrunelabError(f"analysis {name!r} returned {type(row).__name__}, not a dict row")
    prefix = label or ANALYSES.canonical(name)
    return {f"{prefix}.{k}": v for k, v in row.items()}


# --- built-in analyses --------------------------------------------------------------------------
@ANALYSES.register("effective")
def _effective(model, masks, data, options, run) -> Row:
    """Direct vs effective sparsity and compression (Vysogorets & Kempe 2023): weights on no
    input-output path count as removed. See :mod:`prunelab.analysis.effective`."""
    return effective_report(model, masks, getattr(data, "input_shape", None)).to_row()


class UnitsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    split: Literal["train", "test"] = Field("train", description="inputs the units are counted on")
    samples: int = Field(10_000, gt=0, description="first N inputs of the split")


@ANALYSES.register("units", options=UnitsOptions)
def _units(model, masks, data, options, run) -> Row:
    """Dead (never active) and linear (always active) ReLU units on a split (Riera et al. 2022, Sec. 3)."""
    x, _ = _split(data, options.split)
    return unit_report(model, x[: options.samples], masks).to_row()


class BoundOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subspace_dim: int | None = Field(None, gt=0, description="bound on an input subspace of this dimension")


@ANALYSES.register("regions_bound", options=BoundOptions)
def _regions_bound(model, masks, data, options, run) -> Row:
    """Serra et al. (2018) rank bound on the number of linear regions of the (masked) MLP."""
    return model_bound(model, masks, subspace_dim=options.subspace_dim).to_row()


class RegionsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["line", "plane", "exact", "patterns"] = Field("line", description="how regions are counted")
    split: Literal["train", "test"] = "test"
    inputs: int = Field(100, gt=0, description="inputs drawn from the split")
    samples: int = Field(10, gt=0, description="lines / planes through random inputs")
    time_limit: float = Field(60.0, gt=0, description="seconds for the MILP count (mode exact)")


@ANALYSES.register("regions", options=RegionsOptions)
def _regions(model, masks, data, options, run) -> Row:
    """Linear regions counted exactly on lines/planes through inputs, by patterns, or by MILP
    (Serra, Tjandraatmadja & Ramalingam 2018). See :mod:`prunelab.analysis.regions`."""
    x, _ = _split(data, options.split)
    g = torch.Generator().manual_seed(run.seed)
    idx = torch.randperm(len(x), generator=g)[: options.inputs]
    return regions_summary(model, x[idx.to(x.device)], masks, options.mode, samples=options.samples,
                           seed=run.seed, time_limit=options.time_limit)


class ExactOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domain: str = Field("box:0,1", description="input box in pixel units, mapped through the normalisation")
    method: Literal["single_milp", "per_unit", "callback_milp"] = "single_milp"
    solver: Literal["highs", "scip"] = Field("highs", description="MILP solver of method callback_milp")
    time_limit: float | None = Field(None, gt=0, description="seconds for the MILP stage")
    data_samples: int = Field(1000, ge=0, description="training inputs used as witnesses")


@ANALYSES.register("exact", options=ExactOptions)
def _exact(model, masks, data, options, run) -> Row:
    """Stable ReLUs over the input box and the verified exact compression they allow (Serra, Kumar &
    Ramalingam 2020). Inputs outside the box are not valid witnesses and are left out."""
    low, high = parse_domain(options.domain)
    lower, upper = data.input_box(low, high)

    def inside(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1).double().cpu()
        return flat[((flat >= lower - 1e-9) & (flat <= upper + 1e-9)).all(dim=1)]

    witnesses = inside(data.x_train[: options.data_samples]) if options.data_samples else None
    stable = find_stable_neurons(model, (lower, upper), data=witnesses, time_limit=options.time_limit,
                                 masks=masks, method=options.method, seed=run.seed, solver=options.solver)
    result = compress(model, stable, data=inside(data.x_test), seed=run.seed)
    totals = {f"stably_{k}" if k in ("active", "inactive") else k: v for k, v in stable.totals().items()}
    return {**totals, "complete": stable.complete, **result.to_row()}


class FlatnessOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(1, gt=0, description="top Hessian eigenvalues")
    samples: int = Field(1000, gt=0, description="test samples")
    method: Literal["power", "lanczos"] = "power"
    iters: int = Field(100, gt=0)


@ANALYSES.register("flatness", options=FlatnessOptions)
def _flatness(model, masks, data, options, run) -> Row:
    """Top-k Hessian eigenvalues and the gradient second-moment trace on the test split (the
    flatness measures of Bartoldson et al. 2020, Sec. 5). ``hessian_eig_sum`` is their sum."""
    x, y = _split(data, "test")
    res = flatness(model, x, y, options.k, samples=options.samples, method=options.method, masks=masks,
                   iters=options.iters, seed=run.seed)
    return {**res.to_row(), "hessian_eig_sum": float(sum(res.eigenvalues))}


@ANALYSES.register("stability")
def _stability(model, masks, data, options, run) -> Row:
    """Mean stability over the run's pruning events and the best test accuracy after the last one
    (Bartoldson et al. 2020); needs a schedule that records ``instability`` in the history."""
    rows = [r for r in run.history if r.get("stage") != "dense"]
    return stability_summary(rows).to_row()


@ANALYSES.register("recall")
def _recall(model, masks, data, options, run) -> Row:
    """Recall distortion against the dense model of the same run (Good et al. 2022): intensification
    ratio alpha and distortion slope beta (see :mod:`prunelab.analysis.recall`)."""
    if run.dense is None or run.final is None:
        raise PrunelabError("analysis 'recall' needs the dense model's evaluation; use a schedule that trains dense")
    return distortion(run.dense.per_class_recall, run.dense.accuracy,
                      run.final.per_class_recall, run.final.accuracy).to_row()


# --- The ``ticket`` analysis: the ticket a channel-pruning schedule drew, as columns of ``results.csv``
#
# The ``slimming`` schedule (:mod:`prunelab.pruning.slimming`) records one history row with
# ``stage = "ticket"``: the epoch the ticket was drawn at, whether and when the early-bird rules fired
# (``eb_found``, ``eb_partition_epoch``, ``eb_mask_epoch``), the test accuracy of the dense network it
# came from (``dense_test_acc``) and of the pruned one before retraining (``pruned_test_acc``), the
# fraction of channels kept, the dense and retraining epochs and the partition change of pruning. This
# analysis returns that row (``ticket.epoch``, ``ticket.eb_partition_epoch``, ...).

@ANALYSES.register("ticket")
def ticket(model, masks, data, options, run) -> Row:
    """The ``stage = "ticket"`` row of the run's history (the ``slimming`` schedule writes it)."""
    rows = [r for r in run.history if r.get("stage") == "ticket"]
    if not rows:
        raise PrunelabError("analysis 'ticket' needs a schedule that records its ticket (schedule 'slimming')")
    return {k: v for k, v in rows[-1].items() if k != "stage"}


# --- The ``regions_expected`` analysis: Cai et al.'s expected bound at the run's per-layer densities.
#
# Cai, Nguyen, Shrestha, Good, Tu, Yu, Zhe & Serra (CPAIOR 2023), Theorem 1: the expected number of
# linear regions of a ReLU MLP whose hidden layer l keeps a random fraction ``p_l`` of its weights is
# at most a bound that depends only on the widths and the ``p_l``
# (:func:`prunelab.analysis.regions.expected_bound`). This analysis reads each hidden layer's density
# from the run's masks (1 for a layer that is not masked) and returns that bound: it is what the
# ``lr_bound`` allocation maximises, so it shows whether an allocation did. Columns (prefixed by the
# label, ``regions_expected.``): ``bound_log2``, ``bound_densities`` (one per hidden layer) and the
# rest of :meth:`RegionBound.to_row`. Serra et al.'s rank bound of the trained weights themselves is
# the ``regions_bound`` analysis.

class ExpectedBoundOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: Literal["analytic", "montecarlo"] = Field("analytic", description="rank distribution of sparse layers")


@ANALYSES.register("regions_expected", options=ExpectedBoundOptions)
def regions_expected(model, masks, data, options, run) -> Row:
    """Cai et al. (2023) expected linear-region bound at the densities of the run's masks (MLPs)."""
    layers = mlp_layers(model)
    hidden = [layer for layer in layers if layer.relu]
    if not hidden:
        raise PrunelabError("analysis 'regions_expected' needs an MLP with at least one hidden ReLU layer")
    densities = []
    for layer in hidden:
        mask = None if masks is None else masks.get(f"{layer.name}.weight")
        densities.append(1.0 if mask is None else float(mask.float().mean()))
    ws = widths(layers)
    return expected_bound(ws[0], ws[1:-1], densities, rank=options.rank, seed=run.seed).to_row()


# --- Analysis ``recall_rounds``: recall distortion after every IMP round, against the run's dense model
#
# Reads the per-round rows the ``imp_rounds`` schedule writes into the run's history
# (``round_sparsity``, ``round_test_accuracy``, ``round_per_class_recall``; see
# :mod:`prunelab.pruning.imp_rounds`) and the dense model's test evaluation, and returns for every round
# ``k`` (two digits) the columns ``r<k>.sparsity``, ``r<k>.test_accuracy``, ``r<k>.per_class_recall``
# (';'-joined), ``r<k>.intensification_ratio`` (alpha), ``r<k>.distortion_slope`` (beta) and
# ``r<k>.classes_counted`` -- the measures of :func:`prunelab.analysis.recall.distortion` -- plus
# ``rounds``. With the label ``recall_rounds`` they read ``recall_rounds.r03.intensification_ratio``.

def round_rows(history: list[dict]) -> list[dict]:
    """The per-round records of an ``imp_rounds`` history, in round order."""
    rows = [r for r in history if "round_per_class_recall" in r]
    return sorted(rows, key=lambda r: int(r["round"]))


@ANALYSES.register("recall_rounds")
def recall_rounds(model, masks, data, options, run) -> dict:
    """Recall distortion (Good et al. 2022) of every IMP round against the dense model of the run."""
    if run.dense is None:
        raise PrunelabError("analysis 'recall_rounds' needs the dense model's evaluation; use schedule imp_rounds")
    rounds = round_rows(run.history)
    if not rounds:
        raise PrunelabError("analysis 'recall_rounds' found no per-round records in the history; use schedule "
                            "imp_rounds (it evaluates the test split after every round)")
    out: dict = {"rounds": len(rounds)}
    for r in rounds:
        key = f"r{int(r['round']):02d}"
        out[f"{key}.sparsity"] = float(r["round_sparsity"])
        out[f"{key}.test_accuracy"] = float(r["round_test_accuracy"])
        out[f"{key}.per_class_recall"] = ";".join(f"{v:.6f}" for v in r["round_per_class_recall"])
        if float(r["round_test_accuracy"]) > 0:  # relative recall is undefined at accuracy 0
            row = distortion(run.dense.per_class_recall, run.dense.accuracy, r["round_per_class_recall"],
                             r["round_test_accuracy"]).to_row()
        else:
            row = {"intensification_ratio": math.nan, "distortion_slope": math.nan, "classes_counted": 0}
        for name in ("intensification_ratio", "distortion_slope", "classes_counted"):
            out[f"{key}.{name}"] = row[name]
    return out
