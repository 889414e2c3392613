"""fit: learning, determinism, hook order and counts, extra losses, stop flag, schedules in the loop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.train import Callback, TrainConfig, TrainingDiverged, TrainState, fit, loop


@dataclass
class Blobs:
    """A hand-made dataset with the fields of prunelab.data.Dataset that fit reads."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    num_classes: int = 3


def blobs(n_train: int = 300, n_test: int = 150, dim: int = 8, classes: int = 3, seed: int = 0,
          val: int = 0) -> Blobs:
    g = torch.Generator().manual_seed(seed)
    centres = 2.5 * torch.randn(classes, dim, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=g)
        return centres[y] + torch.randn(n, dim, generator=g), y

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    xv, yv = draw(val) if val else (None, None)
    return Blobs(xtr, ytr, xte, yte, xv, yv, classes)


def mlp(seed: int = 0, dim: int = 8, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, classes))


CPU = {"device": "cpu"}


def test_tiny_mlp_learns_blobs() -> None:
    data = blobs()
    res = fit(mlp(), data, TrainConfig(epochs=5, lr=0.05, batch_size=32, **CPU), progress=False)
    assert res.final.accuracy > 0.9
    assert res.history[-1]["train_acc"] > 0.9
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4, 5]
    assert [r["iteration"] for r in res.history] == [10, 20, 30, 40, 50]  # ceil(300 / 32) = 10 per epoch
    assert res.iterations == 50 and res.epochs == 5 and not res.stopped_early
    assert set(res.history[0]) >= {"epoch", "iteration", "lr", "train_loss", "train_acc", "test_acc",
                                  "test_loss", "time"}


def test_same_seed_gives_bitwise_identical_weights() -> None:
    data = blobs()
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=32, seed=7, lr_schedule="cosine", l1=1e-4, **CPU)
    a, b = mlp(seed=1), mlp(seed=1)
    ra, rb = fit(a, data, cfg, progress=False), fit(b, data, cfg, progress=False)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert [r["train_loss"] for r in ra.history] == [r["train_loss"] for r in rb.history]
    c = mlp(seed=1)
    fit(c, data, cfg.model_copy(update={"seed": 8}), progress=False)  # another batch order
    assert not torch.equal(a[1].weight, c[1].weight)


