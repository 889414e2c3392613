"""The network MILP of Serra, Yu, Kumar & Ramalingam (NeurIPS 2021, Algorithm 1), solved once, with the
solver's callbacks doing the work of the paper's loop.

The paper (and its code, ``get_activation_patterns.py --formulation network`` of
github.com/yuxwind/ExactCompression) builds **one** MILP over all hidden layers with an indicator per
candidate, ``p <= z`` ("may be active": a candidate for stably inactive) and ``q <= 1 - z`` (a
candidate for stably active), objective ``max sum(p) + sum(q)``, and solves it *once* with Gurobi:

* a ``MIPSOL`` callback reads each new incumbent, adds every unit whose ``p`` (``q``) is 1 to the
  set seen active (inactive), and adds the lazy constraint ``p = 0`` (``q = 0``) for it: the
  incumbent is rejected and the search continues in the same tree, now asking only about the units
  not yet seen flipping;
* a ``MIPNODE`` callback *injects* the input part ``x`` of every node's LP relaxation as a partial
  solution (``cbSetSolution``; Gurobi completes it, which for a network is the forward pass), so that
  every LP point becomes an incumbent and its activation pattern is collected by ``MIPSOL``;
* a ``MIP`` callback stops the solve once the dual bound is below 0.5 (no remaining indicator can be
  1); the units never seen flipping are stable.

This module does the same with open solvers (``solver="scip"`` or ``"highs"``), on our big-M model
(``milp.py``: flip indicators ``y`` binary with the strict margin ``eps``, the cover row
``sum(y) >= 1`` in place of the "bound < 0.5" test, which it equals for an integral objective).
Every point a solver reports is a witness only after the float64 forward pass of the real network
confirms the flip (Gurobi's completion is trusted by the authors' code, which also reads ``p == 1``
exactly and has no margin; we follow our sound variant).

**SCIP** (``pyscipopt``) can do all of it: a constraint handler without constraints checks every
candidate solution (``CONSCHECK``: it records the confirmed flips and rejects any solution with a
``y = 1``, like the lazy constraints that reject Gurobi's incumbent), enforces integral LP solutions
(``CONSENFOLP``) and pseudo-solutions, and fixes the indicators of witnessed candidates to 0 globally
in its propagation (the lazy ``p = 0``; a node that has branched to ``y = 1`` for a candidate closed
since is cut off: SCIP does not tighten a global bound below a local one, and every input of that
node is also in its ``y = 0`` sibling); a primal heuristic run after every node LP reads the LP's
``x``, forward-passes it and records its flips (the ``MIPNODE`` injection; we skip handing SCIP the
completed solution, which the constraint handler would reject anyway). Dual reductions and symmetry
handling are off (they cannot see the handler's constraints; Gurobi's ``LazyConstraints=1`` turns
dual reductions off too), and so are SCIP's cuts (``SCIP_CUTS``). One solve, no restart.

**HiGHS** (``highspy`` 1.16) cannot: its callbacks ``kCallbackMipSolution`` (every feasible solution
of the main MIP, read-only) and ``kCallbackMipImprovingSolution`` give the solution vector, and
``kCallbackMipInterrupt`` may stop the run, but nothing may change the model during ``run()``;
``kCallbackMipDefineLazyConstraints`` is declared but never called by the MIP solver (in the HiGHS
sources up to 1.15 no code path fires it, and ``HighsCallbackInput`` in highspy 1.16 has only
``user_interrupt`` and ``user_solution``/``setSolution``/``repairSolution``), and
``kCallbackMipUserSolution`` lets the user *offer* a full solution at the root and before each dive
but gives no node LP to build it from. The closest faithful variant is used: the solution callback
collects every feasible solution HiGHS finds (not only the improving ones) and forward-checks it; the
interrupt callback stops the run once a solution has flipped a new candidate; the witnessed
indicators are then fixed to 0 (the lazy ``y = 0``, applied at the restart) and the same HiGHS
instance runs again. Infeasible proves all remaining candidates. This is a restart loop, like
``prove_single_milp`` (which stops at a solution limit of 1 and reads the saved improving solutions
afterwards); the difference is that every reported solution is used.
"""

