"""The ``lr_bound`` allocation (Cai et al., CPAIOR 2023): densities maximising the region bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import prunelab.pruning.lr_bound  # noqa: F401 - registers the allocation
from prunelab.analysis.regions import expected_bound
from prunelab.errors import PrunelabError
from prunelab.pruning import ALLOCATIONS, ScoreContext
from prunelab.pruning.lr_bound import lr_bound_densities, lr_bound_search


def kept(widths, dens, layers):
    return sum(dens[i] * widths[i] * widths[i + 1] for i in layers)


def bound(widths, dens):
    return expected_bound(widths[0], widths[1:-1], dens[:-1]).log2


@pytest.mark.parametrize("density", [0.01, 0.005, 0.001, 0.0001])
def test_two_layers_hit_density_and_beat_uniform(density):
    widths = [784, 100, 100, 10]
    res = lr_bound_search(widths, density)
    d = list(res.densities)
    assert d[2] == 1.0  # the output layer is not pruned by default
    assert kept(widths, d, [0, 1]) == pytest.approx(density * (78400 + 10000), rel=1e-9)
    assert all(0 <= p <= 1 for p in d)
    uniform = bound(widths, [density, density, 1.0])
    assert res.log2_uniform == pytest.approx(uniform, abs=1e-9)
    assert res.log2_bound == pytest.approx(bound(widths, d), abs=1e-9)
    assert res.log2_bound >= uniform - 1e-12
    assert d[0] <= density <= d[1]  # the larger (first) layer is pruned more
    assert lr_bound_densities(widths, density) == d


def test_strict_gain_at_high_sparsity():
    res = lr_bound_search([784, 100, 100, 10], 0.005)
    assert res.how == "quadratic"
    assert res.log2_bound > res.log2_uniform + 1.0


def test_grid_fallback_is_best_of_30_points():
    # here the quadratic's stationary point would prune the smaller layer more, so it is rejected
    widths = [20, 40, 10, 3]
    res = lr_bound_search(widths, 0.05)
    assert res.how == "grid"
    budget = 0.05 * (800 + 400)
    grid = [bound(widths, [p, (budget - 800 * p) / 400, 1.0]) for p in np.linspace(0.0, budget / 800, 30)]
    assert res.log2_bound == pytest.approx(max(grid), abs=1e-9)
    assert res.log2_bound > res.log2_uniform
    # a saturated bound (every density gives the maximum) stays uniform instead of chasing float noise
    flat = lr_bound_search([784, 400, 400, 10], 0.05)
    assert flat.how == "uniform" and flat.densities[:2] == (0.05, 0.05)


def test_coordinate_search_for_three_layers():
    widths = [784, 100, 100, 100, 10]
    res = lr_bound_search(widths, 0.005)
    assert res.how == "coordinate"
    assert kept(widths, res.densities, [0, 1, 2]) == pytest.approx(0.005 * (78400 + 20000), rel=1e-9)
    assert res.log2_bound >= res.log2_uniform


def test_output_layer_pruned_keeps_overall_density():
    widths = [784, 100, 100, 10]
    d = lr_bound_densities(widths, 0.01, pruned_layers=[0, 1, 2])
    assert d[2] == pytest.approx(0.01)
    assert kept(widths, d, [0, 1, 2]) == pytest.approx(0.01 * (78400 + 10000 + 1000), rel=1e-9)


def test_max_densities_are_respected():
    widths = [784, 100, 100, 10]
    d = lr_bound_densities(widths, 0.01, max_densities=[0.02, 0.03, 1.0])
    assert d[1] <= 0.03 + 1e-12 and d[0] <= 0.02 + 1e-12
    assert kept(widths, d, [0, 1]) == pytest.approx(0.01 * 88400, rel=1e-9)


def magnitude(masks_model):
    return {f"{i}.weight": m.weight.detach().abs() for i, m in masks_model if isinstance(m, nn.Linear)}


def small_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def test_allocation_via_registry_with_output_masked():
    model = small_mlp()
    scores = {"0.weight": model[0].weight.abs(), "2.weight": model[2].weight.abs(), "4.weight": model[4].weight.abs()}
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in scores.items()}
    total = sum(m.numel() for m in masks.values())
    out = ALLOCATIONS.get("lr_bound")(scores, masks, 0.97, ScoreContext())
    assert sum(int(m.sum()) for m in out.values()) == total - round(0.97 * total)
    dens = lr_bound_densities([64, 32, 32, 10], (total - round(0.97 * total)) / total, pruned_layers=[0, 1, 2])
    for (name, m), p in zip(out.items(), dens):
        assert abs(int(m.sum()) - p * m.numel()) <= 1.0
        kept_scores, pruned_scores = scores[name][m], scores[name][~m]
        assert kept_scores.min() >= pruned_scores.max()  # top scores kept inside each layer


def test_allocation_with_dense_output_and_existing_masks():
    model = small_mlp()
    scores = {"0.weight": model[0].weight.abs(), "2.weight": model[2].weight.abs()}
    masks = {k: torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) > 0.3 for k, v in scores.items()}
    ctx = ScoreContext(options={"widths": [64, 32, 32, 10]})
    out = ALLOCATIONS.get("lr_bound")(scores, masks, 0.95, ctx)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in out.values()) == total - round(0.95 * total)
    for k in masks:
        assert not bool((out[k] & ~masks[k]).any())  # pruned weights stay pruned
    assert out["0.weight"].float().mean() < out["2.weight"].float().mean()


def test_prune_api_end_to_end():
    import prunelab

    model = small_mlp()
    masks = prunelab.prune(model, 0.98, "magnitude", "lr_bound", exclude=("4*",), options={"widths": [64, 32, 32, 10]})
    assert set(masks) == {"0.weight", "2.weight"}
    assert masks.sparsity() == pytest.approx(0.98, abs=1 / masks.num_total())


@pytest.mark.parametrize(
    "call",
    [
        lambda: lr_bound_densities([784, 10], 0.1),
        lambda: lr_bound_densities([784, 100, 10], 1.5),
        lambda: lr_bound_densities([784, 100, 10], 0.1, pruned_layers=[5]),
        lambda: lr_bound_densities([784, 100, 10], 0.1, rank="exact"),
        lambda: lr_bound_densities([784, 100, 100, 10], 0.5, max_densities=[0.1, 0.1, 1.0]),
        lambda: ALLOCATIONS.get("lr_bound")(
            {"a": torch.ones(4, 3, 3, 3)}, {"a": torch.ones(4, 3, 3, 3, dtype=torch.bool)}, 0.5, ScoreContext()
        ),
        lambda: ALLOCATIONS.get("lr_bound")(
            {"a": torch.ones(4, 3), "b": torch.ones(4, 5)},
            {"a": torch.ones(4, 3, dtype=torch.bool), "b": torch.ones(4, 5, dtype=torch.bool)},
            0.5,
            ScoreContext(),
        ),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(PrunelabError):
        call()
