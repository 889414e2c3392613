"""Stability of ReLUs over a box (Serra et al. 2020/2021): bounds, witnesses, MILPs, checked against an
independent exact enumeration of the network's linear regions with scipy's LP solver."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from prunelab.analysis.affine import mlp_layers
from prunelab.analysis.exact import find_stable_neurons, parse_domain
from prunelab.analysis.exact.bounds import compute_bounds
from prunelab.analysis.exact.domain import make_box
from prunelab.errors import PrunelabError

torch.set_num_threads(1)


def random_mlp(widths: list[int], seed: int, bias_shift: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.bias.add_(bias_shift)
        mods.append(lin)
        if i < len(widths) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def gauss_mlp(widths: list[int], seed: int, bias_mean: float) -> nn.Sequential:
    """Weights N(0, 1) and biases N(bias_mean, 0.25): loose bounds, many units for the MILP."""
    net = random_mlp(widths, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5 + bias_mean)
    return net


def trained_sparse_mlp(seed: int = 3, l1: float = 3e-5, steps: int = 300) -> tuple[nn.Sequential, torch.Tensor]:
    """A tiny MLP trained with Adam and an L1 penalty on synthetic data filling only [0, 0.5]^4 of the
    domain [0, 1]^4 (as MNIST digits fill a thin part of the pixel box)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(512, 4, generator=gen) * 0.5
    y = (x[:, 0] + x[:, 1] > 0.5).long() + (x[:, 2] > 0.3).long()
    net = random_mlp([4, 12, 10, 3], seed)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(net(x), y)
        loss = loss + l1 * sum(m.weight.abs().sum() for m in net if isinstance(m, nn.Linear))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, x


# -- an independent exact reference: enumerate activation regions with LPs ---------------------------
def _lp_max(c: np.ndarray, a_ub: np.ndarray, b_ub: np.ndarray, bounds) -> float | None:
    res = linprog(-c, A_ub=a_ub if len(a_ub) else None, b_ub=b_ub if len(b_ub) else None, bounds=bounds, method="highs")
    return None if res.status != 0 else -res.fun


