"""The LP and MILP stages: prove the remaining candidates stable, or find inputs that flip them.

``prove_by_lp`` tries the LP relaxation of the big-M model per candidate (cheap, proves only).
``prove_single_milp`` is the single-model algorithm of Serra, Yu, Kumar & Ramalingam (NeurIPS 2021,
Algorithm 1); ``prove_per_unit`` the one-MILP-per-unit baseline of Serra, Kumar & Ramalingam
(CPAIOR 2020, §4). Both use the same big-M model (``milp.py``), so they prove the same sets. A
solver's point is only a witness after a float64 forward pass through the real network confirms the
flip; a claimed flip that the forward pass does not confirm (a tolerance artefact) leaves its
candidates *unresolved*, and so does the time limit. Unresolved units are treated as unstable.
"""

from __future__ import annotations

import time

import numpy as np

from prunelab.analysis.affine import AffineLayer
from prunelab.analysis.exact.bounds import LayerBounds
from prunelab.analysis.exact.candidates import Candidates
from prunelab.analysis.exact.domain import Box
from prunelab.analysis.exact.forward import preactivations
from prunelab.analysis.exact.milp import ACTIVE, INACTIVE, ReluMilp
from prunelab.progress import Meter, track


def _flipped(
    state: Candidates, layers: list[AffineLayer], box: Box, xs: list[np.ndarray], cands: list[tuple[int, int, int]]
) -> set[int]:
    """Indices into ``cands`` of open candidates that some input in ``xs`` really flips (float64)."""
    hit: set[int] = set()
    if not xs:
        return hit
    g = preactivations(layers[:-1], box.clip(np.stack(xs)))
    for j, (k, i, d) in enumerate(cands):
        if state.is_open(d, k, i) and np.any(state.flips(d, g[k][:, i])):
            hit.add(j)
    return hit


