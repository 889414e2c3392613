"""The big-M mixed-integer formulation of a ReLU MLP over a box, solved with HiGHS.

Every hidden unit ``h = relu(g)`` with bounds ``L < 0 < U`` gets a binary ``z`` and the constraints of
Fischetti & Jo (Constraints 2018) / Tjeng, Xiao & Tedrake (ICLR 2019), as used by Serra, Kumar &
Ramalingam (CPAIOR 2020, §4) and Serra, Yu, Kumar & Ramalingam (NeurIPS 2021, eq. (2)):

    h >= g,   h <= g - L (1 - z),   h <= U z,   h >= 0,   z in {0, 1}.

Units already proven stable by the bounds use their linear form (``h = g`` or ``h = 0``). The
pre-activations ``g`` are variables (one equality row each) so each ReLU row touches three columns.

Candidates for stability get *flip indicators* ``y`` (binary, objective coefficient 1):

    inactive candidate:  g >= eps * y + L (1 - y)    and  y <= z
    active candidate:    g <= -eps * y + U (1 - y)   and  y <= 1 - z

so ``y = 1`` only at an input where the unit is active (inactive) with margin ``eps``. The paper
writes continuous ``p <= z`` / ``q <= 1 - z``; with z free at ``g = 0`` that would count a "flip" at
g = 0 exactly, so we tie the indicator to a strict margin instead and make it binary (with the margin
row a continuous indicator could take fractional values ~1 at g = 0). ``y = 0`` is always allowed, so
the flip indicators never cut inputs out of the domain: the feasible set still projects onto the
whole box, which keeps the proofs sound. With the *cover* row ``sum(y) >= 1`` the model asks "does any
open candidate flip?": infeasible proves them all.

Tiny weights: L1-trained nets keep many weights around 1e-7..1e-5 instead of exactly 0; HiGHS silently
drops matrix entries below 1e-9, and its simplex stalls on rows spanning ten orders of magnitude. A
weight below ``TINY`` (1e-7) times the largest of its row is therefore left out of the row and its
contribution replaced by its interval over the bounds of its input (a ranged row): a relaxation, so
proofs stay sound, and a flip it might fake is caught by the forward-pass check of every witness.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import highspy
import numpy as np

from prunelab.analysis.affine import AffineLayer
from prunelab.analysis.exact.bounds import LayerBounds
from prunelab.analysis.exact.domain import Box

INF = highspy.kHighsInf
TINY = 1e-7  # weights below TINY * (largest weight of their row) enter as an interval, see ReluMilp
HIGHS_SMALL = 1e-9  # HiGHS drops matrix entries at or below this (its small_matrix_value)
# Tighter than HiGHS's defaults (1e-6 / 1e-7): besides accuracy, with the defaults the root LP of
# dense MNIST models stalls for minutes; with these it solves in seconds.
SOLVER_OPTIONS = {"mip_feasibility_tolerance": 1e-7, "primal_feasibility_tolerance": 1e-8}
ACTIVE, INACTIVE, FREE = 1, -1, 0


@dataclass
class SolveOutcome:
    """What one HiGHS run said: ``status`` is HiGHS's model status name (e.g. ``"kOptimal"``),
    ``objective`` the incumbent's value (None if no feasible solution), ``bound`` the dual bound,
    ``solutions`` the column vectors of all improving solutions found (best last), ``seconds`` wall time.
    """

    status: str
    objective: float | None
    bound: float
    solutions: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0


class ReluMilp:
    """The big-M model of ``layers[:depth]`` (hidden layers only) over ``box`` in one HiGHS instance.

    ``fixed[k][i]`` is ``ACTIVE``/``INACTIVE`` for units proven stable by the bounds (modelled
    linearly) and ``FREE`` otherwise. Column indices: ``x_cols`` for the inputs, ``g_cols[k][i]``,
    ``h_cols[k][i]`` (-1 where ``h`` is identically 0) and ``z_cols[k][i]`` (-1 if no binary).
    """

    def __init__(
        self,
        layers: list[AffineLayer],
        bounds: list[LayerBounds],
        fixed: list[np.ndarray],
        box: Box,
        depth: int,
        threads: int = 1,
        seed: int = 0,
    ) -> None:
        self.highs = highspy.Highs()
        self.highs.setOptionValue("output_flag", False)
        self.highs.setOptionValue("threads", int(threads))
        self.highs.setOptionValue("random_seed", int(seed))
        self.highs.setOptionValue("mip_rel_gap", 0.0)
        for name, value in SOLVER_OPTIONS.items():
            self.highs.setOptionValue(name, value)
        self._lb: list[float] = []
        self._ub: list[float] = []
        self._int: list[int] = []
        self._rows: list[tuple[float, float, np.ndarray, np.ndarray]] = []
        self._ncols = 0
        self.bounds = bounds
        self.x_cols = np.array([self._add_col(a, c) for a, c in zip(box.lower, box.upper)], dtype=np.int64)
        self.g_cols: list[np.ndarray] = []
        self.h_cols: list[np.ndarray] = []
        self.z_cols: list[np.ndarray] = []
        prev_h = self.x_cols
        prev_lo, prev_hi = box.lower, box.upper
        for k in range(depth):
            w, b = layers[k].weight.numpy(), layers[k].bias.numpy()
            low, high = bounds[k].lower, bounds[k].upper
            status = fixed[k]
            used_next = (
                np.any(layers[k + 1].weight.numpy() != 0.0, axis=0)
                if k + 1 < depth
                else np.zeros(len(b), dtype=bool)
            )
            g = np.full(len(b), -1)
            h = np.full(len(b), -1)
            z = np.full(len(b), -1)
            for i in range(len(b)):
                if status[i] == INACTIVE:
                    continue
                g[i] = self._add_col(low[i], high[i])
                big = np.abs(w[i]) > max(TINY * np.abs(w[i]).max(initial=0.0), HIGHS_SMALL)
                big &= prev_h >= 0
                # the tiny weights' contribution, bounded by interval arithmetic (a sound relaxation)
                small = np.where(big, 0.0, w[i])
                s_lo = np.minimum(small * prev_lo, small * prev_hi).sum()
                s_hi = np.maximum(small * prev_lo, small * prev_hi).sum()
                nz = np.flatnonzero(big)
                self._add_row(b[i] + s_lo, b[i] + s_hi, np.r_[g[i], prev_h[nz]], np.r_[1.0, -w[i, nz]])
                if status[i] == ACTIVE:
                    h[i] = g[i]
                elif used_next[i]:
                    h[i] = self._add_col(0.0, max(high[i], 0.0))
                    z[i] = self._add_col(0.0, 1.0, integer=True)
                    self._add_row(0.0, INF, [h[i], g[i]], [1.0, -1.0])
                    self._add_row(-INF, 0.0, [h[i], z[i]], [1.0, -high[i]])
                    self._add_row(-INF, -low[i], [h[i], g[i], z[i]], [1.0, -1.0, -low[i]])
            self.g_cols.append(g)
            self.h_cols.append(h)
            self.z_cols.append(z)
            prev_h = h
            prev_lo = np.where(status == INACTIVE, 0.0, np.maximum(low, 0.0))
            prev_hi = np.where(status == INACTIVE, 0.0, np.maximum(high, 0.0))
        self._flush()

    # -- model assembly -------------------------------------------------------------------------
    def _add_col(self, lb: float, ub: float, integer: bool = False) -> int:
        """Buffer one column; return its index in the HiGHS model."""
        self._lb.append(float(lb))
        self._ub.append(float(ub))
        col = self._ncols
        self._ncols += 1
        if integer:
            self._int.append(col)
        return col

    def _add_row(self, lb: float, ub: float, idx, vals) -> None:
        self._rows.append((float(lb), float(ub), np.asarray(idx, dtype=np.int32), np.asarray(vals, float)))

    def _flush(self) -> None:
        """Send the buffered columns and rows to HiGHS in two calls."""
        h = self.highs
        n = len(self._lb)
        if n:
            h.addVars(n, np.array(self._lb), np.array(self._ub))
        if self._int:
            cols = np.array(self._int, dtype=np.int32)
            h.changeColsIntegrality(len(cols), cols, np.ones(len(cols), dtype=np.uint8))
        if self._rows:
            starts = np.cumsum([0] + [len(r[2]) for r in self._rows[:-1]]).astype(np.int32)
            idx = np.concatenate([r[2] for r in self._rows]).astype(np.int32)
            vals = np.concatenate([r[3] for r in self._rows])
            h.addRows(
                len(self._rows),
                np.array([r[0] for r in self._rows]),
                np.array([r[1] for r in self._rows]),
                len(idx),
                starts,
                idx,
                vals,
            )
        self._lb, self._ub, self._int, self._rows = [], [], [], []

    # -- flip indicators (single-MILP method) ---------------------------------------------------
    def add_flip_indicators(
        self, candidates: list[tuple[int, int, int]], eps: float, cover: bool = True
    ) -> np.ndarray:
        """One binary ``y`` per (layer, unit, direction) candidate, direction ``INACTIVE`` meaning "a
        candidate for stably inactive, so y=1 needs g >= eps"; returns their column indices. With
        ``cover`` the row ``sum(y) >= 1`` is added (optimum >= 1 or infeasible)."""
        cols = []
        for k, i, direction in candidates:
            low, high = self.bounds[k].lower[i], self.bounds[k].upper[i]
            y = self._add_col(0.0, 1.0, integer=True)
            g, z = self.g_cols[k][i], self.z_cols[k][i]
            if direction == INACTIVE:
                self._add_row(low, INF, [g, y], [1.0, -(eps - low)])
                if z >= 0:
                    self._add_row(-INF, 0.0, [y, z], [1.0, -1.0])
            else:
                self._add_row(-INF, high, [g, y], [1.0, high + eps])
                if z >= 0:
                    self._add_row(-INF, 1.0, [y, z], [1.0, 1.0])
            cols.append(y)
        if cover and cols:  # ask for at least one flip: "no feasible point" then proves all
            self._add_row(1.0, INF, cols, np.ones(len(cols)))
        self._flush()
        cols_arr = np.array(cols, dtype=np.int32)
        if len(cols_arr):
            self.highs.changeColsCost(len(cols_arr), cols_arr, np.ones(len(cols_arr)))
        self.highs.changeObjectiveSense(highspy.ObjSense.kMaximize)
        self._guided = sorted({int(self.g_cols[k][i]) for k, i, _ in candidates})
        self.guide(candidates)
        return cols_arr

    def guide(self, candidates: list[tuple[int, int, int]]) -> None:
        """Objective terms pushing each open candidate's ``g`` towards its flip, scaled so each lies
        in [-0.5, 0.5]. Without them the objective is flat over most of the LP (dual degenerate) and
        HiGHS's simplex stalls for minutes on MNIST-sized models; with them it proves in seconds."""
        cost = dict.fromkeys(self._guided, 0.0)
        for k, i, direction in candidates:
            span = max(self.bounds[k].upper[i] - self.bounds[k].lower[i], 1e-12)
            cost[int(self.g_cols[k][i])] += (0.5 if direction == INACTIVE else -0.5) / span
        if cost:
            idx = np.array(list(cost), dtype=np.int32)
            self.highs.changeColsCost(len(idx), idx, np.array(list(cost.values())))

    def fix_to_zero(self, cols: np.ndarray) -> None:
        """Fix flip indicators to 0 and take them out of the objective."""
        cols = np.asarray(cols, dtype=np.int32)
        if len(cols):
            zeros = np.zeros(len(cols))
            self.highs.changeColsBounds(len(cols), cols, zeros, zeros)
            self.highs.changeColsCost(len(cols), cols, zeros)

    # -- solving --------------------------------------------------------------------------------
    def relax(self) -> None:
        """Drop integrality (the LP relaxation) and use the interior-point solver, which on these
        dense, badly scaled LPs is far more robust than the simplex (0.6 s where the simplex stalls)."""
        cols = np.array([c for z in self.z_cols for c in z if c >= 0], dtype=np.int32)
        if len(cols):
            self.highs.changeColsIntegrality(len(cols), cols, np.zeros(len(cols), dtype=np.uint8))
        self.highs.setOptionValue("solver", "ipm")

    def optimise_unit(self, k: int, i: int, sense: int, time_limit: float | None, **bounds: float) -> SolveOutcome:
        """Maximise (``sense=+1``) or minimise (-1) unit (k, i)'s pre-activation, with its column's
        bounds temporarily set to ``bounds`` (``lower``/``upper``); the model is restored after."""
        h = self.highs
        col = np.array([int(self.g_cols[k][i])], dtype=np.int32)
        low, high = self.bounds[k].lower[i], self.bounds[k].upper[i]
        h.changeObjectiveSense(highspy.ObjSense.kMaximize if sense > 0 else highspy.ObjSense.kMinimize)
        h.changeColsCost(1, col, np.array([1.0]))
        h.changeColsBounds(1, col, np.array([bounds.get("lower", low)]), np.array([bounds.get("upper", high)]))
        try:
            return self.solve(time_limit, max_solutions=1)
        finally:
            h.changeColsCost(1, col, np.array([0.0]))
            h.changeColsBounds(1, col, np.array([low]), np.array([high]))

    def solve(self, time_limit: float | None, max_solutions: int | None = None) -> SolveOutcome:
        h = self.highs
        h.setOptionValue("time_limit", float(time_limit) if time_limit is not None else INF)
        h.setOptionValue("mip_max_improving_sols", int(max_solutions) if max_solutions else 2**31 - 1)
        h.setOptionValue("mip_improving_solution_save", True)
        start = time.perf_counter()
        h.run()
        seconds = time.perf_counter() - start
        status = h.getModelStatus().name
        info = h.getInfo()
        feasible = info.primal_solution_status == 2  # kSolutionStatusFeasible
        solutions = [np.asarray(s.col_value) for s in h.getSavedMipSolutions()]
        if feasible:
            solutions.append(np.asarray(h.getSolution().col_value))
        return SolveOutcome(
            status=status,
            objective=float(info.objective_function_value) if feasible else None,
            bound=float(info.mip_dual_bound),
            solutions=solutions,
            seconds=seconds,
        )

    def inputs(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values)[self.x_cols]
