"""N:M sparsity as an allocation: keep the top ``n`` scores in every group of ``m`` weights.

``prunelab.prune(model, 0.5, "magnitude", "nm")`` gives 2:4 masks, the pattern of NVIDIA's sparse
tensor cores (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378):
every weight row is cut into consecutive groups of ``m`` along the **input** dimension and the ``n``
highest-scoring weights of each group are kept. As in NVIDIA's ASP (``apex.contrib.sparsity``,
``sparse_masklib.py``), a convolution's groups run along its input channels at each (output channel,
kernel position): the weight is viewed as ``(out, kh, kw, in)``; a Linear's along ``in_features``.
A 2-D weight stored (in, out) -- ``transformers``' ``Conv1D`` (GPT-2) -- is named in the option
``transposed`` (fnmatch patterns), since an allocation sees scores and masks, not modules.

Options (``options={...}`` of ``prunelab.prune``): ``n`` (2), ``m`` (4), ``indivisible`` -- what to do
with a layer whose input dimension is not a multiple of ``m`` (e.g. an RGB stem conv with 3 input
channels): ``"error"`` (default, naming the layers) or ``"dense"`` (leave its masks as they are),
``transposed``.

Rules: the ``sparsity`` argument must be ``1 - n/m`` (the fraction every group loses); anything else
is a one-line error, so with several rounds (``iterations`` > 1, an iterative criterion) only a
target reached in one round works. Already-pruned weights stay pruned (they score -inf): a group
that had more than ``m - n`` pruned weights keeps fewer than ``n``, so the result can be sparser than
``1 - n/m`` (never denser). Ties go to the lower index, as in the other allocations. Masks must be of
weights (>= 2-D); biases or BatchNorm entries (1-D) are an error.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.pruning.allocation import as_masks, check_scores, check_sparsity
from prunelab.pruning.context import ALLOCATIONS, ScoreContext

__all__ = ["NMOptions", "nm_allocation", "nm_mask"]


class NMOptions(BaseModel):
    """The ``nm`` allocation: keep ``n`` of every ``m`` consecutive weights along the input dimension."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(2, ge=1, description="weights kept in every group")
    m: int = Field(4, ge=2, description="group size, along the input dimension")
    indivisible: Literal["error", "dense"] = Field(
        "error", description="a layer whose input dimension is not a multiple of m: an error, or left as it is"
    )
    transposed: list[str] = Field(
        default_factory=list, description="fnmatch patterns of 2-D weights stored (in, out) (transformers Conv1D)"
    )

    @model_validator(mode="after")
    def _n_below_m(self) -> NMOptions:
        if self.n >= self.m:
            raise ValueError(f"n must be below m (n={self.n}, m={self.m}): n:m keeps n of every m weights")
        return self


def _as_rows(t: torch.Tensor, transposed: bool) -> torch.Tensor:
    """``t`` with the input dimension last: (out, in) / (out, *kernel, in)."""
    if t.dim() == 2:
        return t.t() if transposed else t
    return t.movedim(1, -1)


def _from_rows(t: torch.Tensor, like: torch.Tensor, transposed: bool) -> torch.Tensor:
    if like.dim() == 2:
        return t.t() if transposed else t
    return t.movedim(-1, 1)


def input_size(shape: torch.Size | tuple[int, ...], transposed: bool = False) -> int:
    """The input dimension of a weight of ``shape`` (dim 1; dim 0 for a transposed 2-D weight)."""
    return int(shape[0] if transposed and len(shape) == 2 else shape[1])


def nm_mask(scores: torch.Tensor, mask: torch.Tensor, n: int, m: int, transposed: bool = False) -> torch.Tensor:
    """Keep the top-``n`` scores of every ``m`` consecutive weights along the input dim (ties: lower index).

    Weights already pruned in ``mask`` stay pruned. The input dimension must be a multiple of ``m``.
    """
    s = _as_rows(scores.detach(), transposed)
    keep_now = _as_rows(mask, transposed)
    if s.shape[-1] % m:
        raise PrunelabError(f"input dimension {s.shape[-1]} is not a multiple of m={m}")
    if bool(torch.isnan(s).any()):
        raise PrunelabError("scores contain NaN; the criterion failed on this model")
    dtype = torch.float64 if s.dtype == torch.float64 else torch.float32
    s = s.to(dtype).masked_fill(~keep_now.to(s.device), float("-inf")).contiguous()
    groups = s.reshape(-1, m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    kept = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True)
    kept &= groups != float("-inf")
    return _from_rows(kept.reshape(s.shape), mask, transposed).contiguous().to(mask.device)


@ALLOCATIONS.register("nm", options=NMOptions)
def nm_allocation(
    scores: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    sparsity: float,
    ctx: ScoreContext | None = None,
) -> Masks:
    """N:M masks (see the module doc); ``ctx.options`` may hold ``n``, ``m``, ``indivisible``, ``transposed``."""
    masks = as_masks(masks)
    sparsity = check_sparsity(sparsity)
    check_scores(scores, masks)
    given = dict(ctx.options) if ctx is not None and ctx.options else {}
    opts = ALLOCATIONS.parse_options("nm", {k: given[k] for k in NMOptions.model_fields if k in given})
    n, m = opts.n, opts.m
    target = 1.0 - n / m
    if abs(sparsity - target) > 1e-9:
        raise PrunelabError(
            f"allocation 'nm' ({n}:{m}) prunes exactly 1 - n/m = {target:g} of every group; got sparsity {sparsity!r} "
            f"(pass sparsity={target:g} in one round, or change n/m)"
        )
    flat = [k for k, v in masks.items() if v.dim() < 2]
    if flat:
        raise PrunelabError(f"allocation 'nm' needs weight masks (>= 2-D); 1-D masks: {', '.join(map(repr, flat))}")
    transposed = {k: any(fnmatch.fnmatchcase(k, p) for p in opts.transposed) for k in masks}
    bad = [k for k, v in masks.items() if input_size(v.shape, transposed[k]) % m]
    if bad and opts.indivisible == "error":
        listed = ", ".join(f"{k!r} ({input_size(masks[k].shape, transposed[k])})" for k in bad)
        raise PrunelabError(
            f"allocation 'nm': the input dimension of {listed} is not a multiple of m={m}; "
            "pass options={'indivisible': 'dense'} to leave such layers as they are"
        )
    out: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        out[name] = mask.clone() if name in bad else nm_mask(scores[name], mask, n, m, transposed[name])
    return Masks(out)
