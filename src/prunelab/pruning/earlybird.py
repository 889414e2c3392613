"""Early-bird tickets: detect during training when the pruned subnetwork has settled, then prune there.

Two detection rules, each a training callback that compares the current epoch with the previous
``window`` epochs and declares the ticket found at the first epoch whose *maximum* distance to them is
below ``threshold``:

* :class:`PartitionEarlyBird` -- You, Balestriero, Lu, Kou, Shi, Zhang, Wu, Lin & Baraniuk (TMLR 2022,
  "Max-Affine Spline Insights Into Deep Network Pruning", Sec. 4). Reference code: GATECH-EIC/Spline-EB,
  ``ConvNet/experiments.py`` (``detect_eb(epoch, model, canvas, thres=0.16, lookback=3)``, lines
  151-179; ``set_global_hooks``, lines 68-83) and ``ConvNet/vis_util.py`` (``getDiff``, lines 123-127).
  The patterns are the signs (``> 0``) of every **BatchNorm output** (hooks on each ``BatchNorm1d/2d``)
  on a fixed canvas, in eval mode, after each epoch's training; the distance is the fraction of
  differing signs per BatchNorm layer, averaged over layers; the ticket is found when the maximum
  distance to the 3 previous snapshots is ``< 0.16`` (strict). Default ``sites="auto"`` follows that
  on any model with a BatchNorm; the reference has no rule for BatchNorm-free nets (it would divide
  by zero), where we read the ReLU inputs. ``sites="relu_inputs"`` (our former rule) reads the ReLU
  inputs everywhere: the same as the BatchNorm outputs on Conv-BN-ReLU nets (VGG), different on
  residual nets, whose ReLU sees ``bn2(...) + shortcut``.
* :class:`ChannelMaskEarlyBird` -- You, Li, Xu, Fu, Wang, Chen, Baraniuk, Wang & Lin (ICLR 2020,
  "Drawing Early-Bird Tickets", Sec. 3.3 and Algorithm 1). Reference code: RICE-EIC/Early-Bird-Tickets,
  ``main.py`` class ``EarlyBird`` (lines 306-374: ``thre_index`` line 328, ``gt(thre)`` line 338,
  ``cal_dist`` line 358, ``> 0.1`` line 370) and its use at the top of the epoch loop (lines
  383-420). Its rule, which we follow exactly:

  - **mask** (``EarlyBird.pruning``, the same rule as ``vggprune.py`` lines 105-117): sort all
    |gamma| of the BatchNorms, ``thre = sorted[int(total * percent)]``, keep ``|gamma| > thre``. So
    ``int(total * percent) + 1`` channels are pruned when scales do not tie, and every channel tied
    at ``thre`` is pruned too: at initialisation, where all scales are equal (their VGG fills them
    with 0.5, torch with 1), the mask prunes **every** channel;
  - **distance** ``1 - float(sum(mask_i == mask_j)) / n`` (``cal_dist``) in double precision;
  - **stop** when every one of the 4 distances between the newest of a FIFO of 5 masks
    (``epoch_keep=5``) and the others is ``<= 0.1`` (``early_bird_emerge``: ``if dist > 0.1: return
    False``), so one swapped channel in 20, a distance of ``1 - 0.9`` (just below 0.1), stops;
  - **when**: the check runs at the top of every epoch, before training it, so the first mask is the
    initial one and the weights after the last epoch are never checked.

Epochs are counted as epochs of training done: a snapshot after the 13th epoch is epoch 13 (the
1-based ``epoch`` of :func:`prunelab.train.fit`'s history), the snapshot before training epoch 0.
This is the ``epoch`` the Early-Bird code prints at the top of its loop (its checkpoint is named
``EB-<percent>-<epoch + 1>``); the Spline-EB code names the same snapshot ``EB_<epoch - 1>``
(0-based index of the epoch just trained). Each callback writes ``eb_<rule>_distance`` (None until
the window is full) and, on the epoch the ticket is found, ``eb_<rule>_found = True`` into the
history row; with ``stop=True`` it ends training there, otherwise it keeps a CPU copy of the weights
at that epoch (``ticket_state``) so that one full run gives both the early-bird and the fully trained
network. For resumable training (``fit(..., checkpoint=...)``) each callback's ``state_dict`` holds
the detector (the window of past snapshots, ``found_epoch``, the curve) and ``ticket_state``, so a
stopped and resumed run finds the same early bird with the same weights.

:class:`BNScaleL1` is the sparsity penalty on BatchNorm scales that EB training uses (network
slimming, Liu et al. 2017, Eq. 1; EB code: ``s = 1e-4``). The ``bn_scale`` unit criterion
(|gamma| of the BatchNorm after each layer) is registered in
:data:`prunelab.pruning.structured.STRUCTURED`; with :func:`prunelab.pruning.spline.prune_units`
(``scope="global"``) it gives network-slimming channel masks of an exact count (not the reference's
threshold rule above, which :func:`bn_channel_mask` implements).

The ``earlybird`` schedule (registered in :data:`prunelab.pruning.schedules.SCHEDULES`) trains dense
from initialisation until the partition early bird is found (or training ends), prunes there with
the run's criterion and retrains the pruned network from the early-bird weights with the fine-tune
config, as EB training retrains its tickets (You et al. 2020, Sec. 4).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from prunelab.analysis.partition import ActivationPatterns, activation_patterns, pattern_distance, sample_canvas
from prunelab.callbacks import Callback, TrainState
from prunelab.errors import PrunelabError
from prunelab.pruning.context import ScoreContext
from prunelab.pruning.schedules import SCHEDULES, ScheduleContext, ScheduleResult, train_stage
from prunelab.pruning.structured import STRUCTURED, ChannelGroup, UnitScores
from prunelab.utils import eval_mode

PARTITION_THRESHOLD = 0.16  # Spline-EB reference code, detect_eb(thres=0.16): stop if max < 0.16
PARTITION_WINDOW = 3  # ... lookback=3
PARTITION_SITES = ("auto", "batchnorm_outputs", "relu_inputs")
MASK_THRESHOLD = 0.1  # Early-Bird-Tickets reference code: stop if every distance <= 0.1
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
    below ``threshold`` (``< threshold``; ``<= threshold`` with ``inclusive=True``) becomes
    ``found_epoch``. ``curve`` holds ``(epoch, distance)`` for every update.
    """

    def __init__(self, distance: Callable[[Any, Any], float], threshold: float, window: int,
                 inclusive: bool = False) -> None:
        self.distance = distance
        self.threshold = _check_threshold(threshold)
        self.window = _check_window(window)
        self.inclusive = bool(inclusive)
        self.reset()

    def reset(self) -> None:
        self._previous: deque[Any] = deque(maxlen=self.window)
        self.found_epoch: int | None = None
        self.curve: list[tuple[int, float | None]] = []

    def update(self, epoch: int, snapshot: Any) -> float | None:
        dist: float | None = None
        if len(self._previous) == self.window:
            dist = max(float(self.distance(snapshot, old)) for old in self._previous)
            below = dist <= self.threshold if self.inclusive else dist < self.threshold
            if self.found_epoch is None and below:
                self.found_epoch = epoch
        self._previous.append(snapshot)
        self.curve.append((epoch, dist))
        return dist

    def state_dict(self, encode: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        """The stored snapshots (oldest first, each through ``encode`` if given), ``found_epoch`` and ``curve``."""
        encode = encode or (lambda snapshot: snapshot)
        return {"previous": [encode(s) for s in self._previous], "found_epoch": self.found_epoch,
                "curve": [(int(e), d) for e, d in self.curve]}

    def load_state_dict(self, state: Mapping[str, Any], decode: Callable[[Any], Any] | None = None) -> None:
        """Restore :meth:`state_dict` (``decode`` inverts its ``encode``)."""
        missing = [k for k in ("previous", "found_epoch", "curve") if k not in state]
        if missing:
            raise PrunelabError(f"early-bird detector state lacks {', '.join(missing)}; delete the training "
                                "checkpoint to start over")
        previous = list(state["previous"])
        if len(previous) > self.window:
            raise PrunelabError(f"the early-bird detector state holds {len(previous)} snapshots; the window is "
                                f"{self.window}")
        decode = decode or (lambda data: data)
        self._previous = deque((decode(s) for s in previous), maxlen=self.window)
        found = state["found_epoch"]
        self.found_epoch = None if found is None else int(found)
        self.curve = [(int(e), None if d is None else float(d)) for e, d in state["curve"]]


class EarlyBirdCallback(Callback):
    """Base of the early-bird callbacks: subclasses say how to snapshot a model and compare snapshots."""

    rule = "base"

    check_last = True  # also check the weights after the last epoch

    def __init__(self, threshold: float, window: int, *, stop: bool = False, at_start: bool = False,
                 inclusive: bool = False) -> None:
        self.detector = EarlyBirdDetector(self.distance, threshold, window, inclusive)
        self.stop = bool(stop)
        self.at_start = bool(at_start)
        self.ticket_state: dict[str, torch.Tensor] | None = None

    def snapshot(self, model: nn.Module) -> Any:
        raise NotImplementedError

    def distance(self, a: Any, b: Any) -> float:
        raise NotImplementedError

    def encode_snapshot(self, snapshot: Any) -> Any:
        """A snapshot in a form a training checkpoint holds (tensors, numbers, lists, dicts); as is by default."""
        return snapshot

    def decode_snapshot(self, data: Any) -> Any:
        """The inverse of :meth:`encode_snapshot`."""
        return data

    def state_dict(self) -> dict[str, Any]:
        """The detector's window of snapshots, found epoch and curve, and the ticket weights (if found)."""
        ticket = None if self.ticket_state is None else [[k, v] for k, v in self.ticket_state.items()]
        return {"detector": self.detector.state_dict(self.encode_snapshot), "ticket_state": ticket}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "detector" not in state or "ticket_state" not in state:
            raise PrunelabError(f"the training checkpoint holds no early-bird state of {type(self).__name__} "
                                "(written by a prunelab whose callback kept none?); delete it to start over")
        self.detector.load_state_dict(state["detector"], self.decode_snapshot)
        ticket = state["ticket_state"]
        self.ticket_state = None if ticket is None else {k: v.clone() for k, v in ticket}  # CPU, as recorded

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
        if not self.check_last and state.epoch + 1 >= state.total_epochs:
            return
        before = self.detector.found_epoch
        dist = self._observe(state, state.epoch + 1)
        state.metrics[f"eb_{self.rule}_distance"] = dist
        if before is None and self.detector.found_epoch is not None:
            state.metrics[f"eb_{self.rule}_found"] = True


def batchnorm_patterns(model: nn.Module, canvas: torch.Tensor, batch_size: int = 512) -> ActivationPatterns:
    """Signs (``> 0``) of every BatchNorm output of ``model`` on ``canvas`` (eval mode, no grad).

    Spline-EB's patterns (``set_global_hooks``: a forward hook on every ``BatchNorm1d/2d``). Sites are
    the BatchNorm module names (``name:1`` for a second call in one forward); every (channel,
    position) is a unit. Compare two with :func:`prunelab.analysis.partition.pattern_distance`.
    """
    if not isinstance(canvas, torch.Tensor) or canvas.dim() < 2 or canvas.shape[0] == 0 \
            or not canvas.is_floating_point():
        raise PrunelabError("canvas must be a floating-point tensor of inputs (N, *input_shape)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PrunelabError(f"batch_size must be a positive integer, got {batch_size!r}")
    bns = {n: m for n, m in model.named_modules() if isinstance(m, _BATCHNORMS)}
    if not bns:
        raise PrunelabError(f"{type(model).__name__} has no BatchNorm layer: use sites='relu_inputs'")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch: dict[str, np.ndarray] = {}
    chunks: dict[str, list[np.ndarray]] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            key, k = name, 0
            while key in batch:
                k += 1
                key = f"{name}:{k}"
            shapes[key] = tuple(output.shape[1:])
            batch[key] = np.packbits((output > 0).reshape(output.shape[0], -1).cpu().numpy(), axis=1)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in bns.items()]
    try:
        with eval_mode(model), torch.no_grad():
            for start in range(0, canvas.shape[0], batch_size):
                batch.clear()
                model(canvas[start : start + batch_size].to(device))
                if chunks and list(batch) != list(chunks):
                    raise PrunelabError("the model applied different BatchNorms on different batches")
                for key, bits in batch.items():
                    chunks.setdefault(key, []).append(bits)
    finally:
        for h in handles:
            h.remove()
    bits = {k: np.concatenate(c, axis=0) for k, c in chunks.items()}
    return ActivationPatterns(bits=bits, shapes=shapes, num_points=int(canvas.shape[0]))


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BATCHNORMS) for m in model.modules())


