"""Pruning-instability callbacks: hand-computed instability, permanent structured pruning during
training, temporary zeroing/noise and zero-then-restore, and the run summaries."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from prunelab.analysis.flatness import HessianOperator
from prunelab.analysis.partition import ReluInputs
from prunelab.analysis.stability import instability, stability_correlations, stability_summary
from prunelab.errors import PrunelabError
from prunelab.models import create
from prunelab.pruning.instability import (
    HessianEigenSum,
    IterativeStructuredPruning,
    LayerSchedule,
    TemporaryPruning,
    ZeroRestorePruning,
    hessian_top_eigen_sum,
)
from prunelab.pruning.structured import STRUCTURED, ActivationL1, channel_groups, kept_units
from prunelab.train import TrainConfig, fit

torch.set_num_threads(1)


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


def known_effect() -> tuple[nn.Module, Data]:
    """Hidden unit i carries the samples x = e_i; units 0, 2 vote class 0, units 1, 3 class 1.

    Without its unit a sample gets the output bias (0, 0.1): class 1. Row norms of the first layer
    are 1, 2, 3, 4, so Prune_S removes unit 0 then 1 and Prune_L unit 3 then 2. 2, 3, 2, 3 samples
    use units 0..3: removing unit 0 or 2 costs 2 of 10 samples, removing unit 1 or 3 costs nothing.
    """
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0])))
        model[2].weight.copy_(torch.tensor([[10.0, -10.0, 10.0, -10.0], [-10.0, 10.0, -10.0, 10.0]]))
        model[2].bias.copy_(torch.tensor([0.0, 0.1]))
    units = [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    x = torch.eye(4)[units]
    y = torch.tensor([u % 2 for u in units])
    return model, Data(x, y, x.clone(), y.clone())


# lr so small that training moves nothing: accuracies are exactly those of the pruning alone
FROZEN = TrainConfig(optimizer="sgd", lr=1e-9, momentum=0.0, epochs=3, batch_size=10, device="cpu")


@pytest.mark.parametrize(
    "target, expected",
    [("smallest", [(1.0, 0.8, 0.2), (0.8, 0.8, 0.0)]), ("largest", [(1.0, 1.0, 0.0), (1.0, 0.8, 0.2)])],
)
def test_instability_equals_hand_calculation(target, expected):
    model, data = known_effect()
    cb = IterativeStructuredPruning([LayerSchedule("0", 0.5, 0, 1, 1)], "l2", target)
    result = fit(model, data, FROZEN, callbacks=[cb], progress=False)
    got = [v for e in cb.events for v in (e["acc_before"], e["acc_after"], e["instability"])]
    assert got == pytest.approx([v for triple in expected for v in triple])
    assert [e["epoch"] for e in cb.events] == [1, 2] and [e["units"] for e in cb.events] == [{"0": 1}, {"0": 1}]
    removed = [0, 1] if target == "smallest" else [2, 3]
    assert torch.nonzero(cb.removed["0"]).flatten().tolist() == removed
    rows = result.history
    assert rows[0]["instability"] == pytest.approx(expected[0][2]) and "instability" not in rows[2]
    summary = stability_summary(rows)
    assert summary.mean_stability == pytest.approx(90.0)
    assert summary.num_events == 2 and summary.last_event_epoch == 2
    assert summary.best_test_acc == pytest.approx(0.8) and summary.best_epoch == 2
    # train accuracy of epoch 2 is measured during training, after event 1 only
    assert summary.generalization_gap == pytest.approx(0.0 if target == "smallest" else 0.2)
    assert result.final.accuracy == pytest.approx(0.8)


def conv_data(n: int = 16, size: int = 8, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return Data(x, y, x[:8].clone(), y[:8].clone())


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 10, 3, padding=1), nn.BatchNorm2d(10), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 3))


def test_permanent_pruning_keeps_units_removed_under_adam_and_weight_decay():
    data = conv_data()
    cfg = TrainConfig(optimizer="adam", lr=1e-2, momentum=0.9, weight_decay=1e-2, epochs=4, batch_size=8,
                      device="cpu")
    schedules = [LayerSchedule("0", 0.5, 0, 2, 1), LayerSchedule("3", 0.3, 1, 3, 2)]
    runs = []
    for seed in (1, 1, 2):
        model = conv_net()
        cb = IterativeStructuredPruning(schedules, "l1", "random", seed=seed)
        fit(model, data, cfg, callbacks=[cb], progress=False)
        runs.append(cb.removed)
        p = dict(model.named_parameters())
        for layer, bn in (("0", "1"), ("3", "4")):
            gone = cb.removed[layer]
            for name in (f"{layer}.weight", f"{layer}.bias", f"{bn}.weight", f"{bn}.bias"):
                assert torch.all(p[name][gone] == 0), name
                assert p[name][~gone].abs().sum() > 0
        assert int(cb.removed["0"].sum()) == 8 - kept_units(8, 0.5, 3, 3) == 4
        assert int(cb.removed["3"].sum()) == 10 - kept_units(10, 0.3, 2, 2) == 3
        assert [e["epoch"] for e in cb.events] == [1, 2, 3, 4]
        # layer 0: keep ceil(4 + 4 (3 - i)/3) = 7, 6, 4; layer 3: keep ceil(7 + 3 (2 - i)/2) = 9, 7
        assert [e["units"] for e in cb.events] == [{"0": 1}, {"0": 1, "3": 1}, {"0": 2}, {"3": 2}]
        assert set(cb.masks) == {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias",
                                 "4.weight", "4.bias"}
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])  # same seed, same units
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_resnet_pruning_during_training_zeroes_block_output():
    torch.manual_seed(0)
    model = create("resnet20", input_shape=(3, 8, 8))
    data = conv_data()
    cfg = TrainConfig(optimizer="sgd", lr=0.05, epochs=2, batch_size=8, device="cpu")
    cb = IterativeStructuredPruning([LayerSchedule("layer1.1.conv2", 0.5, 0, 0, 1)], "ebn", "smallest")
    fit(model, data, cfg, callbacks=[cb], progress=False)
    out = {}
    model.layer1[1].register_forward_hook(lambda m, i, o: out.__setitem__("y", o))
    model.eval()
    model(data.x_test)
    gone = cb.removed["layer1.1.conv2"]
    assert int(gone.sum()) == 8
    assert torch.all(out["y"][:, gone] == 0) and out["y"][:, ~gone].abs().sum() > 0
    cb.detach()
    model(data.x_test)
    assert out["y"][:, gone].abs().sum() > 0  # the identity shortcut flows again


def manual_state(model: nn.Module, data: Data, epoch: int = 0) -> SimpleNamespace:
    return SimpleNamespace(model=model, data=data, epoch=epoch, iteration=0, total_epochs=5, metrics={})


def test_temporary_zeroing_is_released_after_n_batches():
    model, data = known_effect()
    cb = TemporaryPruning([LayerSchedule("0", 0.5, 0, 0, 1)], "l2", "smallest", mode="zero", batches=2)
    state = manual_state(model, data)
    cb.on_train_begin(state)
    cb.on_epoch_end(state)
    w = model[0].weight
    assert cb.events[0]["acc_after"] == pytest.approx(0.8)  # units 0 and 1 zeroed: 2 samples lost
    assert torch.all(w[[0, 1]] == 0) and w[2, 2] == 3.0
    for expect_zero in (True, True, False):
        with torch.no_grad():
            w.add_(1.0)  # stands in for a training step
        cb.on_batch_begin(state, data.x_train, data.y_train)
        assert bool(torch.all(w[[0, 1]] == 0)) == expect_zero
    assert w[0, 0] == 1.0 and w[2, 2] == 6.0  # released: trained from zero, others untouched


def test_temporary_gaussian_noise_has_the_layer_std():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 50), nn.ReLU(), nn.Linear(50, 2))
    g = torch.Generator().manual_seed(0)
    data = Data(torch.randn(4, 400, generator=g), torch.tensor([0, 1, 0, 1]),
                torch.randn(4, 400, generator=g), torch.tensor([0, 1, 0, 1]))
    before = model[0].weight.detach().clone()
    cb = TemporaryPruning([LayerSchedule("0", 0.2, 0, 0, 1)], "l2", "largest", mode="gaussian", batches=1, seed=3)
    state = manual_state(model, data)
    cb.on_train_begin(state)
    cb.on_epoch_end(state)
    hit = cb.removed["0"]
    assert int(hit.sum()) == 10
    delta = model[0].weight.detach() - before
    assert torch.all(delta[~hit] == 0)
    sigma = before[~hit].std().item()
    assert delta[hit].std().item() == pytest.approx(sigma, rel=0.05)
    cb.on_batch_begin(state, data.x_train, data.y_train)  # second draw adds up: std sqrt(2) sigma
    assert (model[0].weight.detach() - before)[hit].std().item() == pytest.approx(sigma * math.sqrt(2), rel=0.05)


def test_zero_then_restore_brings_back_weights_and_batchnorm_state():
    model = conv_net()
    data = conv_data()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-1, 1)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cb = ZeroRestorePruning([LayerSchedule("0", 0.25, 0, 0, 1)], "l2", "largest", batches=1)
    state = manual_state(model, data)
    cb.on_train_begin(state)
    cb.on_epoch_end(state)
    hit = cb.removed["0"]
    assert int(hit.sum()) == 2
    for name in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.all(dict(model.named_parameters())[name][hit] == 0)
    with torch.no_grad():  # a "training step" that moves everything, running statistics included
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(0.5)
    cb.on_batch_begin(state, data.x_train, data.y_train)  # batch 1 of 1: zeroed again
    assert torch.all(model[0].weight[hit] == 0)
    cb.on_batch_begin(state, data.x_train, data.y_train)  # then restored
    now = model.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert torch.equal(now[name][hit], saved[name][hit]), name
        assert torch.allclose(now[name][~hit], saved[name][~hit] + 0.5), name


def test_summaries_and_correlations():
    history = [{"epoch": 1, "train_acc": 0.5, "test_acc": 0.6},
               {"epoch": 2, "train_acc": 0.7, "test_acc": 0.7, "instability": 0.1, "post_prune_acc": 0.63},
               {"epoch": 3, "train_acc": 0.9, "test_acc": 0.75},
               {"epoch": 4, "train_acc": 0.95, "test_acc": None}]
    s = stability_summary(history)
    assert s.mean_stability == pytest.approx(90.0) and s.best_test_acc == 0.75 and s.best_epoch == 3
    assert s.generalization_gap == pytest.approx(0.15)
    none = stability_summary([{"epoch": 1, "train_acc": 0.8, "test_acc": 0.6}])
    assert none.mean_stability == 100.0 and none.num_events == 0
    assert instability(0.5, 0.4) == pytest.approx(0.2) and math.isnan(instability(0.0, 0.0))
    c = stability_correlations([100.0, 99.0, 98.0], [0.80, 0.81, 0.83])
    assert c["kendall_tau"] == pytest.approx(-1.0)
    # Pearson by hand: x = (1, 0, -1) centred, y = (-0.0133, -0.0033, 0.0167) centred
    yc = [0.80 - 0.81333333, 0.81 - 0.81333333, 0.83 - 0.81333333]
    r = (yc[0] - yc[2]) / (math.sqrt(2) * math.sqrt(sum(v * v for v in yc)))
    assert c["pearson_r"] == pytest.approx(r, rel=1e-5)
    assert math.isnan(stability_correlations([1.0, 2.0], [1.0, 2.0])["pearson_r"])
    assert math.isnan(stability_correlations([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["kendall_tau"])


def test_bad_inputs_raise_prunelab_error():
    with pytest.raises(PrunelabError, match="fraction"):
        LayerSchedule("0", 1.0, 0, 1, 1)
    with pytest.raises(PrunelabError, match="before start"):
        LayerSchedule("0", 0.5, 3, 1, 1)
    with pytest.raises(PrunelabError, match="period"):
        LayerSchedule("0", 0.5, 0, 1, 0)
    with pytest.raises(PrunelabError, match="unknown target"):
        IterativeStructuredPruning([LayerSchedule("0", 0.5, 0, 1, 1)], "l2", "middle")
    with pytest.raises(PrunelabError, match="unknown structured criterion"):
        IterativeStructuredPruning([LayerSchedule("0", 0.5, 0, 1, 1)], "snip")
    with pytest.raises(PrunelabError, match="scheduled twice"):
        IterativeStructuredPruning([LayerSchedule("0", 0.5, 0, 1, 1)] * 2)
    with pytest.raises(PrunelabError, match="unknown mode"):
        TemporaryPruning([LayerSchedule("0", 0.5, 0, 1, 1)], mode="scramble")
    model, data = known_effect()
    with pytest.raises(PrunelabError, match="after training ends"):
        fit(model, data, FROZEN, callbacks=[IterativeStructuredPruning([LayerSchedule("0", 0.5, 0, 5, 1)])],
            progress=False)
    with pytest.raises(PrunelabError, match="unknown layer"):
        fit(model, data, FROZEN, callbacks=[IterativeStructuredPruning([LayerSchedule("9", 0.5, 0, 1, 1)])],
            progress=False)
    with pytest.raises(PrunelabError, match="history is empty"):
        stability_summary([])


# --- fidelity to the authors' code: empty events, the activations score, the Hessian sum ------------
def test_events_that_remove_no_unit_are_skipped():
    """4 units, fraction 0.5, 4 events: keep ceil(2 + 2 (4 - i) / 4) = 4, 3, 3, 2, so events 1 and 3
    remove nothing and are skipped (the authors' _prune_layer acts only if k > 0)."""
    assert [kept_units(4, 0.5, i, 4) for i in (1, 2, 3, 4)] == [4, 3, 3, 2]
    model, data = known_effect()
    cb = IterativeStructuredPruning([LayerSchedule("0", 0.5, 0, 3, 1)], "l2", "smallest")
    result = fit(model, data, FROZEN.model_copy(update={"epochs": 4}), callbacks=[cb], progress=False)
    assert [e["epoch"] for e in cb.events] == [2, 4] and [e["units"] for e in cb.events] == [{"0": 1}, {"0": 1}]
    # unit 0 (norm 1) goes at the 2nd epoch: 1.0 -> 0.8; unit 1 at the 4th: no sample changes class
    assert [(e["acc_before"], e["acc_after"]) for e in cb.events] == [(1.0, pytest.approx(0.8)), (pytest.approx(0.8),) * 2]
    assert [("instability" in r) for r in result.history] == [False, True, False, True]
    assert stability_summary(result.history).num_events == 2
    assert stability_summary(result.history).mean_stability == pytest.approx(90.0)


def test_temporary_and_restore_schedules_skip_empty_events_too():
    model, data = known_effect()
    cb = ZeroRestorePruning([LayerSchedule("0", 0.5, 0, 3, 1)], "l2", "smallest", batches=0)
    fit(model, data, FROZEN.model_copy(update={"epochs": 4}), callbacks=[cb], progress=False)
    assert [e["epoch"] for e in cb.events] == [2, 4]


def reference_activation_l1(pre_relu_per_batch, every=10, momentum=0.1):
    """The authors' update: counter += 1 per training forward; if counter % 10 == 0:
    m = .1 * out.abs().sum(dim=[0, 2, 3]) + .9 * m, from m = 0."""
    m, counter = 0.0, 0
    for out in pre_relu_per_batch:
        counter += 1
        if counter % every == 0:
            dims = [d for d in range(out.dim()) if d != 1]
            m = momentum * out.abs().sum(dim=dims) + (1 - momentum) * m
    return m


def test_activation_l1_is_the_running_l1_of_the_relu_inputs_of_a_resnet():
    torch.manual_seed(0)
    model = create("resnet20", input_shape=(3, 8, 8)).train()
    layers = {"layer1.0.conv1": "layer1.0", "layer1.0.conv2": "layer1.0:1", "layer2.0.conv2": "layer2.0:1"}
    groups = channel_groups(model, list(layers))
    assert groups["layer2.0.conv2"].residual == ("layer2.0.shortcut",)  # post-shortcut activations
    batches = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(7)]
    seen = {k: [] for k in layers}
    with ActivationL1(model, groups, every=3, momentum=0.25) as stats, ReluInputs(model) as rec:
        for xb in batches:
            model(xb)
            for layer, site in layers.items():
                seen[layer].append(rec.values[site])
        model.eval()
        model(batches[0])  # eval forwards do not count
    for layer in layers:
        expected = reference_activation_l1(seen[layer], every=3, momentum=0.25)  # updates at forwards 3, 6
        torch.testing.assert_close(stats.values[layer], expected, rtol=1e-5, atol=1e-5)
    assert stats.forwards == 7
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class SpyPruning(IterativeStructuredPruning):
    def _select(self, state):
        self.snapshot = {k: v.clone() for k, v in self.activation_stats.values.items()}
        return super()._select(state)


