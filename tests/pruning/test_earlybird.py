"""Early-bird detection (You et al. 2020; You et al. 2022) on scripted trajectories, and the schedule."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import prunelab
from prunelab.errors import PrunelabError
from prunelab.pruning.earlybird import (
    BNScaleL1,
    ChannelMaskEarlyBird,
    EarlyBirdDetector,
    PartitionEarlyBird,
    batchnorm_patterns,
    bn_channel_mask,
)
from prunelab.pruning.schedules import SCHEDULES, DenseStage, ScheduleContext
from prunelab.pruning.structured import STRUCTURED, channel_groups
from prunelab.train import Callback, TrainConfig, fit


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def data(dim: int = 1, n: int = 32) -> Data:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    y = (x[:, 0] > 0).long()
    return Data(x, y, x, y)


class Script(Callback):
    """At the end of epoch e (1-based) overwrite one parameter with ``values[e]`` (before the detector runs)."""

    def __init__(self, param: nn.Parameter, values: dict[int, torch.Tensor]) -> None:
        self.param, self.values = param, values

    def on_epoch_end(self, state) -> None:
        with torch.no_grad():
            self.param.copy_(self.values[state.epoch + 1])


def threshold_net() -> nn.Sequential:
    """Unit k of the first layer is on at x iff x + b_k > 0; only the last layer trains."""
    net = nn.Sequential(nn.Linear(1, 10), nn.ReLU(), nn.Linear(10, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    net[0].requires_grad_(False)
    return net


CANVAS = (torch.arange(10, dtype=torch.float32) + 0.5).unsqueeze(1)  # x = 0.5, 1.5, ..., 9.5
# With every bias -n, a unit is on at the 10 - n points above n: two epochs with n, n' differ on
# 10 units x |n - n'| points of 100, i.e. a distance of |n - n'| / 10.
N_BELOW = [0, 3, 5, 6, 6, 8, 7, 7, 7]  # epochs 1..9
# max distance to the 3 previous epochs: epoch 4: .6, 5: .3, 6: .3, 7: max(.1,.1,.1) = .1 < .16 -> found at 7


@pytest.mark.parametrize("stop", [True, False])
def test_partition_early_bird_fires_at_the_scripted_epoch(stop):
    net = threshold_net()
    script = Script(net[0].bias, {e + 1: torch.full((10,), -float(n)) for e, n in enumerate(N_BELOW)})
    eb = PartitionEarlyBird(CANVAS, stop=stop)
    res = fit(net, data(), TrainConfig(epochs=9, lr=0.01, batch_size=32, device="cpu", eval_every=0),
              callbacks=[script, eb], progress=False)
    assert eb.found_epoch == 7
    dists = [d for _, d in eb.curve]
    assert dists[:3] == [None, None, None]
    assert dists[3:7] == pytest.approx([0.6, 0.3, 0.3, 0.1])
    assert [r.get("eb_partition_found") for r in res.history][6] is True
    assert sum(bool(r.get("eb_partition_found")) for r in res.history) == 1
    assert len(res.history) == (7 if stop else 9)
    assert torch.equal(eb.ticket_state["0.bias"], torch.full((10,), -7.0))


# --- the channel-mask rule against the Early-Bird reference (main.py, class EarlyBird) ----------------
def reference_mask(gammas: torch.Tensor, percent: float) -> torch.Tensor:
    """EarlyBird.pruning: thre = sorted |gamma| at int(total * percent); keep |gamma| > thre."""
    y, _ = torch.sort(gammas.abs())
    thre = y[int(gammas.numel() * percent)]
    return gammas.abs().gt(thre).float()


def reference_stop(gammas_per_epoch: list[torch.Tensor], percent: float = 0.5, epoch_keep: int = 5):
    """The reference epoch loop: early_bird_emerge(model) at the top of each epoch, before train(epoch).

    ``gammas_per_epoch[e]`` are the scales after e epochs of training; the last entry (after the final
    epoch) is never checked. Returns the printed ``epoch`` of the first "Find EB", or None.
    """
    masks, dists = [], [1 for _ in range(1, epoch_keep)]
    for epoch in range(len(gammas_per_epoch) - 1):
        mask = reference_mask(gammas_per_epoch[epoch], percent)
        if len(masks) < epoch_keep:
            masks.append(mask)
        else:
            masks.pop(0)
            masks.append(mask)
        if len(masks) == epoch_keep:
            for i in range(len(masks) - 1):
                dists[i] = 1 - float(torch.sum(masks[-1] == masks[i])) / masks[i].size(0)
            if all(not d > 0.1 for d in dists):
                return epoch
    return None


N = 20  # two BatchNorm1d(10): one channel swapped in and out is 2 of 20 = a distance of (just under) 0.1
BASE = torch.arange(1, N + 1, dtype=torch.float32) / N  # channel c has |gamma| (c + 1) / 20
ONES = torch.ones(N)  # torch's BatchNorm init: every scale ties


def swapped(i: int, j: int) -> torch.Tensor:
    g = BASE.clone()
    g[i], g[j] = BASE[j], BASE[i]
    return g


def lowered(*channels: int) -> torch.Tensor:
    g = BASE.clone()
    for k, c in enumerate(channels):
        g[c] = 0.001 * (k + 1)
    return g


# Ratio 0.5: thre = sorted[10], so the 11 smallest are pruned: base mask B keeps channels 11..19.
#   ONES: thre = 1 and nothing is > 1: the initial mask prunes every channel (9 of 20 away from B: .45).
#   lowered(11, 12): prunes 0..8, 11, 12 (4 channels off B: .2).
#   swapped(10, 11): prunes 0..9, 11 (2 off B: 1 - 18/20 = 0.0999...; also 2 off lowered(11, 12)).
#   swapped(9, 10) swaps two pruned channels: the mask is B.
SEQ_S = [ONES, BASE, BASE, BASE, lowered(11, 12), BASE, BASE, swapped(10, 11)] + [BASE] * 5  # after 0..12 epochs
# epoch 4: the window holds ONES (.45); epochs 5, 6: it holds lowered (.2);
# epoch 7: swapped(10, 11) against BASE, BASE, lowered, BASE: max 0.0999... <= 0.1 -> found at 7.
# (An exact-count mask pruning 10 would not see swapped(10, 11) and stop at 9; `(a != b).mean() < 0.1`
# would not stop at 7 either.)
SEQ_T = [ONES] + [BASE] * 7  # the all-pruned initial mask must leave the window: found at 5, not 4
SEQ_LAST = [ONES, BASE, lowered(11, 12), BASE, BASE, BASE, BASE]  # only the never-checked weights after
# the last epoch (window epochs 2..5 hold lowered) would stop: not found


class ScriptBN(Callback):
    """At the end of epoch e (1-based) overwrite the two BatchNorm scales with ``values[e]``."""

    def __init__(self, net: nn.Module, values: list[torch.Tensor]) -> None:
        self.net, self.values = net, values

    def on_epoch_end(self, state) -> None:
        g = self.values[state.epoch + 1]
        with torch.no_grad():
            self.net[1].weight.copy_(g[:10])
            self.net[4].weight.copy_(g[10:])


def run_mask_rule(seq: list[torch.Tensor], stop: bool = False):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 10), nn.BatchNorm1d(10),
                        nn.ReLU(), nn.Linear(10, 2))
    assert torch.equal(torch.cat([net[1].weight, net[4].weight]).detach(), seq[0])
    eb = ChannelMaskEarlyBird(0.5, stop=stop)
    res = fit(net, data(3), TrainConfig(epochs=len(seq) - 1, lr=0.01, batch_size=32, device="cpu", eval_every=0),
              callbacks=[ScriptBN(net, seq), eb], progress=False)
    return eb, res


@pytest.mark.parametrize(("seq", "expected"), [(SEQ_S, 7), (SEQ_T, 5), (SEQ_LAST, None)])
def test_channel_mask_early_bird_stops_where_the_reference_stops(seq, expected):
    assert reference_stop(seq) == expected
    eb, res = run_mask_rule(seq)
    assert eb.found_epoch == expected
    assert [e for e, _ in eb.curve] == list(range(len(seq) - 1))  # the weights after the last epoch: unchecked
    if expected is not None:
        assert res.history[expected - 1]["eb_mask_found"] is True
        assert torch.equal(eb.ticket_state["1.weight"], seq[expected][:10])


def test_channel_mask_distances_of_the_scripted_run():
    eb, res = run_mask_rule(SEQ_S, stop=True)
    d = [x for _, x in eb.curve]
    assert d[:4] == [None] * 4
    # epoch 4: ONES in the window (.45); 5, 6: lowered in it (.2); 7: swapped vs BASE and lowered
    assert d[4:] == pytest.approx([0.45, 0.2, 0.2, 0.1])
    assert d[7] == 1 - 18 / 20 and d[7] < 0.1  # the reference's arithmetic
    assert len(res.history) == 7 and eb.found_epoch == 7


def test_reference_mask_rule_on_hand_values():
    net = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.4, 0.1, 0.3, 0.2]))
    # sorted .1 .2 .3 .4; ratio .5: thre = y[2] = .3 -> keep .4 only (3 pruned, not 2)
    assert bn_channel_mask(net, 0.5).tolist() == [True, False, False, False]
    with torch.no_grad():
        net[1].weight.fill_(0.5)
    assert bn_channel_mask(net, 0.1).tolist() == [False] * 4  # ties at the threshold: all pruned
    assert bn_channel_mask(net, 0.5).equal(reference_mask(net[1].weight.detach(), 0.5).bool())


def test_detector_rule_on_numbers():
    det = EarlyBirdDetector(lambda a, b: abs(a - b), threshold=0.5, window=2)
    for epoch, value in enumerate([0.0, 2.0, 2.2, 2.1, 5.0, 5.1, 5.2]):
        det.update(epoch, value)
    assert det.found_epoch == 3  # |2.1 - 2.0|, |2.1 - 2.2| < 0.5 with 2 previous
    assert [d for _, d in det.curve][2:] == pytest.approx([2.2, 0.1, 2.9, 3.0, 0.2])
    with pytest.raises(PrunelabError, match="threshold"):
        EarlyBirdDetector(abs, threshold=0.0, window=2)
    with pytest.raises(PrunelabError, match="window"):
        EarlyBirdDetector(abs, threshold=0.1, window=0)


def test_bn_channel_mask_scale_scores_and_penalty():
    net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4),
                        nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, -0.1, 2.0]))
        net[4].weight.copy_(torch.tensor([0.3, -3.0, 0.05, 1.0]))
    # |gamma| = .5 .1 2 | .3 3 .05 1 ; ratio 3/7: thre = sorted[3] = .5, so .05, .1, .3 and .5 are pruned
    assert bn_channel_mask(net, 3 / 7).tolist() == [False, False, True, False, True, False, True]
    groups = channel_groups(net, ["0", "3"])
    scores = STRUCTURED.get("bn_scale")(net, groups, {}, None)
    assert scores["3"].tolist() == pytest.approx([0.3, 3.0, 0.05, 1.0])
    pen = BNScaleL1(0.01)
    pen.on_train_begin(type("S", (), {"model": net})())
    pen.extra_loss(None, None, None, None).backward()
    assert net[4].weight.grad.tolist() == pytest.approx([0.01, -0.01, 0.01, 0.01])
    with pytest.raises(PrunelabError, match="BatchNorm"):
        bn_channel_mask(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), 0.5)
    with pytest.raises(PrunelabError, match="ratio"):
        ChannelMaskEarlyBird(1.0)


def test_earlybird_schedule_prunes_at_the_early_bird_and_retrains():
    torch.manual_seed(0)
    d = data(4, 64)
    model = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 2))
    config = TrainConfig(epochs=6, lr=0.05, batch_size=32, device="cpu", eval_every=0)

    def prune_fn(m, sparsity, masks):
        return prunelab.prune(m, sparsity, "magnitude", "global", masks=masks)

    def dense() -> DenseStage:
        raise AssertionError("the early-bird schedule trains from initialisation itself")

    ctx = ScheduleContext(model=model, data=d, train=config, finetune=config.model_copy(update={"epochs": 2}),
                          sparsity=0.5, prune_fn=prune_fn, dense=dense, fit=fit, progress=False)
    ctx.earlybird_threshold, ctx.earlybird_window = 1.0, 1  # found as soon as there is one previous epoch
    result = SCHEDULES.get("earlybird")(ctx)
    stages = [r["stage"] for r in result.history]
    assert stages == ["search", "search", "retrain", "retrain"]
    assert result.events[0]["eb_epoch"] == 2 and result.events[0]["eb_found"]
    assert result.masks.sparsity() == pytest.approx(0.5, abs=0.02)
    w = model[0].weight.detach()
    assert torch.all(w[~result.masks["0.weight"]] == 0)


# --- the partition rule against the Spline-EB reference (ConvNet/experiments.py, detect_eb) ------------
class ReferenceDetectEB(Callback):
    """detect_eb(i, model, canvas, thres=0.16, lookback=3) after each epoch i (0-based), as EB_experiment:
    signs of every BatchNorm output (set_global_hooks) in eval mode, getDiff per layer, mean over layers."""

    def __init__(self, canvas, thres=0.16, lookback=3):
        self.canvas, self.thres, self.lookback = canvas, thres, lookback
        self.prevs, self.found = [], None

    def on_epoch_end(self, state) -> None:
        i, model = state.epoch, state.model
        store = {}
        hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: store.setdefault(n, out.detach().cpu()))
                 for n, m in model.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
        was = model.training
        model.eval()
        with torch.no_grad():
            model(self.canvas)
        model.train(was)
        for h in hooks:
            h.remove()
        if i >= self.lookback:
            maxi = 0
            for prev in self.prevs:
                total = 0
                for key in store:
                    a, b = (store[key] > 0).float(), (prev[key] > 0).float()
                    total += float(torch.sum(torch.abs(a - b)) / torch.numel(a))
                maxi = max(maxi, total / len(store))
            if maxi < self.thres and self.found is None:
                self.found = i  # the reference saves EB_<i>.pth.tar
            self.prevs = self.prevs[1:]
        self.prevs.append(store)


class ResidualUnit(nn.Module):
    """relu(bn(fc(x)) + x): the ReLU input is not the BatchNorm output (a post-activation residual)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bn, self.head = nn.Linear(1, 10), nn.BatchNorm1d(10), nn.Linear(10, 2)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.zero_()
        self.fc.requires_grad_(False)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.fc(x)) + x))


