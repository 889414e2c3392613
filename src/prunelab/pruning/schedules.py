"""When pruning happens relative to training.

A schedule only decides *when*: it calls a ``prune_fn(model, sparsity, masks) -> Masks`` (which
knows the criterion and allocation) at the right moments and trains in between with the masks
enforced. Training itself is the context's ``fit`` (``prunelab.train.fit`` when the experiment
runner builds the context): this package never imports the training loop, it only hands it
callbacks (:class:`~prunelab.pruning.enforce.MaskEnforcer`, :class:`GradualPruning`, probes). Four schedules, each one registered function:

- ``at_init``  prune the initialised network, then train it (Lee et al. 2019; Wang et al. 2020;
  Tanaka et al. 2020 all prune at initialisation).
- ``oneshot``  train dense, prune once, fine-tune (Han et al. 2015 without iterations).
- ``imp``      iterative magnitude pruning with rewinding (Frankle & Carbin, ICLR 2019; rewinding to
  iteration k: Frankle, Dziugaite, Roy & Carbin, ICML 2020): train dense, then repeat
  {prune ``imp_rate`` of the remaining weights, rewind the kept weights to iteration k, retrain}
  until the target sparsity; the last round prunes exactly to the target. Each retraining uses the
  fine-tune config (set it equal to the training config for the classic lottery-ticket protocol).
- ``earlybird`` (registered by :mod:`prunelab.pruning.earlybird`) train until the activation
  partition stops changing (You et al. 2020, 2022), prune there, retrain.
- ``gradual``  polynomial pruning during training (Zhu & Gupta 2017, eq. 1):
  s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n Δt))^3 for t in {t_0, t_0 + Δt, ..., t_0 + n Δt},
  with s_i = 0, t_0 and t_0 + n Δt given as fractions of training and Δt in iterations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from prunelab.callbacks import Callback
from prunelab.errors import PrunelabError
from prunelab.masks import Masks, prunable_parameters
from prunelab.pruning.enforce import MaskEnforcer
from prunelab.registry import Registry

PruneFn = Callable[[nn.Module, float, Masks | None], Masks]
#: ``fit(model, data, config, callbacks=..., progress=...) -> result with .history`` (``prunelab.train.fit``)
FitFn = Callable[..., Any]
StateDict = dict[str, torch.Tensor]

SCHEDULES: Registry[Callable[[ScheduleContext], ScheduleResult]] = Registry("schedule")


@dataclass
class DenseStage:
    """The result of dense training that a schedule starts from.

    ``final`` are the trained weights, ``rewind`` the weights at the rewind iteration (the
    initialisation when it is 0).
    """

    final: StateDict
    rewind: StateDict
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ScheduleContext:
    """What a schedule needs. ``dense()`` trains (or loads a cached) dense model on demand; ``fit``
    trains the model with callbacks (``prunelab.train.fit``); ``train`` / ``finetune`` are the
    ``prunelab.train.TrainConfig`` of the two training stages."""

    model: nn.Module
    data: Any
    train: Any
    finetune: Any
    sparsity: float
    prune_fn: PruneFn
    dense: Callable[[], DenseStage]
    fit: FitFn
    oneshot_finetune: bool = True
    imp_rate: float = 0.2
    gradual_start: float = 0.1
    gradual_end: float = 0.6
    gradual_every: int = 50
    earlybird_threshold: float = 0.16
    earlybird_window: int = 3
    callbacks: list[Callback] = field(default_factory=list)
    progress: bool = True
    #: the schedule's validated options model (``SCHEDULES.parse_options(name, schedule_options)``)
    options: Any = None
    #: fnmatch patterns of the layers the run never prunes (OpenLTH counting counts their weights)
    exclude: tuple[str, ...] = ()


@dataclass
class ScheduleResult:
    masks: Masks
    history: list[dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)  # one row per pruning event


def train_stage(ctx: ScheduleContext, config: Any, masks: Masks | None, stage: str,
                extra: Sequence[Callback] = ()) -> list[dict]:
    """Train ``ctx.model`` with ``config`` (masks enforced when given, then the context's callbacks,
    then ``extra``); return the history rows tagged with ``stage``."""
    callbacks: list[Callback] = [MaskEnforcer(masks)] if masks is not None else []
    callbacks += [*ctx.callbacks, *extra]
    result = ctx.fit(ctx.model, ctx.data, config, callbacks=callbacks, progress=ctx.progress)
    return [dict(row, stage=stage) for row in result.history]


def _event(stage: str, masks: Masks, **extra: Any) -> dict[str, Any]:
    return {"stage": stage, "sparsity": masks.sparsity(), **extra}


@SCHEDULES.register("none")
def no_pruning(ctx: ScheduleContext) -> ScheduleResult:
    """Train dense (or load the cached dense model) and prune nothing: the baseline of a sweep, and
    the run an analysis of a trained network (exact compression, dead units) is attached to."""
    dense = ctx.dense()
    ctx.model.load_state_dict(dense.final)
    return ScheduleResult(Masks.ones(ctx.model), list(dense.history), [])


@SCHEDULES.register("at_init")
def at_init(ctx: ScheduleContext) -> ScheduleResult:
    """Prune the freshly initialised model, then train it with the masks fixed."""
    masks = ctx.prune_fn(ctx.model, ctx.sparsity, None)
    history = train_stage(ctx, ctx.train, masks, "train")
    return ScheduleResult(masks, history, [_event("init", masks)])


class OneshotOptions(BaseModel):
    """One-shot pruning of the trained dense model."""

    model_config = ConfigDict(extra="forbid")
    finetune: bool = Field(True, description="fine-tune after pruning (false: evaluate the pruned model as is, "
                           "as one-shot second-order papers report)")


@SCHEDULES.register("oneshot", options=OneshotOptions)
def oneshot(ctx: ScheduleContext) -> ScheduleResult:
    """Train dense (or load the cached dense model), prune once, fine-tune (unless ``finetune=false``)."""
    dense = ctx.dense()
    ctx.model.load_state_dict(dense.final)
    masks = ctx.prune_fn(ctx.model, ctx.sparsity, None)
    history = list(dense.history)
    if ctx.oneshot_finetune:
        history += train_stage(ctx, ctx.finetune, masks, "finetune")
    return ScheduleResult(masks, history, [_event("after_training", masks)])


def imp_sparsities(target: float, rate: float) -> list[float]:
    """Sparsity after each round when each round prunes ``rate`` of the remaining weights.

    The number of rounds is the smallest n with 1 - (1 - rate)^n >= target; the last round is
    clipped to the target so the schedule ends exactly there.
    """
    if not 0.0 < rate < 1.0:
        raise PrunelabError(f"imp_rate {rate!r} must be in (0, 1)")
    if target <= 0.0:
        return []
    n = max(1, math.ceil(math.log(1.0 - target) / math.log(1.0 - rate) - 1e-12))
    levels = [1.0 - (1.0 - rate) ** (k + 1) for k in range(n)]
    levels[-1] = target
    return [min(s, target) for s in levels]


class ImpOptions(BaseModel):
    """Iterative magnitude pruning (Frankle & Carbin 2019; rewinding: Frankle et al. 2020).

    ``counting``: what "prune ``rate`` of the remaining weights" counts. ``prunable`` (ours): the
    remaining prunable weights, rounds on the exponential schedule of :func:`imp_sparsities`.
    ``openlth``: OpenLTH's convention (Frankle et al.'s framework, used by Good et al. 2022), which also
    counts the never-pruned (``exclude``d) layers and prunes one more weight per round (the weight at
    the threshold): :func:`openlth_prune_counts`; on LeNet-300-100 with the output layer excluded its
    first round prunes 53,241 weights where ours prunes 53,040.
    """

    model_config = ConfigDict(extra="forbid")
    rate: float = Field(0.2, gt=0, lt=1, description="fraction of the remaining weights pruned per round")
    rewind_iteration: int = Field(0, ge=0, description="rewind to the weights after this many steps (0 = init)")
    counting: Literal["prunable", "openlth"] = Field("prunable", description="what the rate is a fraction of")


@SCHEDULES.register("imp", options=ImpOptions)
def iterative_magnitude(ctx: ScheduleContext) -> ScheduleResult:
    """Iterative pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    The criterion is whatever ``prune_fn`` uses (magnitude for IMP proper). Masks are nested: each
    round prunes among the weights kept so far.
    """
    dense = ctx.dense()
    ctx.model.load_state_dict(dense.final)
    history = list(dense.history)
    events = []
    masks: Masks | None = None
    opts = ctx.options if isinstance(ctx.options, ImpOptions) else ImpOptions(rate=ctx.imp_rate)
    for round_index, level in enumerate(imp_levels_for(ctx, opts), start=1):
        masks = ctx.prune_fn(ctx.model, level, masks)
        ctx.model.load_state_dict(dense.rewind)  # rewind the kept weights
        masks.apply(ctx.model)
        events.append(_event(f"round{round_index}", masks, round=round_index))
        history += train_stage(ctx, ctx.finetune, masks, f"round{round_index}")
    if masks is None:  # target sparsity 0: the dense model is the result
        masks = Masks.ones(ctx.model)
    return ScheduleResult(masks, history, events)


COUNTINGS = ("prunable", "openlth")


def openlth_prune_counts(prunable: int, ignored: int, rate: float, rounds: int) -> list[int]:
    """Weights pruned after each of ``rounds`` OpenLTH rounds (cumulative, of the ``prunable`` ones).

    Round k prunes ``ceil(rate * (prunable - pruned + ignored)) + 1`` more (at most what is left),
    ``ignored`` being the weights of the never-pruned layers that OpenLTH still counts.
    """
    if not 0.0 < rate < 1.0:
        raise PrunelabError(f"rate {rate!r} must be in (0, 1)")
    if prunable <= 0 or ignored < 0 or rounds < 0:
        raise PrunelabError(f"need prunable > 0, ignored >= 0, rounds >= 0; got {prunable}, {ignored}, {rounds}")
    pruned, out = 0, []
    for _ in range(rounds):
        remaining = prunable - pruned + ignored
        pruned = min(prunable, pruned + math.ceil(rate * remaining) + 1)
        out.append(pruned)
    return out


def imp_levels(target: float, rate: float, counting: str = "prunable", *, prunable: int | None = None,
               ignored: int = 0) -> list[float]:
    """Sparsity (of the prunable weights) after each IMP round, under ``counting``.

    ``"prunable"`` is :func:`prunelab.pruning.schedules.imp_sparsities`. ``"openlth"`` follows
    :func:`openlth_prune_counts` (needs the ``prunable`` and ``ignored`` weight counts): as many rounds
    as it takes to reach ``target`` (a level within half a weight of it counts as reaching it), the
    last one clipped to ``target``.
    """
    if counting not in COUNTINGS:
        raise PrunelabError(f"counting {counting!r} is not one of: {', '.join(COUNTINGS)}")
    if counting == "prunable":
        return imp_sparsities(target, rate)
    if prunable is None:
        raise PrunelabError("counting 'openlth' needs the number of prunable weights")
    if target <= 0.0:
        return []
    levels: list[float] = []
    pruned, k = 0, 0
    while True:
        k += 1
        pruned = openlth_prune_counts(prunable, ignored, rate, k)[-1]
        level = pruned / prunable
        if level >= target - 0.5 / prunable or pruned >= prunable:
            levels.append(min(level, target))
            return levels
        levels.append(level)


def weight_counts(model: nn.Module, exclude: tuple[str, ...] = ()) -> tuple[int, int]:
    """(prunable, ignored): weights of the default prunable layers outside / inside ``exclude``."""
    every = sum(int(p.numel()) for p in prunable_parameters(model).values())
    prunable = sum(int(p.numel()) for p in prunable_parameters(model, exclude=tuple(exclude)).values())
    return prunable, every - prunable


def imp_levels_for(ctx: ScheduleContext, opts: ImpOptions) -> list[float]:
    """The sparsity after each IMP round for the context's model, target and excluded layers."""
    if opts.counting == "prunable":
        return imp_levels(ctx.sparsity, opts.rate)
    prunable, ignored = weight_counts(ctx.model, tuple(ctx.exclude))
    return imp_levels(ctx.sparsity, opts.rate, opts.counting, prunable=prunable, ignored=ignored)


