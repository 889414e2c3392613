"""The ``structured`` schedule: iterative filter/neuron pruning during training, with its instability.

Bartoldson, Morcos, Barbu & Erlebacher, "The Generalization-Stability Tradeoff in Neural Network
Pruning" (NeurIPS 2020). The network is trained from initialisation (``ctx.train``) with an
:class:`~prunelab.pruning.instability.IterativeStructuredPruning` callback: each entry of ``layers``
prunes ``fraction`` of the units (filters / neurons) of its layer(s) at the end of the 0-based
epochs ``start, start + period, ...`` up to ``end`` (the authors' ``range(start, end + 1, period)``;
the number of kept units falls linearly over the events), choosing the ``target`` units
(``smallest`` = Prune_S, ``largest`` = Prune_L, ``random`` = Prune_R) by the unit ``score`` (a
:data:`~prunelab.pruning.structured.STRUCTURED` name: ``l2`` as their VGG runs, ``l1``, ``ebn``,
``activations``, ...). Removed units stay removed (weights, bias and BatchNorm entries held at zero).
Each event measures the test accuracy right before and after pruning; the epoch's history row gets
``pre_prune_acc``, ``post_prune_acc`` and ``instability``, which the ``stability`` analysis
summarises (mean stability, best test accuracy after the last event, generalisation gap).

With ``layers = []`` the network trains without pruning (the paper's "No Pruning" baseline) under
the same options. ``eval_every`` (default 1: every epoch, as the stability summary needs) overrides
the training config's. ``prune.sparsity`` is not used: the layer plans set how much is removed.

Options (``[prune] schedule = "structured"``, ``schedule_options = {...}``)::

    score = "l2"            target = "smallest"       period = 4     # default period of the plans
    layers = [{layer = ["features.15", "features.18", "features.22"], fraction = 0.3, start = 3, end = 150},
              {layer = "features.25", fraction = 0.9, start = 6, end = 275, period = 4}]

The options reach the schedule as ``ctx.options`` (the validated :class:`StructuredOptions`, or a
dict of them); see :func:`options_of`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.pruning.instability import IterativeStructuredPruning, LayerSchedule
from prunelab.pruning.schedules import SCHEDULES, ScheduleContext, ScheduleResult, train_stage
from prunelab.pruning.structured import STRUCTURED, weight_masks

#: The paper's names of the targets.
TARGET_NAMES = {"smallest": "Prune_S", "largest": "Prune_L", "random": "Prune_R"}


def options_of(ctx: ScheduleContext, name: str) -> Any:
    """The validated options of schedule ``name`` from ``ctx.options`` (a model or a dict; defaults if absent)."""
    return SCHEDULES.parse_options(name, getattr(ctx, "options", None))


class LayerPlan(BaseModel):
    """One layer (or a group of layers sharing a plan): prune ``fraction`` of its units over the
    events at the end of 0-based epochs ``start, start + period, ...`` up to ``end``."""

    model_config = ConfigDict(extra="forbid")

    layer: list[str] = Field(description="module name(s) of the layer(s), e.g. features.15")
    fraction: float = Field(ge=0, lt=1, description="fraction of the layer's units removed after the last event")
    start: int = Field(ge=0, description="0-based epoch of the first event")
    end: int = Field(ge=0, description="0-based epoch of the last possible event (inclusive)")
    period: int | None = Field(None, gt=0, description="epochs between events (default: the schedule's period)")

    @field_validator("layer", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("layer")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v or not all(v):
            raise ValueError("give at least one module name")
        return v

    @model_validator(mode="after")
    def _order(self) -> LayerPlan:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self


class StructuredOptions(BaseModel):
    """Iterative structured pruning during training (Bartoldson et al. 2020)."""

    model_config = ConfigDict(extra="forbid")

    score: str = Field("l2", description="unit score (structured criterion: l2, l1, ebn, activations, ...)")
    target: Literal["smallest", "largest", "random"] = Field(
        "smallest", description="which units each event removes: smallest (Prune_S), largest (Prune_L), random (Prune_R)")
    period: int = Field(1, gt=0, description="epochs between events of plans that give no period")
    layers: list[LayerPlan] = Field(default_factory=list, description="the layer plans ([] = no pruning)")
    split: Literal["test", "val"] = Field("test", description="split the instability is measured on")
    eval_every: int | None = Field(1, ge=0, description="evaluate every N epochs (overrides train.eval_every; "
                                      "None keeps it)")
    options: dict[str, Any] = Field(default_factory=dict, description="options of the unit score")

    @field_validator("score")
    @classmethod
    def _known_score(cls, v: str) -> str:
        try:
            return STRUCTURED.canonical(v)
        except PrunelabError as e:
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _distinct(self) -> StructuredOptions:
        names = [x for plan in self.layers for x in plan.layer]
        twice = sorted({x for x in names if names.count(x) > 1})
        if twice:
            raise ValueError(f"layer(s) {', '.join(twice)} appear in two plans")
        return self

    def layer_schedules(self) -> list[LayerSchedule]:
        """One :class:`LayerSchedule` per scheduled layer."""
        return [LayerSchedule(x, plan.fraction, plan.start, plan.end, plan.period or self.period)
                for plan in self.layers for x in plan.layer]

    def events_per_layer(self) -> dict[str, int]:
        """Scheduled events of each layer (an event that would remove no unit is skipped at run time)."""
        return {s.layer: len(s.epochs()) for s in self.layer_schedules()}

    def nominal_rate(self) -> float:
        """The largest fraction of a layer's units one event removes, ``max fraction / events`` (the
        paper's "1%" / "13%" iterative rates), 0 without plans."""
        return max((s.fraction / len(s.epochs()) for s in self.layer_schedules()), default=0.0)


def _masks(ctx: ScheduleContext, cb: IterativeStructuredPruning | None) -> Masks:
    """Masks of every prunable weight: the removed units' weight rows off, everything else kept."""
    ones = Masks.ones(ctx.model)
    if cb is None:
        return ones
    removed = weight_masks(cb.masks)
    return Masks({k: removed.get(k, v) for k, v in ones.items()})


@SCHEDULES.register("structured", options=StructuredOptions)
def structured(ctx: ScheduleContext) -> ScheduleResult:
    """Train from initialisation while pruning units on per-layer plans (Bartoldson et al. 2020)."""
    opts: StructuredOptions = options_of(ctx, "structured")
    config = ctx.train if opts.eval_every is None else ctx.train.model_copy(update={"eval_every": opts.eval_every})
    if not opts.layers:
        return ScheduleResult(Masks.ones(ctx.model), train_stage(ctx, config, None, "train"), [])
    cb = IterativeStructuredPruning(opts.layer_schedules(), opts.score, opts.target, seed=ctx.train.seed,
                                    options=opts.options, split=opts.split)
    history = train_stage(ctx, config, None, "train", [cb])
    masks = _masks(ctx, cb)
    units = {x: g.num_units for x, g in cb.groups.items()}
    events = []
    for e in cb.events:
        share = max((n / units[x] for x, n in e.get("units", {}).items() if units.get(x)), default=0.0)
        events.append({"stage": "structured", **e, "max_unit_fraction": share})
    return ScheduleResult(masks, history, events)
