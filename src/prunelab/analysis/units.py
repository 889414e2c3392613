"""Dead and linear ReLU units of a network on a dataset.

A ReLU unit that is inactive on every input (**dead**) passes no gradient and computes a constant;
one active on every input (**linear**) could be folded into the next layer (Riera, Rey, Serra,
Puertas & Pujol, CPAIOR 2022, "Training Thinner and Deeper Neural Networks: Jumpstart
Regularization", Sec. 3; the regulariser that revives them is :mod:`prunelab.train.jumpstart`).

:func:`unit_report` counts, per ReLU site on a dataset, the dead units (never > 0), the linear units
(always > 0), and the points with no active / no inactive unit in that layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.analysis.partition import for_each_batch, masked_copy
from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class LayerUnits:
    """One ReLU site on a dataset: units never active (dead), always active (linear); likewise points."""

    site: str
    units: int
    dead: int
    linear: int
    points: int
    dead_points: int
    linear_points: int


@dataclass(frozen=True)
class UnitReport:
    layers: list[LayerUnits] = field(default_factory=list)

    @property
    def dead(self) -> int:
        return sum(l.dead for l in self.layers)

    @property
    def linear(self) -> int:
        return sum(l.linear for l in self.layers)

    @property
    def units(self) -> int:
        return sum(l.units for l in self.layers)

    @property
    def dead_layers(self) -> int:
        """Layers whose units are all dead (the network's output is then constant)."""
        return sum(l.dead == l.units for l in self.layers)

    def to_row(self) -> dict[str, Any]:
        return {"units": self.units, "dead_units": self.dead, "linear_units": self.linear,
                "dead_layers": self.dead_layers,
                "dead_per_layer": ";".join(str(l.dead) for l in self.layers),
                "linear_per_layer": ";".join(str(l.linear) for l in self.layers)}


def unit_report(model: nn.Module, x: Tensor, masks: Mapping[str, Tensor] | None = None,
                batch_size: int = 1024) -> UnitReport:
    """Dead and linear units (a conv unit is a channel: over all points and positions) of every ReLU site.

    A unit is dead if its pre-activation is never > 0 on ``x``, linear if it is always > 0; a point is
    dead (linear) in a layer if none (all) of the layer's units and positions are > 0. Eval mode;
    ``masks`` are applied to a copy of the model.
    """
    net = masked_copy(model, masks)
    hi: dict[str, Tensor] = {}
    lo: dict[str, Tensor] = {}
    dead_pts: dict[str, int] = {}
    lin_pts: dict[str, int] = {}
    for _, values in for_each_batch(net, x, batch_size):
        for site, z in values.items():
            if z.dim() < 2:
                raise PrunelabError(f"ReLU site {site!r} has no unit axis (shape {tuple(z.shape)})")
            if not bool(torch.isfinite(z).all()):
                raise PrunelabError(f"pre-activations at ReLU site {site!r} are NaN or infinite (a diverged network?)")
            dims = tuple(d for d in range(z.dim()) if d != 1)
            zmax, zmin = z.amax(dim=dims).cpu(), z.amin(dim=dims).cpu()
            hi[site] = zmax if site not in hi else torch.maximum(hi[site], zmax)
            lo[site] = zmin if site not in lo else torch.minimum(lo[site], zmin)
            flat = z.reshape(z.shape[0], -1)
            dead_pts[site] = dead_pts.get(site, 0) + int((flat.amax(dim=1) <= 0).sum())
            lin_pts[site] = lin_pts.get(site, 0) + int((flat.amin(dim=1) > 0).sum())
    layers = [
        LayerUnits(site=s, units=hi[s].numel(), dead=int((hi[s] <= 0).sum()), linear=int((lo[s] > 0).sum()),
                   points=int(x.shape[0]), dead_points=dead_pts[s], linear_points=lin_pts[s])
        for s in hi
    ]
    return UnitReport(layers)
