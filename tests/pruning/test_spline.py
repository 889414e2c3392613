"""Spline node pruning (You et al., TMLR 2022): hyperplane redundancy by greedy peeling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunelab.analysis.partition import activation_patterns, plane_canvas
from prunelab.errors import PrunelabError
from prunelab.pruning.spline import (
    default_layers,
    peeling_scores,
    prune_units,
    spline_prune,
    spline_scores,
    unit_hyperplanes,
)
from prunelab.pruning.structured import STRUCTURED, channel_groups


def brute_force_peeling(v: torch.Tensor) -> list[float]:
    """Independent slow version: remove, one at a time, the unit nearest (sign-invariant) to another."""
    rows = [v[i].double() / v[i].double().norm() for i in range(v.shape[0])]
    alive = list(range(len(rows)))
    scores = [0.0] * len(rows)

    def d(i: int, j: int) -> float:
        return min(float((rows[i] - rows[j]).norm()), float((rows[i] + rows[j]).norm()))

    while len(alive) > 1:
        best, best_d = None, math.inf
        for i in alive:
            nearest = min(d(i, j) for j in alive if j != i)
            if nearest < best_d - 1e-12:
                best, best_d = i, nearest
        scores[best] = best_d
        alive.remove(best)
    scores[alive[0]] = math.inf
    return scores


def mlp_with_duplicate(scale: float) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        net[0].weight[4] = scale * net[0].weight[1]
        net[0].bias[4] = scale * net[0].bias[1]
    return net


@pytest.mark.parametrize("scale", [1.0, 2.5, -1.0])
def test_duplicate_neuron_is_most_redundant(scale):
    net = mlp_with_duplicate(scale)
    groups = channel_groups(net, ["0"])
    scores = STRUCTURED.get("spline")(net, groups, {}, None)["0"]
    order = torch.argsort(scores)
    assert int(order[0]) in (1, 4)
    assert scores[order[0]] == pytest.approx(0.0, abs=1e-6)
    assert scores[1 if int(order[0]) == 4 else 4] > 1e-3  # its twin is not redundant any more
    masks, units = spline_prune(net, 1 / 6)
    assert units["0"].tolist() == [True, False, True, True, True, True]  # tie -> lower index goes first


def test_peeling_matches_brute_force():
    torch.manual_seed(1)
    v = torch.randn(9, 4)
    v[6] = -3 * v[2] + 1e-3 * torch.randn(4)  # a near-duplicate pair
    fast = peeling_scores(v)
    slow = brute_force_peeling(v)
    for a, b in zip(fast.tolist(), slow):
        assert a == pytest.approx(b, abs=1e-9) or (math.isinf(a) and math.isinf(b))
    s = sorted(fast.tolist())
    assert s == sorted(s) and math.isinf(s[-1])


def test_peeling_ignores_pruned_and_flat_units():
    v = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.1, 0.0]])
    alive = torch.tensor([True, True, True, False])
    s = peeling_scores(v, alive)
    assert s[3] == 0 and s[2] == 0  # pruned; a constant unit (w = 0, b = 3) has no hyperplane
    assert s[0] == pytest.approx(math.sqrt(2)) and math.isinf(s[1])


def test_batchnorm_is_folded_into_the_hyperplane():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        net[1].running_mean.copy_(torch.randn(5))
        net[1].running_var.copy_(torch.rand(5) + 0.5)
        net[1].weight.copy_(torch.randn(5))
        net[1].bias.copy_(torch.randn(5))
    net.eval()
    group = channel_groups(net)["0"]
    assert group.bn == "1"
    h = unit_hyperplanes(net, group)
    x = torch.randn(10, 4)
    with torch.no_grad():
        expected = net[1](net[0](x)).double()
    assert torch.allclose(x.double() @ h[:, :4].T + h[:, 4], expected, atol=1e-5)


def test_prune_units_layerwise_and_global_by_hand():
    inf = math.inf
    scores = {"a": torch.tensor([0.1, 0.5, inf]), "b": torch.tensor([0.2, 0.3, 0.4, inf])}
    lw = prune_units(scores, 0.5, "layerwise")
    assert lw["a"].tolist() == [False, True, True]  # keeps ceil(1.5) = 2
    assert lw["b"].tolist() == [False, False, True, True]  # keeps 2
    gl = prune_units(scores, 0.5, "global")  # 7 units keep ceil(3.5) = 4: drop 0.1, 0.2, 0.3
    assert gl["a"].tolist() == [False, True, True]
    assert gl["b"].tolist() == [False, False, True, True]
    already = {"b": torch.tensor([True, True, False, True])}  # unit b2 is gone and stays gone
    lw2 = prune_units(scores, 0.5, "layerwise", already)
    assert lw2["b"].tolist() == [False, True, False, True]
    finite = {"a": torch.tensor([0.1, 0.2]), "b": torch.tensor([5.0, 6.0])}
    assert [m.tolist() for m in prune_units(finite, 0.5, "global").values()] == [[False, True], [False, True]]
    emptied = prune_units(finite, 0.5, "global", min_units=0)  # plain global order may empty a layer
    assert [m.tolist() for m in emptied.values()] == [[False, False], [True, True]]
    with pytest.raises(PrunelabError, match="at most"):
        prune_units(scores, 0.9, "global")
    with pytest.raises(PrunelabError, match="scope"):
        prune_units(scores, 0.5, "per_layer")
    with pytest.raises(PrunelabError, match="fraction"):
        prune_units(scores, 1.0)


def test_spline_prune_masks_rows_biases_and_keeps_the_classifier():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    assert default_layers(net) == ["1", "3"]
    masks, units = spline_prune(net, 0.5, "layerwise")
    assert set(units) == {"1", "3"} and int(units["1"].sum()) == 5 and int(units["3"].sum()) == 4
    assert "5.weight" not in masks
    assert torch.equal(masks["1.weight"], units["1"].unsqueeze(1).expand(10, 6))
    assert torch.equal(masks["1.bias"], units["1"])
    masks.apply(net)
    with torch.no_grad():
        h = net[1](torch.randn(4, 6))
    assert torch.all(h[:, ~units["1"]] == 0)
    g_masks, g_units = spline_prune(net, 0.5, "global", unit_masks=units)
    assert sum(int(u.sum()) for u in g_units.values()) == 9  # 18 units keep 9; pruned ones stay pruned
    assert all(bool((~units[k] <= ~g_units[k]).all()) for k in units)


def test_removing_a_duplicate_keeps_the_partition():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))
    with torch.no_grad():
        net[0].weight[3] = 2 * net[0].weight[0]
        net[0].bias[3] = 2 * net[0].bias[0]
    plane = plane_canvas(torch.zeros(2), torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0]), resolution=60,
                         margin=1.0)
    before = activation_patterns(net, plane.points).region_ids().max() + 1
    masks, units = spline_prune(net, 0.2)
    assert not units["0"][0] and units["0"][3]
    after = activation_patterns(net, plane.points, masks=masks).region_ids().max() + 1
    assert after == before


def test_spline_scores_validate_unit_masks():
    net = mlp_with_duplicate(1.0)
    groups = channel_groups(net, ["0"])
    with pytest.raises(PrunelabError):
        spline_scores(net, groups, {"0": torch.ones(3, dtype=torch.bool)})
    other = {"2": torch.ones(3, dtype=torch.bool)}  # masks of layers not scored are fine (as stability passes them)
    assert set(spline_scores(net, groups, other)) == {"0"}
    with pytest.raises(PrunelabError):
        default_layers(nn.Sequential(nn.Linear(3, 2)))
