"""Early-bird tickets: detect during training when the pruned subnetwork has settled, then prune there.

Two detection rules, each a training callback that compares the current epoch with the previous
``window`` epochs and declares the ticket found at the first epoch whose *maximum* distance to them is
below ``threshold``:

* :class:`PartitionEarlyBird` -- You, Balestriero, Lu, Kou, Shi, Zhang, Wu, Lin & Baraniuk (TMLR 2022,
  "Max-Affine Spline Insights Into Deep Network Pruning", Sec. 4): the distance is the partition
  distance (:func:`prunelab.analysis.partition.pattern_distance`) between the activation patterns on
  a fixed canvas. Defaults from their reference code (``detect_eb``): window 3 previous epochs,
  threshold 0.16, patterns taken after each epoch's training.
* :class:`ChannelMaskEarlyBird` -- You, Li, Xu, Fu, Wang, Chen, Baraniuk, Wang & Lin (ICLR 2020,
  "Drawing Early-Bird Tickets", Sec. 3.3 and Algorithm 1): the distance is the normalised Hamming
  distance between the channel masks that network slimming would draw at the target pruning ratio
  (global threshold on the BatchNorm scales |gamma|, Liu et al. ICCV 2017). Defaults from their
  reference code (``EarlyBird(percent, epoch_keep=5)``, threshold 0.1): a FIFO of 5 masks, i.e. the
  current mask against the 4 previous ones (``window=4`` here), a mask also taken before training
  (their check runs at the top of every epoch, the first on the initial weights).

Epochs are counted as epochs of training done: a snapshot after the 13th epoch is epoch 13 (the
1-based ``epoch`` of :func:`prunelab.train.fit`'s history), the snapshot before training epoch 0.
Each callback writes ``eb_<rule>_distance`` (None until the window is full) and, on the epoch the
ticket is found, ``eb_<rule>_found = True`` into the history row; with ``stop=True`` it ends
training there, otherwise it keeps a CPU copy of the weights at that epoch (``ticket_state``) so
that one full run gives both the early-bird and the fully trained network.

:class:`BNScaleL1` is the sparsity penalty on BatchNorm scales that EB training uses (network
slimming, Liu et al. 2017, Eq. 1; EB code: ``s = 1e-4``). The ``bn_scale`` unit criterion
(|gamma| of the BatchNorm after each layer) is registered in
:data:`prunelab.pruning.structured.STRUCTURED`; with :func:`prunelab.pruning.spline.prune_units`
(``scope="global"``) it gives the network-slimming channel masks EB tickets are drawn with.

The ``earlybird`` schedule (registered in :data:`prunelab.pruning.schedules.SCHEDULES`) trains dense
from initialisation until the partition early bird is found (or training ends), prunes there with
the run's criterion and retrains the pruned network from the early-bird weights with the fine-tune
config, as EB training retrains its tickets (You et al. 2020, Sec. 4).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from prunelab.analysis.partition import ActivationPatterns, activation_patterns, pattern_distance, sample_canvas
from prunelab.callbacks import Callback, TrainState
from prunelab.errors import PrunelabError
from prunelab.pruning.context import ScoreContext
from prunelab.pruning.schedules import SCHEDULES, ScheduleContext, ScheduleResult, train_stage
from prunelab.pruning.structured import STRUCTURED, ChannelGroup, UnitScores

PARTITION_THRESHOLD = 0.16  # Spline-EB reference code, detect_eb(thres=0.16)
PARTITION_WINDOW = 3  # ... lookback=3
MASK_THRESHOLD = 0.1  # Early-Bird-Tickets reference code
MASK_WINDOW = 4  # ... epoch_keep=5: the current mask and 4 previous ones
SCHEDULE_CANVAS = 512  # training samples in the canvas of the ``earlybird`` schedule

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise PrunelabError(f"early-bird threshold must be a number in (0, 1], got {threshold!r}")
    return float(threshold)


def _check_window(window: Any) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise PrunelabError(f"early-bird window must be a positive integer (previous epochs), got {window!r}")
    return window


class EarlyBirdDetector:
    """The stopping rule on any sequence of snapshots, independent of training.

    ``update(epoch, snapshot)`` compares ``snapshot`` with the last ``window`` snapshots and returns
    the maximum distance (None while fewer than ``window`` are stored); the first epoch where it is
    below ``threshold`` becomes ``found_epoch``. ``curve`` holds ``(epoch, distance)`` for every update.
    """

    def __init__(self, distance: Callable[[Any, Any], float], threshold: float, window: int) -> None:
        self.distance = distance
        self.threshold = _check_threshold(threshold)
        self.window = _check_window(window)
        self.reset()

    def reset(self) -> None:
        self._previous: deque[Any] = deque(maxlen=self.window)
        self.found_epoch: int | None = None
        self.curve: list[tuple[int, float | None]] = []

    def update(self, epoch: int, snapshot: Any) -> float | None:
        dist: float | None = None
        if len(self._previous) == self.window:
            dist = max(float(self.distance(snapshot, old)) for old in self._previous)
            if self.found_epoch is None and dist < self.threshold:
                self.found_epoch = epoch
        self._previous.append(snapshot)
        self.curve.append((epoch, dist))
        return dist


class EarlyBirdCallback(Callback):
    """Base of the early-bird callbacks: subclasses say how to snapshot a model and compare snapshots."""

    rule = "base"

    def __init__(self, threshold: float, window: int, *, stop: bool = False, at_start: bool = False) -> None:
        self.detector = EarlyBirdDetector(self.distance, threshold, window)
        self.stop = bool(stop)
        self.at_start = bool(at_start)
        self.ticket_state: dict[str, torch.Tensor] | None = None

    def snapshot(self, model: nn.Module) -> Any:
        raise NotImplementedError

    def distance(self, a: Any, b: Any) -> float:
        raise NotImplementedError

    @property
    def found_epoch(self) -> int | None:
        return self.detector.found_epoch

    @property
    def curve(self) -> list[tuple[int, float | None]]:
        return self.detector.curve

    def _observe(self, state: TrainState, epoch: int) -> float | None:
        before = self.detector.found_epoch
        dist = self.detector.update(epoch, self.snapshot(state.model))
        if before is None and self.detector.found_epoch is not None:
            self.ticket_state = {k: v.detach().to("cpu").clone() for k, v in state.model.state_dict().items()}
            if self.stop:
                state.stop = True
        return dist

    def on_train_begin(self, state: TrainState) -> None:
        self.detector.reset()
        self.ticket_state = None
        if self.at_start:
            self._observe(state, 0)

    def on_epoch_end(self, state: TrainState) -> None:
        before = self.detector.found_epoch
        dist = self._observe(state, state.epoch + 1)
        state.metrics[f"eb_{self.rule}_distance"] = dist
        if before is None and self.detector.found_epoch is not None:
            state.metrics[f"eb_{self.rule}_found"] = True


class PartitionEarlyBird(EarlyBirdCallback):
    """Early bird from the spline partition (You et al., TMLR 2022): patterns on ``canvas`` after each epoch."""

    rule = "partition"

    def __init__(
        self,
        canvas: torch.Tensor,
        threshold: float = PARTITION_THRESHOLD,
        window: int = PARTITION_WINDOW,
        *,
        stop: bool = False,
        batch_size: int = 512,
    ) -> None:
        if not isinstance(canvas, torch.Tensor) or canvas.dim() < 2 or not canvas.is_floating_point():
            raise PrunelabError("canvas must be a floating-point tensor of inputs (N, *input_shape)")
        super().__init__(threshold, window, stop=stop, at_start=False)
        self.canvas = canvas
        self.batch_size = batch_size

    def snapshot(self, model: nn.Module) -> ActivationPatterns:
        return activation_patterns(model, self.canvas, batch_size=self.batch_size)

    def distance(self, a: ActivationPatterns, b: ActivationPatterns) -> float:
        return pattern_distance(a, b).mean


def batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """The affine BatchNorm modules of ``model`` by name, in registration order (an error if none)."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, _BATCHNORMS) and m.weight is not None}
    if not found:
        raise PrunelabError(
            f"{type(model).__name__} has no affine BatchNorm layer: the channel-mask early-bird rule and "
            "network slimming score channels by BatchNorm scales"
        )
    return found


