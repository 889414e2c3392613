"""``lr_bound``: per-layer densities that maximise the expected linear-region bound of a pruned MLP.

Cai, Nguyen, Shrestha, Good, Tu, Yu, Zhe & Serra, "Getting Away with More Network Pruning: From
Sparsity to Geometry and Linear Regions" (CPAIOR 2023), choose how much to prune from each layer by
maximising their Theorem 1 bound (:func:`prunelab.analysis.regions.expected_bound`) at a fixed
overall density, then prune by magnitude inside each layer at those densities.

Search (the paper's procedure for two layers, written down where it leaves choices open):

- Two pruned hidden layers A, B: the budget K = D (s_A + s_B) kept weights (s = layer size) leaves
  one free parameter, p_A. Evaluate log2 of the bound at both extremes of the feasible p_A range
  and at uniform (p_A = p_B = D), fit the quadratic through the three points, and accept its
  stationary point if it is a maximum inside the range, prunes more from the larger layer than
  uniform does, and beats uniform. Otherwise take the best of a 30-point grid over the range. We
  fit in log2 (the bound itself spans hundreds of orders of magnitude) and keep uniform if the grid
  does not beat it (by more than 1e-6 in log2, so float noise on a saturated bound does not move
  us off uniform), so the result is never worse than uniform.
- More pruned hidden layers: a coordinate search from uniform: move a step of kept weights from
  one layer to another if that raises the bound; halve the step when no move helps; stop below
  0.1% of the budget.
- One pruned hidden layer: its density is fixed by the budget.

The output layer is linear and does not enter the bound; if it is pruned too it keeps the overall
density D, and the hidden layers share the rest of the budget (so the overall density is still D).
Layers not pruned keep density 1 and are outside the budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from prunelab.analysis.regions.bounds import expected_bound
from prunelab.analysis.regions.rank import RANK_METHODS
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.pruning.allocation import (
    allocate_counts,
    as_masks,
    check_scores,
    check_sparsity,
    round_counts,
    target_kept,
)
from prunelab.pruning.context import ALLOCATIONS, ScoreContext

GRID_POINTS = 30
MIN_STEP = 1e-3  # coordinate search stops when a step is below this fraction of the budget
MIN_GAIN = 1e-6  # log2 units: a change must raise the bound by more than this to count (not float noise)


@dataclass(frozen=True)
class LrBoundResult:
    """Densities per weight layer (1.0 for layers not pruned), the log2 bound they reach, and uniform's."""

    densities: tuple[float, ...]
    log2_bound: float
    log2_uniform: float
    how: str  # "quadratic" | "grid" | "uniform" | "coordinate" | "single"


def _check_widths(widths: Sequence[int]) -> list[int]:
    ws = list(widths)
    if len(ws) < 3 or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1 for w in ws):
        raise PrunelabError(
            f"widths must be >= 3 positive integers: input dim, hidden widths, output width "
            f"(e.g. [784, 100, 100, 10]), got {ws!r}"
        )
    return [int(w) for w in ws]