def polynomial_sparsity(t: int, t0: int, t_end: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017), eq. 1: cubic ramp from ``initial`` at t0 to ``final`` at t_end."""
    if t <= t0:
        return initial if t == t0 else 0.0
    if t >= t_end:
        return final
    frac = (t - t0) / (t_end - t0)
    return final + (initial - final) * (1.0 - frac) ** 3


class GradualPruning(Callback):
    """Prunes every ``every`` iterations between ``start`` and ``end`` (fractions of training)."""

    def __init__(self, prune_fn: PruneFn, final: float, start: float, end: float, every: int) -> None:
        if not 0.0 <= start <= end <= 1.0:
            raise PrunelabError(f"gradual pruning needs 0 <= start <= end <= 1, got start={start}, end={end}")
        self.prune_fn, self.final, self.start, self.end, self.every = prune_fn, final, start, end, every
        self.masks: Masks | None = None
        self.enforcer: MaskEnforcer | None = None
        self.events: list[dict[str, Any]] = []

    def on_train_begin(self, state) -> None:
        total = state.total_iterations
        self.t0 = int(round(self.start * total))
        self.t_end = max(self.t0, int(round(self.end * total)))
        self.current = 0.0

    def after_step(self, state) -> None:
        t = state.iteration
        if t < self.t0 or (t - self.t0) % self.every and t != self.t_end:
            if self.enforcer is not None:
                self.enforcer.after_step(state)
            return
        target = polynomial_sparsity(t, self.t0, self.t_end, self.final)
        if target > self.current + 1e-12 and t <= self.t_end:
            self.masks = self.prune_fn(state.model, target, self.masks)
            self.enforcer = MaskEnforcer(self.masks)
            self.enforcer.after_step(state)  # zero pruned weights and their optimizer state
            self.current = target
            self.events.append(_event("gradual", self.masks, iteration=t))
        elif self.enforcer is not None:
            self.enforcer.after_step(state)

    def after_backward(self, state) -> None:
        if self.enforcer is not None:
            self.enforcer.after_backward(state)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed training needs: the masks so far, the sparsity reached and the events."""
        return {"masks": dict(self.masks) if self.masks is not None else None, "current": self.current,
                "events": list(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        masks = state.get("masks")
        self.masks = Masks(masks) if masks is not None else None
        self.enforcer = MaskEnforcer(self.masks) if self.masks is not None else None
        self.current = float(state.get("current", 0.0))
        self.events = list(state.get("events", []))


class GradualOptions(BaseModel):
    """Gradual pruning (Zhu & Gupta 2017, eq. 1)."""

    model_config = ConfigDict(extra="forbid")
    start: float = Field(0.1, ge=0, le=1, description="fraction of training when pruning starts")
    end: float = Field(0.6, ge=0, le=1, description="fraction of training when pruning ends")
    every: int = Field(50, gt=0, description="iterations between pruning steps")


@SCHEDULES.register("gradual", options=GradualOptions)
def gradual(ctx: ScheduleContext) -> ScheduleResult:
    """Train from initialisation while pruning on the Zhu & Gupta (2017) cubic schedule."""
    cb = GradualPruning(ctx.prune_fn, ctx.sparsity, ctx.gradual_start, ctx.gradual_end, ctx.gradual_every)
    saved = ctx.callbacks
    ctx.callbacks = [cb, *saved]
    try:
        history = train_stage(ctx, ctx.train, None, "train")
    finally:
        ctx.callbacks = saved
    masks = cb.masks
    if masks is None or cb.current < ctx.sparsity - 1e-12:
        # training ended before the ramp did (e.g. gradual_end = 1): finish the schedule now
        masks = ctx.prune_fn(ctx.model, ctx.sparsity, masks)
        cb.events.append(_event("gradual", masks, iteration=cb.t_end))
    masks.apply(ctx.model)
    return ScheduleResult(masks, history, cb.events)
