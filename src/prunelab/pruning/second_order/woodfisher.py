"""WoodFisher saliency and the Optimal Brain Surgeon weight update.

Optimal Brain Surgeon (Hassibi & Stork 1993, Eq. 5): removing weight q from a trained model, with the
loss modelled as ``1/2 dw^T H dw``, costs at least ``rho_q = w_q^2 / (2 [H^-1]_qq)`` and the best
compensating change of the other weights is ``dw = -(w_q / [H^-1]_qq) H^-1 e_q``. WoodFisher (Singh &
Alistarh 2020, Eq. 4 and Sec. 4) uses the damped empirical Fisher for H and, when several weights P are
removed at once, adds their single-weight updates: ``dw = -sum_{q in P} (w_q / [F^-1]_qq) F^-1 e_q``
(their "independent" multi-weight update). That sum does not make ``w_q + dw_q`` exactly zero, so the
pruned weights are then set to exactly 0 (the mask is the truth). For the jointly optimal update see
the ``cbs`` update (:mod:`.cbs`).

Criterion ``woodfisher`` scores each kept weight by ``rho_q`` (higher = keep); already-pruned weights
score 0. Its default update is ``obs``. ``ctx.options`` keys: see :class:`.FisherOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from prunelab.pruning.context import CRITERIA, UPDATES, ScoreContext
from prunelab.pruning.second_order.fisher import BlockInverse, fisher_for
from prunelab.pruning.second_order.layout import Layout, removed_coordinates, write_weights
from prunelab.pruning.second_order.options import flat_options


def woodfisher_saliency(inverse: BlockInverse, weights: torch.Tensor) -> torch.Tensor:
    """rho_q = w_q^2 / (2 [F^-1]_qq) for every coordinate, (dim,) float64."""
    return weights.double() ** 2 / (2.0 * inverse.diag())


def obs_delta(inverse: BlockInverse, weights: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Sum of single-weight OBS updates for the coordinates ``pruned`` (bool, (dim,)): (dim,) float64."""
    coeff = torch.where(pruned, weights.double() / inverse.diag(), torch.zeros((), dtype=torch.float64, device=weights.device))
    return -inverse.matvec(coeff)


def unpack_scores(layout: Layout, model: nn.Module, vector: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-parameter score tensors (parameter dtype/device), 0 at coordinates outside the layout."""
    params = dict(model.named_parameters())
    return {n: t.to(device=params[n].device, dtype=params[n].dtype) for n, t in layout.unpack(vector).items()}


@CRITERIA.register("woodfisher", options=flat_options("WoodFisherOptions"))
def woodfisher(model: nn.Module, masks: Mapping[str, torch.Tensor], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """WoodFisher/OBS saliency ``w_q^2 / (2 [F^-1]_qq)`` (Singh & Alistarh 2020, Eq. 4); higher = keep."""
    state = fisher_for(model, masks, ctx, "woodfisher")
    return unpack_scores(state.layout, model, woodfisher_saliency(state.inverse, state.weights))


woodfisher.default_update = "obs"  # type: ignore[attr-defined]


@UPDATES.register("obs", options=flat_options("ObsOptions", criterion=False))
def obs(model: nn.Module, old_masks: Mapping[str, torch.Tensor], new_masks: Mapping[str, torch.Tensor], ctx: ScoreContext) -> None:
    """Add the single-weight OBS updates of all newly pruned weights, then zero them exactly."""
    state = fisher_for(model, old_masks, ctx, "obs")
    pruned = removed_coordinates(state.layout, old_masks, new_masks).to(state.weights.device)
    delta = obs_delta(state.inverse, state.weights, pruned)
    write_weights(model, state.layout, state.weights + delta, new_masks)
