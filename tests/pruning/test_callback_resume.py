"""Resumable training with the pruning and early-bird callbacks: a run that crashes in the middle of an
epoch and resumes from its checkpoint ends bitwise identical to an uninterrupted run (weights,
history, events, removed units, found epochs, ticket weights)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from prunelab import models
from prunelab.callbacks import Callback, TrainState
from prunelab.models import vgg_width  # noqa: F401  (registers vgg_scaled)
from prunelab.pruning.earlybird import BNScaleL1, ChannelMaskEarlyBird, PartitionEarlyBird
from prunelab.pruning.enforce import MaskEnforcer
from prunelab.pruning.instability import (
    HessianEigenSum,
    IterativeStructuredPruning,
    LayerSchedule,
    TemporaryPruning,
    ZeroRestorePruning,
)
from prunelab.pruning.schedules import ScheduleContext
from prunelab.pruning.slimming import slimming
from prunelab.pruning.structured_schedule import structured
from prunelab.train import CHECKPOINT_NAME, TrainConfig, fit, load_train_state

torch.set_num_threads(1)


class Crash(Callback):
    """Raises before batch ``batch`` of 0-based epoch ``epoch`` (a kill in the middle of that epoch:
    the callbacks have already changed state the checkpoint must not carry). ``epoch=None``: never."""

    def __init__(self, epoch: int | None = None, batch: int = 2) -> None:
        self.epoch, self.batch, self.seen = epoch, batch, 0

    def on_epoch_begin(self, state: TrainState) -> None:
        self.seen = 0

    def on_batch_begin(self, state: TrainState, xb: torch.Tensor, yb: torch.Tensor) -> None:
        if state.epoch == self.epoch and self.seen == self.batch:
            raise RuntimeError("simulated crash")
        self.seen += 1


def conv_data(n: int = 48, size: int = 8, seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 24, 3, size, size, generator=g)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + (x[:, 1].mean(dim=(1, 2)) > 0).long()
    return SimpleNamespace(x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:])


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 10, 3, padding=1), nn.BatchNorm2d(10), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 3))


# 6 steps per epoch; Adam with weight decay moves a pruned weight off zero unless its state is kept at zero
CFG = TrainConfig(optimizer="adam", lr=1e-2, weight_decay=1e-2, epochs=5, batch_size=8, device="cpu", seed=3)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def _strip(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "time"} for row in history]


def crash_and_resume(
    tmp_path: Path,
    make: Callable[[], Sequence[Callback]],
    crash_epoch: int,
    *,
    net: Callable[[], nn.Module] = conv_net,
    data: Any = None,
    cfg: TrainConfig = CFG,
) -> tuple[list[Callback], list[Callback], dict[str, Any]]:
    """Train uninterrupted; train again, crash in epoch ``crash_epoch``, resume in a fresh session.

    Asserts bitwise-equal weights and equal history; returns (reference callbacks, resumed
    callbacks, the callback states in the checkpoint the resume started from)."""
    data = data if data is not None else conv_data()
    ref_model, ref_cbs = net(), list(make())
    ref = fit(ref_model, data, cfg, callbacks=[*ref_cbs, Crash()], progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(net(), data, cfg, callbacks=[*make(), Crash(crash_epoch)], progress=False, checkpoint=tmp_path)
    saved = load_train_state(tmp_path / CHECKPOINT_NAME)
    assert saved["loop"]["next_epoch"] == crash_epoch
    model, cbs = net(), list(make())
    res = fit(model, data, cfg, callbacks=[*cbs, Crash()], progress=False, checkpoint=tmp_path)
    assert res.resumed_from == crash_epoch
    _assert_bitwise(_weights(model), _weights(ref_model))
    assert _strip(res.history) == _strip(ref.history)
    assert (res.final, res.iterations) == (ref.final, ref.iterations)
    assert not (tmp_path / CHECKPOINT_NAME).exists()
    return ref_cbs, cbs, saved["callbacks"][:-1]  # the last one is the Crash


def _assert_same_events(ref: list[dict[str, Any]], got: list[dict[str, Any]]) -> None:
    assert got == ref
    assert [list(e) for e in got] == [list(e) for e in ref]  # the same columns in the same order


SCHEDULES = [LayerSchedule("0", 0.5, 0, 3, 1), LayerSchedule("3", 0.4, 1, 4, 2)]


@pytest.mark.parametrize("criterion, target", [("l2", "smallest"), ("l1", "random"), ("activations", "largest")])
def test_iterative_structured_pruning_resumes_bitwise(tmp_path, criterion, target):
    def make():
        return [IterativeStructuredPruning(SCHEDULES, criterion, target, seed=7, activation_every=2)]

    (ref,), (cb,), (saved,) = crash_and_resume(tmp_path, make, crash_epoch=2)
    # the checkpoint (after epoch 2) already had units removed, and events to remember
    assert len(saved["events"]) == 2 and [e["epoch"] for e in ref.events] == [1, 2, 3, 4]
    assert sum(int(r.sum()) for _, r in saved["removed"]) > 0
    assert (saved["activations"] is not None) == (criterion == "activations")
    _assert_same_events(ref.events, cb.events)
    assert list(cb.removed) == list(ref.removed)
    for x in ref.removed:
        assert torch.equal(cb.removed[x], ref.removed[x])
    _assert_bitwise(dict(cb.masks), dict(ref.masks))
    if criterion == "activations":
        assert cb.activation_stats.forwards == ref.activation_stats.forwards == 5 * 6
        _assert_bitwise(cb.activation_stats.values, ref.activation_stats.values)


def test_units_removed_before_the_crash_stay_removed_after_it(tmp_path):
    """A removed logit of the classifier gets gradients (no ReLU or BatchNorm stops them): only the
    restored enforcer keeps it at zero in the epochs after the resume, which see no further event."""
    def make():
        return [IterativeStructuredPruning([LayerSchedule("8", 0.4, 0, 1, 1)], "l2", "smallest")]

    (ref,), (cb,), (saved,) = crash_and_resume(tmp_path, make, crash_epoch=3)
    assert [e["epoch"] for e in ref.events] == [2] and dict(saved["removed"])["8"].sum() == 1
    _assert_same_events(ref.events, cb.events)
    assert cb.enforcer is not None
    w = cb._model[8].weight
    assert torch.all(w[cb.removed["8"]] == 0) and torch.all(w[~cb.removed["8"]] != 0)


def test_iterative_structured_pruning_resumes_its_residual_gates(tmp_path):
    """A ResNet block's last conv: the shortcut into its removed channels is gated off after the resume."""
    def net():
        torch.manual_seed(0)
        return models.create("resnet20", input_shape=(3, 8, 8))

    def make():
        return [IterativeStructuredPruning([LayerSchedule("layer1.1.conv2", 0.5, 0, 2, 1)], "l2", "smallest")]

    cfg = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, epochs=4, batch_size=8, device="cpu")
    data = conv_data(n=32, size=8)
    (ref,), (cb,), _ = crash_and_resume(tmp_path, make, crash_epoch=2, net=net, data=data, cfg=cfg)
    _assert_same_events(ref.events, cb.events)
    assert cb.gates._gates.keys() == ref.gates._gates.keys() and cb.gates._gates  # the shortcut is gated
    for k in ref.gates._gates:
        assert torch.equal(cb.gates._gates[k], ref.gates._gates[k])