def bn_channel_mask(model: nn.Module, ratio: float) -> torch.Tensor:
    """Network-slimming channel mask over all BatchNorm channels (True = kept), concatenated in order.

    The ``floor(ratio * total)`` channels with the smallest |gamma| over the whole network are
    pruned (ties: earlier channel first). The reference code thresholds at the sorted value of index
    ``floor(ratio * total)`` and keeps ``|gamma| > threshold``, which prunes the same channels
    unless scales tie; we keep the exact count.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
        raise PrunelabError(f"channel pruning ratio must be in (0, 1), got {ratio!r}")
    gammas = torch.cat([m.weight.detach().abs().flatten().cpu() for m in batchnorms(model).values()])
    pruned = int(ratio * gammas.numel())
    order = torch.sort(gammas, stable=True).indices
    keep = torch.ones(gammas.numel(), dtype=torch.bool)
    keep[order[:pruned]] = False
    return keep


class ChannelMaskEarlyBird(EarlyBirdCallback):
    """Early bird from BatchNorm-scale channel masks (You et al., ICLR 2020) at pruning ratio ``ratio``."""

    rule = "mask"

    def __init__(
        self,
        ratio: float,
        threshold: float = MASK_THRESHOLD,
        window: int = MASK_WINDOW,
        *,
        stop: bool = False,
        at_start: bool = True,
    ) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
            raise PrunelabError(f"channel pruning ratio must be in (0, 1), got {ratio!r}")
        super().__init__(threshold, window, stop=stop, at_start=at_start)
        self.ratio = float(ratio)

    def on_train_begin(self, state: TrainState) -> None:
        batchnorms(state.model)  # fail before training, not after the first epoch
        super().on_train_begin(state)

    def snapshot(self, model: nn.Module) -> torch.Tensor:
        return bn_channel_mask(model, self.ratio)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a != b).double().mean())


class BNScaleL1(Callback):
    """Adds ``strength * sum |gamma|`` over all BatchNorm scales (Liu et al. 2017, Eq. 1; EB: 1e-4)."""

    def __init__(self, strength: float = 1e-4) -> None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0:
            raise PrunelabError(f"BatchNorm L1 strength must be a number >= 0, got {strength!r}")
        self.strength = float(strength)
        self._gammas: list[torch.Tensor] = []

    def on_train_begin(self, state: TrainState) -> None:
        self._gammas = [m.weight for m in batchnorms(state.model).values()]

    def extra_loss(self, state: TrainState, xb: torch.Tensor, yb: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor | None:
        if self.strength == 0:
            return None
        return self.strength * torch.stack([g.abs().sum() for g in self._gammas]).sum()


@STRUCTURED.register("bn_scale")
def bn_scale_scores(
    model: nn.Module,
    groups: Mapping[str, ChannelGroup],
    unit_masks: Mapping[str, torch.Tensor],
    ctx: ScoreContext | None = None,
) -> UnitScores:
    """|gamma| of the BatchNorm after each layer: network slimming's channel score (Liu et al. 2017)."""
    out: UnitScores = {}
    for name, group in groups.items():
        if group.bn is None:
            raise PrunelabError(f"structured criterion 'bn_scale' needs a BatchNorm after layer {name!r}; it has none")
        bn = model.get_submodule(group.bn)
        if bn.weight is None:
            raise PrunelabError(f"structured criterion 'bn_scale' needs an affine BatchNorm; {group.bn!r} has none")
        score = bn.weight.detach().abs().clone()
        if name in unit_masks:
            score = score * unit_masks[name].to(score.device, score.dtype)
        out[name] = score
    return out