def lr_bound_search(
    widths: Sequence[int],
    overall_density: float,
    pruned_layers: Sequence[int] | None = None,
    *,
    rank: str = "analytic",
    seed: int = 0,
    max_densities: Sequence[float] | None = None,
    grid_points: int = GRID_POINTS,
) -> LrBoundResult:
    """Find per-layer densities maximising Cai et al.'s bound; see the module docstring.

    ``widths`` = [n_0, n_1, ..., n_out]; weight layer i maps widths[i] -> widths[i+1].
    ``pruned_layers`` are weight-layer indices (default: every hidden layer, output dense);
    ``overall_density`` is the fraction kept over those layers' weights; ``max_densities`` (one per
    weight layer) caps a layer's density, e.g. at what it keeps already.
    """
    ws = _check_widths(widths)
    n_layers = len(ws) - 1
    if pruned_layers is None:
        pruned_layers = list(range(n_layers - 1))
    pruned = sorted(set(int(i) for i in pruned_layers))
    if not pruned or any(i < 0 or i >= n_layers for i in pruned):
        raise PrunelabError(f"pruned_layers must be weight-layer indices in [0, {n_layers - 1}], got {list(pruned_layers)!r}")
    if isinstance(overall_density, bool) or not isinstance(overall_density, (int, float)) or not 0 <= overall_density <= 1:
        raise PrunelabError(f"overall_density must be a number in [0, 1] (fraction kept), got {overall_density!r}")
    if rank not in RANK_METHODS:
        raise PrunelabError(f"unknown rank method {rank!r}; valid: {', '.join(RANK_METHODS)}")
    caps = np.ones(n_layers) if max_densities is None else np.asarray(max_densities, dtype=np.float64)
    if caps.shape != (n_layers,) or np.any(caps < 0) or np.any(caps > 1):
        raise PrunelabError(f"max_densities must be {n_layers} numbers in [0, 1], got {max_densities!r}")
    if not isinstance(grid_points, int) or grid_points < 3:
        raise PrunelabError(f"grid_points must be an integer >= 3, got {grid_points!r}")
    D = float(overall_density)
    sizes = np.array([ws[i] * ws[i + 1] for i in range(n_layers)], dtype=np.float64)
    if D * sizes[pruned].sum() > (caps[pruned] * sizes[pruned]).sum() * (1 + 1e-12):
        raise PrunelabError(f"overall density {D} is more than the pruned layers can keep (max_densities)")

    dens = np.ones(n_layers)
    output = n_layers - 1
    if output in pruned:
        dens[output] = min(D, caps[output])
    free = [i for i in pruned if i != output]
    budget = D * sizes[pruned].sum() - (dens[output] * sizes[output] if output in pruned else 0.0)

    def log2_bound(d: np.ndarray) -> float:
        return expected_bound(ws[0], ws[1:-1], list(np.clip(d[:-1], 0.0, 1.0)), rank=rank, seed=seed).log2

    uniform = dens.copy()
    if free:
        uniform[free] = _fill(np.full(len(free), D), sizes[free], caps[free], budget)
    f_uniform = log2_bound(uniform)
    if len(free) <= 1:
        r = LrBoundResult(tuple(uniform), f_uniform, f_uniform, "single")
    elif len(free) == 2:
        r = _two_layers(free, sizes, caps, budget, uniform, f_uniform, log2_bound, grid_points)
    else:
        r = _coordinate(free, sizes, caps, budget, uniform, f_uniform, log2_bound)
    return LrBoundResult(tuple(float(x) for x in r.densities), float(r.log2_bound), float(r.log2_uniform), r.how)


def _fill(p: np.ndarray, sizes: np.ndarray, caps: np.ndarray, budget: float) -> np.ndarray:
    """Densities as close to ``p`` (scaled uniformly) as the caps allow, with kept weights = budget."""
    p = np.minimum(p, caps)
    for _ in range(len(p) + 1):
        short = budget - (p * sizes).sum()
        room = (p < caps - 1e-15)
        if abs(short) <= 1e-9 * max(budget, 1.0) or not room.any():
            break
        p[room] = np.minimum(p[room] + short / sizes[room].sum(), caps[room])
    return np.clip(p, 0.0, caps)


def _two_layers(free, sizes, caps, budget, uniform, f_uniform, log2_bound, grid_points) -> LrBoundResult:
    a, b = free
    sa, sb = sizes[a], sizes[b]
    lo = max(0.0, (budget - caps[b] * sb) / sa)
    hi = min(caps[a], budget / sa)

    def point(pa: float) -> np.ndarray:
        d = uniform.copy()
        d[a], d[b] = pa, min(max((budget - pa * sa) / sb, 0.0), caps[b])
        return d

    u = float(uniform[a])
    if hi - lo <= 1e-15:
        return LrBoundResult(tuple(uniform), f_uniform, f_uniform, "uniform")
    f_lo, f_hi = log2_bound(point(lo)), log2_bound(point(hi))
    xs, ys = np.array([lo, u, hi]), np.array([f_lo, f_uniform, f_hi])
    if lo < u < hi:
        c2, c1, _ = np.polyfit(xs, ys, 2)
        if c2 < 0:
            v = -c1 / (2 * c2)
            larger_pruned_more = (v < u) if sa > sb else (v > u) if sb > sa else True
            if lo < v < hi and larger_pruned_more:
                f_v = log2_bound(point(v))
                if f_v > f_uniform + MIN_GAIN:
                    return LrBoundResult(tuple(point(v)), f_v, f_uniform, "quadratic")
    best, f_best, how = uniform, f_uniform, "uniform"
    for pa in np.linspace(lo, hi, grid_points):
        f = log2_bound(point(float(pa)))
        if f > f_best + (MIN_GAIN if how == "uniform" else 0.0):
            best, f_best, how = point(float(pa)), f, "grid"
    return LrBoundResult(tuple(best), f_best, f_uniform, how)


def _coordinate(free, sizes, caps, budget, uniform, f_uniform, log2_bound) -> LrBoundResult:
    cur, f_cur = uniform.copy(), f_uniform
    step = 0.25
    while step >= MIN_STEP:
        improved = False
        for i in free:
            for j in free:
                if i == j:
                    continue
                move = min(step * budget, cur[i] * sizes[i], (caps[j] - cur[j]) * sizes[j])
                if move <= 0:
                    continue
                cand = cur.copy()
                cand[i] -= move / sizes[i]
                cand[j] += move / sizes[j]
                f = log2_bound(cand)
                if f > f_cur + MIN_GAIN:
                    cur, f_cur, improved = cand, f, True
        if not improved:
            step /= 2
    return LrBoundResult(tuple(cur), f_cur, f_uniform, "coordinate")