def exact_ranges(net: nn.Module, low: float = 0.0, high: float = 1.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(sup, inf) of every hidden pre-activation over the box, by depth-first enumeration of the
    activation regions (each a polytope, found with LP feasibility checks)."""
    layers = [(lay.weight.numpy(), lay.bias.numpy()) for lay in mlp_layers(net)][:-1]
    n0 = layers[0][0].shape[1]
    bounds = [(low, high)] * n0
    out = [(np.full(w.shape[0], -np.inf), np.full(w.shape[0], np.inf)) for w, _ in layers]

    def region(k: int, a_ub: np.ndarray, b_ub: np.ndarray, aff_w: np.ndarray, aff_b: np.ndarray) -> None:
        w, b = layers[k]
        gw, gb = w @ aff_w, w @ aff_b + b  # pre-activations of layer k are affine on this region
        sup = np.array([_lp_max(gw[i], a_ub, b_ub, bounds) + gb[i] for i in range(len(gb))])
        inf = np.array([-_lp_max(-gw[i], a_ub, b_ub, bounds) + gb[i] for i in range(len(gb))])
        out[k] = (np.maximum(out[k][0], sup), np.minimum(out[k][1], inf))
        if k == len(layers) - 1:
            return
        split = [i for i in range(len(gb)) if inf[i] < 0 < sup[i]]

        def branch(j: int, a: np.ndarray, c: np.ndarray, on: np.ndarray) -> None:
            if j == len(split):
                region(k + 1, a, c, gw * on[:, None], gb * on)
                return
            i = split[j]
            for active in (True, False):
                sign = -1.0 if active else 1.0  # active: -g <= 0; inactive: g <= 0
                a2 = np.vstack([a, sign * gw[i]]) if len(a) else (sign * gw[i])[None, :]
                c2 = np.append(c, -sign * gb[i])
                if _lp_max(np.zeros(n0), a2, c2, bounds) is not None:
                    on2 = on.copy()
                    on2[i] = 1.0 if active else 0.0
                    branch(j + 1, a2, c2, on2)

        on0 = (inf >= 0).astype(float)
        branch(0, a_ub, b_ub, on0)

    region(0, np.zeros((0, n0)), np.zeros(0), np.eye(n0), np.zeros(n0))
    return out


def assert_matches_truth(result, truth, eps: float = 1e-6, tol: float = 1e-6) -> None:
    for layer, (sup, inf) in zip(result.layers, truth):
        for i, status in enumerate(layer.status):
            if status == "inactive":
                assert sup[i] < eps + tol, (layer.name, i, sup[i])
            elif status == "active":
                assert inf[i] > -eps - tol, (layer.name, i, inf[i])
            elif status == "unstable":
                assert sup[i] > 0 and inf[i] < 0, (layer.name, i, sup[i], inf[i])
            # completeness: without a time limit every unit clearly on one side must be found
            if sup[i] < -tol:
                assert status == "inactive", (layer.name, i, status, sup[i])
            if inf[i] > tol and sup[i] > tol:
                assert status == "active", (layer.name, i, status, inf[i])


# -- bounds ----------------------------------------------------------------------------------------
def test_bounds_contain_sampled_preactivations_and_are_exact_on_first_layer():
    net = random_mlp([5, 12, 10, 8, 3], seed=1)
    layers = mlp_layers(net)
    box = make_box((0.0, 1.0), 5)
    bounds = compute_bounds(layers, box)
    x = box.sample(20000, seed=3)
    h = x
    for layer, b in zip(layers[:-1], bounds):
        g = h @ layer.weight.numpy().T + layer.bias.numpy()
        assert np.all(g >= b.lower[None, :] - 1e-9) and np.all(g <= b.upper[None, :] + 1e-9)
        assert np.all(b.lower >= b.interval_lower - 1e-12) and np.all(b.upper <= b.interval_upper + 1e-12)
        h = np.maximum(g, 0.0)
    w1, b1 = layers[0].weight.numpy(), layers[0].bias.numpy()
    attained = np.einsum("ij,ij->i", bounds[0].upper_corner, w1) + b1
    np.testing.assert_allclose(attained, bounds[0].upper, atol=1e-8)
    # deeper layers: symbolic bounds strictly tighten interval arithmetic somewhere
    assert np.any(bounds[2].upper < bounds[2].interval_upper - 1e-6)


# -- stability against the exact reference ---------------------------------------------------------
CASES = [([3, 8, 8, 2], -1.0, 0), ([3, 8, 8, 2], -1.0, 1), ([3, 10, 8, 2], -1.5, 1), ([2, 6, 6, 5, 2], -1.0, 3)]


def test_random_mlps_match_exact_enumeration():
    proofs = witnesses = found = lp_proofs = 0
    for widths, bias_mean, seed in CASES:
        net = gauss_mlp(widths, seed, bias_mean)
        truth = exact_ranges(net)
        statuses = []
        for method in ("single_milp", "per_unit"):
            # no sampled witnesses and no search: the MILPs must do the work
            r = find_stable_neurons(net, method=method, n_samples=0, search_steps=0, lp=False)
            assert r.complete
            assert_matches_truth(r, truth)
            statuses.append([lay.status for lay in r.layers])
        assert statuses[0] == statuses[1]
        searched = find_stable_neurons(net, n_samples=0)  # gradient search finds the witnesses first
        assert [lay.status for lay in searched.layers] == statuses[0]
        lp_proofs += sum(lay.count(s, "lp") for lay in searched.layers for s in ("active", "inactive"))
        found += sum(lay.count("unstable", "search") for lay in searched.layers)
        proofs += sum(lay.count("inactive", "milp") + lay.count("active", "milp") for lay in r.layers)
        witnesses += sum(lay.count("unstable", "milp") for lay in r.layers)
    assert proofs >= 3 and witnesses >= 10  # both MILP outcomes were exercised
    assert found >= 10 and lp_proofs >= 1


def test_trained_l1_mlp_methods_agree_and_match_truth():
    net, x = trained_sparse_mlp()
    truth = exact_ranges(net)
    single = find_stable_neurons(net, data=x, method="single_milp")
    milp_only = find_stable_neurons(net, data=x, method="single_milp", n_samples=0, search_steps=0, lp=False)
    per_unit = find_stable_neurons(net, data=x, method="per_unit", n_samples=0, search_steps=0, lp=False)
    assert [lay.status for lay in single.layers] == [lay.status for lay in per_unit.layers]
    assert [lay.status for lay in single.layers] == [lay.status for lay in milp_only.layers]
    for r in (single, milp_only, per_unit):
        assert r.complete
        assert_matches_truth(r, truth)
    totals = single.totals()
    assert totals["inactive"] >= 5 and totals["active"] >= 1  # L1 made units stable
    assert any(h == "milp" for lay in milp_only.layers for s, h in zip(lay.status, lay.how) if s == "inactive")
    assert any(h == "lp" for lay in single.layers for s, h in zip(lay.status, lay.how) if s == "inactive")
    # dense sampling agrees with every stability claim
    h = torch.rand(20000, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    for layer, info in zip(mlp_layers(net)[:-1], single.layers):
        g = h @ layer.weight.T + layer.bias
        for i, s in enumerate(info.status):
            if s == "inactive":
                assert g[:, i].max() <= 1e-6
            if s == "active":
                assert g[:, i].min() >= -1e-6
        h = torch.relu(g)


def test_data_witnesses_are_reported():
    net = random_mlp([4, 16, 3], seed=2)
    x = torch.rand(2000, 4, generator=torch.Generator().manual_seed(0))
    r = find_stable_neurons(net, data=x, n_samples=0, search_steps=0)
    assert r.layers[0].count("unstable", "data") >= 1
    # the first layer is linear in x: interval bounds and their corners settle every unit
    assert r.milp_solves == 0 and r.complete
    rows = r.to_rows()
    assert rows[0]["width"] == 16
    assert sum(rows[0][k] for k in ("stably_active", "stably_inactive", "unstable", "unresolved")) == 16


def test_time_limit_leaves_units_unresolved_never_claimed():
    net = gauss_mlp([3, 10, 8, 2], 1, -1.5)
    truth = exact_ranges(net)
    full = find_stable_neurons(net, n_samples=0, search_steps=0, lp=False)
    needs_milp = sum(lay.count(s, "milp") for lay in full.layers for s in ("active", "inactive"))
    assert needs_milp >= 1
    for method in ("single_milp", "per_unit"):
        r = find_stable_neurons(net, n_samples=0, search_steps=0, time_limit=1e-9, method=method)
        assert r.lp_solves == 0 and r.milp_solves == 0
        assert not r.complete
        assert sum(len(lay.unresolved) for lay in r.layers) >= needs_milp
        assert all(h == "time_limit" for lay in r.layers for s, h in zip(lay.status, lay.how) if s == "unresolved")
        proofs = [h for lay in r.layers for s, h in zip(lay.status, lay.how) if s in ("active", "inactive")]
        assert set(proofs) <= {"interval", "symbolic"}
        assert_matches_truth_sound_only(r, truth)


def assert_matches_truth_sound_only(result, truth) -> None:
    for layer, (sup, inf) in zip(result.layers, truth):
        for i, status in enumerate(layer.status):
            if status == "inactive":
                assert sup[i] <= 1e-9
            elif status == "active":
                assert inf[i] >= -1e-9
            elif status == "unstable":
                assert sup[i] > 0 > inf[i]


def test_tensor_domain_per_input():
    net = random_mlp([2, 6, 2], seed=5)
    low = torch.tensor([0.0, 0.5])
    high = torch.tensor([0.1, 0.6])
    r = find_stable_neurons(net, domain=(low, high), n_samples=0, search_steps=0)
    w, b = net[1].weight.detach().double(), net[1].bias.detach().double()
    corners = torch.tensor([[a, c] for a in (0.0, 0.1) for c in (0.5, 0.6)], dtype=torch.float64)
    g = corners @ w.T + b
    for i, s in enumerate(r.layers[0].status):
        expected = "inactive" if g[:, i].max() <= 0 else "active" if g[:, i].min() >= 0 else "unstable"
        assert s == expected


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_inputs_raise_prunelab_error():
    net = random_mlp([3, 4, 2], seed=0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(PrunelabError, match="Conv2d"):
        find_stable_neurons(conv)
    with pytest.raises(PrunelabError, match="lower bound exceeds upper"):
        find_stable_neurons(net, domain=(1.0, 0.0))
    with pytest.raises(PrunelabError, match="entries"):
        find_stable_neurons(net, domain=(torch.zeros(5), torch.ones(5)))
    with pytest.raises(PrunelabError, match="method"):
        find_stable_neurons(net, method="fast")
    with pytest.raises(PrunelabError, match="time_limit"):
        find_stable_neurons(net, time_limit=-1)
    with pytest.raises(PrunelabError, match="outside the domain"):
        find_stable_neurons(net, data=torch.full((4, 3), 2.0))
    with pytest.raises(PrunelabError, match="does not match"):
        find_stable_neurons(net, data=torch.rand(4, 5))
    with pytest.raises(PrunelabError, match="hidden"):
        find_stable_neurons(nn.Sequential(nn.Linear(3, 2)))


def test_parse_domain():
    assert parse_domain("box:0,1") == (0.0, 1.0)
    assert parse_domain("box:-1,2.5") == (-1.0, 2.5)
    for bad in ("0,1", "box:1,0", "box:a,b", "box:0", "ball:0,1"):
        with pytest.raises(PrunelabError):
            parse_domain(bad)
