"""Spline node pruning: remove the neurons/channels whose hyperplanes are redundant in their layer.

You, Balestriero, Lu, Kou, Shi, Zhang, Wu, Lin & Baraniuk (TMLR 2022, "Max-Affine Spline Insights Into
Deep Network Pruning", Sec. 3, "spline pruning policy"): unit ``k`` of a ReLU layer splits the layer's
input space along the hyperplane ``{h : <w_k, h> + b_k = 0}``; the layer's partition is the
arrangement of these hyperplanes. A unit whose hyperplane (nearly) coincides with another unit's adds
(almost) no boundary, so removing it barely changes the partition: such units are pruned first.

Definition used here (the paper gives the idea and a distance between normalised hyperplanes; the
details below are our choices, stated once):

* **Hyperplane of a unit.** ``v_k = [w_k; b_k]`` (a conv filter flattened over in-channels x kernel)
  divided by its Euclidean norm. When a BatchNorm follows the layer it is folded in first, since the
  ReLU sees its output: ``w' = (gamma / sigma) w``, ``b' = gamma (b - mu) / sigma + beta`` with the
  running statistics (``sigma = sqrt(running_var + eps)``), i.e. the eval-mode network.
* **Distance.** A hyperplane is the same set for ``v`` and ``-v``, so
  ``d(k, l) = min(||v_k - v_l||, ||v_k + v_l||) = sqrt(2 - 2 |<v_k, v_l>|)``, in ``[0, sqrt(2)]``.
* **Redundancy by greedy peeling.** Scoring every unit by its nearest-neighbour distance at once
  would give both copies of a duplicated unit score 0 and prune both, erasing the boundary. Instead
  units are removed one at a time: repeatedly take the alive unit with the smallest distance to its
  nearest alive neighbour (ties: the lower index), record that distance as its score, remove it.
  Recorded scores never decrease (removing units only increases the others' nearest distances), so
  the removal order is the ascending score order and pruning the lowest-k is exactly "remove the k
  most redundant, one by one". The last unit of a layer scores ``+inf`` (a layer is never emptied).
  A unit with an all-zero ``[w'; b']`` (constant zero output, e.g. gamma = 0 and beta = 0) has no
  hyperplane and scores 0; a constant non-zero unit (``w' = 0, b' != 0``) also has no boundary and
  scores 0.
* **Layerwise vs global.** ``layerwise`` removes the same fraction of units from every layer (lowest
  scores per layer); ``global`` pools the scores of all layers and removes the lowest ones overall.
  Distances live on the unit sphere of every layer, so they are comparable in scale, but random
  directions are more orthogonal in wider input spaces: global pruning tends to take more units from
  layers with small fan-in.

Scores (higher = keep) are registered as the ``spline`` criterion of
:data:`prunelab.pruning.structured.STRUCTURED`; :func:`prune_units` turns any unit scores into unit
masks (layerwise or global) and :func:`spline_prune` does both and expands the unit masks to
parameter masks (weights, biases, BatchNorm) with :func:`~prunelab.pruning.structured.expand_unit_masks`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.pruning.context import ScoreContext
from prunelab.pruning.structured import (
    STRUCTURED,
    ChannelGroup,
    UnitScores,
    channel_groups,
    check_unit_masks,
    expand_unit_masks,
)

SCOPES = ("layerwise", "global")


def unit_hyperplanes(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """``[w'; b']`` of every unit of ``group.layer`` (BatchNorm folded in), float64, ``(units, fan_in + 1)``."""
    layer = model.get_submodule(group.layer)
    w = layer.weight.detach().to("cpu", torch.float64).reshape(group.num_units, -1)
    b = (
        layer.bias.detach().to("cpu", torch.float64)
        if getattr(layer, "bias", None) is not None
        else torch.zeros(group.num_units, dtype=torch.float64)
    )
    if group.bn is not None:
        bn = model.get_submodule(group.bn)
        if bn.running_mean is None or bn.running_var is None:
            raise PrunelabError(
                f"BatchNorm {group.bn!r} keeps no running statistics (track_running_stats=False); "
                "the spline criterion folds the eval-mode BatchNorm into the hyperplanes"
            )
        sigma = torch.sqrt(bn.running_var.detach().to("cpu", torch.float64) + bn.eps)
        gamma = bn.weight.detach().to("cpu", torch.float64) if bn.weight is not None else torch.ones_like(sigma)
        beta = bn.bias.detach().to("cpu", torch.float64) if bn.bias is not None else torch.zeros_like(sigma)
        scale = gamma / sigma
        w = w * scale.unsqueeze(1)
        b = scale * (b - bn.running_mean.detach().to("cpu", torch.float64)) + beta
    return torch.cat([w, b.unsqueeze(1)], dim=1)


def peeling_scores(hyperplanes: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy redundancy scores of one layer's hyperplanes (rows), see the module docstring.

    Rows with ``alive`` False are ignored and score 0. Returns float64 ``(units,)``.
    """
    v = hyperplanes.detach().to("cpu", torch.float64)
    if v.dim() != 2:
        raise PrunelabError(f"hyperplanes must be a (units, dim) matrix, got shape {tuple(v.shape)}")
    n = v.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    alive_np = np.ones(n, dtype=bool) if alive is None else alive.detach().cpu().numpy().astype(bool).copy()
    if alive_np.shape != (n,):
        raise PrunelabError(f"alive must have {n} entries, got shape {tuple(alive_np.shape)}")
    norms = v.norm(dim=1).numpy()
    scale = norms.max() if n else 0.0
    flat = norms <= 1e-12 * max(scale, 1e-300)
    flat |= (v[:, :-1].norm(dim=1).numpy() <= 1e-12 * max(scale, 1e-300))  # no w: no hyperplane
    scores = np.zeros(n)
    alive_np &= ~flat  # constant units are removed first, at distance 0
    unit = (v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)).numpy()
    cos = np.abs(unit @ unit.T)
    dist = np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, None))
    dist[~alive_np, :] = np.inf
    dist[:, ~alive_np] = np.inf
    np.fill_diagonal(dist, np.inf)
    nearest = dist.min(axis=1)
    idx = np.flatnonzero(alive_np)
    for _ in range(max(len(idx) - 1, 0)):
        candidates = np.flatnonzero(alive_np)
        r = candidates[np.argmin(nearest[candidates])]  # argmin returns the first (lowest index) tie
        scores[r] = nearest[r]
        alive_np[r] = False
        dist[:, r] = np.inf
        dist[r, :] = np.inf
        nearest = dist.min(axis=1)
    if len(idx):
        scores[np.flatnonzero(alive_np)] = np.inf
    return torch.from_numpy(scores)


