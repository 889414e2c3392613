"""Structured pruning: channel groups by tracing, exact zeroing of pruned channels (BatchNorm and
residual additions included), unit scores (E[BN] against Monte Carlo), targets and the linear ramp."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models import create
from prunelab.pruning.context import ScoreContext
from prunelab.pruning.enforce import MaskEnforcer
from prunelab.pruning.structured import (
    STRUCTURED,
    ChannelGroup,
    apply_unit_masks,
    channel_groups,
    expand_unit_masks,
    expected_bn_relu,
    kept_units,
    select_units,
    weight_masks,
)

torch.set_num_threads(1)


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(5 * 4 * 4, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3),
    )


def randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def capture(model: nn.Module, names: list[str]) -> tuple[dict[str, torch.Tensor], list]:
    out: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: out.__setitem__(n, o.detach().clone())) for n in names]
    return out, handles


def test_channel_groups_of_a_sequential_cnn():
    groups = channel_groups(small_cnn())
    assert list(groups) == ["0", "3", "6", "9"]
    assert groups["0"] == ChannelGroup("0", 6, ("0.weight", "0.bias", "1.weight", "1.bias"), "1", ())
    assert groups["3"].bn is None and groups["3"].params == ("3.weight", "3.bias")
    assert groups["6"].bn == "7" and groups["6"].num_units == 7
    assert groups["9"].bn is None


def test_channel_groups_find_resnet_shortcuts():
    model = create("resnet20", input_shape=(3, 8, 8))
    groups = channel_groups(model)
    assert groups["layer1.0.conv2"].bn == "layer1.0.bn2"
    assert groups["layer1.0.conv2"].residual == ("layer1.0.shortcut",)
    assert groups["layer1.0.conv1"].residual == ()
    assert groups["layer2.0.conv2"].residual == ("layer2.0.shortcut",)  # option A: parameter-free leaf
    model_b = create("resnet20", input_shape=(3, 8, 8), shortcut="B")
    groups_b = channel_groups(model_b)
    assert groups_b["layer2.0.conv2"].residual == ("layer2.0.shortcut.1",)
    assert groups_b["layer2.0.shortcut.0"].bn == "layer2.0.shortcut.1"
    assert groups_b["layer2.0.shortcut.0"].residual == ("layer2.0.bn2",)


@pytest.mark.parametrize("train_mode", [False, True])
def test_pruned_channels_output_exactly_zero_with_batchnorm(train_mode):
    model = small_cnn()
    randomise_bn(model)
    model.train(train_mode)
    unit = {"0": torch.tensor([True, False, True, True, False, True]),
            "6": torch.tensor([False, True, True, True, True, True, False])}
    masks, gates = apply_unit_masks(model, unit)
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    seen, handles = capture(model, ["1", "2", "7"])
    model(x)
    for h in handles:
        h.remove()
    assert torch.all(seen["1"][:, [1, 4]] == 0) and torch.all(seen["2"][:, [1, 4]] == 0)
    assert torch.all(seen["7"][:, [0, 6]] == 0)
    assert seen["1"][:, [0, 2]].abs().sum() > 0  # kept channels are not zero
    assert set(masks) == {"0.weight", "0.bias", "1.weight", "1.bias", "6.weight", "6.bias", "7.weight", "7.bias"}
    gates.remove()


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("layer", ["layer1.1.conv2", "layer2.0.conv2"])
def test_pruned_resnet_block_output_is_zero_including_residual(shortcut, layer):
    torch.manual_seed(0)
    model = create("resnet20", input_shape=(3, 8, 8), shortcut=shortcut)
    randomise_bn(model)
    block = layer.rsplit(".", 1)[0]
    n = model.get_submodule(layer).out_channels
    keep = torch.ones(n, dtype=torch.bool)
    keep[[0, 3, n - 1]] = False
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for mode in (True, False):
        model.train(mode)
        seen, handles = capture(model, [block])
        model(x)
        assert seen[block][:, [0, 3, n - 1]].abs().sum() > 0  # nonzero before pruning
        for h in handles:
            h.remove()
    _, gates = apply_unit_masks(model, {layer: keep})
    for mode in (True, False):
        model.train(mode)
        seen, handles = capture(model, [block])
        model(x)
        for h in handles:
            h.remove()
        assert torch.all(seen[block][:, [0, 3, n - 1]] == 0)
        assert seen[block][:, keep].abs().sum() > 0
    gates.remove()
    model(x)  # hooks removed: the shortcut flows again
    seen, handles = capture(model, [block])
    model(x)
    assert seen[block][:, [0, 3, n - 1]].abs().sum() > 0


def test_enforcer_keeps_bias_and_batchnorm_entries_at_zero_while_training():
    model = small_cnn()
    unit = {"0": torch.tensor([True, False, True, True, False, True])}
    masks, _ = apply_unit_masks(model, unit)
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    state = SimpleNamespace(model=model, optimizer=opt)
    enforcer = MaskEnforcer(masks)
    enforcer.on_train_begin(state)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(8, 3, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        enforcer.after_backward(state)
        opt.step()
        enforcer.after_step(state)
    p = dict(model.named_parameters())
    for name in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.all(p[name][[1, 4]] == 0), name
        assert p[name][[0, 2]].abs().sum() > 0
    assert set(weight_masks(masks)) == {"0.weight"}


def test_expand_unit_masks_shapes_and_counts():
    model = small_cnn()
    groups = channel_groups(model)
    unit = {"3": torch.tensor([True, False, False, True, True])}
    masks = expand_unit_masks(model, unit, groups)
    assert masks["3.weight"].shape == (5, 6, 3, 3)
    assert int(masks["3.weight"].sum()) == 3 * 6 * 9
    assert masks["3.bias"].tolist() == [True, False, False, True, True]


def test_l1_l2_scores_by_hand():
    model = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 2.0], [0.0, 3.0, -4.0]]))
    groups = channel_groups(model)
    ctx = ScoreContext()
    l1 = STRUCTURED.get("l1")(model, groups, {}, ctx)["0"]
    l2 = STRUCTURED.get("l2")(model, groups, {}, ctx)["0"]
    assert l1.tolist() == [5.0, 7.0]
    assert l2.tolist() == [3.0, 5.0]
    masked = STRUCTURED.get("l2")(model, groups, {"0": torch.tensor([True, False])}, ctx)["0"]
    assert masked.tolist() == [3.0, 0.0]
    assert {"l1", "l2", "ebn"} <= set(STRUCTURED.names())


def test_expected_bn_relu_matches_monte_carlo():
    gamma = torch.tensor([1.0, -0.5, 2.0, 0.3, 0.0, 0.0, -1.5])
    beta = torch.tensor([0.0, 0.4, -1.0, -0.8, 0.7, -0.2, 1.2])
    exact = expected_bn_relu(gamma, beta)
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mc = torch.stack([torch.relu(g * z + b).mean() for g, b in zip(gamma.double(), beta.double())])
    assert torch.allclose(exact, mc, atol=3e-3)
    assert exact[0].item() == pytest.approx(1 / math.sqrt(2 * math.pi))  # E[ReLU(z)] = phi(0)
    assert exact[4].item() == pytest.approx(0.7) and exact[5].item() == 0.0  # gamma = 0 limit


def test_ebn_scores_read_the_following_batchnorm_and_need_one():
    model = small_cnn()
    randomise_bn(model)
    groups = channel_groups(model, ["0"])
    s = STRUCTURED.get("ebn")(model, groups, {}, ScoreContext())["0"]
    assert torch.allclose(s, expected_bn_relu(model[1].weight, model[1].bias).float())
    with pytest.raises(PrunelabError, match="needs a BatchNorm after layer '3'"):
        STRUCTURED.get("ebn")(model, channel_groups(model, ["3"]), {}, ScoreContext())


def test_select_units_targets():
    scores = torch.tensor([5.0, 1.0, 3.0, 1.0, 9.0, 2.0])
    alive = torch.tensor([True, True, True, True, True, False])
    small = select_units(scores, alive, 2, "smallest")
    assert small.tolist() == [False, True, False, True, False, False]  # unit 5 is already gone
    large = select_units(scores, alive, 2, "largest")
    assert large.tolist() == [True, False, False, False, True, False]
    r1 = select_units(scores, alive, 3, "random", torch.Generator().manual_seed(4))
    r2 = select_units(scores, alive, 3, "random", torch.Generator().manual_seed(4))
    assert torch.equal(r1, r2) and int(r1.sum()) == 3 and not r1[5]
    counts = torch.zeros(6)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2000):
        counts += select_units(scores, alive, 1, "random", gen).float()
    assert counts[5] == 0 and torch.all((counts[:5] / 2000 - 0.2).abs() < 0.04)  # uniform over the alive


def test_kept_units_linear_ramp_matches_reference_numbers():
    # VGG11, 512 filters, 30% over range(3, 151, 4) = 37 events (the paper's "Prune_S 1%")
    ramp = [kept_units(512, 0.3, i, 37) for i in range(1, 38)]
    assert ramp[0] == 508 and ramp[-1] == 359  # ceil(359 + 153 * 36/37) and ceil(0.7 * 512)
    steps = [a - b for a, b in zip([512, *ramp], ramp)]
    assert set(steps) <= {4, 5} and sum(steps) == 153
    assert kept_units(10, 0.7, 1, 1) == 3  # float noise: (1 - 0.7) * 10 = 3.0000000000000004
    assert kept_units(512, 0.9, 7, 7) == 52


def test_bad_inputs_raise_prunelab_error():
    model = small_cnn()
    groups = channel_groups(model)
    with pytest.raises(PrunelabError, match="unknown layer"):
        channel_groups(model, ["nope"])
    with pytest.raises(PrunelabError, match="has 3 entries"):
        expand_unit_masks(model, {"0": torch.ones(3, dtype=torch.bool)}, groups)
    with pytest.raises(PrunelabError, match="bool"):
        expand_unit_masks(model, {"0": torch.ones(6)}, groups)
    with pytest.raises(PrunelabError, match="unknown target"):
        select_units(torch.ones(3), torch.ones(3, dtype=torch.bool), 1, "middle")
    with pytest.raises(PrunelabError, match="cannot remove"):
        select_units(torch.ones(3), torch.tensor([True, False, False]), 2, "smallest")
    with pytest.raises(PrunelabError, match="unknown structured criterion"):
        STRUCTURED.get("l3")
    with pytest.raises(PrunelabError, match="fraction"):
        kept_units(10, 1.0, 1, 1)

    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x  # data-dependent control flow: fx cannot trace

    with pytest.raises(PrunelabError, match="cannot trace"):
        channel_groups(Dynamic())


def test_activations_scores_read_the_running_statistics_and_mask_removed_units():
    model = small_cnn()
    groups = channel_groups(model, ["0", "3"])
    stats = {"0": torch.arange(6, dtype=torch.float32), "3": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])}
    ctx = ScoreContext(options={"activations": stats})
    unit_masks = {"3": torch.tensor([True, False, True, True, True])}
    scores = STRUCTURED.get("activations")(model, groups, unit_masks, ctx)
    assert scores["0"].tolist() == [0, 1, 2, 3, 4, 5] and scores["3"].tolist() == [5, 0, 3, 2, 1]
    assert stats["3"][1] == 4.0  # the statistics themselves are not changed
    with pytest.raises(PrunelabError, match="running activation statistics"):
        STRUCTURED.get("activations")(model, groups, {}, ScoreContext())
    with pytest.raises(PrunelabError, match="no activation statistics for layer '3'"):
        STRUCTURED.get("activations")(model, groups, {}, ScoreContext(options={"activations": {"0": stats["0"]}}))
