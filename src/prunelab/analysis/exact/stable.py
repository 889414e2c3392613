"""Which ReLUs of an MLP are stable over an input box: witnesses, bounds, then MILPs.

Serra, Yu, Kumar & Ramalingam, "Scaling Up Exact Neural Network Compression by ReLU Stability"
(NeurIPS 2021), Algorithm 1: a hidden unit is *stably inactive* if its pre-activation ``g(x) <= 0``
on the whole domain D (it can be deleted) and *stably active* if ``g(x) >= 0`` on D (it is linear
there). Each unit asks two questions, one per direction; the pipeline closes them cheapest first:

1. **Data witnesses**: a forward pass over ``data`` (the paper's candidates are the units that never
   change sign on the training set). Without data every unit is a candidate in *both* directions.
2. **Bounds** (``bounds.py``): interval, then symbolic (DeepPoly/CROWN) bounds prove ``U <= 0``
   (inactive) or ``L >= 0`` (active) and give the MILP's big-M constants.
3. **Sampled witnesses** (ours): ``n_samples`` uniform points of D and the box corners maximising
   each unit's symbolic bound; then a projected **gradient search** (``search_steps``) aimed at each
   open candidate's sign flip (``candidates.py``). Neither can prove anything; they only find inputs
   at which a float64 forward pass shows a flip, so the MILPs are left with (mostly) stable units.
4. **LP relaxation** (``prove.py``, ``lp=True``): one LP per open candidate over the big-M model
   with the binaries relaxed; an LP optimum below the margin proves the sign ("lp").
5. **MILP** (``prove.py``): ``method="single_milp"`` (NeurIPS 2021, as a restart loop) or
   ``"per_unit"`` (CPAIOR 2020 baseline); ``"callback_milp"`` (``callback_milp.py``) is NeurIPS
   2021's Algorithm 1 as the authors run it, one network MILP solved once whose new-incumbent
   callback collects every incumbent's flips (``solver="scip"``: constraint handler + LP injection
   heuristic; ``"highs"``: solution/interrupt callbacks with restarts, the closest HiGHS allows). All
   use the same big-M model (``milp.py``) and return the same sets.

A unit *both* of whose questions are answered by witnesses is *unstable*; one proven in either
direction is stable (proven in both means ``|g| < eps`` on D: we call it inactive and delete it).

Soundness (choices the papers leave open):

* A MILP flip needs a strict margin ``eps`` (default ``1e-6``): *stably inactive* proven by a MILP
  means ``g(x) < eps`` for all x in D, *stably active* ``g(x) > -eps``; bounds prove ``g <= 0`` /
  ``g >= 0`` themselves. Deleting a unit with ``g < eps`` (or linearising one with ``g > -eps``)
  moves the next layer by at most ``eps`` times its outgoing weights; ``compress`` then measures the
  actual difference and refuses a model that differs.
* MILP proofs hold up to HiGHS's tolerances (primal feasibility 1e-8, integrality 1e-7 here); in a
  test against an LP solved to high accuracy the simplex bound was off by ~4e-6, so a unit whose
  supremum lies within ~1e-5 of 0 may be misjudged by that much, which ``compress`` would catch if it
  mattered. Claims of *instability* are rigorous: an input of D with a strictly positive (negative)
  float64 pre-activation.
* What the time limit leaves open is *unresolved* and treated as unstable, never guessed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunelab.analysis.affine import AffineLayer, mlp_layers
from prunelab.analysis.exact.bounds import LayerBounds, compute_bounds
from prunelab.analysis.exact.callback_milp import check_solver, prove_callback_milp
from prunelab.analysis.exact.candidates import Candidates, search_witnesses, settle_by_bounds, settle_by_witnesses
from prunelab.analysis.exact.domain import Box, make_box, points_in_box
from prunelab.analysis.exact.milp import ACTIVE, INACTIVE
from prunelab.analysis.exact.prove import prove_by_lp, prove_per_unit, prove_single_milp
from prunelab.errors import PrunelabError

METHODS = ("single_milp", "per_unit", "callback_milp")
POOL_DATA = 5000  # data points (random subset) from which the gradient search may start
POOL_UNIFORM = 256  # plus this many uniform points of the domain
STATUSES = ("active", "inactive", "unstable", "unresolved")


@dataclass
class LayerStability:
    """One hidden layer: per unit a status (``"active"``/``"inactive"`` = stably so, ``"unstable"`` =
    witnessed both ways, ``"unresolved"`` = not proven, treated as unstable) and how it was settled
    (``"interval"``/``"symbolic"``/``"lp"``/``"milp"`` for proofs, ``"data"``/``"sample"``/``"milp"`` for
    witnesses, ``"time_limit"``/``"tolerance"`` for unresolved units). ``lower``/``upper`` are the bounds."""

    name: str
    status: list[str]
    how: list[str]
    lower: np.ndarray
    upper: np.ndarray

    @property
    def width(self) -> int:
        return len(self.status)

    def _where(self, status: str) -> list[int]:
        return [i for i, s in enumerate(self.status) if s == status]

    @property
    def stably_active(self) -> list[int]:
        return self._where("active")

    @property
    def stably_inactive(self) -> list[int]:
        return self._where("inactive")

    @property
    def unstable(self) -> list[int]:
        return self._where("unstable")

    @property
    def unresolved(self) -> list[int]:
        return self._where("unresolved")

    def count(self, status: str, how: str | None = None) -> int:
        return sum(1 for s, h in zip(self.status, self.how) if s == status and (how is None or h == how))


@dataclass
class StabilityResult:
    """Per hidden layer stability, plus the settings and timings that produced it.

    ``layers`` are the affine layers analysed (float64, masks applied) so that :func:`compress` can
    check it is given the same network. ``timings`` has ``witness``, ``bounds``, ``search``, ``milp``
    ``lp`` and ``total`` seconds; ``lp_solves``/``milp_solves`` count HiGHS runs and
    ``milp_candidates`` the (unit, direction) pairs still open when the MILP stage began.
    """

    layers: list[LayerStability]
    method: str
    domain: Box
    eps: float
    time_limit: float | None
    timings: dict[str, float]
    milp_solves: int
    milp_candidates: int
    lp_solves: int
    network: list[AffineLayer] = field(repr=False)

    @property
    def complete(self) -> bool:
        """True if no unit is unresolved (every unit proven stable or witnessed unstable)."""
        return all(not lay.unresolved for lay in self.layers)

    def totals(self) -> dict[str, int]:
        return {s: sum(lay.count(s) for lay in self.layers) for s in STATUSES}

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per hidden layer (counts by status and by proof) for tables and CSVs."""
        rows = []
        for lay in self.layers:
            rows.append(
                {
                    "layer": lay.name,
                    "width": lay.width,
                    "stably_active": lay.count("active"),
                    "stably_inactive": lay.count("inactive"),
                    "unstable": lay.count("unstable"),
                    "unresolved": lay.count("unresolved"),
                    "by_interval": sum(lay.count(s, "interval") for s in ("active", "inactive")),
                    "by_symbolic": sum(lay.count(s, "symbolic") for s in ("active", "inactive")),
                    "by_lp": sum(lay.count(s, "lp") for s in ("active", "inactive")),
                    "by_milp": sum(lay.count(s, "milp") for s in ("active", "inactive")),
                    "method": self.method,
                    "milp_seconds": round(self.timings.get("milp", 0.0), 4),
                    "total_seconds": round(self.timings.get("total", 0.0), 4),
                }
            )
        return rows


