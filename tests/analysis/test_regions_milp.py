"""Exact region enumeration with a MILP (HiGHS), checked against independent counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from prunelab.analysis.regions import count_box, count_plane, count_regions_milp, interval_bounds
from prunelab.analysis.regions.count_milp import stable_units
from prunelab.analysis.regions.patterns import hidden_affines, pattern_keys, patterns_of
from prunelab.errors import PrunelabError


def mlp(*widths: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def arrangement_regions(w: np.ndarray, c: np.ndarray, lo: float, hi: float) -> int:
    """Lines w_i . x + c_i = 0 in general position cut the box [lo, hi]^2 into
    1 + (lines crossing the box) + (intersection points inside the box) regions."""
    corners = np.array(list(itertools.product([lo, hi], [lo, hi])))
    crossing = sum((corners @ wi + ci).min() < 0 < (corners @ wi + ci).max() for wi, ci in zip(w, c))
    inside = 0
    for i, j in itertools.combinations(range(len(w)), 2):
        p = np.linalg.solve(np.stack([w[i], w[j]]), -np.array([c[i], c[j]]))
        inside += bool(np.all((p > lo) & (p < hi)))
    return 1 + crossing + inside


@pytest.mark.parametrize("seed,box", [(0, 10.0), (1, 1.0), (2, 3.0)])
def test_one_hidden_layer_equals_hyperplane_arrangement(seed, box):
    model = mlp(2, 6, 1, seed=seed)
    w, c = model[0].weight.detach().double().numpy(), model[0].bias.detach().double().numpy()
    res = count_regions_milp(model, lower=-box, upper=box)
    assert res.complete
    assert res.num_regions == arrangement_regions(w, c, -box, box)
    assert res.num_verified == res.num_regions
    assert len(set(pattern_keys(res.patterns).tolist())) == res.num_regions


def test_two_layers_match_polygon_splitting():
    model = mlp(2, 5, 4, 1, seed=3)
    milp = count_regions_milp(model, lower=-2.0, upper=2.0)
    poly = count_box(model, (-2, -2), (2, 2))
    assert milp.complete and milp.num_regions == poly.num_regions
    assert set(pattern_keys(milp.patterns).tolist()) == set(pattern_keys(poly.patterns).tolist())
    assert np.all(np.abs(milp.points) <= 2.0 + 1e-9)


def test_subspace_matches_plane_count():
    model = mlp(4, 6, 5, 2, seed=4)
    g = torch.Generator().manual_seed(0)
    origin, basis = torch.randn(4, generator=g), torch.randn(2, 4, generator=g)
    milp = count_regions_milp(model, origin=origin, basis=basis, lower=0.0, upper=1.0)
    plane = count_plane(model, origin, origin + basis[0], origin + basis[1], domain=[(0, 0), (1, 0), (1, 1), (0, 1)])
    assert milp.complete and milp.num_regions == plane.num_regions


def test_stable_units_and_masks():
    model = mlp(2, 5, 1, seed=5)
    masks = {"0.weight": torch.ones(5, 2, dtype=torch.bool)}
    masks["0.weight"][0] = False  # unit 0 loses all its weights: constant pre-activation, stable
    with torch.no_grad():
        model[0].bias[0] = -0.5
    res = count_regions_milp(model, masks, lower=-4.0, upper=4.0)
    assert res.num_unstable <= 4
    assert res.num_regions == count_box(model, (-4, -4), (4, 4), masks).num_regions
    # a box where interval arithmetic proves every unit stable is one region
    stable = mlp(2, 3, 1)
    with torch.no_grad():
        stable[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        stable[0].bias.zero_()
    far = count_regions_milp(stable, lower=1.0, upper=2.0)
    assert far.complete and far.num_regions == 1 and far.num_unstable == 0


def test_interval_bounds_contain_samples():
    model = mlp(3, 8, 6, 2, seed=6)
    hidden = hidden_affines(model)
    bounds = interval_bounds(hidden, np.full(3, -1.0), np.full(3, 2.0))
    x = np.random.default_rng(0).uniform(-1, 2, size=(5000, 3))
    h = x
    for layer, (L, U) in zip(hidden, bounds):
        z = h @ layer.weight.T + layer.bias
        assert np.all(z >= L - 1e-12) and np.all(z <= U + 1e-12)
        h = np.maximum(z, 0)


def test_limits_give_honest_partial_counts():
    model = mlp(2, 6, 1, seed=0)
    full = count_regions_milp(model, lower=-10.0, upper=10.0)
    part = count_regions_milp(model, lower=-10.0, upper=10.0, max_regions=3)
    assert not part.complete and part.num_regions == 3 < full.num_regions
    assert set(pattern_keys(part.patterns).tolist()) <= set(pattern_keys(full.patterns).tolist())
    quick = count_regions_milp(model, lower=-10.0, upper=10.0, time_limit=1e-9)
    assert not quick.complete and quick.num_regions <= full.num_regions
    assert quick.to_row()["milp_complete"] is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lower": 1.0, "upper": 0.0},
        {"lower": [0.0, 0.0, 0.0]},
        {"time_limit": 0},
        {"max_regions": 0},
        {"tol": 0.0},
        {"basis": np.ones((2, 3))},
        {"origin": np.zeros(2)},
        {"method": "pool"},
    ],
)
def test_bad_input_raises(kwargs):
    with pytest.raises(PrunelabError):
        count_regions_milp(mlp(2, 3, 1), **kwargs)


# --- units whose pre-activation is identically zero (issue 17) --------------------------------------
def mlp_from(*layers: tuple[list, list]) -> nn.Sequential:
    """2-D input MLP with the given hidden (W, b) and a 1-unit linear output."""
    mods: list[nn.Module] = []
    for w, b in layers:
        lin = nn.Linear(len(w[0]), len(w))
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(w, dtype=torch.float32))
            lin.bias.copy_(torch.tensor(b, dtype=torch.float32))
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(len(layers[-1][0]), 1))


def brute_force_regions(model: nn.Module, masks, lo: float, hi: float, margin: float = 1e-7) -> set:
    """Independent count: every on/off pattern of all hidden units, each checked by an LP.

    Under a fixed pattern each pre-activation is affine, g = a.x + c. The pattern is a
    full-dimensional region iff some x of the box has g > 0 for its on units and g < 0 for its off
    units, except off units with g identically 0 (a = 0, c = 0), which need nothing. Maximise the
    margin t of those strict inequalities (scipy's linprog) and keep the pattern if t > margin.
    """
    hidden = hidden_affines(model, masks)
    sizes = [len(l.bias) for l in hidden]
    found = set()
    for bits in itertools.product([False, True], repeat=sum(sizes)):
        on_all = np.array(bits)
        a_rows, c_rows = [], []
        A, c = np.eye(2), np.zeros(2)  # the layer input as an affine map of x
        start, ok = 0, True
        for layer, n in zip(hidden, sizes):
            on = on_all[start : start + n]
            start += n
            ga, gc = layer.weight @ A, layer.weight @ c + layer.bias
            for i in range(n):
                zero = not np.any(ga[i]) and gc[i] == 0.0
                if zero and on[i]:
                    ok = False  # g = 0 cannot be on
                elif not zero:
                    s = 1.0 if on[i] else -1.0
                    a_rows.append(-s * ga[i])  # s (a.x + c) >= t  <=>  -s a.x + t <= s c
                    c_rows.append(s * gc[i])
            A, c = ga * on[:, None], gc * on
        if not ok:
            continue
        a_ub = np.hstack([np.array(a_rows).reshape(-1, 2), np.ones((len(a_rows), 1))])
        res = linprog([0, 0, -1.0], A_ub=a_ub, b_ub=np.array(c_rows), bounds=[(lo, hi), (lo, hi), (None, 10.0)])
        if res.status == 0 and -res.fun > margin:
            found.add(on_all.tobytes())
    return found


def keys_of(patterns: np.ndarray) -> set:
    return {row.tobytes() for row in np.asarray(patterns, dtype=bool)}


@pytest.mark.parametrize("method", ["tree", "nogood"])
def test_dead_units_with_zero_bias_one_layer_equals_arrangement(method):
    # 2-6-1 with two units losing every incoming weight (masks) and their bias exactly 0: g = 0 on
    # the whole box, always off. The regions are those of the 4 remaining lines (hand formula).
    model = mlp(2, 6, 1, seed=7)
    masks = {"0.weight": torch.ones(6, 2, dtype=torch.bool)}
    masks["0.weight"][[1, 4]] = False
    with torch.no_grad():
        model[0].bias[[1, 4]] = 0.0
    w, c = model[0].weight.detach().double().numpy(), model[0].bias.detach().double().numpy()
    keep = [0, 2, 3, 5]
    res = count_regions_milp(model, masks, lower=-3.0, upper=3.0, method=method)
    assert res.complete and res.num_regions == arrangement_regions(w[keep], c[keep], -3.0, 3.0) > 1
    assert not res.patterns[:, [1, 4]].any()  # the dead units are off in every region
    assert res.num_verified == res.num_regions
    assert res.num_regions == count_box(model, (-3, -3), (3, 3), masks).num_regions


ZERO_NET = (
    # layer 1: x0, x1 (zero bias), a dead unit (all zero), two generic units
    ([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.7, -0.4], [-0.3, -0.9]], [0.0, 0.0, 0.0, 0.2, -0.1]),
    # layer 2: u0 + u1 and u0 - 2 u1 + 0.5 dead (zero bias: g = 0 on the quadrant x < 0, y < 0, a
    # full-dimensional region), a unit with no weights and zero bias, two generic units
    (
        [
            [1.0, 1.0, 0.0, 0.0, 0.0],
            [1.0, -1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [1.0, -2.0, 0.5, 0.0, 0.0],
            [0.5, 0.3, 0.0, -1.0, 0.8],
        ],
        [0.0, 0.25, 0.0, 0.0, 0.1],
    ),
)


@pytest.mark.parametrize("method", ["tree", "nogood"])
def test_zero_preactivation_units_match_plane_count_and_brute_force(method):
    model = mlp_from(*ZERO_NET)
    res = count_regions_milp(model, lower=-1.0, upper=1.0, method=method)
    plane = count_box(model, (-1, -1), (1, 1))
    truth = brute_force_regions(model, None, -1.0, 1.0)
    assert res.complete and res.num_verified == res.num_regions
    assert res.num_regions == plane.num_regions == len(truth)
    assert keys_of(res.patterns) == keys_of(plane.patterns) == truth
    # near (-0.6, -0.6), u0 = u1 = 0, so v0 and v3 are identically 0 (off) on a full-dimensional
    # region; units 0-4 are layer 1, 5-9 layer 2: u3 = 0.02, u4 = 0.62, v1 = 0.25, v4 = 0.576 are on
    pattern = patterns_of(hidden_affines(model), np.array([[-0.6, -0.6]]))[0]
    assert np.flatnonzero(pattern).tolist() == [3, 4, 6, 9]
    assert pattern.tobytes() in truth and pattern.tobytes() in keys_of(res.patterns)


@pytest.mark.parametrize("method", ["tree", "nogood"])
def test_pruned_random_net_with_dead_units_matches_brute_force(method):
    # random pruning at init leaves units with no weights; their zero bias never moves
    model = mlp(2, 5, 4, 1, seed=11)
    g = torch.Generator().manual_seed(3)
    masks = {"0.weight": torch.rand(5, 2, generator=g) > 0.3, "2.weight": torch.rand(4, 5, generator=g) > 0.5}
    masks["0.weight"][2] = False
    masks["2.weight"][1] = False
    with torch.no_grad():
        model[0].bias[2] = 0.0
        model[2].bias[[0, 1]] = 0.0
    res = count_regions_milp(model, masks, lower=-2.0, upper=2.0, method=method)
    truth = brute_force_regions(model, masks, -2.0, 2.0)
    assert res.complete and res.num_regions == len(truth) == count_box(model, (-2, -2), (2, 2), masks).num_regions
    assert keys_of(res.patterns) == truth


def test_an_infeasible_model_is_never_a_complete_count_of_zero(monkeypatch):
    # the old rule marked a unit with L = U = 0 both always-on and always-off: an infeasible MILP
    from prunelab.analysis.regions import count_milp

    monkeypatch.setattr(count_milp, "stable_units", lambda L, U: (L >= 0, U <= 0))
    model = mlp_from(*ZERO_NET)
    with pytest.raises(PrunelabError, match="found no region"):
        count_regions_milp(model, lower=-1.0, upper=1.0, method="nogood")
    # the tree then labels the dead units "on": the sample check sees patterns it never listed
    res = count_regions_milp(model, lower=-1.0, upper=1.0, method="tree")
    assert not res.complete and res.sample_missed > 0


def test_stable_units_are_disjoint():
    L = np.array([0.0, 0.0, 0.5, -1.0, -1.0])
    U = np.array([0.0, 1.0, 2.0, 0.0, 1.0])
    on, off = stable_units(L, U)
    assert on.tolist() == [False, False, True, False, False]
    assert off.tolist() == [True, False, False, True, False]


@pytest.mark.parametrize("seed", [0, 1])
def test_tree_and_nogood_enumerate_the_same_regions(seed):
    model = mlp(2, 6, 5, 3, 1, seed=seed)
    tree = count_regions_milp(model, lower=-2.0, upper=2.0, method="tree")
    nogood = count_regions_milp(model, lower=-2.0, upper=2.0, method="nogood")
    poly = count_box(model, (-2, -2), (2, 2))
    assert tree.complete and nogood.complete
    assert keys_of(tree.patterns) == keys_of(nogood.patterns) == keys_of(poly.patterns)
    assert tree.num_verified == tree.num_regions