def _remaining_time(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.perf_counter()


def prove_by_lp(
    state: Candidates,
    layers: list[AffineLayer],
    bounds: list[LayerBounds],
    fixed: list[np.ndarray],
    box: Box,
    eps: float,
    deadline: float | None,
    threads: int,
    progress: bool = False,
) -> int:
    """The LP relaxation of the big-M model, one LP per open candidate and direction: if even the
    relaxation cannot push ``g`` to ``eps`` (``-eps``), no input can (the "lp" proof; tighter than the
    symbolic bounds because the triangle relaxation of each ReLU uses both of its bounds). Returns the
    number of LPs solved; what the LPs cannot prove stays open for the MILPs."""
    solves = 0
    models: dict[int, ReluMilp] = {}
    for k, i, d in track(state.open_candidates(), label="exact: LP proofs", enabled=progress):
        if state.proof[-d][k][i]:
            continue
        left = _remaining_time(deadline)
        if left is not None and left <= 0:
            break
        if k + 1 not in models:
            models[k + 1] = ReluMilp(layers, bounds, fixed, box, k + 1, threads=threads)
            models[k + 1].relax()
        out = models[k + 1].optimise_unit(k, i, 1 if d == INACTIVE else -1, left)
        solves += 1
        if out.status == "kOptimal" and out.objective is not None:
            if (d == INACTIVE and out.objective < eps) or (d == ACTIVE and out.objective > -eps):
                state.proof[d][k][i] = "lp"
    return solves


def prove_single_milp(
    state: Candidates,
    layers: list[AffineLayer],
    bounds: list[LayerBounds],
    fixed: list[np.ndarray],
    box: Box,
    eps: float,
    deadline: float | None,
    threads: int,
    progress: bool = False,
) -> int:
    """One model for all candidates: find any input that flips at least one of them (the cover row
    ``sum(y) >= 1``, objective ``max sum(y)``, stop at the first solution); verified flips leave the
    model; infeasibility proves every remaining candidate. This is the paper's loop "re-solve until the
    optimum is below 0.5" asked as a feasibility question, which HiGHS answers much faster; a warm
    start is pointless since the previous solution violates the cover row once its flips are removed."""
    cands = state.open_candidates()
    if not cands:
        return 0
    depth = max(k for k, _, _ in cands) + 1
    milp = ReluMilp(layers, bounds, fixed, box, depth, threads=threads)
    ycols = milp.add_flip_indicators(cands, eps)
    solves = 0
    meter = Meter(len(cands), "exact: candidates settled by the MILP", enabled=progress)
    while True:
        open_idx = [j for j, (k, i, d) in enumerate(cands) if state.is_open(d, k, i)]
        meter.set(len(cands) - len(open_idx))
        if not open_idx:
            meter.close()
            return solves
        left = _remaining_time(deadline)
        if left is not None and left <= 0:
            break
        out = milp.solve(left, max_solutions=1)
        solves += 1
        if out.status == "kInfeasible":
            for j in open_idx:
                k, i, d = cands[j]
                state.proof[d][k][i] = "milp"
            meter.set(len(cands))
            meter.close()
            return solves
        if not out.solutions:
            break  # stopped (time limit) without a proof or a flip
        flipped = _flipped(state, layers, box, [milp.inputs(s) for s in out.solutions], cands)
        for j in flipped:
            k, i, d = cands[j]
            state.witness[d][k][i] = "milp"
        if not flipped:  # the solver's flips are tolerance artefacts: give up on those candidates
            best = out.solutions[-1]
            for j in open_idx:
                if best[ycols[j]] > 0.5:
                    k, i, d = cands[j]
                    state.unresolved[d][k][i] = "tolerance"
        done = [j for j in open_idx if not state.is_open(cands[j][2], cands[j][0], cands[j][1])]
        milp.fix_to_zero(ycols[done])
        milp.guide([c for c in cands if state.is_open(c[2], c[0], c[1])])
    meter.close()
    for k, i, d in cands:
        if state.is_open(d, k, i):
            state.unresolved[d][k][i] = "time_limit"
    return solves


def prove_per_unit(
    state: Candidates,
    layers: list[AffineLayer],
    bounds: list[LayerBounds],
    fixed: list[np.ndarray],
    box: Box,
    eps: float,
    deadline: float | None,
    threads: int,
    progress: bool = False,
) -> int:
    """For each open candidate and direction, one MILP: maximise ``g`` subject to ``g >= eps``
    (minimise subject to ``g <= -eps`` for active candidates), stopped at its first feasible point
    (a witness, once the forward pass confirms it); infeasibility proves the sign. The ``g >= eps``
    bound is HiGHS's cutoff, so no MILP is solved further than needed to decide the sign. Once one
    direction of a unit is proven, its other direction is not asked (the status is decided)."""
    solves = 0
    models: dict[int, ReluMilp] = {}
    for k, i, d in track(state.open_candidates(), label="exact: per-unit MILPs", enabled=progress):
        if state.proof[-d][k][i]:
            state.witness[d][k][i] = "irrelevant"
            continue
        left = _remaining_time(deadline)
        if left is not None and left <= 0:
            state.unresolved[d][k][i] = "time_limit"
            continue
        if (d == INACTIVE and bounds[k].upper[i] < eps) or (d == ACTIVE and bounds[k].lower[i] > -eps):
            state.proof[d][k][i] = "milp"  # the margin is out of the bounds: no flip is possible
            continue
        if k + 1 not in models:
            models[k + 1] = ReluMilp(layers, bounds, fixed, box, k + 1, threads=threads)
        # maximise (minimise) g subject to g >= eps (g <= -eps): any feasible point is a witness
        margin = {"lower": eps} if d == INACTIVE else {"upper": -eps}
        out = models[k + 1].optimise_unit(k, i, 1 if d == INACTIVE else -1, left, **margin)
        solves += 1
        milp = models[k + 1]
        if out.status == "kInfeasible":
            state.proof[d][k][i] = "milp"
        elif out.solutions:
            x = box.clip(milp.inputs(out.solutions[-1]))
            gk = preactivations(layers[: k + 1], x[None, :])[k][0, i]
            if state.flips(d, np.array(gk)):
                state.witness[d][k][i] = "milp"
            else:
                state.unresolved[d][k][i] = "tolerance"
        else:
            state.unresolved[d][k][i] = "time_limit"
    return solves
