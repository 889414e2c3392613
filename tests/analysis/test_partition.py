"""Activation patterns, partition distance and partition pictures (You et al., TMLR 2022)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.analysis.partition import (
    ActivationPatterns,
    ReluInputs,
    activation_patterns,
    partition_distance,
    pattern_distance,
    plane_canvas,
    plot_distance_curve,
    plot_partitions,
    sample_canvas,
)
from prunelab.errors import PrunelabError


def tiny_net(w1: list[list[float]]) -> nn.Sequential:
    """2 -> 2 -> 2 -> 1 ReLU net; only the first layer's weights vary between the two checkpoints."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(w1))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        net[2].bias.copy_(torch.tensor([-1.5, 0.5]))
        net[4].weight.fill_(1.0)
    return net


CANVAS = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])


def test_distance_equals_hand_count_on_tiny_net():
    a = tiny_net([[1.0, 0.0], [0.0, 1.0]])  # layer 1: z = (x1, x2)
    b = tiny_net([[1.0, 0.0], [1.0, 1.0]])  # layer 1: z = (x1, x1 + x2)
    pa, pb = activation_patterns(a, CANVAS), activation_patterns(b, CANVAS)
    # Layer 1 signs, points (1,1) (1,-1) (-1,1) (-1,-1):   A: 11 10 01 00   B: 11 10 00 00  -> 1 of 8
    assert pa.pattern("1").tolist() == [[True, True], [True, False], [False, True], [False, False]]
    assert pb.pattern("1").tolist() == [[True, True], [True, False], [False, False], [False, False]]
    # Layer 2: z = (h1 + h2 - 1.5, h1 - h2 + 0.5) with h_A = relu(x), h_B = (relu(x1), relu(x1 + x2))
    #   A: (.5,.5) (-.5,1.5) (-.5,-.5) (-1.5,.5) -> 11 01 00 01
    #   B: (1.5,-.5) (-.5,1.5) (-1.5,.5) (-1.5,.5) -> 10 01 01 01   -> 2 of 8 differ
    assert pa.pattern("3").tolist() == [[True, True], [False, True], [False, False], [False, True]]
    assert pb.pattern("3").tolist() == [[True, False], [False, True], [False, True], [False, True]]
    d = pattern_distance(pa, pb)
    assert d.per_layer == {"1": 1 / 8, "3": 2 / 8}
    assert d.mean == pytest.approx((1 / 8 + 2 / 8) / 2)
    assert partition_distance(a, b, CANVAS).mean == pytest.approx(0.1875)
    assert d.to_row()["partition_distance"] == pytest.approx(0.1875)


def test_distance_is_zero_for_identical_weights_and_symmetric():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 5), nn.ReLU(), nn.Linear(5, 2))
    twin = copy.deepcopy(net)
    x = torch.randn(7, 3, 6, 6)
    assert partition_distance(net, twin, x).mean == 0.0
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[0].weight.add_(0.5 * torch.randn_like(other[0].weight))
    d1, d2 = partition_distance(net, other, x), partition_distance(other, net, x)
    assert d1.mean > 0 and d1.per_layer == d2.per_layer


def test_patterns_match_brute_force_and_do_not_depend_on_batch_size():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 9), nn.ReLU(),
                        nn.Linear(9, 2))
    x = torch.randn(13, 1, 6, 6)
    whole = activation_patterns(net, x, batch_size=100)
    parts = activation_patterns(net, x, batch_size=4)
    with torch.no_grad():
        z1 = net[0](x)
        z2 = net[3](net[2](torch.relu(z1)))
    assert torch.equal(whole.pattern("1"), z1 > 0)
    assert torch.equal(whole.pattern("4"), z2 > 0)
    assert whole.shapes == {"1": (3, 4, 4), "4": (9,)}
    for s in whole.sites:
        assert np.array_equal(whole.bits[s], parts.bits[s])


class Functional(nn.Module):
    """ReLUs as function calls, twice in one module, one in place (like prunelab's ResNets)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.block = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = F.relu(self.block(h), inplace=True)
        h = h.relu()
        return self.out(h)


def test_records_functional_and_inplace_relus_with_module_names():
    torch.manual_seed(2)
    net = Functional()
    x = torch.randn(5, 3)
    with ReluInputs(net) as rec:
        net(x)
    assert list(rec.values) == ["model", "model:1", "model:2"]
    with torch.no_grad():
        z1 = net.fc1(x)
        z2 = net.block(torch.relu(z1))
    assert torch.allclose(rec.values["model"], z1)
    assert torch.allclose(rec.values["model:1"], z2)  # the in-place ReLU did not overwrite the record
    assert (rec.values["model:1"] < 0).any()
    # outside the context the hooks are gone
    net(x)
    assert len(net._forward_pre_hooks) == 0 and len(net.fc1._forward_hooks) == 0


def test_masks_apply_to_a_copy_and_training_mode_is_restored():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    net.train()
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[:3] = False
    x = torch.randn(20, 4)
    before = net[0].weight.detach().clone()
    p = activation_patterns(net, x, masks={"0.weight": mask})
    assert torch.equal(net[0].weight, before) and net.training
    with torch.no_grad():
        z = x @ (net[0].weight * mask).T + net[0].bias
    assert torch.equal(p.pattern("1"), z > 0)


def test_plane_canvas_and_region_count_of_two_lines():
    plane = plane_canvas(torch.zeros(2), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]),
                         resolution=41, margin=0.5)
    pts = plane.points.reshape(41, 41, 2)  # row = t, column = s
    assert torch.allclose(pts[20, 20], torch.tensor([0.5, 0.5], dtype=pts.dtype))
    assert torch.allclose(pts[0, -1], torch.tensor([1.5, -0.5], dtype=pts.dtype))
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():  # lines x = 0.3 and y = 0.6 cross the domain [-0.5, 1.5]^2: 4 regions
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.copy_(torch.tensor([-0.3, -0.6]))
    ids = activation_patterns(net, plane.points).region_ids()
    assert ids.max() + 1 == 4


def test_pictures_are_written(tmp_path):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 3)
    plane = plane_canvas(x[0], x[1], x[2], resolution=30)
    mask = {"2.weight": torch.rand(8, 8) > 0.7}
    counts = plot_partitions([("dense", net, None), ("pruned", net, mask)], plane, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert counts["dense"] >= 1 and counts["pruned"] >= 1
    out = plot_distance_curve({"partition": ([1, 2, 3, 4], [None, None, 0.3, 0.1])}, tmp_path / "c.png",
                              thresholds={"partition": 0.16}, found={"partition": 4})
    assert out.stat().st_size > 1000


def test_bad_input_is_a_clear_error():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with pytest.raises(PrunelabError, match="canvas"):
        activation_patterns(net, [[0.0, 1.0]])
    with pytest.raises(PrunelabError, match="no ReLU"):
        activation_patterns(nn.Linear(2, 1), torch.zeros(3, 2))
    p = activation_patterns(net, torch.randn(4, 2))
    q = activation_patterns(net, torch.randn(5, 2))
    with pytest.raises(PrunelabError, match="do not match"):
        pattern_distance(p, q)
    with pytest.raises(PrunelabError, match="resolution"):
        plane_canvas(torch.zeros(2), torch.ones(2), torch.ones(2), resolution=1)
    with pytest.raises(PrunelabError, match="unknown ReLU site"):
        p.pattern("nope")
    with pytest.raises(PrunelabError, match="canvas size"):
        sample_canvas(torch.zeros(4, 2), 0)
    assert isinstance(p, ActivationPatterns)