@pytest.mark.parametrize("mode, cumulative", [("gaussian", True), ("zero", False)])
def test_temporary_pruning_resumes_a_perturbation_in_progress(tmp_path, mode, cumulative):
    def make():
        # 8 perturbed batches after each event: each one runs into the next epoch (6 batches an epoch)
        return [TemporaryPruning(SCHEDULES, "l2", "random", mode=mode, batches=8, cumulative=cumulative,
                                 include_bn=True, seed=4)]

    (ref,), (cb,), (saved,) = crash_and_resume(tmp_path, make, crash_epoch=2)
    assert saved["left"] == 8 and saved["active"]  # the event of epoch 2 had just started perturbing
    assert bool(saved["sigma"]) == (mode == "gaussian")
    _assert_same_events(ref.events, cb.events)
    for x in ref.removed:
        assert torch.equal(cb.removed[x], ref.removed[x])
    assert torch.equal(cb._generator.get_state(), ref._generator.get_state())


def test_zero_restore_pruning_resumes_a_pending_restore(tmp_path):
    def make():
        return [ZeroRestorePruning(SCHEDULES, "l2", "largest", batches=8)]

    (ref,), (cb,), (saved,) = crash_and_resume(tmp_path, make, crash_epoch=3)
    # zeroed at the end of epoch 3 (0-based 2) for 8 batches: still zeroed when the checkpoint was written
    assert saved["left"] == 8 and {name for name, _, _ in saved["saved"]} >= {"0.weight", "1.running_var"}
    _assert_same_events(ref.events, cb.events)
    assert cb._saved == {} and ref._saved == {}  # every restore happened