from __future__ import annotations

import time

import highspy
import numpy as np

from prunelab.analysis.affine import AffineLayer
from prunelab.analysis.exact.bounds import LayerBounds
from prunelab.analysis.exact.candidates import Candidates
from prunelab.analysis.exact.domain import Box
from prunelab.analysis.exact.forward import preactivations
from prunelab.analysis.exact.milp import INACTIVE, ReluMilp
from prunelab.errors import PrunelabError
from prunelab.progress import Meter

SOLVERS = ("highs", "scip")
SCIP_FEASTOL = 1e-8  # as HiGHS's primal feasibility tolerance in milp.SOLVER_OPTIONS
# SCIP's cutting planes off: on MNIST 2 x 100 (no preprocessing) root separation on the dense big-M
# rows took 21 of 26 s and changed nothing (same 1-run solve, 8 instead of 15 nodes)
SCIP_CUTS = False
# diagnostics of the last call (overwritten by each): solver runs, points forward-checked and the
# candidates they witnessed, from incumbents (every solution the solver reported) and from node LPs
last_stats: dict = {}


def scip_available() -> bool:
    try:
        import pyscipopt  # noqa: F401
    except ImportError:
        return False
    return True


def check_solver(solver: object) -> None:
    if solver not in SOLVERS:
        raise PrunelabError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    if solver == "scip" and not scip_available():
        raise PrunelabError("solver 'scip' needs pyscipopt: pip install pyscipopt")


class _Flips:
    """The open candidates of one callback solve and the float64 check of the points the solver
    reports. ``record(x)`` marks every open candidate that ``x`` (clipped to the box) really flips as
    witnessed (``"milp"``) and returns their indices; ``new`` collects them until ``take_new``."""

    def __init__(self, state: Candidates, layers: list[AffineLayer], box: Box, cands, meter: Meter) -> None:
        self.state, self.box, self.cands, self.meter = state, box, cands, meter
        self.depth = max(k for k, _, _ in cands) + 1
        self.layers = layers[: self.depth]
        self.k = np.array([k for k, _, _ in cands])
        self.i = np.array([i for _, i, _ in cands])
        self.sign = np.array([1.0 if d == INACTIVE else -1.0 for _, _, d in cands])
        self.new: list[int] = []
        # diagnostics: points forward-checked and candidates they witnessed, per source
        self.stats = {"incumbent_points": 0, "incumbent_flips": 0, "lp_points": 0, "lp_flips": 0, "runs": 0}

    def is_open(self, j: int) -> bool:
        k, i, d = self.cands[j]
        return self.state.is_open(d, k, i)

    def open_indices(self) -> list[int]:
        return [j for j in range(len(self.cands)) if self.is_open(j)]

    def record(self, x: np.ndarray, source: str = "incumbent") -> list[int]:
        self.stats[f"{source}_points"] += 1
        g = preactivations(self.layers, self.box.clip(np.asarray(x, dtype=np.float64))[None, :])
        values = np.array([g[k][0, i] for k, i in zip(self.k, self.i)]) * self.sign
        hit = [int(j) for j in np.flatnonzero(values > 0.0) if self.is_open(int(j))]
        for j in hit:
            k, i, d = self.cands[j]
            self.state.witness[d][k][i] = "milp"
        self.new += hit
        self.stats[f"{source}_flips"] += len(hit)
        if hit:
            self.meter.set(len(self.cands) - len(self.open_indices()))
        return hit

    def take_new(self) -> list[int]:
        out, self.new = self.new, []
        return out

    def give_up(self, js, tag: str) -> None:
        for j in js:
            if self.is_open(j):
                k, i, d = self.cands[j]
                self.state.unresolved[d][k][i] = tag

    def prove_open(self) -> None:
        for j in self.open_indices():
            k, i, d = self.cands[j]
            self.state.proof[d][k][i] = "milp"


