"""Counting linear regions: exact along a line, exact or grid on a plane, and activation patterns."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from prunelab.analysis.regions import (
    count_box,
    count_line,
    count_patterns,
    count_plane,
    format_summary,
    regions_summary,
)
from prunelab.analysis.regions.count_plane import _signed_area
from prunelab.analysis.regions.patterns import hidden_affines, pattern_keys, patterns_of
from prunelab.errors import PrunelabError


def mlp(*widths: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def torch_patterns(model: nn.Sequential, x: torch.Tensor) -> np.ndarray:
    """Independent pattern computation: forward hooks on the ReLU inputs (float64)."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0] > 0)) for m in model if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model.double()(x.double())
    for h in hooks:
        h.remove()
    model.float()
    return torch.cat(seen, dim=1).numpy()


def sampled_line_regions(model, a, b, n: int) -> tuple[int, np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 1.0, n)
    x = a.double().numpy()[None] + t[:, None] * (b - a).double().numpy()[None]
    keys = pattern_keys(patterns_of(hidden_affines(model), x))
    change = np.nonzero(keys[1:] != keys[:-1])[0]
    return len(change) + 1, t[change], t[change + 1]


def test_line_count_hand_computed():
    # 1-D input, 3 units with kinks at x = 0.2, 0.5, 0.7 (and one unit that never changes on [0, 1])
    model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [-2.0], [1.0], [1.0]]))
        model[0].bias.copy_(torch.tensor([-0.2, 1.0, -0.7, 5.0]))
    res = count_line(model, torch.tensor([0.0]), torch.tensor([1.0]))
    assert res.num_regions == 4
    assert np.allclose(res.breakpoints, [0.2, 0.5, 0.7])
    assert res.to_row()["line_regions"] == 4 and res.length == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_line_count_matches_dense_sampling(seed):
    model = mlp(5, 16, 16, 12, 3, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    a, b = torch.randn(5, generator=g) * 3, torch.randn(5, generator=g) * 3
    res = count_line(model, a, b)
    n_sampled, left, right = sampled_line_regions(model, a, b, 400_001)
    assert res.num_regions == n_sampled
    bp = np.array(res.breakpoints)
    # each exact breakpoint lies between two samples whose patterns differ, and vice versa
    in_bracket = (bp[:, None] >= left[None] - 1e-12) & (bp[:, None] <= right[None] + 1e-12)
    assert in_bracket.any(axis=1).all() and in_bracket.any(axis=0).all()


def test_line_count_respects_masks():
    model = mlp(6, 10, 10, 2, seed=4)
    masks = {"1.weight": torch.rand(10, 6, generator=torch.Generator().manual_seed(0)) > 0.6}
    pruned = mlp(6, 10, 10, 2, seed=4)
    with torch.no_grad():
        pruned[1].weight.mul_(masks["1.weight"])
    a, b = -2 * torch.ones(6), 2 * torch.ones(6)
    a[0] = 3.0
    assert count_line(model, a, b, masks).breakpoints == count_line(pruned, a, b).breakpoints
    assert count_line(model, a, b, masks).num_regions != count_line(model, a, b).num_regions


def arrangement_regions(w: np.ndarray, c: np.ndarray, lo: float, hi: float) -> int:
    """Regions cut from the box [lo, hi]^2 by the lines w_i . x + c_i = 0 in general position:
    1 + (lines crossing the box) + (intersection points inside the box)."""
    corners = np.array(list(itertools.product([lo, hi], [lo, hi])))
    crossing = [(corners @ wi + ci).min() < 0 < (corners @ wi + ci).max() for wi, ci in zip(w, c)]
    inside = 0
    for i, j in itertools.combinations(range(len(w)), 2):
        p = np.linalg.solve(np.stack([w[i], w[j]]), -np.array([c[i], c[j]]))
        inside += bool(np.all((p > lo) & (p < hi)))
    return 1 + sum(crossing) + inside


@pytest.mark.parametrize("seed", [0, 1])
def test_box_count_one_layer_equals_line_arrangement(seed):
    model = mlp(2, 9, 1, seed=seed)
    w, c = model[1].weight.detach().double().numpy(), model[1].bias.detach().double().numpy()
    res = count_box(model, (-1.5, -1.5), (1.5, 1.5))
    assert res.num_regions == arrangement_regions(w, c, -1.5, 1.5)
    assert not res.is_lower_bound


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_count_exact_against_very_dense_grid(seed):
    model = mlp(2, 8, 8, 1, seed=seed)
    exact = count_box(model, (-2, -2), (2, 2))
    grid = count_box(model, (-2, -2), (2, 2), method="grid", grid=1000)
    assert grid.is_lower_bound and not exact.is_lower_bound
    # the cells tile the box and each has the pattern found at its interior points
    assert sum(abs(_signed_area(c)) for c in exact.cells) == pytest.approx(16.0, rel=1e-9)
    h = hidden_affines(model)
    centroids = np.stack([c.mean(axis=0) for c in exact.cells])
    assert np.array_equal(patterns_of(h, centroids), exact.patterns)
    assert len(set(pattern_keys(exact.patterns).tolist())) == exact.num_regions  # one cell per region
    # grid patterns are a subset of the exact ones, and every cell larger than a few grid squares is hit
    s, t = np.meshgrid(np.linspace(-2, 2, 1000), np.linspace(-2, 2, 1000))
    gkeys = set(pattern_keys(patterns_of(h, np.stack([s.ravel(), t.ravel()], 1))).tolist())
    ekeys = pattern_keys(exact.patterns).tolist()
    assert gkeys <= set(ekeys) and len(gkeys) == grid.num_regions
    spacing2 = (4 / 999) ** 2
    for cell, key in zip(exact.cells, ekeys):
        if abs(_signed_area(cell)) > 50 * spacing2:
            assert key in gkeys
    # on these seeds no region is thinner than the grid spacing, so the very dense grid finds them all
    assert grid.num_regions == exact.num_regions


def test_plane_through_three_inputs():
    model = mlp(6, 12, 12, 3, seed=5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, generator=g) * 2
    exact = count_plane(model, x[0], x[1], x[2])
    grid = count_plane(model, x[0], x[1], x[2], method="grid", grid=600)
    assert exact.num_regions >= grid.num_regions > 1
    assert sum(abs(_signed_area(c)) for c in exact.cells) == pytest.approx(0.5, rel=1e-9)
    # the three corners are inputs; their patterns are among the regions found
    corner_keys = pattern_keys(patterns_of(hidden_affines(model), x.double().numpy())).tolist()
    assert set(corner_keys) <= set(pattern_keys(exact.patterns).tolist())
    # a triangle edge is a segment: the regions met by the plane include those met by the edge
    edge = count_line(model, x[0], x[1])
    assert edge.num_regions <= exact.num_regions
    # a bigger domain (the parallelogram) contains the triangle: at least as many regions
    para = count_plane(model, x[0], x[1], x[2], domain=[(0, 0), (1, 0), (1, 1), (0, 1)])
    assert para.num_regions >= exact.num_regions
    # a tiny region limit gives an honest partial count
    part = count_plane(model, x[0], x[1], x[2], max_regions=3)
    assert part.is_lower_bound and 1 <= part.num_regions <= exact.num_regions


def test_count_patterns_against_torch_hooks():
    model = mlp(4, 7, 5, 2, seed=6)
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(2))
    expected = len({tuple(r) for r in torch_patterns(model, x)})
    res = count_patterns(model, x, batch_size=64)
    assert res.num_patterns == expected and res.num_inputs == 500 and res.num_units == 12
    one = count_patterns(model, x[:1].repeat(10, 1))
    assert one.num_patterns == 1


