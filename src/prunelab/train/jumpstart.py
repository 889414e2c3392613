"""Jumpstart regularisation: keep every ReLU unit alive and every point separated.

Riera, Rey, Serra, Puertas & Pujol (CPAIOR 2022, "Training Thinner and Deeper Neural Networks:
Jumpstart Regularization", Sec. 3): a ReLU unit that is inactive on every input (**dead**) passes no
gradient and computes a constant; one active on every input (**linear**) could be folded into the
next layer. Deep thin networks often train badly because whole layers die. Jumpstart asks, on every
training batch and for every ReLU layer with pre-activations ``Z`` (points i x units j), that

* every unit be active on some point and inactive on some point: ``max_i Z_ij >= 1`` and
  ``min_i Z_ij <= -1``;
* every point activate some unit and leave some unit inactive: ``max_j Z_ij >= 1``, ``min_j Z_ij <= -1``;

with slacks ``ReLU(1 - max)`` and ``ReLU(1 + min)`` mixed as ``rho * ReLU(1 - max) + (1 - rho) *
ReLU(1 + min)`` (one value per unit and one per point; ``rho = 0.5``), and adds ``lambda * P(s)`` to
the loss, ``s`` all those values of all layers concatenated and ``P`` the L2 norm (``norm``) or the
mean (``mean``). This is how the authors' code (``JumpstartRegularization``: ``balance=0.5``,
``aggr='norm'``) combines them. For a conv layer a unit is a channel, and max/min run over the
points *and* the positions; a point's max/min runs over channels and positions (as in that code).

Choices made here: the constrained tensors are the **inputs of the ReLUs** (recorded with
:class:`prunelab.analysis.partition.ReluInputs`, so ``nn.ReLU`` and functional ReLUs both count,
after BatchNorm when there is one), not every layer's output as in the authors' code, which also
constrains the logits; max/min use ``torch.amax``/``amin`` (gradient shared among ties).

The dead / linear unit counts that show its effect are an analysis: :func:`prunelab.analysis.units.unit_report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from prunelab.analysis.partition import ReluInputs
from prunelab.callbacks import Callback, TrainState
from prunelab.errors import PrunelabError

AGGREGATES = ("norm", "mean")


def _check_rho(rho: Any) -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho <= 1.0:
        raise PrunelabError(f"jumpstart rho must be a number in [0, 1], got {rho!r}")
    return float(rho)


def jumpstart_slacks(z: Tensor, rho: float = 0.5) -> tuple[Tensor, Tensor]:
    """(unit slacks, point slacks) of one layer's pre-activations ``z`` of shape ``(points, units, ...)``.

    Unit ``j``: ``rho ReLU(1 - max Z[:, j]) + (1 - rho) ReLU(1 + min Z[:, j])`` (max/min over points
    and any trailing positions); point ``i``: the same over ``Z[i]`` (all units and positions).
    """
    rho = _check_rho(rho)
    if not isinstance(z, Tensor) or z.dim() < 2 or z.shape[0] == 0 or z.shape[1] == 0:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise PrunelabError(f"pre-activations must be a (points, units, ...) tensor, got {shape}")
    unit_dims = tuple(d for d in range(z.dim()) if d != 1)
    point_dims = tuple(range(1, z.dim()))

    def slack(hi: Tensor, lo: Tensor) -> Tensor:
        return rho * F.relu(1.0 - hi) + (1.0 - rho) * F.relu(1.0 + lo)

    units = slack(z.amax(dim=unit_dims), z.amin(dim=unit_dims))
    points = slack(z.amax(dim=point_dims), z.amin(dim=point_dims))
    return units, points


def jumpstart_penalty(preactivations: Mapping[str, Tensor] | Sequence[Tensor], rho: float = 0.5,
                      aggregate: str = "norm") -> Tensor:
    """``P`` of all unit and point slacks of all layers (``norm``: L2 norm, ``mean``: their mean)."""
    if aggregate not in AGGREGATES:
        raise PrunelabError(f"unknown jumpstart aggregate {aggregate!r}; valid: {', '.join(AGGREGATES)}")
    tensors = list(preactivations.values()) if isinstance(preactivations, Mapping) else list(preactivations)
    if not tensors:
        raise PrunelabError("jumpstart needs the pre-activations of at least one ReLU layer")
    parts = [s for z in tensors for s in jumpstart_slacks(z, rho)]
    s = torch.cat(parts)
    return s.norm() if aggregate == "norm" else s.mean()


class Jumpstart(Callback):
    """Adds ``strength * jumpstart_penalty(ReLU inputs of the batch)`` to the training loss.

    ``layers`` restricts it to some ReLU sites (names as in :class:`ReluInputs`, e.g. ``"2"`` for the
    ReLU at index 2 of an ``nn.Sequential``); an unknown name is an error at the first batch. The
    epoch's mean penalty (before ``strength``) goes into the history as ``jumpstart_penalty``.
    """

    def __init__(self, strength: float, rho: float = 0.5, aggregate: str = "norm",
                 layers: Sequence[str] | None = None) -> None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0:
            raise PrunelabError(f"jumpstart strength must be a number >= 0, got {strength!r}")
        if aggregate not in AGGREGATES:
            raise PrunelabError(f"unknown jumpstart aggregate {aggregate!r}; valid: {', '.join(AGGREGATES)}")
        if layers is not None and (isinstance(layers, str) or not all(isinstance(x, str) for x in layers)):
            raise PrunelabError(f"layers must be a list of ReLU site names, got {layers!r}")
        self.strength, self.rho, self.aggregate = float(strength), _check_rho(rho), aggregate
        self.layers = list(layers) if layers is not None else None
        self._recorder: ReluInputs | None = None
        self._sum: Tensor | None = None
        self._count = 0

    def on_train_begin(self, state: TrainState) -> None:
        self._recorder = ReluInputs(state.model, detach=False).__enter__()
        self._recorder.enabled = False

    def on_epoch_begin(self, state: TrainState) -> None:
        self._sum, self._count = None, 0

    def on_batch_begin(self, state: TrainState, xb: Tensor, yb: Tensor) -> None:
        if self._recorder is not None:
            self._recorder.enabled = True

    def extra_loss(self, state: TrainState, xb: Tensor, yb: Tensor, outputs: Tensor) -> Tensor | None:
        rec = self._recorder
        if rec is None:
            return None
        rec.enabled = False
        values, rec.values = rec.values, {}
        if not values:
            raise PrunelabError(f"{type(state.model).__name__} applied no ReLU; jumpstart needs a ReLU network")
        if self.layers is not None:
            missing = [x for x in self.layers if x not in values]
            if missing:
                raise PrunelabError(f"unknown ReLU site(s) {missing}; sites: {', '.join(values)}")
            values = {k: values[k] for k in self.layers}
        penalty = jumpstart_penalty(values, self.rho, self.aggregate)
        self._sum = penalty.detach() if self._sum is None else self._sum + penalty.detach()
        self._count += 1
        return self.strength * penalty if self.strength > 0 else None

    def on_epoch_end(self, state: TrainState) -> None:
        if self._count:
            state.metrics["jumpstart_penalty"] = float(self._sum) / self._count

    def on_train_end(self, state: TrainState) -> None:
        if self._recorder is not None:
            self._recorder.__exit__(None, None, None)
            self._recorder = None
