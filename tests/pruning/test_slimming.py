"""The ``slimming`` schedule: continued schedules, channel tickets at early birds or after training."""

from types import SimpleNamespace

import pytest
import torch

from prunelab import models
from prunelab.analysis.stages import RunInfo, run_analysis
from prunelab.errors import PrunelabError
from prunelab.models import vgg_width  # noqa: F401  (registers vgg_scaled)
from prunelab.pruning import SCHEDULES
from prunelab.pruning.schedules import ScheduleContext
from prunelab.pruning.slimming import SlimmingOptions, continued_config, slimming
from prunelab.train import TrainConfig, fit


def test_options():
    assert "slimming" in SCHEDULES
    assert SCHEDULES.parse_options("slimming", {"score": "Random"}).score == "random"
    assert SCHEDULES.parse_options("slimming", {"score": "L2"}).score == "l2"
    with pytest.raises(PrunelabError, match="or random"):
        SCHEDULES.parse_options("slimming", {"score": "l3"})
    with pytest.raises(PrunelabError, match="ticket"):
        SCHEDULES.parse_options("slimming", {"ticket": "early"})
    assert SCHEDULES.parse_options("slimming", {"layers": ["a", "b"]}).layers == ["a", "b"]


def test_continued_config_shifts_the_step_schedule():
    train = TrainConfig(epochs=24, lr=0.1, lr_schedule="step", milestones=[12, 18], gamma=0.1, seed=0)
    c = continued_config(train, 7, seed=1)  # EB at epoch 7: 17 epochs left, drops at 5 and 11, lr 0.1
    assert (c.epochs, c.lr, c.milestones, c.lr_schedule, c.seed) == (17, 0.1, [5, 11], "step", 1)
    c = continued_config(train, 12, seed=1)  # one drop passed: lr 0.01, the other one 6 epochs later
    assert (c.epochs, c.milestones) == (12, [6]) and c.lr == pytest.approx(0.01)
    c = continued_config(train, 20, seed=1)  # both passed: constant 0.001 for the last 4 epochs
    assert (c.epochs, c.milestones, c.lr_schedule) == (4, [], "constant") and c.lr == pytest.approx(0.001)
    assert continued_config(train, 24, seed=1) is None
    with pytest.raises(PrunelabError, match="cosine"):
        continued_config(train.model_copy(update={"lr_schedule": "cosine", "milestones": []}), 3, seed=1)


def _images(n_train=48, n_test=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, 3, 32, 32, generator=g)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + 2 * (x[:, 1].mean(dim=(1, 2)) > 0).long()
    return SimpleNamespace(x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])


def _ctx(model, data, options, sparsity=0.5, epochs=5):
    train = TrainConfig(epochs=epochs, lr=0.05, batch_size=16, device="cpu", eval_every=0, seed=0,
                        lr_schedule="step", milestones=[2])
    finetune = TrainConfig(epochs=2, lr=0.01, batch_size=16, device="cpu", eval_every=0, seed=1)
    ctx = ScheduleContext(model=model, data=data, train=train, finetune=finetune, sparsity=sparsity,
                          prune_fn=lambda *a: (_ for _ in ()).throw(AssertionError("no unstructured pruning")),
                          dense=lambda: (_ for _ in ()).throw(AssertionError("no cached dense model")),
                          fit=fit, progress=False)
    ctx.options = options
    return ctx


def _vgg():
    torch.manual_seed(0)
    return models.create("vgg_scaled", num_classes=4, input_shape=(3, 32, 32), depth=11, width=1 / 32)