def test_regions_summary_modes_match_direct_calls():
    model = mlp(2, 6, 5, 2, seed=7)
    x = torch.rand(40, 2, generator=torch.Generator().manual_seed(3)) * 4 - 2
    line = regions_summary(model, x, mode="line", samples=4, seed=1)
    rng = np.random.default_rng(1)
    direct = []
    for _ in range(4):
        i, j = rng.choice(40, size=2, replace=False)
        direct.append(count_line(model, x[i], x[j]).num_regions)
    assert line["regions_mean"] == pytest.approx(np.mean(direct)) and line["regions_max"] == max(direct)
    exact = regions_summary(model, x, mode="exact")
    lo, hi = x.min(0).values.tolist(), x.max(0).values.tolist()
    assert exact["milp_regions"] == count_box(model, lo, hi).num_regions and not exact["regions_is_lower_bound"]
    assert regions_summary(model, x, mode="patterns")["pattern_regions"] == count_patterns(model, x).num_patterns
    plane = regions_summary(model, x, mode="plane", samples=2)
    assert plane["regions_min"] >= 1 and plane["regions_is_lower_bound"] is False
    assert "regions_mode: plane" in format_summary(plane)
    with pytest.raises(PrunelabError):
        regions_summary(model, x, mode="volume")
    with pytest.raises(PrunelabError):
        regions_summary(model, x[:2], mode="plane")


@pytest.mark.parametrize(
    "call",
    [
        lambda m: count_line(m, torch.zeros(5), torch.ones(4)),
        lambda m: count_line(m, torch.zeros(4), torch.ones(4), tol=-1.0),
        lambda m: count_plane(m, torch.zeros(4), torch.ones(4), 2 * torch.ones(4)),
        lambda m: count_plane(m, torch.zeros(4), torch.eye(4)[0], torch.eye(4)[1], method="mesh"),
        lambda m: count_plane(m, torch.zeros(4), torch.eye(4)[0], torch.eye(4)[1], domain=[(0, 0), (1, 1)]),
        lambda m: count_box(m),
        lambda m: count_patterns(m, torch.zeros(3, 5)),
        lambda m: count_patterns(nn.Sequential(nn.Conv2d(1, 1, 3)), torch.zeros(1, 1, 4, 4)),
        lambda m: count_patterns(nn.Linear(4, 2), torch.zeros(3, 4)),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(PrunelabError):
        call(mlp(4, 7, 5, 2))