# -- input checks ---------------------------------------------------------------------------------
def _check_options(method: str, time_limit: Any, eps: Any, n_samples: Any) -> None:
    if method not in METHODS:
        raise PrunelabError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if time_limit is not None and (
        not isinstance(time_limit, (int, float)) or not np.isfinite(time_limit) or time_limit <= 0
    ):
        raise PrunelabError(f"time_limit must be a positive number of seconds or None, got {time_limit!r}")
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise PrunelabError(f"eps must be a small positive margin in (0, 1), got {eps!r}")
    if not isinstance(n_samples, int) or n_samples < 0:
        raise PrunelabError(f"n_samples must be a non-negative integer, got {n_samples!r}")


# -- the algorithm ----------------------------------------------------------------------------------
def _layer_results(state: Candidates, layers: list[AffineLayer], bounds: list[LayerBounds]) -> list[LayerStability]:
    out = []
    for k, b in enumerate(bounds):
        status, how = [], []
        for i in range(len(b.lower)):
            if state.proof[INACTIVE][k][i]:
                status.append("inactive")
                how.append(state.proof[INACTIVE][k][i])
            elif state.proof[ACTIVE][k][i]:
                status.append("active")
                how.append(state.proof[ACTIVE][k][i])
            elif state.witness[INACTIVE][k][i] and state.witness[ACTIVE][k][i]:
                status.append("unstable")
                tags = [state.witness[d][k][i] for d in (INACTIVE, ACTIVE)]
                how.append(next(t for t in ("milp", "search", "sample", "data") if t in tags))
            else:
                status.append("unresolved")
                tags = [state.unresolved[d][k][i] for d in (INACTIVE, ACTIVE)]
                how.append("time_limit" if "time_limit" in tags else "tolerance")
        out.append(LayerStability(layers[k].name, status, how, b.lower, b.upper))
    return out


