"""``lr_bound_hidden``: the ``lr_bound`` allocation for an MLP whose output layer is left dense.

Cai et al. (CPAIOR 2023, Sec. 6) prune only the hidden layers of their 2 x W MLPs; the linear
output layer stays dense. With ``exclude = ["<output>"]`` the masks hold exactly the hidden layers,
which ``lr_bound`` cannot tell apart from a whole MLP whose last masked layer is the output, unless
it is given the architecture (``options = {widths = [n_0, ..., n_out]}``). This allocation reads the
architecture from the masks instead: the masked Linear layers must chain (each one's output width
is the next one's input width) and are taken to be **all** the hidden layers, in order, followed by
a dense output layer (which does not enter the bound). It then runs
:func:`prunelab.pruning.lr_bound.lr_bound_allocation` with those widths, so the densities are
exactly ``lr_bound``'s for that architecture. A sweep over widths or datasets needs no per-run
``widths`` option. Exclude only the output layer: the masks alone cannot tell a left-out hidden
layer whose neighbours happen to chain (e.g. 784->100 and, without 100->100, the output 100->10).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.pruning.allocation import as_masks
from prunelab.pruning.context import ALLOCATIONS, ScoreContext
from prunelab.pruning.lr_bound import lr_bound_allocation


def hidden_widths(masks: Mapping[str, torch.Tensor]) -> list[int]:
    """``[n_0, n_1, ..., n_k, 1]``: the masked layers as the chain of hidden layers, then a stand-in
    output width of 1 (the output layer is not masked and does not enter the bound)."""
    shapes = [(name, tuple(m.shape)) for name, m in masks.items()]
    if not shapes:
        raise PrunelabError("allocation 'lr_bound_hidden' needs at least one masked Linear layer")
    for name, s in shapes:
        if len(s) != 2:
            raise PrunelabError(f"allocation 'lr_bound_hidden' supports MLPs (Linear layers) only; {name!r} has shape {s}")
    for (n1, s1), (n2, s2) in itertools.pairwise(shapes):
        if s1[0] != s2[1]:
            raise PrunelabError(
                f"allocation 'lr_bound_hidden': masks {n1!r} {s1} and {n2!r} {s2} do not chain; the masked layers "
                "must be the MLP's hidden layers in order (exclude only the output layer)"
            )
    return [shapes[0][1][1]] + [s[0] for _, s in shapes] + [1]


class LrBoundHiddenOptions(BaseModel):
    """The ``lr_bound_hidden`` allocation (Cai et al. 2023, hidden layers pruned, output dense)."""

    model_config = ConfigDict(extra="forbid")
    lr_bound_rank: Literal["analytic", "montecarlo"] = Field("analytic", description="rank distribution of sparse layers")


@ALLOCATIONS.register("lr_bound_hidden", options=LrBoundHiddenOptions)
def lr_bound_hidden_allocation(
    scores: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    sparsity: float,
    ctx: ScoreContext | None = None,
) -> Masks:
    """``lr_bound`` with the masked layers taken as all the hidden layers of the MLP (output dense)."""
    masks = as_masks(masks)
    options = dict(ctx.options) if ctx is not None else {}
    options["widths"] = hidden_widths(masks)
    inner = dataclasses.replace(ctx, options=options) if ctx is not None else ScoreContext(options=options)
    return lr_bound_allocation(scores, masks, sparsity, inner)
