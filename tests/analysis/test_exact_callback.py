"""The network MILP solved once with solver callbacks (Serra, Yu, Kumar & Ramalingam, NeurIPS 2021,
Algorithm 1; ``method="callback_milp"``): its stable sets equal those of the per-unit and single-MILP
methods and the exact enumeration reference of ``test_exact_stable.py``, with HiGHS and with SCIP."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from prunelab.analysis.exact import callback_milp, find_stable_neurons
from prunelab.errors import PrunelabError

torch.set_num_threads(1)

# the reference (region enumeration with scipy's LP solver) and the nets live in test_exact_stable.py
_spec = importlib.util.spec_from_file_location("_exact_reference", Path(__file__).with_name("test_exact_stable.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

SOLVERS = [
    "highs",
    pytest.param("scip", marks=pytest.mark.skipif(not callback_milp.scip_available(), reason="pyscipopt not installed")),
]
MILP_ONLY = {"n_samples": 0, "search_steps": 0, "lp": False}  # no sampled witnesses, no search, no LP: the MILP does it


def statuses(result) -> list[list[str]]:
    return [lay.status for lay in result.layers]


def milp_counts(result) -> tuple[int, int]:
    proofs = sum(lay.count("active", "milp") + lay.count("inactive", "milp") for lay in result.layers)
    witnesses = sum(lay.count("unstable", "milp") for lay in result.layers)
    return proofs, witnesses


@pytest.mark.parametrize("solver", SOLVERS)
def test_random_mlps_match_exact_enumeration_and_other_methods(solver):
    proofs = witnesses = lp_points = 0
    for widths, bias_mean, seed in ref.CASES:
        net = ref.gauss_mlp(widths, seed, bias_mean)
        truth = ref.exact_ranges(net)
        per_unit = find_stable_neurons(net, method="per_unit", **MILP_ONLY)
        single = find_stable_neurons(net, method="single_milp", **MILP_ONLY)
        r = find_stable_neurons(net, method="callback_milp", solver=solver, **MILP_ONLY)
        stats = dict(callback_milp.last_stats)
        assert r.complete and r.method == "callback_milp"
        ref.assert_matches_truth(r, truth)
        assert statuses(r) == statuses(per_unit) == statuses(single)
        assert stats["solver"] == solver and stats["candidates"] == r.milp_candidates
        # every unit witnessed unstable by the MILP had at least one direction flipped by a solver point
        assert milp_counts(r)[1] <= stats["incumbent_flips"] + stats["lp_flips"] <= stats["candidates"]
        if solver == "scip":
            assert r.milp_solves == 1  # one solve, no restart: the constraint handler takes the flips out
            lp_points += stats["lp_points"]
        else:
            assert r.milp_solves >= 1
        p, w = milp_counts(r)
        proofs += p
        witnesses += w
        # the full pipeline (search, LP) leaves fewer candidates and still finds the same sets
        full = find_stable_neurons(net, n_samples=0, method="callback_milp", solver=solver)
        assert statuses(full) == statuses(r)
    assert proofs >= 3 and witnesses >= 10  # both MILP outcomes were exercised
    if solver == "scip":
        assert lp_points >= 1  # the node-LP injection ran


@pytest.mark.parametrize("solver", SOLVERS)
def test_trained_l1_mlp_matches_truth_and_other_methods(solver):
    net, x = ref.trained_sparse_mlp()
    truth = ref.exact_ranges(net)
    per_unit = find_stable_neurons(net, data=x, method="per_unit", **MILP_ONLY)
    single = find_stable_neurons(net, data=x, method="single_milp")
    for kwargs in (MILP_ONLY, {}):
        r = find_stable_neurons(net, data=x, method="callback_milp", solver=solver, **kwargs)
        assert r.complete
        ref.assert_matches_truth(r, truth)
        assert statuses(r) == statuses(per_unit) == statuses(single)
    # no data at all: every unit is a candidate in both directions (the paper's "no preprocessing")
    bare = find_stable_neurons(net, method="callback_milp", solver=solver, **MILP_ONLY)
    assert bare.complete
    ref.assert_matches_truth(bare, truth)
    assert statuses(bare) == statuses(per_unit)
    assert bare.milp_candidates > r.milp_candidates
    assert any(h == "milp" for lay in bare.layers for s, h in zip(lay.status, lay.how) if s == "inactive")
    totals = bare.totals()
    assert totals["inactive"] >= 5 and totals["active"] >= 1


@pytest.mark.parametrize("solver", SOLVERS)
def test_time_limit_leaves_units_unresolved_never_claimed(solver):
    net = ref.gauss_mlp([3, 10, 8, 2], 1, -1.5)
    truth = ref.exact_ranges(net)
    r = find_stable_neurons(net, method="callback_milp", solver=solver, time_limit=1e-9, n_samples=0, search_steps=0)
    assert r.milp_solves == 0 and not r.complete
    assert all(h == "time_limit" for lay in r.layers for s, h in zip(lay.status, lay.how) if s == "unresolved")
    assert {h for lay in r.layers for s, h in zip(lay.status, lay.how) if s in ("active", "inactive")} <= {
        "interval",
        "symbolic",
    }
    ref.assert_matches_truth_sound_only(r, truth)


def test_bad_solver_options_raise_prunelab_error(monkeypatch):
    net = ref.random_mlp([3, 4, 2], seed=0)
    with pytest.raises(PrunelabError, match="unknown solver 'gurobi'"):
        find_stable_neurons(net, method="callback_milp", solver="gurobi")
    with pytest.raises(PrunelabError, match="HiGHS only"):
        find_stable_neurons(net, method="per_unit", solver="scip")
    monkeypatch.setattr(callback_milp, "scip_available", lambda: False)
    with pytest.raises(PrunelabError, match="pyscipopt"):
        find_stable_neurons(net, method="callback_milp", solver="scip")