def find_stable_neurons(
    model: nn.Module,
    domain: Any = (0.0, 1.0),
    data: Any = None,
    time_limit: float | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    method: str = "single_milp",
    *,
    eps: float = 1e-6,
    n_samples: int = 1000,
    search_steps: int = 100,
    search_starts: int = 8,
    lp: bool = True,
    seed: int = 0,
    threads: int = 1,
    progress: bool = False,
    solver: str = "highs",
) -> StabilityResult:
    """Find the stably active and stably inactive hidden ReLUs of an MLP over the box ``domain``.

    ``domain``: (lower, upper) scalars or tensors with one entry per input (or ``"box:0,1"``).
    ``data``: optional inputs (N, ...) inside the box, whose forward pass rules out candidates.
    ``time_limit``: seconds for the MILP stage (None = no limit); what it leaves open is unresolved.
    ``method``: ``"single_milp"`` (NeurIPS 2021, restart loop), ``"per_unit"`` (CPAIOR 2020 baseline)
    or ``"callback_milp"`` (NeurIPS 2021 Algorithm 1: one network MILP, incumbents collected by the
    solver's callback), the latter with ``solver="highs"`` or ``"scip"`` (needs ``pyscipopt``); the
    other methods run on HiGHS only.
    ``eps``: the flip margin of the MILPs. ``n_samples`` uniform points of D (seeded by ``seed``) and
    the bound corners are extra witnesses (0 turns both off); ``search_steps`` of gradient search
    from ``search_starts`` points per candidate (0 turns it off). ``threads``: HiGHS threads (0: its
    choice). ``lp``: try the LP relaxation on each candidate before the MILPs. Setting
    ``n_samples=0, search_steps=0, lp=False`` gives the papers' pipeline (data, bounds, MILP).
    ``time_limit`` covers the LP and MILP stages.
    """
    _check_options(method, time_limit, eps, n_samples)
    if method == "callback_milp":
        check_solver(solver)
    elif solver != "highs":
        raise PrunelabError(f"method {method!r} runs on HiGHS only; solver={solver!r} needs method='callback_milp'")
    for name, value in (("search_steps", search_steps), ("search_starts", search_starts), ("threads", threads)):
        if not isinstance(value, int) or value < 0:
            raise PrunelabError(f"{name} must be a non-negative integer, got {value!r}")
    t0 = time.perf_counter()
    layers = mlp_layers(model, masks)
    if len(layers) < 2:
        raise PrunelabError("the model has no hidden ReLU layer: nothing to analyse")
    box = make_box(domain, layers[0].weight.shape[1])
    x_data = points_in_box(data, box)
    state = Candidates([lay.weight.shape[0] for lay in layers[:-1]])

    settle_by_witnesses(state, layers, x_data, "data")
    t1 = time.perf_counter()
    bounds = compute_bounds(layers, box)
    fixed = settle_by_bounds(state, bounds)
    t2 = time.perf_counter()
    corners = [np.concatenate([b.upper_corner, b.lower_corner]) for b in bounds] if n_samples else []
    samples = np.concatenate([box.sample(n_samples, seed), *corners])
    settle_by_witnesses(state, layers, samples, "sample")
    t3 = time.perf_counter()
    subset = x_data[np.random.default_rng(seed).permutation(len(x_data))[:POOL_DATA]]
    pool = np.concatenate([subset, samples, box.sample(POOL_UNIFORM, seed + 1)])
    search_witnesses(state, layers, box, pool, search_starts, search_steps)
    t4 = time.perf_counter()

    deadline = None if time_limit is None else t4 + float(time_limit)
    lp_solves = prove_by_lp(state, layers, bounds, fixed, box, float(eps), deadline, threads, progress) if lp else 0
    t5 = time.perf_counter()
    milp_candidates = len(state.open_candidates())
    if method == "callback_milp":
        solves = prove_callback_milp(state, layers, bounds, fixed, box, float(eps), deadline, threads, progress, solver)
    else:
        prove = prove_single_milp if method == "single_milp" else prove_per_unit
        solves = prove(state, layers, bounds, fixed, box, float(eps), deadline, threads, progress)
    t6 = time.perf_counter()
    timings = {
        "witness": (t1 - t0) + (t3 - t2),
        "bounds": t2 - t1,
        "search": t4 - t3,
        "lp": t5 - t4,
        "milp": t6 - t5,
        "total": t6 - t0,
    }
    return StabilityResult(
        layers=_layer_results(state, layers, bounds),
        method=method,
        domain=box,
        eps=float(eps),
        time_limit=time_limit,
        timings=timings,
        milp_solves=solves,
        milp_candidates=milp_candidates,
        lp_solves=lp_solves,
        network=layers,
    )