class PartitionEarlyBird(EarlyBirdCallback):
    """Early bird from the spline partition (You et al., TMLR 2022): patterns on ``canvas`` after each epoch.

    ``sites``: ``"batchnorm_outputs"`` (the reference code), ``"relu_inputs"``, or ``"auto"`` (default:
    BatchNorm outputs if the model has a BatchNorm, else ReLU inputs).
    """

    rule = "partition"

    def __init__(
        self,
        canvas: torch.Tensor,
        threshold: float = PARTITION_THRESHOLD,
        window: int = PARTITION_WINDOW,
        *,
        stop: bool = False,
        batch_size: int = 512,
        sites: str = "auto",
    ) -> None:
        if not isinstance(canvas, torch.Tensor) or canvas.dim() < 2 or not canvas.is_floating_point():
            raise PrunelabError("canvas must be a floating-point tensor of inputs (N, *input_shape)")
        if sites not in PARTITION_SITES:
            raise PrunelabError(f"unknown partition sites {sites!r}; valid: {', '.join(PARTITION_SITES)}")
        super().__init__(threshold, window, stop=stop, at_start=False)
        self.canvas = canvas
        self.batch_size = batch_size
        self.sites = sites

    def on_train_begin(self, state: TrainState) -> None:
        if self.sites == "batchnorm_outputs" and not _has_batchnorm(state.model):
            raise PrunelabError(f"{type(state.model).__name__} has no BatchNorm layer: use sites='relu_inputs'")
        super().on_train_begin(state)

    def snapshot(self, model: nn.Module) -> ActivationPatterns:
        bn = self.sites == "batchnorm_outputs" or (self.sites == "auto" and _has_batchnorm(model))
        if bn:
            return batchnorm_patterns(model, self.canvas, batch_size=self.batch_size)
        return activation_patterns(model, self.canvas, batch_size=self.batch_size)

    def distance(self, a: ActivationPatterns, b: ActivationPatterns) -> float:
        return pattern_distance(a, b).mean

    def encode_snapshot(self, snapshot: ActivationPatterns) -> dict[str, Any]:
        """The bit-packed patterns as uint8 tensors (in site order), their shapes and the point count."""
        return {"sites": [(site, torch.from_numpy(np.ascontiguousarray(bits)), tuple(snapshot.shapes[site]))
                          for site, bits in snapshot.bits.items()],
                "num_points": snapshot.num_points}

    def decode_snapshot(self, data: Mapping[str, Any]) -> ActivationPatterns:
        sites = data["sites"]
        return ActivationPatterns(bits={site: bits.numpy().copy() for site, bits, _ in sites},
                                  shapes={site: tuple(int(d) for d in shape) for site, _, shape in sites},
                                  num_points=int(data["num_points"]))


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
    """The Early-Bird code's channel mask over all BatchNorm channels (True = kept), concatenated in order.

    As ``EarlyBird.pruning`` (``main.py``) and ``vggprune.py``: with ``y`` all |gamma| sorted,
    ``thre = y[int(ratio * total)]`` and a channel is kept iff ``|gamma| > thre``. Without ties that
    prunes ``int(ratio * total) + 1`` channels; channels tied at ``thre`` are all pruned (all of them
    when every scale is equal, as at initialisation). The reference reads ``BatchNorm2d`` only; we
    read every affine BatchNorm (the same on conv nets).
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
        raise PrunelabError(f"channel pruning ratio must be in (0, 1), got {ratio!r}")
    gammas = torch.cat([m.weight.detach().abs().flatten().float().cpu() for m in batchnorms(model).values()])
    threshold = torch.sort(gammas).values[int(gammas.numel() * ratio)]
    return gammas > threshold


def mask_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Early-Bird code's mask distance ``1 - float(sum(a == b)) / n`` (``cal_dist``, double precision)."""
    if a.shape != b.shape:
        raise PrunelabError(f"channel masks of different sizes: {tuple(a.shape)} vs {tuple(b.shape)}")
    return 1.0 - float(torch.sum(a == b)) / a.numel()