@STRUCTURED.register("spline")
def spline_scores(
    model: nn.Module,
    groups: Mapping[str, ChannelGroup],
    unit_masks: Mapping[str, torch.Tensor],
    ctx: ScoreContext | None = None,
) -> UnitScores:
    """Spline redundancy of every unit (You et al., TMLR 2022): higher = less redundant = keep.

    Units already removed in ``unit_masks`` are ignored and score 0 (masks of layers not in ``groups``
    are allowed and unused). Data-free (``ctx`` unused).
    """
    check_unit_masks({k: m for k, m in unit_masks.items() if k in groups}, groups)
    out: UnitScores = {}
    for name, group in groups.items():
        scores = peeling_scores(unit_hyperplanes(model, group), unit_masks.get(name))
        out[name] = scores.to(model.get_submodule(name).weight.device)
    return out


def _keep_count(total: int, fraction: float) -> int:
    return math.ceil((1.0 - fraction) * total - 1e-9)


def prune_units(
    scores: Mapping[str, torch.Tensor],
    fraction: float,
    scope: str = "layerwise",
    unit_masks: Mapping[str, torch.Tensor] | None = None,
    min_units: int = 1,
) -> dict[str, torch.Tensor]:
    """Unit masks (True = kept) removing ``fraction`` of the units, lowest scores first.

    ``layerwise``: each layer keeps ``ceil((1 - fraction) N_layer)`` units. ``global``: all layers
    together keep ``ceil((1 - fraction) N_total)``, removing the lowest scores overall (ties: layer
    order, then unit index), except that every layer keeps its ``min_units`` best alive units (an
    emptied layer disconnects the network and no gradient could revive it). Units scoring ``+inf``
    are never removed. Units already removed in ``unit_masks`` stay removed and count towards the
    fraction.
    """
    if scope not in SCOPES:
        raise PrunelabError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise PrunelabError(f"fraction of units to remove must be in [0, 1), got {fraction!r}")
    if not scores:
        raise PrunelabError("no unit scores given")
    if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 0:
        raise PrunelabError(f"min_units must be a non-negative integer, got {min_units!r}")
    alive = {
        k: (unit_masks[k].detach().cpu().bool().clone() if unit_masks and k in unit_masks
            else torch.ones(len(s), dtype=torch.bool))
        for k, s in scores.items()
    }
    for k, s in scores.items():
        if s.dim() != 1 or alive[k].shape != s.shape:
            raise PrunelabError(f"scores of {k!r} must be a vector matching its unit mask")
    flat = {k: s.detach().cpu().double() for k, s in scores.items()}
    if scope == "layerwise":
        for k, s in flat.items():
            remove = int(alive[k].sum()) - _keep_count(len(s), fraction)
            if remove > 0:
                order = torch.sort(s.masked_fill(~alive[k], float("inf")), stable=True).indices
                victims = [int(i) for i in order if alive[k][i] and math.isfinite(s[i])][:remove]
                alive[k][victims] = False
        return alive
    names = list(flat)
    total = sum(len(s) for s in flat.values())
    remove = sum(int(a.sum()) for a in alive.values()) - _keep_count(total, fraction)
    if remove <= 0:
        return alive
    pool = []
    for j, k in enumerate(names):
        alive_idx = [i for i in range(len(flat[k])) if alive[k][i]]
        protected = set(sorted(alive_idx, key=lambda i: (-float(flat[k][i]), i))[:min_units])
        pool += [(float(flat[k][i]), j, i) for i in alive_idx
                 if i not in protected and math.isfinite(float(flat[k][i]))]
    if remove > len(pool):
        raise PrunelabError(
            f"cannot remove {fraction:.3f} of the units globally: at most {len(pool)} more of {total} units "
            f"can go while every layer keeps {min_units} (and units scoring +inf stay)"
        )
    for _, j, i in sorted(pool)[:remove]:
        alive[names[j]][i] = False
    return alive