def prove_callback_milp(
    state: Candidates,
    layers: list[AffineLayer],
    bounds: list[LayerBounds],
    fixed: list[np.ndarray],
    box: Box,
    eps: float,
    deadline: float | None,
    threads: int,
    progress: bool = False,
    solver: str = "highs",
) -> int:
    """The network MILP over all open candidates, solved once with callbacks (``solver="scip"``) or
    with HiGHS's solution/interrupt callbacks and restarts (``"highs"``); see the module docstring.
    Returns the number of solver runs (1 for SCIP; the rounds for HiGHS)."""
    check_solver(solver)
    start = time.perf_counter()
    cands = state.open_candidates()
    if not cands:
        return 0
    meter = Meter(len(cands), "exact: candidates settled by the callback MILP", enabled=progress)
    flips = _Flips(state, layers, box, cands, meter)
    left = None if deadline is None else deadline - time.perf_counter()
    if left is not None and left <= 0:
        flips.give_up(range(len(cands)), "time_limit")
        return 0
    milp = ReluMilp(layers, bounds, fixed, box, flips.depth, threads=threads)
    ycols = milp.add_flip_indicators(cands, eps)
    try:
        run = _solve_scip if solver == "scip" else _solve_highs
        flips.stats["runs"] = run(milp, ycols, flips, deadline)
        return flips.stats["runs"]
    finally:
        meter.set(len(cands) - len(flips.open_indices()))
        meter.close()
        last_stats.clear()
        last_stats.update(flips.stats, solver=solver, candidates=len(cands), seconds=time.perf_counter() - start)


# -- HiGHS: solution + interrupt callbacks, restart with the witnessed indicators fixed to 0 ----------
def _solve_highs(milp: ReluMilp, ycols: np.ndarray, flips: _Flips, deadline: float | None) -> int:
    h = milp.highs
    seen: list[np.ndarray] = []  # this round's solutions (for the tolerance fallback)

    def on_solution(event) -> None:
        sol = np.array(event.data_out.mip_solution, dtype=np.float64)
        if len(sol) == h.getNumCol():
            seen.append(sol)
            flips.record(sol[milp.x_cols])

    def on_interrupt(event) -> None:
        # a reported solution flipped a candidate: restart without it (the lazy y = 0). The flag is
        # set either way: HiGHS keeps it between runs, so an old True would stop the next run at once
        event.interrupt(bool(flips.new))

    h.cbMipSolution.subscribe(on_solution)
    h.cbMipInterrupt.subscribe(on_interrupt)
    solves = 0
    try:
        while flips.open_indices():
            left = None if deadline is None else deadline - time.perf_counter()
            if left is not None and left <= 0:
                break
            seen.clear()
            out = milp.solve(left)
            solves += 1
            if out.status == "kInfeasible":
                flips.prove_open()
                return solves
            for sol in out.solutions:  # the improving solutions HiGHS saved (normally seen already)
                flips.record(sol[milp.x_cols])
            if not flips.take_new():
                # the solver's flips are tolerance artefacts: give up on the candidates it claimed
                claimed = [j for j in flips.open_indices() for sol in seen + out.solutions if sol[ycols[j]] > 0.5]
                if not claimed:
                    break  # stopped (time limit) without a proof or a flip
                flips.give_up(claimed, "tolerance")
            done = [j for j in range(len(flips.cands)) if not flips.is_open(j)]
            milp.fix_to_zero(ycols[done])
            milp.guide([flips.cands[j] for j in flips.open_indices()])
    finally:
        h.cbMipSolution.unsubscribe(on_solution)
        h.cbMipInterrupt.unsubscribe(on_interrupt)
    flips.give_up(flips.open_indices(), "time_limit")
    return solves