def test_hessian_values_survive_a_resume(tmp_path):
    def make():
        return [HessianEigenSum(k=2, epochs=[0, 2, 4], samples=16, iters=5, seed=1),
                IterativeStructuredPruning(SCHEDULES, "l2", "smallest")]

    (ref, _), (cb, _), (saved, _) = crash_and_resume(tmp_path, make, crash_epoch=3)
    assert set(saved["values"]) == {1, 3}
    assert list(cb.values) == [1, 3, 5] and cb.values == ref.values


def _canvas() -> torch.Tensor:
    return torch.randn(20, 3, 8, 8, generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("sites", ["auto", "relu_inputs"])
@pytest.mark.parametrize("window, crash_epoch", [(2, 4), (3, 2)])
def test_partition_early_bird_resumes_its_window_and_ticket(tmp_path, sites, window, crash_epoch):
    """threshold 1: found at the first epoch with a full window (epoch window + 1). Crashing after it
    needs the ticket weights back; crashing before it needs the snapshots seen so far."""
    canvas = _canvas()

    def make():
        return [PartitionEarlyBird(canvas, threshold=1.0, window=window, sites=sites)]

    (ref,), (cb,), (saved,) = crash_and_resume(tmp_path, make, crash_epoch=crash_epoch)
    assert len(saved["detector"]["previous"]) == min(window, crash_epoch)
    assert (saved["ticket_state"] is not None) == (crash_epoch > window)
    assert ref.found_epoch == cb.found_epoch == window + 1
    assert cb.curve == ref.curve and [e for e, _ in cb.curve] == [1, 2, 3, 4, 5]
    assert all(d is not None and 0 < d < 1 for _, d in cb.curve[window:])
    _assert_bitwise(cb.ticket_state, ref.ticket_state)
    assert len(cb.detector._previous) == window
    for a, b in zip(cb.detector._previous, ref.detector._previous, strict=True):
        assert list(a.bits) == list(b.bits) and a.shapes == b.shapes and a.num_points == b.num_points
        assert all((a.bits[s] == b.bits[s]).all() and a.bits[s].dtype == b.bits[s].dtype for s in a.bits)


@pytest.mark.parametrize("window, crash_epoch", [(2, 3), (4, 2)])
def test_channel_mask_early_bird_resumes_with_the_scale_penalty(tmp_path, window, crash_epoch):
    """Masks at 0 (before training), 1, 2, ...; threshold 1 (inclusive): found at epoch ``window``."""
    def make():
        return [BNScaleL1(1e-3), ChannelMaskEarlyBird(0.5, threshold=1.0, window=window)]

    (_, ref), (_, cb), (_, saved) = crash_and_resume(tmp_path, make, crash_epoch=crash_epoch)
    assert len(saved["detector"]["previous"]) == min(window, crash_epoch + 1)
    assert (saved["ticket_state"] is not None) == (crash_epoch >= window)
    assert ref.found_epoch == cb.found_epoch == window
    assert cb.curve == ref.curve and [e for e, _ in cb.curve] == [0, 1, 2, 3, 4]  # not after the last epoch
    _assert_bitwise(cb.ticket_state, ref.ticket_state)
    for a, b in zip(cb.detector._previous, ref.detector._previous, strict=True):
        assert a.dtype == torch.bool and torch.equal(a, b)


def test_mask_enforcer_needs_no_state(tmp_path):
    masks = {"0.weight": torch.rand(8, 3, 3, 3, generator=torch.Generator().manual_seed(0)) > 0.5}

    def make():
        return [MaskEnforcer(masks)]

    _, _, (saved,) = crash_and_resume(tmp_path, make, crash_epoch=2)
    assert saved == {}


# --- whole schedules, with a checkpoint per training stage as the experiment runner passes ----------
class StageFit:
    """``ctx.fit`` that checkpoints call i to ``folder/stage<i>`` (the runner's StageCheckpoints) and,
    when ``crash`` = (stage, epoch), crashes that stage in that epoch."""

    def __init__(self, folder: Path, crash: tuple[int, int] | None = None) -> None:
        self.folder, self.crash, self.calls, self.resumed = folder, crash, 0, []

    def __call__(self, model, data, config, callbacks=(), progress=True):
        i, self.calls = self.calls, self.calls + 1
        epoch = self.crash[1] if self.crash is not None and self.crash[0] == i else None
        res = fit(model, data, config, callbacks=[*callbacks, Crash(epoch)], progress=progress,
                  checkpoint=self.folder / f"stage{i}", checkpoint_every=1)
        self.resumed.append(res.resumed_from)
        return res


def _schedule_resumes(tmp_path, schedule, make_ctx, crash):
    ref_ctx = make_ctx(StageFit(tmp_path / "ref"))
    ref = schedule(ref_ctx)
    with pytest.raises(RuntimeError, match="simulated crash"):
        schedule(make_ctx(StageFit(tmp_path / "run", crash)))
    fit_ = StageFit(tmp_path / "run")
    ctx = make_ctx(fit_)
    res = schedule(ctx)
    assert fit_.resumed[crash[0]] == crash[1]
    _assert_bitwise(_weights(ctx.model), _weights(ref_ctx.model))
    _assert_bitwise(dict(res.masks), dict(ref.masks))
    assert _strip(res.history) == _strip(ref.history)
    assert res.events == ref.events
    return ref, res


def _images(n_train=48, n_test=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_test, 3, 32, 32, generator=g)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + 2 * (x[:, 1].mean(dim=(1, 2)) > 0).long()
    return SimpleNamespace(x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])