def test_activations_criterion_prunes_the_smallest_running_l1_in_a_schedule():
    data = conv_data()
    cfg = TrainConfig(optimizer="sgd", lr=0.01, epochs=2, batch_size=8, device="cpu")
    model = conv_net()
    cb = SpyPruning([LayerSchedule("3", 0.5, 0, 0, 1)], "activations", "smallest", activation_every=1)
    fit(model, data, cfg, callbacks=[cb], progress=False)
    snap = cb.snapshot["3"]
    assert bool((snap > 0).all())  # updated on every one of the 2 training batches before the event
    expected = torch.sort(snap, stable=True).indices[:5]
    assert sorted(torch.nonzero(cb.removed["3"]).flatten().tolist()) == sorted(expected.tolist())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks == 0  # the statistics' hooks are gone (conv_net has no residual gates)
    with pytest.raises(PrunelabError, match="running activation statistics"):
        STRUCTURED.get("activations")(model, channel_groups(model, ["3"]), {}, None)


def test_hessian_top_eigen_sum_equals_the_dense_spectrum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    with HessianOperator(model, x, y) as op:
        spectrum = torch.linalg.eigvalsh(op.dense())
    top = spectrum[torch.argsort(spectrum.abs(), descending=True)][:4]  # power iteration: largest magnitude
    got = hessian_top_eigen_sum(model, x, y, 4, iters=2000, tol=1e-12)
    assert got == pytest.approx(float(top.sum()), rel=1e-4)
    lanczos = hessian_top_eigen_sum(model, x, y, 4, method="lanczos", tol=1e-10)
    assert lanczos == pytest.approx(float(torch.sort(spectrum, descending=True).values[:4].sum()), rel=1e-6)
    assert hessian_top_eigen_sum(model, x, y, 4, samples=10, iters=2000, tol=1e-12) != pytest.approx(got)

    data = Data(x, y, x.clone(), y.clone())
    cb = HessianEigenSum(k=4, iters=2000, tol=1e-12)
    res = fit(model, data, TrainConfig(epochs=2, lr=0.01, batch_size=10, device="cpu"), callbacks=[cb], progress=False)
    assert ["hessian_top4_eigen_sum" in r for r in res.history] == [False, True]
    assert res.history[-1]["hessian_top4_eigen_sum"] == pytest.approx(hessian_top_eigen_sum(model, x, y, 4, iters=2000, tol=1e-12))
    with pytest.raises(PrunelabError, match="epochs"):
        HessianEigenSum(epochs=3)