# -- SCIP: one solve; a constraint handler rejects flips and fixes their indicators, a heuristic -----
# -- injects every node LP's input -----------------------------------------------------------------
def _scip_model(milp: ReluMilp, ycols: np.ndarray, deadline: float | None):
    """The same big-M model in SCIP (columns in HiGHS's order), objective ``max sum(y)``."""
    import pyscipopt
    from pyscipopt.scip import ExprCons
    from scipy.sparse import csc_matrix, csr_matrix

    lp = milp.highs.getLp()
    n, m = lp.num_col_, lp.num_row_
    a = lp.a_matrix_
    parts = (np.asarray(a.value_), np.asarray(a.index_), np.asarray(a.start_))
    rowwise = a.format_ == highspy.MatrixFormat.kRowwise
    csr = csr_matrix(parts, shape=(m, n)) if rowwise else csc_matrix(parts, shape=(m, n)).tocsr()
    integer = np.zeros(n, dtype=bool)
    if len(lp.integrality_):
        integer = np.array([int(t) != 0 for t in lp.integrality_])
    model = pyscipopt.Model("network_milp")
    model.hideOutput()
    lo, up = np.asarray(lp.col_lower_), np.asarray(lp.col_upper_)
    variables = [
        model.addVar(
            name=f"c{j}",
            vtype="B" if integer[j] and lo[j] >= 0 and up[j] <= 1 else ("I" if integer[j] else "C"),
            lb=None if np.isinf(lo[j]) else float(lo[j]),
            ub=None if np.isinf(up[j]) else float(up[j]),
        )
        for j in range(n)
    ]
    rlo, rup = np.asarray(lp.row_lower_), np.asarray(lp.row_upper_)
    for r in range(m):
        s, e = csr.indptr[r], csr.indptr[r + 1]
        expr = pyscipopt.quicksum(float(v) * variables[c] for c, v in zip(csr.indices[s:e], csr.data[s:e]))
        model.addCons(
            ExprCons(expr, lhs=None if np.isinf(rlo[r]) else float(rlo[r]), rhs=None if np.isinf(rup[r]) else float(rup[r])),
            name=f"r{r}",
        )
    model.setObjective(pyscipopt.quicksum(variables[int(c)] for c in ycols), "maximize")  # the paper's objective
    model.setParam("numerics/feastol", SCIP_FEASTOL)
    if not SCIP_CUTS:
        model.setSeparating(pyscipopt.SCIP_PARAMSETTING.OFF)
    model.setParam("randomization/randomseedshift", 0)
    # our constraint handler restricts y: no dual reductions may rely on the rows alone (Gurobi's
    # LazyConstraints=1 switches dual presolve reductions off for the same reason)
    model.setParam("misc/allowstrongdualreds", False)
    model.setParam("misc/allowweakdualreds", False)
    model.setParam("misc/usesymmetry", 0)  # symmetry detection cannot see the handler's constraints
    if deadline is not None:
        model.setParam("limits/time", max(deadline - time.perf_counter(), 1e-3))
    return model, variables


