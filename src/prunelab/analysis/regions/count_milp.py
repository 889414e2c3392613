"""Exact enumeration of the full-dimensional linear regions of a small ReLU MLP with HiGHS.

Serra, Tjandraatmadja & Ramalingam (ICML 2018, "Bounding and Counting Linear Regions of Deep Neural
Networks", their MILP for exact counting) model the network on a bounded input domain as a
mixed-integer program with one binary z_i per hidden unit (1 = active) and enumerate the activation
patterns of its feasible solutions. A pattern counts if some input of the domain has it with a
margin: ``s_i g_i(x) >= tol`` for every unit i (s_i = +1 if on, -1 if off), so that the pattern holds
on an open set, i.e. the region is full-dimensional. Units exempt from the margin (they cannot make a
region thin):

- units that interval arithmetic proves stable on the domain (U <= 0: always off; L > 0: always
  on). A unit with L = U = 0, e.g. all incoming weights pruned and a zero bias (the zoo starts biases
  at 0 and such a bias never gets a gradient), has g = 0 on the whole domain: it is always **off**
  (a unit is on iff g > 0), never both;
- a unit with zero bias whose inputs with non-zero weights are all off in the region: g is
  identically 0 there, the unit is off and the region is full-dimensional all the same.

Two ways to enumerate, same set (tested against each other and against the exact polygon count of
:mod:`.count_plane`):

- ``method="tree"`` (default): one depth-first branch-and-bound over the signs of the unstable units,
  in layer order. Once the signs of layers < l are fixed, layer l's pre-activations are affine in x,
  ``g = A x + c``, so each node is an LP (HiGHS dual simplex, warm-started as rows are pushed and
  popped): maximise t over the domain subject to ``s_i (A_i x + c_i) >= t`` for the units decided so
  far, t >= tol. A node's LP point x* decides one child for free (the sign of g_i(x*), when
  |g_i(x*)| >= tol); only the other child costs an LP; a leaf is a region. This is the single-tree
  enumeration a MILP solution pool performs (HiGHS 1.16 has no solution pool and no lazy-constraint
  callback in highspy: ``mip_improving_solution_save`` keeps improving solutions only), and it needs
  no big-M constants.
- ``method="nogood"``: Serra et al.'s loop. ReLU with big-M bounds ``h_i - s_i = g_i``,
  ``0 <= h_i <= U_i^+ z_i``, ``0 <= s_i <= L_i^- (1 - z_i)`` ([L_i, U_i] from interval arithmetic,
  U^+ = max(U, 0), L^- = max(-L, 0)); the margin f in [tol, F], maximised, with
  ``f - g_i <= (F - L_i)(1 - z_i)`` and ``f + g_i <= (F + U_i) z_i + F y_i`` for each unstable unit.
  y_i (continuous, only for units of layer >= 2 with zero bias) may be 1 only if every input unit j
  with w_ij != 0 is off (``y_i + z_j <= 1``): then g_i = 0 and the off-margin is waived. After each
  pattern a no-good cut ``sum_{z*_i = 1} z_i - sum_{z*_i = 0} z_i <= |{z*_i = 1}| - 1`` removes it and
  the MILP is solved again; infeasible means every region was found. One MILP per region: measured
  25-240x slower than the tree on 2-D nets with 26-130 regions (``benchmarks/regions_speed.py``).

Choices written down: F is max(tol, max_i min(U_i, -L_i)) over unstable units (any F >= the margin's
upper bound keeps the rows valid). HiGHS stops each MILP at its first solution (any pattern with
f >= tol is a region). Feasibility tolerances are 1e-9, far below tol = 1e-6. A unit whose
pre-activation is a non-zero constant smaller than tol on a region (possible only with biases below
tol) makes that region uncountable in both methods. Each region's point is re-checked with a float64
forward pass (``num_verified``).

Honesty checks: a bounded box always holds at least one region, so an enumeration that finds none
raises :class:`PrunelabError` (an infeasible model is never read as "complete, 0 regions"). After a
complete enumeration, ``SAMPLE_CHECK`` uniform points of the domain whose unstable units all have
|g| >= 2 tol (or g exactly 0) must have one of the enumerated patterns; if one does not, the result
says ``complete=False`` (``sample_missed`` counts such patterns). ``time_limit`` (seconds, for the
whole enumeration) and ``max_regions`` return the patterns found so far with ``complete=False``: an
honest lower bound. The domain is the box [lower, upper] of the input, or of y in an affine
subspace ``x = origin + basis^T y``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import highspy
import numpy as np
import torch
from torch import nn

from prunelab.analysis.regions.patterns import (
    Affine,
    as_points,
    hidden_affines,
    pattern_keys,
    patterns_of,
    restrict,
)
from prunelab.errors import PrunelabError

FEASIBILITY_TOL = 1e-9  # HiGHS primal/MIP feasibility tolerance; must stay far below the margin tol
METHODS = ("tree", "nogood")
SAMPLE_CHECK = 4096  # uniform points of the domain whose patterns a complete enumeration must contain
INF = highspy.kHighsInf
INFEASIBLE = (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible)


@dataclass(frozen=True)
class MilpCount:
    """Full-dimensional regions in the domain; ``complete=False`` means a time/region limit cut it short
    (or the sample check found a pattern the enumeration missed: ``sample_missed > 0``)."""

    num_regions: int
    complete: bool
    seconds: float
    num_unstable: int
    num_verified: int  # regions whose point has the claimed pattern in a float64 forward pass
    patterns: np.ndarray = field(repr=False, compare=False)  # (num_regions, total hidden units) bool
    points: np.ndarray = field(repr=False, compare=False)  # one interior point per region
    method: str = "tree"
    solves: int = 0  # LPs (tree) or MILPs (nogood) solved
    sample_missed: int = 0

    def to_row(self) -> dict:
        return {
            "milp_regions": self.num_regions,
            "milp_complete": self.complete,
            "milp_seconds": self.seconds,
            "milp_unstable_units": self.num_unstable,
            "milp_verified": self.num_verified,
        }


class _Stop(Exception):
    """A time or region limit was reached."""


def interval_bounds(hidden: list[Affine], lower: np.ndarray, upper: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-activation bounds [L, U] of every hidden layer over the box [lower, upper] (interval arithmetic)."""
    out = []
    lo, hi = lower, upper
    for layer in hidden:
        wp, wn = np.clip(layer.weight, 0, None), np.clip(layer.weight, None, 0)
        L = wp @ lo + wn @ hi + layer.bias
        U = wp @ hi + wn @ lo + layer.bias
        out.append((L, U))
        lo, hi = np.maximum(L, 0.0), np.maximum(U, 0.0)
    return out