def _vgg_ctx(fit_, options, epochs=5):
    torch.manual_seed(0)
    model = models.create("vgg_scaled", num_classes=4, input_shape=(3, 32, 32), depth=11, width=1 / 32)
    train = TrainConfig(epochs=epochs, lr=0.05, batch_size=16, device="cpu", eval_every=0, seed=0,
                        lr_schedule="step", milestones=[2])
    finetune = TrainConfig(epochs=2, lr=0.01, batch_size=16, device="cpu", eval_every=0, seed=1)
    ctx = ScheduleContext(model=model, data=_images(), train=train, finetune=finetune, sparsity=0.5,
                          prune_fn=lambda *a: (_ for _ in ()).throw(AssertionError("no unstructured pruning")),
                          dense=lambda: (_ for _ in ()).throw(AssertionError("no cached dense model")),
                          fit=fit_, progress=False)
    ctx.options = options
    return ctx


def test_structured_schedule_resumes_inside_its_training_stage(tmp_path):
    options = {"score": "l2", "target": "smallest", "period": 1,
               "layers": [{"layer": ["features.4", "features.8"], "fraction": 0.5, "start": 0, "end": 3}]}
    _, res = _schedule_resumes(tmp_path, structured, lambda f: _vgg_ctx(f, options), crash=(0, 2))
    assert len(res.events) == 4 and [e["epoch"] for e in res.events] == [1, 2, 3, 4]


def test_slimming_schedule_resumes_its_early_bird_search(tmp_path):
    """The dense stage watches both rules (stop at the mask rule's early bird, found at epoch 2 with
    threshold 1 and window 2); the crash after epoch 1 keeps two masks and one partition snapshot."""
    options = {"ticket": "mask", "watch": True, "canvas_resolution": 4, "mask_threshold": 1.0, "mask_window": 2,
               "partition_threshold": 1.0, "partition_window": 1}
    _, res = _schedule_resumes(tmp_path, slimming, lambda f: _vgg_ctx(f, options), crash=(0, 1))
    ticket = next(r for r in res.history if r["stage"] == "ticket")
    assert (ticket["eb_mask_epoch"], ticket["eb_partition_epoch"], ticket["dense_epochs"]) == (2, 2, 2)