class ScriptBeta(Callback):
    """At the end of epoch e set beta = -n_e, gamma = 1 and running stats (0, 1): in eval mode the
    BatchNorm output is ~x - n_e (on for x > n_e) and the ReLU input ~2x - n_e (on for x > n_e / 2)."""

    def __init__(self, net, n_below):
        self.net, self.n_below = net, n_below

    def on_epoch_end(self, state) -> None:
        bn = self.net.bn
        with torch.no_grad():
            bn.weight.fill_(1.0)
            bn.bias.fill_(-float(self.n_below[state.epoch]))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)


@pytest.mark.parametrize(("sites", "expected"), [("auto", 7), ("batchnorm_outputs", 7), ("relu_inputs", 5)])
def test_partition_early_bird_reads_batchnorm_outputs_like_the_reference(sites, expected):
    # BatchNorm outputs: |n - n'| / 10 as in N_BELOW above -> found after 7 epochs.
    # ReLU inputs (on for x > n / 2): 10, 8, 7, 7, 7, 6, 6, 6, 6 units on -> epoch 5: max(.1, 0, 0) < .16
    torch.manual_seed(0)
    net = ResidualUnit()
    ref = ReferenceDetectEB(CANVAS)
    eb = PartitionEarlyBird(CANVAS, sites=sites)
    fit(net, data(), TrainConfig(epochs=9, lr=0.01, batch_size=32, device="cpu", eval_every=0),
        callbacks=[ScriptBeta(net, N_BELOW), ref, eb], progress=False)
    assert ref.found == 6  # the reference's 0-based label of the snapshot after 7 epochs
    assert eb.found_epoch == expected
    if sites != "relu_inputs":
        assert eb.found_epoch == ref.found + 1
        assert [d for _, d in eb.curve][3:7] == pytest.approx([0.6, 0.3, 0.3, 0.1])


def test_batchnorm_patterns_and_sites_errors():
    net = ResidualUnit().eval()
    pats = batchnorm_patterns(net, CANVAS)
    assert pats.sites == ["bn"] and pats.num_points == 10
    with torch.no_grad():
        net.bn.bias.fill_(-3.0)  # output x - 3 > 0 for the 7 points from 3.5
    on = batchnorm_patterns(net, CANVAS).pattern("bn")
    assert on.sum(dim=1).tolist() == [0, 0, 0] + [10] * 7
    with pytest.raises(PrunelabError, match="no BatchNorm"):
        batchnorm_patterns(threshold_net(), CANVAS)
    with pytest.raises(PrunelabError, match="sites"):
        PartitionEarlyBird(CANVAS, sites="bn")
    with pytest.raises(PrunelabError, match="no BatchNorm"):
        fit(threshold_net(), data(), TrainConfig(epochs=1, batch_size=32, device="cpu"),
            callbacks=[PartitionEarlyBird(CANVAS, sites="batchnorm_outputs")], progress=False)