def stable_units(L: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(always_on, always_off) from pre-activation bounds: off iff U <= 0; on iff L > 0.

    The two sets are disjoint: a unit with L = U = 0 (g identically 0) is off, since a unit is on iff
    g > 0. L = 0 < U is not "always on" either: g may be 0 on a full-dimensional set.
    """
    always_off = U <= 0
    return (L > 0) & ~always_off, always_off


def _box(value, dim: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(dim, float(arr))
    if arr.shape != (dim,) or not np.all(np.isfinite(arr)):
        raise PrunelabError(f"{name} must be a finite number or {dim} finite numbers, got shape {arr.shape}")
    return arr


def _highs() -> highspy.Highs:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("primal_feasibility_tolerance", FEASIBILITY_TOL)
    return h


class _Model:
    """The no-good MILP in HiGHS: columns x | per layer (h, s, z) | y | f."""

    def __init__(self, hidden: list[Affine], lower: np.ndarray, upper: np.ndarray, tol: float) -> None:
        self.h = _highs()
        self.h.setOptionValue("mip_max_improving_sols", 1)
        self.h.setOptionValue("mip_feasibility_tolerance", FEASIBILITY_TOL)
        bounds = interval_bounds(hidden, lower, upper)
        col = 0

        def add_cols(lb, ub) -> np.ndarray:
            nonlocal col
            lb, ub = np.asarray(lb, dtype=np.float64), np.asarray(ub, dtype=np.float64)
            self.h.addVars(len(lb), lb, ub)
            idx = np.arange(col, col + len(lb))
            col += len(lb)
            return idx

        x = add_cols(lower, upper)
        prev, prev_z, prev_on = x, None, None
        self.z_cols: list[np.ndarray] = []
        self.unstable: list[np.ndarray] = []
        margin_rows = []
        for li, (layer, (L, U)) in enumerate(zip(hidden, bounds)):
            n = len(L)
            Up, Lm = np.maximum(U, 0.0), np.maximum(-L, 0.0)
            hc = add_cols(np.zeros(n), Up)
            sc = add_cols(np.zeros(n), Lm)
            always_on, always_off = stable_units(L, U)
            zc = add_cols(always_on.astype(float), (~always_off).astype(float))
            self.h.changeColsIntegrality(n, zc.astype(np.int32), np.full(n, highspy.HighsVarType.kInteger))
            for i in range(n):
                nz = np.nonzero(layer.weight[i])[0]
                idx = np.concatenate([[hc[i], sc[i]], prev[nz]]).astype(np.int32)
                val = np.concatenate([[1.0, -1.0], -layer.weight[i, nz]])
                self.h.addRow(layer.bias[i], layer.bias[i], len(idx), idx, val)  # h - s - W h_prev = b
                self.h.addRow(-INF, 0.0, 2, np.array([hc[i], zc[i]], np.int32), np.array([1.0, -Up[i]]))
                self.h.addRow(-INF, Lm[i], 2, np.array([sc[i], zc[i]], np.int32), np.array([1.0, Lm[i]]))
            unstable = ~(always_on | always_off)
            for i in np.nonzero(unstable)[0]:
                preds = None  # input units j with w_ij != 0, when g_i = 0 once they are all off
                if li > 0 and layer.bias[i] == 0.0:
                    nz = np.nonzero(layer.weight[i])[0]
                    if not np.any(prev_on[nz]):
                        preds = prev_z[nz]
                margin_rows.append((hc[i], sc[i], zc[i], L[i], U[i], preds))
            self.z_cols.append(zc)
            self.unstable.append(unstable)
            prev, prev_z, prev_on = hc, zc, always_on
        self.num_unstable = len(margin_rows)
        F = max(tol, max([min(U, -L) for _, _, _, L, U, _ in margin_rows], default=1.0))
        self.f = add_cols([tol], [F])[0]
        for hc, sc, zc, L, U, preds in margin_rows:
            cols = np.array([self.f, hc, sc, zc], np.int32)
            self.h.addRow(-INF, F - L, 4, cols, np.array([1.0, -1.0, 1.0, F - L]))  # f - g <= (F-L)(1-z)
            if preds is None:
                self.h.addRow(-INF, 0.0, 4, cols, np.array([1.0, 1.0, -1.0, -(F + U)]))  # f + g <= (F+U) z
                continue
            y = add_cols([0.0], [1.0])[0]  # f + g <= (F+U) z + F y, y <= 1 - z_j for every input j
            self.h.addRow(-INF, 0.0, 5, np.append(cols, y).astype(np.int32), np.array([1.0, 1.0, -1.0, -(F + U), -F]))
            for zj in preds:
                self.h.addRow(-INF, 1.0, 2, np.array([y, zj], np.int32), np.array([1.0, 1.0]))
        self.h.changeColCost(int(self.f), 1.0)
        self.h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        self.x_cols = x
        self.all_z = np.concatenate(self.z_cols)
        self.free_z = self.all_z[np.concatenate(self.unstable)]

    def solve(self, seconds_left: float) -> tuple[str, np.ndarray | None, np.ndarray | None]:
        self.h.setOptionValue("time_limit", max(seconds_left, 1e-3))
        self.h.run()
        status = self.h.getModelStatus()
        if status in INFEASIBLE:
            return "done", None, None
        has_solution = self.h.getInfo().primal_solution_status == highspy.SolutionStatus.kSolutionStatusFeasible
        if not has_solution:
            return "limit", None, None
        values = np.asarray(self.h.getSolution().col_value)
        ok = status in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kSolutionLimit)
        return ("found" if ok else "found-then-limit"), values[self.all_z] > 0.5, values[self.x_cols]

    def cut(self, pattern: np.ndarray) -> None:
        """The no-good cut that removes ``pattern`` (restricted to the unstable units)."""
        on = pattern[np.isin(self.all_z, self.free_z)]
        coef = np.where(on, 1.0, -1.0)
        self.h.addRow(-INF, float(on.sum()) - 1.0, len(coef), self.free_z.astype(np.int32), coef)


def _nogood(hidden, lo, hi, tol, deadline, max_regions):
    milp = _Model(hidden, lo, hi, tol)
    patterns, points, complete, solves = [], [], True, 0
    while True:
        left = deadline - time.perf_counter()
        if left <= 0 or (max_regions is not None and len(patterns) >= max_regions):
            complete = False
            break
        status, pattern, x = milp.solve(left)
        solves += 1
        if status == "done":
            break
        if status == "limit":
            complete = False
            break
        patterns.append(pattern)
        points.append(x)
        if status == "found-then-limit":
            complete = False
            break
        if milp.num_unstable == 0:  # every unit is stable: the whole domain is one region
            break
        milp.cut(pattern)
    return patterns, points, complete, solves, milp.num_unstable


class _Tree:
    """Depth-first enumeration of sign patterns, one LP per node (see the module docstring)."""

    def __init__(self, hidden, lo, hi, tol, deadline, max_regions) -> None:
        self.hidden, self.tol, self.deadline, self.max_regions = hidden, tol, deadline, max_regions
        bounds = interval_bounds(hidden, lo, hi)
        self.stable = [stable_units(L, U) for L, U in bounds]
        self.num_unstable = int(sum((~(on | off)).sum() for on, off in self.stable))
        self.dim = len(lo)
        self.h = _highs()
        self.h.setOptionValue("presolve", "off")
        self.h.setOptionValue("dual_feasibility_tolerance", FEASIBILITY_TOL)
        cap = max(tol, max(float(np.max(np.maximum(U, -L))) for L, U in bounds))  # no margin exceeds this
        self.h.addVars(self.dim, lo, hi)
        self.h.addVars(1, np.array([tol]), np.array([cap]))  # t, the margin
        self.h.changeColCost(self.dim, 1.0)
        self.h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        self.rows = 0
        self.solves = 0
        self.patterns: list[np.ndarray] = []
        self.points: list[np.ndarray] = []

    def _push(self, a: np.ndarray, c: float, on: bool) -> None:
        s = 1.0 if on else -1.0  # s (a x + c) >= t  <=>  s a x - t >= -s c
        nz = np.flatnonzero(a)
        idx = np.append(nz, self.dim).astype(np.int32)
        self.h.addRow(-s * c, INF, len(idx), idx, np.append(s * a[nz], -1.0))
        self.rows += 1

    def _pop(self) -> None:
        self.rows -= 1
        self.h.deleteRows(1, np.array([self.rows], np.int32))

    def _solve(self) -> tuple[np.ndarray, float] | None:
        left = self.deadline - time.perf_counter()
        if left <= 0:
            raise _Stop
        self.h.setOptionValue("time_limit", left)
        self.h.run()
        self.solves += 1
        status = self.h.getModelStatus()
        if status in INFEASIBLE:
            return None
        if status != highspy.HighsModelStatus.kOptimal:
            raise _Stop  # time limit (or a solver failure): stop with an honest partial count
        values = np.asarray(self.h.getSolution().col_value)
        return values[: self.dim], float(values[self.dim])

    def run(self, start: np.ndarray) -> None:
        first = self.hidden[0]
        self._layer(0, first.weight, first.bias, [], [], start, np.inf)

    def _layer(self, l, A, c, prefix, cur, x_w, m_w) -> None:
        """Decide the units of layer l from index len(cur) on; g = A x + c for this layer."""
        on_s, off_s = self.stable[l]
        n = len(c)
        cur = list(cur)
        while len(cur) < n:
            k = len(cur)
            if off_s[k] or on_s[k]:
                cur.append(bool(on_s[k]))
                continue
            a, c0 = A[k], float(c[k])
            if not np.any(a):  # constant on this cell
                if c0 != 0.0 and abs(c0) < self.tol:
                    return  # uncountable with margin tol (as in the MILP)
                cur.append(c0 > 0)
                continue
            break
        if len(cur) == n:
            on = np.array(cur, dtype=bool)
            pattern = [*prefix, on]
            if l == len(self.hidden) - 1:
                self.patterns.append(np.concatenate(pattern))
                self.points.append(np.array(x_w))
                if (self.max_regions is not None and len(self.patterns) >= self.max_regions) or (
                    time.perf_counter() > self.deadline
                ):
                    raise _Stop
                return
            nxt = self.hidden[l + 1]
            self._layer(l + 1, nxt.weight @ (A * on[:, None]), nxt.weight @ (c * on) + nxt.bias, pattern, [], x_w, m_w)
            return
        k = len(cur)
        a, c0 = A[k], float(c[k])
        val = float(a @ x_w + c0)
        free = val > 0
        for on in (free, not free):
            self._push(a, c0, on)
            try:
                if on == free and abs(val) >= self.tol:
                    self._layer(l, A, c, prefix, [*cur, on], x_w, min(m_w, abs(val)))
                else:
                    sol = self._solve()
                    if sol is not None:
                        self._layer(l, A, c, prefix, [*cur, on], sol[0], sol[1])
            finally:
                self._pop()


def _tree(hidden, lo, hi, tol, deadline, max_regions):
    tree = _Tree(hidden, lo, hi, tol, deadline, max_regions)
    complete = True
    depth = sum(len(l.bias) for l in hidden) + 4 * len(hidden) + 100
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 3 * depth))
    try:
        tree.run((lo + hi) / 2)  # the box centre is the first witness (no margin row yet)
    except _Stop:
        complete = False
    finally:
        sys.setrecursionlimit(old)
    return tree.patterns, tree.points, complete, tree.solves, tree.num_unstable


def _sample_missed(hidden: list[Affine], lo: np.ndarray, hi: np.ndarray, tol: float, found: np.ndarray) -> int:
    """Distinct patterns of decisive uniform points of the box that are not in ``found``."""
    x = np.random.default_rng(0).uniform(lo, hi, size=(SAMPLE_CHECK, len(lo)))
    decisive = np.ones(len(x), dtype=bool)
    h = x
    for layer, (L, U) in zip(hidden, interval_bounds(hidden, lo, hi)):
        g = h @ layer.weight.T + layer.bias
        on, off = stable_units(L, U)
        free = ~(on | off)
        decisive &= np.all((np.abs(g[:, free]) >= 2 * tol) | (g[:, free] == 0.0), axis=1)
        h = np.maximum(g, 0.0)
    keys = set(pattern_keys(patterns_of(hidden, x[decisive])).tolist())
    return len(keys - set(pattern_keys(found).tolist())) if len(found) else len(keys)


def count_regions_milp(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    lower: float | Sequence[float] = -1.0,
    upper: float | Sequence[float] = 1.0,
    origin: torch.Tensor | np.ndarray | None = None,
    basis: torch.Tensor | np.ndarray | None = None,
    time_limit: float = 60.0,
    max_regions: int | None = None,
    tol: float = 1e-6,
    method: str = "tree",
) -> MilpCount:
    """Enumerate the full-dimensional activation regions in a box of the input (or of a subspace).

    Without ``basis`` the domain is the input box [lower, upper]^n_0; with ``basis`` (k, n_0) and
    ``origin`` (n_0,), it is ``{origin + basis^T y : y in [lower, upper]^k}``. ``method``: ``"tree"``
    (one LP branch-and-bound, the default) or ``"nogood"`` (one MILP per region, Serra et al. 2018);
    both return the same regions.
    """
    hidden = hidden_affines(model, masks)
    n0 = hidden[0].weight.shape[1]
    if basis is not None:
        b = np.asarray(basis.detach().cpu() if isinstance(basis, torch.Tensor) else basis, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] != n0 or b.shape[0] < 1:
            raise PrunelabError(f"basis must be a (k, {n0}) array of k direction vectors, got shape {b.shape}")
        o = np.zeros(n0) if origin is None else as_points(origin, n0, "origin")[0]
        hidden = restrict(hidden, o, b)
    elif origin is not None:
        raise PrunelabError("origin is only used together with basis (a subspace); give both or neither")
    dim = hidden[0].weight.shape[1]
    lo, hi = _box(lower, dim, "lower"), _box(upper, dim, "upper")
    if not np.all(lo < hi):
        raise PrunelabError(f"need lower < upper in every coordinate, got lower={lo.tolist()} upper={hi.tolist()}")
    if not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise PrunelabError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if max_regions is not None and (not isinstance(max_regions, int) or max_regions < 1):
        raise PrunelabError(f"max_regions must be a positive integer or None, got {max_regions!r}")
    if not (isinstance(tol, float) and tol > 0):
        raise PrunelabError(f"tol must be a positive float (the smallest margin counted), got {tol!r}")
    if method not in METHODS:
        raise PrunelabError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    start = time.perf_counter()
    run = _tree if method == "tree" else _nogood
    patterns, points, complete, solves, num_unstable = run(hidden, lo, hi, tol, start + time_limit, max_regions)
    units = sum(l.weight.shape[0] for l in hidden)
    pats = np.array(patterns, dtype=bool).reshape(-1, units)
    pts = np.array(points, dtype=np.float64).reshape(-1, dim)
    if complete and len(pats) == 0:
        raise PrunelabError(
            "the region enumeration found no region, but a box always holds at least one: the model was "
            "infeasible (a numerical problem or a bug), which is not a count of 0"
        )
    missed = _sample_missed(hidden, lo, hi, tol, pats) if complete else 0
    verified = int(np.all(patterns_of(hidden, pts) == pats, axis=1).sum()) if len(pts) else 0
    return MilpCount(
        len(pats), complete and missed == 0, time.perf_counter() - start, num_unstable, verified, pats, pts,
        method, solves, missed,
    )