def test_trained_ticket_prunes_channels_globally_and_fine_tunes():
    model = _vgg()
    ctx = _ctx(model, _images(), {"ticket": "trained", "canvas_resolution": 4})
    res = slimming(ctx)
    stages = [r["stage"] for r in res.history]
    assert stages == ["dense"] * 5 + ["ticket"] + ["retrain"] * 2
    t = res.history[5]
    assert (t["epoch"], t["dense_epochs"], t["retrain_epochs"], t["ticket"], t["eb_found"]) == (5, 5, 2, "trained", None)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    channels = sum(model.get_submodule(n).out_channels for n in convs)
    kept = sum(int(res.masks[f"{n}.weight"].flatten(1).all(dim=1).sum()) for n in convs)
    assert kept == t["channels_kept"] * channels == channels // 2  # 86 channels at width 1/32: 43 kept
    # the pruned channels' BatchNorm entries stayed zero through the fine-tuning
    bn = model.features[1]
    off = ~res.masks["features.0.weight"].flatten(1).all(dim=1)
    assert torch.all(bn.weight[off] == 0) and torch.all(bn.bias[off] == 0)
    assert set(res.masks) == {n for n, _ in model.named_parameters() if n.endswith(".weight") and _.dim() > 1}
    assert res.events[0]["stage"] == "slimming" and res.events[0]["channels_kept"] == t["channels_kept"]
    # the ticket analysis puts that row into results.csv
    row = run_analysis("ticket", model, res.masks, ctx.data, None, RunInfo(history=res.history))
    assert row["ticket.epoch"] == 5 and row["ticket.pruned_test_acc"] == t["pruned_test_acc"]
    assert "ticket.stage" not in row


def test_early_bird_ticket_stops_at_the_rule_and_retrains_the_rest():
    model = _vgg()
    # threshold 1: the partition rule fires as soon as its 3-epoch window is full (epoch 4)
    ctx = _ctx(model, _images(), {"ticket": "partition", "partition_threshold": 1.0, "canvas": "train",
                                  "canvas_samples": 16})
    res = slimming(ctx)
    t = next(r for r in res.history if r["stage"] == "ticket")
    assert (t["epoch"], t["eb_found"], t["eb_partition_epoch"], t["retrain_epochs"]) == (4, True, 4, 1)
    assert [r["stage"] for r in res.history].count("dense") == 4
    # the mask rule watched the same 4 epochs (found needs a full window of 4 previous masks)
    assert "eb_mask_epoch" in t


def test_unfound_early_bird_takes_the_trained_net_without_retraining():
    model = _vgg()
    ctx = _ctx(model, _images(), {"ticket": "mask", "mask_threshold": 1e-9, "mask_window": 4, "watch": False},
               epochs=3)
    res = slimming(ctx)
    t = next(r for r in res.history if r["stage"] == "ticket")
    assert (t["eb_found"], t["epoch"], t["retrain_epochs"], t["eb_partition_epoch"]) == (False, 3, 0, None)
    assert res.history[-1]["stage"] == "ticket"


def test_mlp_units_random_scores_and_partition_change():
    torch.manual_seed(0)
    model = models.create("mlp", num_classes=4, input_shape=(6,), widths=[10, 8])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 6, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    data = SimpleNamespace(x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    opts = {"score": "random", "layers": "hidden", "scope": "layerwise", "bn_l1": 0.0, "watch": False,
            "partition_samples": 32}
    res = slimming(_ctx(model, data, opts, sparsity=0.5, epochs=3))
    t = next(r for r in res.history if r["stage"] == "ticket")
    assert int(res.masks["1.weight"].all(dim=1).sum()) == 5 and int(res.masks["3.weight"].all(dim=1).sum()) == 4
    assert res.masks["5.weight"].all()
    assert 0.0 < t["partition_distance"] <= 1.0
    with pytest.raises(PrunelabError, match="BatchNorm"):
        slimming(_ctx(model, data, {**opts, "ticket": "mask"}))
    with pytest.raises(PrunelabError, match=r"in \(0, 1\)"):
        slimming(_ctx(model, data, opts, sparsity=0.0))


def test_ticket_analysis_needs_a_ticket_row():
    with pytest.raises(PrunelabError, match="slimming"):
        run_analysis("ticket", torch.nn.Linear(2, 2), None, None, None, RunInfo(history=[{"stage": "train"}]))


def test_slimming_options_defaults_are_the_eb_paper_s():
    o = SlimmingOptions()
    assert (o.score, o.scope, o.bn_l1, o.partition_threshold, o.partition_window, o.mask_threshold,
            o.mask_window) == ("bn_scale", "global", 1e-4, 0.16, 3, 0.1, 4)