def _solve_scip(milp: ReluMilp, ycols: np.ndarray, flips: _Flips, deadline: float | None) -> int:
    from pyscipopt import SCIP_HEURTIMING, SCIP_PROPTIMING, SCIP_RESULT, Conshdlr, Heur

    model, variables = _scip_model(milp, ycols, deadline)
    xvars = [variables[int(c)] for c in milp.x_cols]
    yvars = [variables[int(c)] for c in ycols]
    fixed_to_zero = np.zeros(len(yvars), dtype=bool)
    claimed: set[int] = set()  # candidates an integral solution had at y = 1 without a confirmed flip
    local_fixes: list[int] = []  # indicators the enforcement had to fix at the node (diagnostics)
    for y in yvars:  # keep each y a variable of its own, so that its bound can be fixed later
        model.markDoNotAggrVar(y)
        model.markDoNotMultaggrVar(y)

    def x_of(sol) -> np.ndarray:
        return np.array([model.getSolVal(sol, v) for v in xvars])

    def unfixed_closed() -> list[int]:
        return [j for j in range(len(yvars)) if not fixed_to_zero[j] and not flips.is_open(j)]

    def apply_lazy() -> str:
        """The lazy ``y = 0`` of every closed candidate, as a global bound (looked up on the
        transformed variable each time: a SCIP restart makes new ones). SCIP does not tighten a
        global bound below a local lower bound, so a node that has branched to ``y = 1`` for a
        candidate closed since holds no point of the problem: "cutoff". Otherwise "reduced" if a
        bound changed (at this node, should the global change not reach it), else ""."""
        result = ""
        for j in unfixed_closed():
            var = model.getTransformedVar(yvars[j])
            if var.getLbLocal() > 0.5:
                return "cutoff"
            if var.getUbGlobal() > 0.5:
                _, tightened = model.tightenVarUbGlobal(var, 0.0)
                result = "reduced" if tightened else result
            fixed_to_zero[j] = var.getUbGlobal() <= 0.5
            if not fixed_to_zero[j] and var.getUbLocal() > 0.5:
                model.tightenVarUb(var, 0.0)
                local_fixes.append(j)
                result = "reduced"
        return result

    def examine(sol) -> bool:
        """Record the flips of an integral solution; True if some y = 1 (the solution violates the
        lazy constraints if the flip is confirmed, and is a tolerance artefact if not)."""
        ones = [j for j in range(len(yvars)) if model.getSolVal(sol, yvars[j]) > 0.5]
        if not ones:
            return False
        if any(flips.is_open(j) for j in ones):
            hit = set(flips.record(x_of(sol)))
            for j in ones:
                if flips.is_open(j) and j not in hit:
                    claimed.add(j)  # y = 1 yet the forward pass does not flip it: a tolerance artefact
        return True

    class FlipCuts(Conshdlr):
        """No constraints of its own: ``y_j = 0`` for every candidate seen flipping (lazily)."""

        def conscheck(self, constraints, solution, checkintegrality, checklprows, printreason, completely):
            return {"result": SCIP_RESULT.INFEASIBLE if examine(solution) else SCIP_RESULT.FEASIBLE}

        def _enforce(self):
            if not examine(None):
                return {"result": SCIP_RESULT.FEASIBLE}
            flips.give_up(sorted(claimed), "tolerance")
            claimed.clear()
            if not flips.open_indices():
                model.interruptSolve()
                return {"result": SCIP_RESULT.CUTOFF}
            # every y = 1 of this solution is closed now: its lazy y = 0 cuts the solution off
            cut = apply_lazy() == "cutoff"
            return {"result": SCIP_RESULT.CUTOFF if cut else SCIP_RESULT.REDUCEDDOM}

        def consenfolp(self, constraints, nusefulconss, solinfeasible):
            return self._enforce()

        def consenfops(self, constraints, nusefulconss, solinfeasible, objinfeasible):
            return self._enforce()

        def consprop(self, constraints, nusefulconss, nmarkedconss, proptiming):
            if not flips.open_indices():
                model.interruptSolve()
                return {"result": SCIP_RESULT.DIDNOTFIND}
            result = apply_lazy()
            if result == "cutoff":
                return {"result": SCIP_RESULT.CUTOFF}
            return {"result": SCIP_RESULT.REDUCEDDOM if result else SCIP_RESULT.DIDNOTFIND}

        def conslock(self, constraint, locktype, nlockspos, nlocksneg):
            for y in yvars:  # rounding a y up may violate "y = 0 once witnessed"
                model.addVarLocksType(y, locktype, nlocksneg, nlockspos)

    class InjectLpInput(Heur):
        """The authors' MIPNODE injection: every node LP's input x, forward-passed."""

        def heurexec(self, heurtiming, nodeinfeasible):
            if model.getLPSolstat() != 1:  # SCIP_LPSOLSTAT_OPTIMAL
                return {"result": SCIP_RESULT.DIDNOTRUN}
            flips.record(x_of(None), "lp")
            return {"result": SCIP_RESULT.DIDNOTFIND}

    model.includeConshdlr(
        FlipCuts(), "flipcuts", "y = 0 for candidates seen flipping", chckpriority=-9_999_999,
        enfopriority=-9_999_999, propfreq=1, needscons=False, proptiming=SCIP_PROPTIMING.BEFORELP,
    )
    model.includeHeur(
        InjectLpInput(), "injectlp", "forward pass of the node LP's input", "I", priority=1_000_000,
        freq=1, freqofs=0, maxdepth=-1, timingmask=SCIP_HEURTIMING.AFTERLPNODE, usessubscip=False,
    )
    model.optimize()
    status = model.getStatus()
    flips.stats.update(status=status, nodes=model.getNNodes(), lp_iterations=model.getNLPIterations(), local_fixes=len(local_fixes))
    flips.take_new()
    flips.give_up(sorted(claimed), "tolerance")
    if status == "infeasible":  # no input flips any candidate left: all proven
        flips.prove_open()
    flips.give_up(flips.open_indices(), "time_limit")
    model.freeProb()
    return 1