def lr_bound_densities(
    widths: Sequence[int],
    overall_density: float,
    pruned_layers: Sequence[int] | None = None,
    *,
    rank: str = "analytic",
    seed: int = 0,
    max_densities: Sequence[float] | None = None,
) -> list[float]:
    """Per-weight-layer densities maximising Cai et al.'s bound (see :func:`lr_bound_search`)."""
    return list(
        lr_bound_search(widths, overall_density, pruned_layers, rank=rank, seed=seed, max_densities=max_densities).densities
    )


def _architecture(masks: Masks, options: Mapping) -> tuple[list[int], list[int]]:
    """MLP widths and, per mask (in order), its weight-layer index.

    With ``options["widths"]`` ([n_0, ..., n_out]) masks are matched to weight layers by shape, in
    order. Without it the masked layers must chain and are taken to be the whole MLP, the last one
    being the linear output layer (prunelab's default: the classifier is prunable).
    """
    shapes = [tuple(m.shape) for m in masks.values()]
    names = list(masks)
    for name, s in zip(names, shapes):
        if len(s) != 2:
            raise PrunelabError(f"allocation 'lr_bound' supports MLPs (Linear layers) only; {name!r} has shape {s}")
    if options.get("widths") is not None:
        ws = _check_widths(options["widths"])
        layer_shapes = [(ws[i + 1], ws[i]) for i in range(len(ws) - 1)]
        index, j = [], 0
        for name, s in zip(names, shapes):
            while j < len(layer_shapes) and layer_shapes[j] != s:
                j += 1
            if j == len(layer_shapes):
                raise PrunelabError(
                    f"mask {name!r} of shape {s} matches no remaining layer of widths {ws} (in order)"
                )
            index.append(j)
            j += 1
        return ws, index
    for (n1, s1), (n2, s2) in zip(zip(names, shapes), zip(names[1:], shapes[1:])):
        if s1[0] != s2[1]:
            raise PrunelabError(
                f"masks {n1!r} {s1} and {n2!r} {s2} do not chain; pass options={{'widths': [n_0, ..., n_out]}} "
                "to say which layers of the MLP are pruned"
            )
    if len(shapes) < 2:
        raise PrunelabError(
            "allocation 'lr_bound' needs the MLP's hidden layers: with a single masked layer pass "
            "options={'widths': [n_0, ..., n_out]}"
        )
    return [shapes[0][1]] + [s[0] for s in shapes], list(range(len(shapes)))


class LrBoundOptions(BaseModel):
    """The ``lr_bound`` allocation (Cai et al. 2023)."""

    model_config = ConfigDict(extra="forbid")
    widths: list[int] | None = Field(None, description="the MLP's [n_0, ..., n_out] when some layers are not masked")
    lr_bound_rank: Literal["analytic", "montecarlo"] = Field("analytic", description="rank distribution of sparse layers")


@ALLOCATIONS.register("lr_bound", options=LrBoundOptions)
def lr_bound_allocation(
    scores: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    sparsity: float,
    ctx: ScoreContext | None = None,
) -> Masks:
    """Cai et al. 2023: per-layer densities maximising the expected linear-region bound, top scores kept.

    Reads ``ctx.options``: ``"widths"`` (the MLP's [n_0, ..., n_out], needed when some of its layers
    are not masked, e.g. a dense output layer), ``"lr_bound_rank"`` (``"analytic"`` (default) or
    ``"montecarlo"``); Monte Carlo uses ``ctx.seed``. Already-pruned weights stay pruned.
    """
    masks = as_masks(masks)
    sparsity = check_sparsity(sparsity)
    check_scores(scores, masks)
    options = ctx.options if ctx is not None else {}
    seed = ctx.seed if ctx is not None else 0
    keep_total = target_kept(masks, sparsity)
    widths, index = _architecture(masks, options)
    sizes = np.array([m.numel() for m in masks.values()], dtype=np.int64)
    kept_now = np.array([int(m.sum()) for m in masks.values()], dtype=np.int64)
    max_d = np.ones(len(widths) - 1)
    max_d[index] = kept_now / sizes
    result = lr_bound_search(
        widths,
        keep_total / sizes.sum(),
        index,
        rank=options.get("lr_bound_rank", "analytic"),
        seed=seed,
        max_densities=max_d,
    )
    real = np.array([result.densities[i] for i in index]) * sizes
    return allocate_counts(scores, masks, round_counts(real, kept_now, keep_total))
