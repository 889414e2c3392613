"""Jumpstart regularisation: keep every unit alive and every point separated.

Riera, Rey, Serra, Puertas & Pujol (CPAIOR 2022, "Training Thinner and Deeper Neural Networks:
Jumpstart Regularization", Sec. 3): a ReLU unit that is inactive on every input (**dead**) passes no
gradient and computes a constant; one active on every input (**linear**) could be folded into the
next layer. Deep thin networks often train badly because whole layers die. Jumpstart asks, on every
training batch and for every constrained layer with pre-activations ``Z`` (points i x units j), that

* every unit be active on some point and inactive on some point: ``max_i Z_ij >= 1`` and
  ``min_i Z_ij <= -1``;
* every point activate some unit and leave some unit inactive: ``max_j Z_ij >= 1``, ``min_j Z_ij <= -1``;

with slacks ``ReLU(1 - max)`` and ``ReLU(1 + min)`` mixed as ``rho * ReLU(1 - max) + (1 - rho) *
ReLU(1 + min)`` (one value per unit and one per point; ``rho = 0.5``), and adds ``lambda * P(s)`` to
the loss, ``s`` all those values of all layers concatenated and ``P`` the L2 norm (``norm``) or the
mean (``mean``). For a conv layer a unit is a channel, and max/min run over the points *and* the
positions; a point's max/min runs over channels and positions.

Which tensors are constrained (``sites``):

* ``"layer_outputs"`` (default, the authors' definition): the output of every module that owns a
  ``weight`` and is not a BatchNorm, i.e. every ``nn.Linear`` / ``nn.Conv*d`` output, **the logits
  included**, and on conv nets the conv outputs **before** BatchNorm. This is what the authors'
  CIFAR code does: ``jumpstart/loss.py``, class ``JumpstartRegularization`` (``balance=0.5``,
  ``axis=(0, 1)``, ``aggr='norm'``, ``backprop_mode='single'``, ``negative_margin=-1``), whose
  ``model`` setter registers a forward hook on every ``named_modules()`` entry with
  ``hasattr(module, 'weight') and not isinstance(module, _BatchNorm)`` and whose hook computes the
  unit (``ax=0``) and point (``ax=1``) constraints of the module's ``output``.
* ``"relu_inputs"``: the inputs of the ReLUs (recorded with
  :class:`prunelab.analysis.partition.ReluInputs`, so ``nn.ReLU`` and functional ReLUs both count).
  This is the paper's wording ("pre-activations") read literally, and our former default. It skips
  the logits and, on BatchNorm nets, reads the BatchNorm outputs: in train mode those are
  standardised per channel over the batch, so their max is >= 1 and min <= -1 on any realistic
  batch and the penalty is 0 (no effect) on BatchNorm nets with the default affine init.

Max and min break ties as the authors' default ``backprop_mode='single'``
(``compute_maxmin_preact_single`` in ``jumpstart/util.py``): ``torch.max`` over the points (units) axis,
then over the flattened positions, so the gradient goes to one element per reduction. (Values equal
``amax``/``amin``; only the gradient on exact ties differs.) A later revision of the authors' code
(``sign_balance``, ``skip_last=True``, ``aggr='balanced'``) drops the last layer and averages units
and points separately; we follow the CPAIOR 2022 version. A module applied twice in one forward is
constrained at each call (the authors' dict keeps only the last); no model of our zoo reuses one.

The dead / linear unit counts that show its effect are an analysis: :func:`prunelab.analysis.units.unit_report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.analysis.partition import ReluInputs
from prunelab.callbacks import Callback, TrainState
from prunelab.errors import PrunelabError

AGGREGATES = ("norm", "mean")
SITES = ("layer_outputs", "relu_inputs")


def _check_rho(rho: Any) -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho <= 1.0:
        raise PrunelabError(f"jumpstart rho must be a number in [0, 1], got {rho!r}")
    return float(rho)


def _check_sites(sites: Any) -> str:
    if sites not in SITES:
        raise PrunelabError(f"unknown jumpstart sites {sites!r}; valid: {', '.join(SITES)}")
    return sites


def _reduce(z: Tensor, dim: int, largest: bool) -> Tensor:
    """Max (min) over axis ``dim`` and all trailing positions, one index per reduction (authors' 'single')."""
    first = z.max(dim=dim)[0] if largest else z.min(dim=dim)[0]
    flat = first.reshape(first.shape[0], -1)
    return flat.max(dim=1)[0] if largest else flat.min(dim=1)[0]


def jumpstart_slacks(z: Tensor, rho: float = 0.5) -> tuple[Tensor, Tensor]:
    """(unit slacks, point slacks) of one layer's pre-activations ``z`` of shape ``(points, units, ...)``.

    Unit ``j``: ``rho ReLU(1 - max Z[:, j]) + (1 - rho) ReLU(1 + min Z[:, j])`` (max/min over points
    and any trailing positions); point ``i``: the same over ``Z[i]`` (all units and positions).
    """
    rho = _check_rho(rho)
    if not isinstance(z, Tensor) or z.dim() < 2 or z.shape[0] == 0 or z.shape[1] == 0:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise PrunelabError(f"pre-activations must be a (points, units, ...) tensor, got {shape}")

    def slack(dim: int) -> Tensor:
        hi, lo = _reduce(z, dim, True), _reduce(z, dim, False)
        return rho * F.relu(1.0 - hi) + (1.0 - rho) * F.relu(1.0 + lo)

    return slack(0), slack(1)


def _aggregate(parts: Sequence[Tensor], aggregate: str) -> Tensor:
    if aggregate not in AGGREGATES:
        raise PrunelabError(f"unknown jumpstart aggregate {aggregate!r}; valid: {', '.join(AGGREGATES)}")
    s = torch.cat(list(parts))
    return s.norm() if aggregate == "norm" else s.mean()


def jumpstart_penalty(preactivations: Mapping[str, Tensor] | Sequence[Tensor], rho: float = 0.5,
                      aggregate: str = "norm") -> Tensor:
    """``P`` of all unit and point slacks of all layers (``norm``: L2 norm, ``mean``: their mean)."""
    if aggregate not in AGGREGATES:
        raise PrunelabError(f"unknown jumpstart aggregate {aggregate!r}; valid: {', '.join(AGGREGATES)}")
    tensors = list(preactivations.values()) if isinstance(preactivations, Mapping) else list(preactivations)
    if not tensors:
        raise PrunelabError("jumpstart needs the pre-activations of at least one layer")
    return _aggregate([s for z in tensors for s in jumpstart_slacks(z, rho)], aggregate)


def constrained_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs ``sites="layer_outputs"`` constrains (authors' rule).

    Every module that owns a ``weight`` tensor and is not a BatchNorm: Linear and Conv layers, the
    classifier included.
    """
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [name for name, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), Tensor) and not isinstance(m, nn.modules.batchnorm._BatchNorm)]


class LayerOutputSlacks:
    """Forward hooks computing the jumpstart slacks of every constrained layer's output as it is produced.

    Use as a context manager; ``values`` maps a module name (``"name:1"`` for its second call in one
    forward) to its ``(unit slacks, point slacks)`` of the most recent forward, kept in the autograd
    graph (recording only while ``enabled``). The slacks are computed inside the hook, before any
    in-place activation can overwrite the output (as the authors' hook does).
    """

    def __init__(self, model: nn.Module, rho: float = 0.5) -> None:
        self.model, self.rho = model, _check_rho(rho)
        self.names = constrained_layers(model)
        self.enabled = True
        self.values: dict[str, tuple[Tensor, Tensor]] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self.enabled:
                return
            if not isinstance(output, Tensor):
                raise PrunelabError(f"layer {name!r} returned a {type(output).__name__}, not a tensor")
            key, k = name, 0
            while key in self.values:
                k += 1
                key = f"{name}:{k}"
            self.values[key] = jumpstart_slacks(output, self.rho)

        return hook

    def __enter__(self) -> LayerOutputSlacks:
        if self._handles:
            raise PrunelabError("this LayerOutputSlacks recorder is already attached to its model")
        modules = dict(self.model.named_modules())
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _select(values: dict[str, Any], layers: Sequence[str] | None, what: str) -> dict[str, Any]:
    if layers is None:
        return values
    missing = [x for x in layers if x not in values]
    if missing:
        raise PrunelabError(f"unknown {what} site(s) {missing}; sites: {', '.join(values)}")
    return {k: values[k] for k in layers}


class _Recorder:
    """One forward's slacks per site, for either choice of ``sites``."""

    def __init__(self, model: nn.Module, sites: str, rho: float) -> None:
        self.sites, self.rho = sites, rho
        self.inner: LayerOutputSlacks | ReluInputs = (
            LayerOutputSlacks(model, rho) if sites == "layer_outputs" else ReluInputs(model, detach=False))
        self.inner.__enter__()
        self.inner.enabled = False

    def set_enabled(self, on: bool) -> None:
        self.inner.enabled = on
        if on:
            self.inner.values = {}

    def take(self, model: nn.Module, layers: Sequence[str] | None) -> list[Tensor]:
        values, self.inner.values = self.inner.values, {}
        if not values:
            what = "Linear/Conv layer" if self.sites == "layer_outputs" else "ReLU"
            raise PrunelabError(f"{type(model).__name__} applied no {what}; jumpstart has nothing to constrain")
        values = _select(values, layers, "layer" if self.sites == "layer_outputs" else "ReLU")
        if self.sites == "layer_outputs":
            return [s for pair in values.values() for s in pair]
        return [s for z in values.values() for s in jumpstart_slacks(z, self.rho)]

    def close(self) -> None:
        self.inner.__exit__(None, None, None)


def model_penalty(model: nn.Module, x: Tensor, *, sites: str = "layer_outputs", rho: float = 0.5,
                  aggregate: str = "norm", layers: Sequence[str] | None = None) -> Tensor:
    """The jumpstart penalty of ``model`` on the batch ``x`` (one forward in the model's current mode)."""
    sites, rho = _check_sites(sites), _check_rho(rho)
    if aggregate not in AGGREGATES:
        raise PrunelabError(f"unknown jumpstart aggregate {aggregate!r}; valid: {', '.join(AGGREGATES)}")
    rec = _Recorder(model, sites, rho)
    try:
        rec.set_enabled(True)
        model(x)
        rec.set_enabled(False)
        return _aggregate(rec.take(model, layers), aggregate)
    finally:
        rec.close()


class Jumpstart(Callback):
    """Adds ``strength * P(slacks of the batch)`` to the training loss.

    ``sites`` picks the constrained tensors (``"layer_outputs"``, the authors' definition, or
    ``"relu_inputs"``; see the module docstring). ``layers`` restricts it to some sites: module
    names (``"0"``, ``"features.3"``) for ``layer_outputs``, ReLU site names as in
    :class:`ReluInputs` (``"2"`` for the ReLU at index 2 of an ``nn.Sequential``) for
    ``relu_inputs``; an unknown name is an error at the first batch. The epoch's mean penalty
    (before ``strength``) goes into the history as ``jumpstart_penalty``.
    """

    def __init__(self, strength: float, rho: float = 0.5, aggregate: str = "norm",
                 layers: Sequence[str] | None = None, sites: str = "layer_outputs") -> None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0:
            raise PrunelabError(f"jumpstart strength must be a number >= 0, got {strength!r}")
        if aggregate not in AGGREGATES:
            raise PrunelabError(f"unknown jumpstart aggregate {aggregate!r}; valid: {', '.join(AGGREGATES)}")
        if layers is not None and (isinstance(layers, str) or not all(isinstance(x, str) for x in layers)):
            raise PrunelabError(f"layers must be a list of site names, got {layers!r}")
        self.strength, self.rho, self.aggregate = float(strength), _check_rho(rho), aggregate
        self.sites = _check_sites(sites)
        self.layers = list(layers) if layers is not None else None
        self._recorder: _Recorder | None = None
        self._sum: Tensor | None = None
        self._count = 0

    def on_train_begin(self, state: TrainState) -> None:
        self._recorder = _Recorder(state.model, self.sites, self.rho)

    def on_epoch_begin(self, state: TrainState) -> None:
        self._sum, self._count = None, 0

    def on_batch_begin(self, state: TrainState, xb: Tensor, yb: Tensor) -> None:
        if self._recorder is not None:
            self._recorder.set_enabled(True)

    def extra_loss(self, state: TrainState, xb: Tensor, yb: Tensor, outputs: Tensor) -> Tensor | None:
        rec = self._recorder
        if rec is None:
            return None
        rec.set_enabled(False)
        penalty = _aggregate(rec.take(state.model, self.layers), self.aggregate)
        self._sum = penalty.detach() if self._sum is None else self._sum + penalty.detach()
        self._count += 1
        return self.strength * penalty if self.strength > 0 else None

    def on_epoch_end(self, state: TrainState) -> None:
        if self._count:
            state.metrics["jumpstart_penalty"] = float(self._sum) / self._count

    def on_train_end(self, state: TrainState) -> None:
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None
