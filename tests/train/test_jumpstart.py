"""Jumpstart regularisation (Riera et al., CPAIOR 2022) and the dead/linear unit report."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from prunelab.analysis.units import unit_report
from prunelab.errors import PrunelabError
from prunelab.train import TrainConfig, fit
from prunelab.train.jumpstart import (
    Jumpstart,
    constrained_layers,
    jumpstart_penalty,
    jumpstart_slacks,
    model_penalty,
)


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


@pytest.mark.parametrize(("sites", "epochs"), [("relu_inputs", 20), ("layer_outputs", 30)])
def test_dead_network_gets_a_reviving_gradient_and_revives(sites, epochs):
    # the authors' sites also pull on the logits, which slows the revival: 1 unit is still dead at 20
    d = data()
    net = dead_mlp()
    assert unit_report(net, d.x_train).dead == 12
    nn.functional.cross_entropy(net(d.x_train), d.y_train).backward()
    for layer in (net[0], net[2]):  # plain training is stuck: no gradient reaches the hidden layers
        assert torch.all(layer.weight.grad == 0) and torch.all(layer.bias.grad == 0)
    net.zero_grad()
    model_penalty(net, d.x_train, sites=sites).backward()
    assert torch.all(net[0].bias.grad < 0) and torch.all(net[2].bias.grad < 0)  # descent raises the biases

    config = TrainConfig(epochs=epochs, lr=0.05, batch_size=32, device="cpu")
    plain = dead_mlp()
    fit(plain, d, config, progress=False)
    assert unit_report(plain, d.x_train).dead == 12
    revived = dead_mlp()
    res = fit(revived, d, config, callbacks=[Jumpstart(1.0, sites=sites)], progress=False)
    report = unit_report(revived, d.x_train)
    assert report.dead == 0 and report.dead_layers == 0
    assert res.history[-1]["jumpstart_penalty"] < res.history[0]["jumpstart_penalty"]


def test_callback_leaves_no_hooks_and_skips_evaluation():
    d = data()
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 2))
    for cb in (Jumpstart(0.1, aggregate="mean", layers=["1"], sites="relu_inputs"),
               Jumpstart(0.1, aggregate="mean", layers=["0", "2"])):  # in-place ReLU after layer "0"
        res = fit(net, d, TrainConfig(epochs=2, lr=0.05, batch_size=16, device="cpu"), callbacks=[cb],
                  progress=False)
        assert [r["jumpstart_penalty"] > 0 for r in res.history] == [True, True]
        assert all(len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in net.modules())
    small = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    for sites, what in (("relu_inputs", "ReLU"), ("layer_outputs", "layer")):
        bad = Jumpstart(0.1, layers=["nope"], sites=sites)
        with pytest.raises(PrunelabError, match=f"unknown {what} site"):
            fit(small, d, TrainConfig(epochs=1, batch_size=16, device="cpu"), callbacks=[bad], progress=False)


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
    with pytest.raises(PrunelabError, match="sites"):
        Jumpstart(0.1, sites="relu_outputs")
    with pytest.raises(PrunelabError, match="no ReLU"):
        model_penalty(nn.Sequential(nn.Linear(2, 2)), torch.zeros(3, 2), sites="relu_inputs")


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


# --- which tensors are constrained: the authors' definition ------------------------------------------
def value(net: nn.Module, x: torch.Tensor, **kw) -> float:
    return float(model_penalty(net, x, **kw).detach())


def hand_mlp() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 2.0]]))
        net[2].bias.fill_(-0.5)
    return net


def test_layer_outputs_penalty_includes_the_logits_by_hand():
    net, x = hand_mlp(), torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    # layer 0 outputs: (1, 0), (0, .5), (-1, -.5).  units: [max 1 min -1 -> 0, max .5 min -.5 -> .25 + .25]
    # points: (1, 0) -> 0 + .5 * 1;  (0, .5) -> .5 * .5 + .5 * 1;  (-1, -.5) -> .5 * 1.5 + 0
    first = [0.0, 0.5, 0.5, 0.75, 0.75]
    # logits: relu -> (1, 0), (0, .5), (0, 0); times (1, 2), minus .5 -> .5, .5, -.5
    # unit: max .5, min -.5 -> .5;  each point has one value v in [-1, 1]: .5 (1 - v) + .5 (1 + v) = 1
    logits = [0.5, 1.0, 1.0, 1.0]
    assert constrained_layers(net) == ["0", "2"]
    assert value(net, x) == pytest.approx(math.sqrt(sum(v * v for v in first + logits)))
    assert value(net, x) == pytest.approx(math.sqrt(4.875))
    assert value(net, x, aggregate="mean") == pytest.approx(6.0 / 9)
    assert value(net, x, sites="relu_inputs") == pytest.approx(math.sqrt(1.625))
    assert value(net, x, layers=["2"]) == pytest.approx(math.sqrt(3.25))


def authors_penalty(model: nn.Module, x: torch.Tensor, balance: float = 0.5) -> torch.Tensor:
    """Independent re-implementation of the authors' JumpstartRegularization (CPAIOR 2022 code:
    hooks on every module with a weight that is not BatchNorm, compute_maxmin_preact_single,
    balance * relu(1 - max) + (1 - balance) * relu(1 + min), aggr='norm')."""
    losses = {}

    def maxmin_single(out, ax):
        x_max, x_min = out.max(dim=ax)[0], out.min(dim=ax)[0]
        return x_max.view(x_max.shape[0], -1).max(dim=1)[0], x_min.view(x_min.shape[0], -1).min(dim=1)[0]

    def hook(module, inp, out):
        for ax in (0, 1):
            mx, mn = maxmin_single(out, ax)
            losses[(module, ax)] = balance * torch.relu(1 - mx) + (1 - balance) * torch.relu(1 + mn)

    handles = [m.register_forward_hook(hook) for _, m in model.named_modules()
               if hasattr(m, "weight") and not isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return torch.norm(torch.cat(list(losses.values())))


def conv_bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    with torch.no_grad():
        for i in (0, 3):
            net[i].weight.mul_(0.1)  # conv outputs well inside (-1, 1): their slacks are large
    return net.train()


@pytest.mark.parametrize("make", ["mlp", "conv_bn"])
def test_penalty_and_gradient_equal_the_authors_rule(make):
    torch.manual_seed(3)
    if make == "mlp":
        net, x = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)), torch.randn(7, 5)
    else:
        net, x = conv_bn_net(), torch.randn(6, 3, 8, 8)
    ours = model_penalty(net, x)
    ours_grads = torch.autograd.grad(ours, list(net.parameters()), allow_unused=True)
    ref = authors_penalty(net, x)
    ref_grads = torch.autograd.grad(ref, list(net.parameters()), allow_unused=True)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6) and float(ref.detach()) > 0
    for a, b in zip(ours_grads, ref_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_penalty_is_nonzero_on_a_batchnorm_net_in_train_mode():
    net, x = conv_bn_net(), torch.randn(16, 3, 8, 8)
    # relu_inputs reads the train-mode BatchNorm outputs: standardised per channel, max >= 1 and
    # min <= -1 for every channel and point, so that variant is exactly 0 and passes no gradient
    assert value(net, x, sites="relu_inputs") == 0.0
    convs = model_penalty(net, x, layers=["0", "3"])  # conv outputs before BatchNorm
    assert float(convs.detach()) > 0
    convs.backward()
    assert net[0].weight.grad.abs().sum() > 0 and net[3].weight.grad.abs().sum() > 0
    assert value(net, x) > float(convs.detach())  # the logits add their own slacks


def test_callback_on_batchnorm_net_changes_training():
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 3, (32,))
    d = Data(x, y, x[:8], y[:8])
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=16, device="cpu")
    runs = {}
    for name, cbs in (("plain", []), ("relu_inputs", [Jumpstart(1.0, sites="relu_inputs")]),
                      ("layer_outputs", [Jumpstart(1.0)])):
        net = conv_bn_net()
        res = fit(net, d, cfg, callbacks=cbs, progress=False)
        runs[name] = (net, res)
    plain, relu, outs = (runs[k][0] for k in ("plain", "relu_inputs", "layer_outputs"))
    assert runs["relu_inputs"][1].history[0]["jumpstart_penalty"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), relu.parameters()))  # no effect
    assert runs["layer_outputs"][1].history[0]["jumpstart_penalty"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), outs.parameters()))
