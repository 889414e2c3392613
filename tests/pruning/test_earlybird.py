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


# Kept channels (top 5 |gamma| of 10) before training (epoch 0) and after each epoch. Equal |gamma| at
# initialisation (all ones) prune the first five. One channel swapped in and out is a distance of 0.2.
KEPT = [range(5, 10), range(0, 5), range(0, 5), [0, 1, 2, 3, 5]] + [range(0, 5)] * 6  # epochs 0..9
# window 4 (the current mask against the 4 before it): epoch 8 is the first whose 4 predecessors all equal it


def gamma_for(kept) -> torch.Tensor:
    g = torch.full((10,), 0.1)
    g[list(kept)] = 1.0
    return g


def test_channel_mask_early_bird_fires_at_the_scripted_epoch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 2))
    script = Script(net[1].weight, {e: gamma_for(k) for e, k in enumerate(KEPT) if e > 0})
    eb = ChannelMaskEarlyBird(0.5)
    res = fit(net, data(3), TrainConfig(epochs=9, lr=0.01, batch_size=32, device="cpu", eval_every=0),
              callbacks=[script, eb], progress=False)
    assert eb.found_epoch == 8
    assert [e for e, _ in eb.curve] == list(range(10))
    dists = [d for _, d in eb.curve]
    assert dists[:4] == [None] * 4
    assert dists[4:] == pytest.approx([1.0, 0.2, 0.2, 0.2, 0.0, 0.0])
    assert res.history[7]["eb_mask_found"] is True


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
    # |gamma| = .5 .1 2 | .3 3 .05 1 ; ratio 3/7 prunes the 3 smallest: .05, .1, .3
    assert bn_channel_mask(net, 3 / 7).tolist() == [True, False, True, False, True, False, True]
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