def default_layers(model: nn.Module) -> list[str]:
    """Every Linear/Conv layer except the last in forward order (the classifier's units are classes)."""
    layers = list(channel_groups(model))
    if len(layers) < 2:
        raise PrunelabError("the model has a single Linear/Conv layer: only its output units (classes) exist")
    return layers[:-1]


def spline_prune(
    model: nn.Module,
    fraction: float,
    scope: str = "layerwise",
    layers: Sequence[str] | None = None,
    unit_masks: Mapping[str, torch.Tensor] | None = None,
) -> tuple[Masks, dict[str, torch.Tensor]]:
    """Spline node pruning of ``fraction`` of the units of ``layers`` (default :func:`default_layers`).

    Returns the parameter masks (weights, biases and following BatchNorm, see
    :func:`~prunelab.pruning.structured.expand_unit_masks`; apply them or hand them to a
    ``MaskEnforcer``) and the unit masks. For residual networks use
    :func:`~prunelab.pruning.structured.apply_unit_masks` with the unit masks, which also gates the
    residual additions.
    """
    groups = channel_groups(model, list(layers) if layers is not None else default_layers(model))
    current = dict(unit_masks) if unit_masks else {}
    scores = spline_scores(model, groups, current)
    units = prune_units(scores, fraction, scope, current)
    return expand_unit_masks(model, units, groups), units