class Recorder(Callback):
    """Logs every hook with the iteration it saw."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self.lr_in_after_step: list[float] = []
        self.grad_seen_after_backward: list[bool] = []

    def on_train_begin(self, state: TrainState) -> None:
        self.log.append(("train_begin", state.iteration))

    def on_epoch_begin(self, state: TrainState) -> None:
        self.log.append(("epoch_begin", state.iteration))

    def on_batch_begin(self, state: TrainState, xb: torch.Tensor, yb: torch.Tensor) -> None:
        self.log.append(("batch_begin", state.iteration))

    def extra_loss(self, state, xb, yb, outputs):
        self.log.append(("extra_loss", state.iteration))

    def after_backward(self, state: TrainState) -> None:
        self.log.append(("after_backward", state.iteration))
        self.grad_seen_after_backward.append(state.model[1].weight.grad is not None)

    def after_step(self, state: TrainState) -> None:
        self.log.append(("after_step", state.iteration))
        self.lr_in_after_step.append(state.optimizer.param_groups[0]["lr"])

    def on_epoch_end(self, state: TrainState) -> None:
        self.log.append(("epoch_end", state.iteration))

    def on_train_end(self, state: TrainState) -> None:
        self.log.append(("train_end", state.iteration))


def test_hooks_run_in_order_with_counts() -> None:
    data = blobs(n_train=10)
    rec = Recorder()
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.1, lr_schedule="step", milestones=[1], gamma=0.5, **CPU)
    fit(mlp(), data, cfg, callbacks=[rec], progress=False)
    expected = [("train_begin", 0)]
    it = 0
    for _ in range(2):
        expected.append(("epoch_begin", it))
        for _ in range(3):  # ceil(10 / 4) batches
            expected += [("batch_begin", it), ("extra_loss", it), ("after_backward", it)]
            it += 1
            expected.append(("after_step", it))  # the step is counted before after_step
        expected.append(("epoch_end", it))
    expected.append(("train_end", it))
    assert rec.log == expected
    assert all(rec.grad_seen_after_backward)
    # after_step runs after the scheduler: the 3rd step ends epoch 0, so lr is already halved there
    assert rec.lr_in_after_step == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05, 0.05])


class FreezeFirstRow(Callback):
    """What a pruning callback does: zero the gradient in after_backward, the weight in after_step."""

    def on_train_begin(self, state: TrainState) -> None:
        with torch.no_grad():
            state.model[1].weight[0].zero_()

    def after_backward(self, state: TrainState) -> None:
        state.model[1].weight.grad[0] = 0.0

    def after_step(self, state: TrainState) -> None:
        with torch.no_grad():
            state.model[1].weight[0].zero_()


def test_masking_hooks_keep_weights_zero_under_momentum_and_decay() -> None:
    model = mlp()
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, weight_decay=1e-3, **CPU)
    fit(model, blobs(), cfg, callbacks=[FreezeFirstRow()], progress=False)
    assert torch.equal(model[1].weight[0], torch.zeros(8))
    assert model[1].weight[1:].abs().sum() > 0


def test_l1_gradient_is_l1_times_sign_when_data_loss_has_no_weight_gradient() -> None:
    # inputs are all zero, so d(cross-entropy)/dW = (dL/dz) x^T = 0: the weight gradient is the L1 term alone
    data = Blobs(torch.zeros(8, 4), torch.arange(8) % 3, torch.zeros(4, 4), torch.arange(4) % 3)
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    w0 = model.weight.detach().clone()
    grads = []

    class Grab(Callback):
        def after_backward(self, state: TrainState) -> None:
            grads.append(state.model.weight.grad.clone())

    fit(model, data, TrainConfig(iterations=1, batch_size=8, l1=0.01, momentum=0.0, **CPU),
        callbacks=[Grab()], progress=False)
    assert torch.equal(grads[0], 0.01 * torch.sign(w0))
    assert model.bias.grad is not None and model.bias.grad.abs().sum() > 0  # the data loss still acts


def test_extra_loss_terms_from_callbacks_are_added() -> None:
    data = Blobs(torch.zeros(8, 4), torch.arange(8) % 3, torch.zeros(4, 4), torch.arange(4) % 3)
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    w0 = model.weight.detach().clone()
    grads = []

    class Quadratic(Callback):
        def extra_loss(self, state, xb, yb, outputs):
            return 0.5 * (state.model.weight**2).sum()  # gradient W

    class Grab(Callback):
        def after_backward(self, state: TrainState) -> None:
            grads.append(state.model.weight.grad.clone())

    fit(model, data, TrainConfig(iterations=1, batch_size=8, l1=0.01, **CPU),
        callbacks=[Quadratic(), Grab()], progress=False)
    assert torch.allclose(grads[0], w0 + 0.01 * torch.sign(w0), atol=1e-7)


def test_stop_flag_ends_training_after_the_step() -> None:
    class StopAt(Callback):
        def __init__(self) -> None:
            self.ended = False

        def after_step(self, state: TrainState) -> None:
            if state.iteration == 13:
                state.stop = True

        def on_train_end(self, state: TrainState) -> None:
            self.ended = True

    cb = StopAt()
    res = fit(mlp(), blobs(), TrainConfig(epochs=5, batch_size=32, **CPU), callbacks=[cb], progress=False)
    assert res.iterations == 13 and res.stopped_early and cb.ended
    assert len(res.history) == 2 and res.history[-1]["iteration"] == 13
    assert res.history[-1]["test_acc"] == res.final.accuracy  # the partial epoch is closed and evaluated


def test_iterations_budget_and_partial_last_epoch() -> None:
    res = fit(mlp(), blobs(n_train=10), TrainConfig(iterations=7, batch_size=4, **CPU), progress=False)
    assert [r["iteration"] for r in res.history] == [3, 6, 7]
    assert res.iterations == 7 and not res.stopped_early


def test_lr_schedule_in_history_rows() -> None:
    data = blobs(n_train=12)
    step = fit(mlp(), data, TrainConfig(epochs=6, batch_size=4, lr=0.2, lr_schedule="step",
                                        milestones=[2, 4], gamma=0.5, **CPU), progress=False)
    assert [r["lr"] for r in step.history] == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05, 0.05])
    cos = fit(mlp(), data, TrainConfig(epochs=4, batch_size=4, lr=0.2, lr_schedule="cosine", **CPU),
              progress=False)
    expected = [0.2 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [r["lr"] for r in cos.history] == pytest.approx(expected)


def test_eval_every_and_validation_for_model_selection() -> None:
    data = blobs(val=60)
    res = fit(mlp(), data, TrainConfig(epochs=3, batch_size=32, eval_every=2, **CPU), progress=False)
    assert [r["test_acc"] is None for r in res.history] == [True, False, False]  # epochs 2 and 3 (last)
    assert res.history[1]["val_acc"] is not None and res.final_val is not None
    assert res.best_epoch in (2, 3)
    assert res.final.accuracy == res.history[-1]["test_acc"]
    only_end = fit(mlp(), data, TrainConfig(epochs=3, batch_size=32, eval_every=0, **CPU), progress=False)
    assert [r["test_acc"] is None for r in only_end.history] == [True, True, False]


def test_callback_metrics_are_merged_and_clashes_are_errors() -> None:
    class Probe(Callback):
        def on_epoch_begin(self, state: TrainState) -> None:
            state.metrics["seen_at_begin"] = state.epoch

        def on_epoch_end(self, state: TrainState) -> None:
            state.metrics["norm"] = float(state.model[1].weight.detach().norm())

    res = fit(mlp(), blobs(), TrainConfig(epochs=2, batch_size=64, **CPU), callbacks=[Probe()], progress=False)
    assert [r["seen_at_begin"] for r in res.history] == [0, 1]
    assert all(r["norm"] > 0 for r in res.history)

    class Clash(Callback):
        def on_epoch_end(self, state: TrainState) -> None:
            state.metrics["test_acc"] = 1.0

    with pytest.raises(PrunelabError, match="collide"):
        fit(mlp(), blobs(), TrainConfig(epochs=1, **CPU), callbacks=[Clash()], progress=False)


class Poison(Callback):
    """A NaN extra loss from step ``at`` on (NaN gradients, then NaN weights if a step were taken)."""

    def __init__(self, at: int = 0) -> None:
        self.at = at

    def extra_loss(self, state, xb, yb, outputs):
        if state.iteration >= self.at:
            return state.model[1].weight.sum() * float("nan")
        return None


def test_nan_loss_raises_naming_epoch_iteration_lr_and_causes() -> None:
    model = mlp()
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, **CPU)  # 5 steps per epoch
    with pytest.raises(TrainingDiverged) as info:
        fit(model, blobs(), cfg, callbacks=[Poison(at=7)], progress=False)
    err = info.value
    assert isinstance(err, PrunelabError) and math.isnan(err.loss)
    assert (err.epoch, err.iteration, err.lr) == (2, 8, 0.05)  # the 8th step is the 3rd of epoch 2
    msg = str(err)
    assert "\n" not in msg
    for needle in ("nan", "epoch 2/3", "iteration 8/15", "lr 0.05", "learning rate too high", "extra loss"):
        assert needle in msg, needle
    # checked before backward: the NaN step was not taken, the weights are still finite
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_high_learning_rate_diverges_instead_of_returning_a_nan_model() -> None:
    with pytest.raises(TrainingDiverged, match=r"epoch 1/5, iteration \d+/50 \(lr 1e\+30\)"):
        fit(mlp(), blobs(), TrainConfig(epochs=5, batch_size=32, lr=1e30, **CPU), progress=False)


def test_off_cpu_divergence_check_reads_the_epoch_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a per-step read would cost a device sync, the epoch's summed losses are checked."""
    monkeypatch.setattr(loop, "CHECK_EVERY_STEP_ON", ())
    cfg = TrainConfig(epochs=3, batch_size=64, **CPU)
    for poison in (Poison(at=7), Poison(at=9)):  # NaN in the CE (weights) or only in the extra loss
        with pytest.raises(TrainingDiverged, match="summed over the epoch") as info:
            fit(mlp(), blobs(), cfg, callbacks=[poison], progress=False)
        assert (info.value.epoch, info.value.iteration) == (2, 10)
    # and a clean run passes the same check
    assert fit(mlp(), blobs(), cfg, progress=False).iterations == 15