# --- the schedule ----------------------------------------------------------------------------------
@SCHEDULES.register("earlybird")
def earlybird(ctx: ScheduleContext) -> ScheduleResult:
    """Train from initialisation until the partition early bird, prune there, retrain (You et al. 2020, 2022).

    The canvas is ``SCHEDULE_CANVAS`` training inputs drawn by the training seed. The threshold and
    window are read from ``ctx.earlybird_threshold`` / ``ctx.earlybird_window`` when the context has
    them (defaults 0.16 and 3). If no early bird is found, the ticket is drawn from the fully
    trained network. The pruned network is retrained from the early-bird weights with
    ``ctx.finetune``. The event row records ``eb_epoch`` and ``eb_found``.
    """
    canvas = sample_canvas(ctx.data.x_train, SCHEDULE_CANVAS, seed=ctx.train.seed)
    detector = PartitionEarlyBird(
        canvas,
        getattr(ctx, "earlybird_threshold", PARTITION_THRESHOLD),
        getattr(ctx, "earlybird_window", PARTITION_WINDOW),
        stop=True,
    )
    history = train_stage(ctx, ctx.train, None, "search", [detector])
    found = detector.found_epoch
    masks = ctx.prune_fn(ctx.model, ctx.sparsity, None)
    masks.apply(ctx.model)
    event = {"stage": "earlybird", "sparsity": masks.sparsity(), "eb_found": found is not None,
             "eb_epoch": found if found is not None else len(history)}
    history += train_stage(ctx, ctx.finetune, masks, "retrain")
    return ScheduleResult(masks, history, [event])
