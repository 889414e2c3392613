"""The ``slimming`` schedule: channel pruning of a network trained with a BatchNorm-scale penalty, the
ticket drawn at an early-bird epoch or after full training.

Early-bird tickets (You, Li, Xu, Fu, Wang, Chen, Baraniuk, Wang & Lin, ICLR 2020; You, Balestriero,
Lu, Kou, Shi, Zhang, Wu, Lin & Baraniuk, TMLR 2022) against network slimming of the fully trained
network (Liu, Li, Shen, Huang, Yan & Zhang, ICCV 2017):

1. **dense training** from initialisation with ``ctx.train`` and the L1 penalty ``bn_l1 * sum |gamma|``
   on the BatchNorm scales (:class:`~prunelab.pruning.earlybird.BNScaleL1`; EB code: 1e-4), while two
   early-bird rules watch: the spline partition (:class:`~prunelab.pruning.earlybird.PartitionEarlyBird`,
   on the plane canvas through the origin and two test images of different classes, the Spline-EB
   reference's, or on ``canvas_samples`` training inputs) and the channel mask
   (:class:`~prunelab.pruning.earlybird.ChannelMaskEarlyBird` at ratio ``prune.sparsity``). With
   ``ticket = "partition"`` / ``"mask"`` training stops at that rule's early bird; with ``"trained"``
   it runs to the end. If the early bird never comes, the ticket is the fully trained network
   (``ticket.eb_found = false``).
2. **pruning**: ``prune.sparsity`` is the fraction of **channels** (units) removed: the lowest unit
   ``score`` (``bn_scale`` = |gamma|, network slimming's and the EB paper's; any
   :data:`~prunelab.pruning.structured.STRUCTURED` name, or ``random``) over all ``layers`` together
   (``scope = "global"``) or per layer. Removed units lose their weights, bias and BatchNorm entries.
3. **retraining** with the masks enforced and the same BatchNorm penalty: ``retrain = "rest"`` continues
   the dense learning-rate schedule from the ticket epoch to the last epoch (EB-Train's
   ``--start-epoch``: dense and pruned epochs add up to the dense budget), ``"finetune"`` uses
   ``ctx.finetune`` (network slimming's fine-tuning), ``"auto"`` (default) is ``rest`` for early-bird
   tickets and ``finetune`` for the trained one. ``rest`` reads ``train.epochs`` with a ``constant``
   or ``step`` schedule; the seed is the fine-tuning seed (the run's seed + 1).

The history gets one row with ``stage = "ticket"`` between the dense rows (``stage = "dense"``) and
the retraining rows: ``epoch`` (of the ticket), ``eb_found``, ``eb_partition_epoch``,
``eb_mask_epoch`` (None if not found or not watched), ``dense_test_acc`` (the network the ticket
came from), ``pruned_test_acc`` (before retraining), ``channels_kept``, ``dense_epochs``,
``retrain_epochs`` and, with ``partition_samples > 0``, ``partition_distance``: the fraction of
(input, unit) signs that pruning changed on the first that many test inputs (You et al. 2022 argue
spline pruning changes the partition least). The ``ticket`` analysis puts that row into
``results.csv``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from prunelab.analysis.evaluate import evaluate
from prunelab.analysis.partition import partition_distance, plane_canvas, sample_canvas
from prunelab.callbacks import Callback
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.pruning.context import ScoreContext
from prunelab.pruning.earlybird import (
    MASK_THRESHOLD,
    MASK_WINDOW,
    PARTITION_THRESHOLD,
    PARTITION_WINDOW,
    BNScaleL1,
    ChannelMaskEarlyBird,
    PartitionEarlyBird,
)
from prunelab.pruning.schedules import SCHEDULES, ScheduleContext, ScheduleResult, train_stage
from prunelab.pruning.spline import default_layers, prune_units
from prunelab.pruning.structured import STRUCTURED, channel_groups, expand_unit_masks, weight_masks
from prunelab.pruning.structured_schedule import options_of

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class SlimmingOptions(BaseModel):
    """Channel pruning with early-bird tickets (You et al. 2020, 2022) or after training (Liu et al. 2017)."""

    model_config = ConfigDict(extra="forbid")

    ticket: Literal["trained", "partition", "mask"] = Field(
        "trained", description="where the ticket is drawn: after training, or at the partition / channel-mask early bird")
    score: str = Field("bn_scale", description="unit score: a structured criterion (bn_scale, l1, l2, spline, ...) "
                       "or random")
    scope: Literal["global", "layerwise"] = Field("global", description="channels ranked over all layers or per layer")
    layers: Literal["convs", "hidden"] | list[str] = Field(
        "convs", description="layers whose units are pruned: convs (every Conv2d), hidden (every Linear/Conv "
        "but the classifier) or module names")
    bn_l1: float = Field(1e-4, ge=0, description="L1 strength on BatchNorm scales in training and retraining")
    retrain: Literal["auto", "rest", "finetune"] = Field(
        "auto", description="rest of the dense schedule (EB), the fine-tune config, or auto")
    watch: bool = Field(True, description="record both early-bird epochs, whichever rule draws the ticket")
    canvas: Literal["plane", "train"] = Field("plane", description="partition canvas: the plane through the origin "
                                              "and two test images, or training samples")
    canvas_resolution: int = Field(32, ge=2, description="plane canvas: points per side")
    canvas_samples: int = Field(512, gt=0, description="train canvas: samples")
    partition_threshold: float = Field(PARTITION_THRESHOLD, gt=0, le=1)
    partition_window: int = Field(PARTITION_WINDOW, gt=0)
    mask_threshold: float = Field(MASK_THRESHOLD, gt=0, le=1)
    mask_window: int = Field(MASK_WINDOW, gt=0)
    partition_samples: int = Field(0, ge=0, description="test inputs on which the partition change of pruning "
                                   "is measured (0: not measured)")

    @field_validator("score")
    @classmethod
    def _known_score(cls, v: str) -> str:
        if v.lower() == "random":
            return "random"
        try:
            return STRUCTURED.canonical(v)
        except PrunelabError as e:
            raise ValueError(f"{e} (or random)") from None


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BATCHNORMS) for m in model.modules())


def _canvas(ctx: ScheduleContext, opts: SlimmingOptions) -> torch.Tensor:
    if opts.canvas == "train":
        return sample_canvas(ctx.data.x_train, opts.canvas_samples, seed=ctx.train.seed)
    x, y = ctx.data.x_test, ctx.data.y_test
    other = (y != y[0]).nonzero()
    if len(other) == 0:
        raise PrunelabError("the plane canvas needs two test images of different classes")
    first = int(other[0])
    zero = torch.zeros_like(x[0].cpu())
    return plane_canvas(zero, x[0].cpu(), x[first].cpu(), resolution=opts.canvas_resolution, margin=0.0).points


def _layers(model: nn.Module, opts: SlimmingOptions) -> list[str]:
    if opts.layers == "convs":
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        if not names:
            raise PrunelabError(f"{type(model).__name__} has no Conv2d layer; use layers = \"hidden\" or module names")
        return names
    if opts.layers == "hidden":
        return default_layers(model)
    return list(opts.layers)


def continued_config(train: Any, start: int, seed: int) -> Any | None:
    """The dense schedule from epoch ``start`` on (EB-Train's ``--start-epoch``): the remaining epochs,
    the learning rate after the milestones passed, the later milestones shifted; None if none is left."""
    if train.epochs is None:
        raise PrunelabError("retrain = \"rest\" needs a training config in epochs, not iterations")
    if train.lr_schedule not in ("constant", "step"):
        raise PrunelabError(f"retrain = \"rest\" continues a constant or step schedule, not {train.lr_schedule!r}; "
                            "use retrain = \"finetune\"")
    left = train.epochs - start
    if left <= 0:
        return None
    passed = sum(1 for m in train.milestones if m <= start)
    later = [m - start for m in train.milestones if m > start]
    return train.model_copy(update={
        "epochs": left, "lr": train.lr * train.gamma**passed, "milestones": later,
        "lr_schedule": "step" if later else "constant", "warmup_epochs": 0.0, "seed": seed})


def _scores(model: nn.Module, groups: dict, opts: SlimmingOptions, seed: int) -> dict[str, torch.Tensor]:
    if opts.score == "random":
        g = torch.Generator().manual_seed(seed)
        return {k: torch.rand(grp.num_units, generator=g) for k, grp in groups.items()}
    device = next(model.parameters()).device
    return STRUCTURED.get(opts.score)(model, groups, {}, ScoreContext(seed=seed, device=device))


@SCHEDULES.register("slimming", options=SlimmingOptions)
def slimming(ctx: ScheduleContext) -> ScheduleResult:
    """Train with the BatchNorm penalty to the ticket epoch, remove ``sparsity`` of the channels, retrain."""
    opts: SlimmingOptions = options_of(ctx, "slimming")
    model, ratio = ctx.model, ctx.sparsity
    if not 0.0 < ratio < 1.0:
        raise PrunelabError(f"schedule 'slimming' removes prune.sparsity of the channels; it must be in (0, 1), got {ratio}")
    bn = _has_batchnorm(model)
    if opts.ticket == "mask" and not bn:
        raise PrunelabError("ticket = \"mask\" needs BatchNorm layers (the channel-mask rule reads their scales)")
    penalty: list[Callback] = [BNScaleL1(opts.bn_l1)] if opts.bn_l1 > 0 else []
    partition = mask = None
    if opts.ticket == "partition" or opts.watch:
        partition = PartitionEarlyBird(_canvas(ctx, opts), opts.partition_threshold, opts.partition_window,
                                       stop=opts.ticket == "partition")
    if opts.ticket == "mask" or (opts.watch and bn):
        mask = ChannelMaskEarlyBird(ratio, opts.mask_threshold, opts.mask_window, stop=opts.ticket == "mask")
    detectors = [d for d in (partition, mask) if d is not None]
    result = ctx.fit(model, ctx.data, ctx.train, callbacks=[*ctx.callbacks, *penalty, *detectors],
                     progress=ctx.progress)
    history = [dict(r, stage="dense") for r in result.history]
    dense_epochs = len(history)
    rule = {"partition": partition, "mask": mask}.get(opts.ticket)
    found = None if rule is None else rule.found_epoch

    groups = channel_groups(model, _layers(model, opts))
    units = prune_units(_scores(model, groups, opts, ctx.train.seed), ratio, opts.scope)
    full = expand_unit_masks(model, units, groups)
    distance = None
    if opts.partition_samples > 0:
        x = ctx.data.x_test[: opts.partition_samples]
        distance = partition_distance(model, model, x, None, full).mean
    full.apply(model)
    pruned_acc = evaluate(model, ctx.data.x_test, ctx.data.y_test).accuracy

    retrain = opts.retrain if opts.retrain != "auto" else ("finetune" if opts.ticket == "trained" else "rest")
    config = continued_config(ctx.train, dense_epochs, ctx.finetune.seed) if retrain == "rest" else ctx.finetune
    kept = sum(int(u.sum()) for u in units.values())
    total = sum(u.numel() for u in units.values())
    ticket = {
        "stage": "ticket", "epoch": dense_epochs, "ticket": opts.ticket,
        "eb_found": None if rule is None else found is not None,
        "eb_partition_epoch": partition.found_epoch if partition is not None else None,
        "eb_mask_epoch": mask.found_epoch if mask is not None else None,
        "dense_epochs": dense_epochs, "dense_test_acc": result.final.accuracy, "pruned_test_acc": pruned_acc,
        "channels_kept": kept / total if total else math.nan,
        "retrain_epochs": 0 if config is None else int(config.epochs or 0),
        "partition_distance": distance,
    }
    history.append(ticket)
    if config is not None:
        history += train_stage(ctx, config, full, "retrain", penalty)
    removed = weight_masks(full)
    masks = Masks({k: removed.get(k, v) for k, v in Masks.ones(model).items()})
    event = {"stage": "slimming", "sparsity": masks.sparsity(), **{k: v for k, v in ticket.items() if k != "stage"}}
    return ScheduleResult(masks, history, [event])