def test_a_final_model_with_non_finite_loss_is_an_error() -> None:
    class Spoil(Callback):  # the last hook leaves NaN weights
        def on_train_end(self, state):
            with torch.no_grad():
                state.model[3].weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match="final model's test loss is nan"):
        fit(mlp(), blobs(), TrainConfig(epochs=1, **CPU), callbacks=[Spoil()], progress=False)


def test_non_finite_inputs_are_refused_before_training() -> None:
    data = blobs()
    data.x_train[3, 2] = float("nan")
    data.x_train[5, 0] = float("inf")
    with pytest.raises(PrunelabError, match="data.x_train has 2 NaN or infinite values"):
        fit(mlp(), data, TrainConfig(epochs=1, **CPU), progress=False)


def test_augment_adam_deterministic_and_progress_paths_run() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    data = Blobs(x, y, x[:8], y[:8], num_classes=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    cfg = TrainConfig(epochs=2, batch_size=8, optimizer="adam", lr=1e-3, augment=True, deterministic=True,
                      label_smoothing=0.1, **CPU)
    before = torch.are_deterministic_algorithms_enabled()
    res = fit(model, data, cfg, progress=True)  # not a terminal under pytest: the bar stays silent
    assert torch.are_deterministic_algorithms_enabled() == before
    assert len(res.history) == 2 and math.isfinite(res.history[-1]["train_loss"])


def test_bad_inputs_are_clear_errors() -> None:
    data = blobs()
    with pytest.raises(PrunelabError, match="lr=-1"):
        fit(mlp(), data, {"lr": -1}, progress=False)
    with pytest.raises(PrunelabError, match="x_test"):
        fit(mlp(), Blobs(data.x_train, data.y_train, None, None), TrainConfig(**CPU), progress=False)
    with pytest.raises(PrunelabError, match="outputs 2 classes"):
        fit(mlp(classes=2), data, TrainConfig(epochs=1, **CPU), progress=False)
    with pytest.raises(PrunelabError, match="Callback"):
        fit(mlp(), data, TrainConfig(epochs=1, **CPU), callbacks=[object()], progress=False)
    with pytest.raises(PrunelabError, match="augment='cifar'"):
        fit(mlp(), data, TrainConfig(epochs=1, augment=True, **CPU), progress=False)


def test_labels_must_be_integer_classes() -> None:
    data = blobs()
    bad = Blobs(data.x_train, data.y_train.float(), data.x_test, data.y_test)
    with pytest.raises(PrunelabError, match="y_train must be integer class labels"):
        fit(mlp(), bad, TrainConfig(epochs=1, **CPU), progress=False)
    int32 = Blobs(data.x_train, data.y_train.int(), data.x_test, data.y_test.int())
    assert fit(mlp(), int32, TrainConfig(epochs=1, **CPU), progress=False).iterations == 3