class ChannelMaskEarlyBird(EarlyBirdCallback):
    """Early bird from BatchNorm-scale channel masks (You et al., ICLR 2020) at pruning ratio ``ratio``.

    :func:`bn_channel_mask` after each epoch (and before training), :func:`mask_distance`, stop at
    ``<= threshold``; the weights after the last epoch are not checked (the reference checks at the
    top of each epoch).
    """

    rule = "mask"
    check_last = False

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
        super().__init__(threshold, window, stop=stop, at_start=at_start, inclusive=True)
        self.ratio = float(ratio)

    def on_train_begin(self, state: TrainState) -> None:
        batchnorms(state.model)  # fail before training, not after the first epoch
        super().on_train_begin(state)

    def snapshot(self, model: nn.Module) -> torch.Tensor:
        return bn_channel_mask(model, self.ratio)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return mask_distance(a, b)

    def decode_snapshot(self, data: torch.Tensor) -> torch.Tensor:
        return data.to(device="cpu", dtype=torch.bool)  # bn_channel_mask's masks live on the CPU


class BNScaleL1(Callback):
    """Adds ``strength * sum |gamma|`` over all BatchNorm scales (Liu et al. 2017, Eq. 1; EB: 1e-4).

    Stateless across epochs (the scales are the model's parameters, found again in
    ``on_train_begin``), so a resumed training needs no ``state_dict``.
    """

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
