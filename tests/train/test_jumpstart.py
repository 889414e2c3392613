"""Jumpstart regularisation (Riera et al., CPAIOR 2022) and the dead/linear unit report."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from prunelab.analysis.partition import ReluInputs
from prunelab.analysis.units import unit_report
from prunelab.errors import PrunelabError
from prunelab.train import TrainConfig, fit
from prunelab.train.jumpstart import Jumpstart, jumpstart_penalty, jumpstart_slacks


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def data(n: int = 64, dim: int = 4, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = (x[:, 0] > 0).long()
    return Data(x, y, x[:16], y[:16])


def test_slacks_and_penalty_equal_hand_calculation():
    z = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-3.0, 0.2]])
    units, points = jumpstart_slacks(z, rho=0.5)
    # unit 0: max 2, min -3 -> 0;  unit 1: max .5, min -1 -> .5 * .5 + .5 * 0 = .25
    assert units.tolist() == pytest.approx([0.0, 0.25])
    # point 0: max 2, min -1 -> 0;  point 1: max .5, min .5 -> .5*.5 + .5*1.5 = 1;  point 2: .5*.8 + 0 = .4
    assert points.tolist() == pytest.approx([0.0, 1.0, 0.4])
    assert float(jumpstart_penalty({"a": z})) == pytest.approx(math.sqrt(0.25**2 + 1.0 + 0.4**2))
    assert float(jumpstart_penalty([z], aggregate="mean")) == pytest.approx((0.25 + 1.0 + 0.4) / 5)
    u3, p3 = jumpstart_slacks(z, rho=0.3)  # unit 1: .3 * .5 + .7 * 0; point 1: .3 * .5 + .7 * 1.5
    assert u3.tolist() == pytest.approx([0.0, 0.15]) and p3[1].item() == pytest.approx(1.2)


def test_conv_slacks_run_over_positions():
    z = torch.tensor([[[[0.5], [-0.2]]], [[[0.3], [0.1]]]])  # (points 2, channels 1, H 2, W 1)
    units, points = jumpstart_slacks(z)
    assert units.tolist() == pytest.approx([0.5 * 0.5 + 0.5 * 0.8])  # max .5, min -.2 over points+positions
    assert points.tolist() == pytest.approx([0.65, 0.5 * 0.7 + 0.5 * 1.1])
    two_layers = jumpstart_penalty({"c": z, "l": torch.tensor([[2.0, -2.0]])}, aggregate="mean")
    # one point in "l": each unit is constant (2: .5 * relu(1 + 2); -2: .5 * relu(1 + 2)), the point is fine
    assert float(two_layers) == pytest.approx((0.65 + 0.65 + 0.9 + 1.5 + 1.5 + 0) / 6)


def dead_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        net[0].bias.fill_(-5.0)  # every hidden unit is inactive on every input
        net[2].bias.fill_(-5.0)
    return net


def test_dead_network_gets_a_reviving_gradient_and_revives():
    d = data()
    net = dead_mlp()
    assert unit_report(net, d.x_train).dead == 12
    nn.functional.cross_entropy(net(d.x_train), d.y_train).backward()
    for layer in (net[0], net[2]):  # plain training is stuck: no gradient reaches the hidden layers
        assert torch.all(layer.weight.grad == 0) and torch.all(layer.bias.grad == 0)
    net.zero_grad()
    with ReluInputs(net, detach=False) as rec:
        net(d.x_train)
    jumpstart_penalty(rec.values).backward()
    assert torch.all(net[0].bias.grad < 0) and torch.all(net[2].bias.grad < 0)  # descent raises the biases

    config = TrainConfig(epochs=20, lr=0.05, batch_size=32, device="cpu")
    plain = dead_mlp()
    fit(plain, d, config, progress=False)
    assert unit_report(plain, d.x_train).dead == 12
    revived = dead_mlp()
    res = fit(revived, d, config, callbacks=[Jumpstart(1.0)], progress=False)
    report = unit_report(revived, d.x_train)
    assert report.dead == 0 and report.dead_layers == 0
    assert res.history[-1]["jumpstart_penalty"] < res.history[0]["jumpstart_penalty"]


def test_callback_leaves_no_hooks_and_skips_evaluation():
    d = data()
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 2))
    cb = Jumpstart(0.1, aggregate="mean", layers=["1"])
    res = fit(net, d, TrainConfig(epochs=2, lr=0.05, batch_size=16, device="cpu"), callbacks=[cb],
              progress=False)
    assert [r["jumpstart_penalty"] >= 0 for r in res.history] == [True, True]
    assert all(len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in net.modules())
    bad = Jumpstart(0.1, layers=["nope"])
    with pytest.raises(PrunelabError, match="unknown ReLU site"):
        fit(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), d,
            TrainConfig(epochs=1, batch_size=16, device="cpu"), callbacks=[bad], progress=False)


def test_unit_report_by_hand():
    net = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0], [0.0], [0.0]]))
        net[0].bias.copy_(torch.tensor([0.0, 0.0, 1.0, -1.0]))  # unit 2 always on, unit 3 always off
        net[2].weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
        net[2].bias.zero_()  # layer 2 = (relu(x), relu(x)): x=-1 -> no unit on; x=2 -> all on
    x = torch.tensor([[-1.0], [1.0], [2.0]])
    r = unit_report(net, x)
    first, second = r.layers
    assert (first.site, first.units, first.dead, first.linear) == ("1", 4, 1, 1)
    assert (first.dead_points, first.linear_points) == (0, 0)
    assert (second.site, second.dead, second.linear, second.dead_points, second.linear_points) == ("3", 0, 0, 1, 2)
    assert r.to_row()["dead_per_layer"] == "1;0" and r.units == 6


def test_bad_settings_are_clear_errors():
    with pytest.raises(PrunelabError, match="strength"):
        Jumpstart(-1.0)
    with pytest.raises(PrunelabError, match="rho"):
        Jumpstart(0.1, rho=1.5)
    with pytest.raises(PrunelabError, match="aggregate"):
        jumpstart_penalty([torch.zeros(2, 2)], aggregate="sum")
    with pytest.raises(PrunelabError, match="pre-activations"):
        jumpstart_slacks(torch.zeros(3))


def test_trainconfig_jumpstart_option_adds_the_penalty():
    """``TrainConfig(jumpstart=...)`` is the same as passing the Jumpstart callback by hand."""
    from prunelab.train import TrainConfig, fit
    from prunelab.train.jumpstart import Jumpstart

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    data = type("D", (), {"x_train": x, "y_train": y, "x_test": x, "y_test": y})()

    def run(cfg_kw, callbacks=()):
        torch.manual_seed(1)
        net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        fit(net, data, TrainConfig(epochs=2, batch_size=16, **cfg_kw), callbacks=list(callbacks), progress=False)
        return net

    by_option = run({"jumpstart": 0.5})
    by_hand = run({}, [Jumpstart(0.5)])
    plain = run({})
    for a, b, c in zip(by_option.parameters(), by_hand.parameters(), plain.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(by_option.parameters(), plain.parameters()))
