"""``fit``: the training loop with callbacks.

Lean by design: the data stays on the device (:class:`~prunelab.data.loader.TensorLoader`), the
running loss and accuracy are summed on the device and read once per epoch (no ``.item()`` per batch,
which on a GPU would stall the queue of kernels every step), and everything else a run may want
(pruning masks, regularisers, probes) comes in through :class:`~prunelab.callbacks.Callback`.

Reproducibility: ``fit`` seeds Python, NumPy and torch with ``config.seed`` and the loader's
permutation and augmentation draws come from CPU generators seeded with ``seed + epoch``; two runs on
the same CPU with the same seed and initial weights give bitwise-identical weights. On CUDA set
``config.deterministic=True`` (``torch.use_deterministic_algorithms``, restored afterwards) and
export ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` before starting Python.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from prunelab.analysis.evaluate import EvalResult, evaluate
from prunelab.callbacks import Callback, TrainState
from prunelab.data.loader import TensorLoader
from prunelab.errors import PrunelabError
from prunelab.train.config import TrainConfig
from prunelab.train.jumpstart import Jumpstart
from prunelab.train.lr_schedule import lr_factor
from prunelab.train.progress import ProgressBar
from prunelab.train.regularizers import L1Regularizer
from prunelab.utils import resolve_device, seed_everything

ROW_KEYS = ("epoch", "iteration", "lr", "train_loss", "train_acc", "val_acc", "val_loss",
            "test_acc", "test_loss", "time")


@dataclass
class TrainResult:
    """The per-epoch ``history`` rows and the final evaluation of the trained model.

    ``final`` is on the test split, ``final_val`` on the validation split (None without one);
    ``best_epoch`` is the history ``epoch`` with the highest validation accuracy among evaluated
    epochs (None without validation data), for model selection. ``diverged`` is True when the
    training loss became NaN or infinite (training then stops).
    """

    history: list[dict[str, Any]]
    final: EvalResult
    final_val: EvalResult | None = None
    best_epoch: int | None = None
    epochs: int = 0
    iterations: int = 0
    time: float = 0.0
    stopped_early: bool = False
    diverged: bool = False

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {**self.final.to_row("test_"), "epochs": self.epochs,
                               "iterations": self.iterations, "train_time": self.time,
                               "stopped_early": self.stopped_early, "diverged": self.diverged}
        if self.final_val is not None:
            row.update(self.final_val.to_row("val_"))
            row["best_epoch"] = self.best_epoch
        return row


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or Adam (``betas=(momentum, 0.999)``) over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PrunelabError("the model has no trainable parameters (all requires_grad=False)")
    # The fused kernels do the whole update in one pass over all parameters: on CPU this halves the
    # optimizer's share of a LeNet-300-100 step. They need floating-point parameters on CPU/CUDA.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=config.lr, betas=(config.momentum, 0.999),
                            weight_decay=config.weight_decay, fused=fused)


def _split(data: Any, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    x, y = getattr(data, f"x_{name}", None), getattr(data, f"y_{name}", None)
    if x is None or y is None:
        return None
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape[:1] != y.shape[:1]:
        raise PrunelabError(f"data.x_{name} and data.y_{name} must be tensors with the same number of rows")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise PrunelabError(f"data.y_{name} must be integer class labels of shape (N,), got {y.dtype} "
                            f"{tuple(y.shape)}")
    if x.shape[0] == 0:
        raise PrunelabError(f"data.x_{name} is empty")
    return x.to(device), y.to(device, dtype=torch.long)


@contextmanager
def _deterministic(enabled: bool, device: torch.device) -> Iterator[None]:
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


def _check_batch(outputs: torch.Tensor, xb: torch.Tensor, y: torch.Tensor) -> None:
    """Once, on the first batch: logits of shape (batch, classes) and labels inside 0..classes-1."""
    if outputs.dim() != 2 or outputs.shape[0] != xb.shape[0]:
        raise PrunelabError(
            f"model output has shape {tuple(outputs.shape)}; expected (batch, num_classes) logits"
        )
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= outputs.shape[1]:
        raise PrunelabError(
            f"training labels span {lo}..{hi} but the model outputs {outputs.shape[1]} classes"
        )


def _as_config(config: TrainConfig | dict[str, Any] | None) -> TrainConfig:
    if config is None:
        return TrainConfig()
    if isinstance(config, dict):
        return TrainConfig.build(**config)
    if not isinstance(config, TrainConfig):
        raise PrunelabError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
    return config


class _Epoch:
    """Runs one epoch of optimizer steps and sums loss/hits on the device (read once, at the end)."""

    def __init__(self, state: TrainState, callbacks: Sequence[Callback], loss_fn: nn.Module,
                 bar: ProgressBar, y_train: torch.Tensor) -> None:
        self.state, self.callbacks, self.loss_fn, self.bar = state, callbacks, loss_fn, bar
        self.y_train = y_train

    def run(self, loader: TensorLoader) -> tuple[float, float]:
        """Train over ``loader`` (until it ends, the step budget is spent or ``stop``); (loss, acc)."""
        state, callbacks = self.state, self.callbacks
        model, optimizer = state.model, state.optimizer
        loss_sum = torch.zeros((), device=state.device)
        hits = torch.zeros((), dtype=torch.long, device=state.device)
        seen = 0
        for xb, yb in loader:
            for cb in callbacks:
                cb.on_batch_begin(state, xb, yb)
            outputs = model(xb)
            if state.iteration == 0:
                _check_batch(outputs, xb, self.y_train)
            loss = self.loss_fn(outputs, yb)
            total = loss
            for cb in callbacks:
                extra = cb.extra_loss(state, xb, yb, outputs)
                if extra is not None:
                    total = total + extra
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            for cb in callbacks:
                cb.after_backward(state)
            optimizer.step()
            state.scheduler.step()
            state.iteration += 1
            for cb in callbacks:
                cb.after_step(state)
            loss_sum += loss.detach() * yb.shape[0]
            hits += (outputs.detach().argmax(dim=1) == yb).sum()
            seen += yb.shape[0]
            self.bar.advance()
            if state.stop or state.iteration >= state.total_iterations:
                break
        return float(loss_sum) / max(seen, 1), int(hits) / max(seen, 1)


def fit(
    model: nn.Module,
    data: Any,
    config: TrainConfig | dict[str, Any] | None = None,
    callbacks: Iterable[Callback] = (),
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` (in place) on ``data.x_train, data.y_train`` with cross-entropy and ``config``.

    ``data`` is a :class:`prunelab.data.Dataset` (any object with tensors ``x_train, y_train,
    x_test, y_test`` and optionally ``x_val, y_val`` works). The model and the tensors are moved to
    ``config.device``. Each epoch ends with a history row (see :data:`ROW_KEYS`; evaluation columns
    are None on epochs without evaluation) merged with the callbacks' ``state.metrics``. The model
    is evaluated at the end of every ``eval_every``-th epoch and of the last one.
    """
    config = _as_config(config)
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise PrunelabError(f"callbacks must be prunelab.train.Callback instances, got {type(cb).__name__}")
    if config.l1 > 0:
        callbacks.insert(0, L1Regularizer(config.l1))
    if config.jumpstart > 0:
        callbacks.insert(0, Jumpstart(config.jumpstart, aggregate=config.jumpstart_aggregate))

    device = resolve_device(config.device)
    train, test, val = (_split(data, name, device) for name in ("train", "test", "val"))
    if train is None or test is None:
        raise PrunelabError("data needs x_train, y_train, x_test and y_test tensors")
    seed_everything(config.seed)
    model.to(device)
    loader = TensorLoader(*train, config.batch_size, shuffle=True, seed=config.seed,
                          augment="cifar" if config.augment else None)
    steps_per_epoch = len(loader)
    if config.iterations is not None:
        total_iterations, total_epochs = config.iterations, math.ceil(config.iterations / steps_per_epoch)
    else:
        assert config.epochs is not None
        total_iterations, total_epochs = config.epochs * steps_per_epoch, config.epochs
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, step, steps_per_epoch, total_iterations)
    )
    state = TrainState(model=model, optimizer=optimizer, config=config, data=data, device=device,
                       scheduler=scheduler, steps_per_epoch=steps_per_epoch,
                       total_iterations=total_iterations, total_epochs=total_epochs)
    eval_bs = max(1024, config.batch_size)

    def evaluate_now() -> tuple[EvalResult | None, EvalResult]:
        return (evaluate(model, *val, batch_size=eval_bs) if val is not None else None,
                evaluate(model, *test, batch_size=eval_bs))

    bar = ProgressBar(progress, total_iterations)
    epoch_runner = _Epoch(state, callbacks, nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
                          bar, train[1])
    diverged = False
    evaluated_at: tuple[int, EvalResult | None, EvalResult] | None = None
    start = time.perf_counter()
    model.train()
    with _deterministic(config.deterministic, device):
        try:
            for cb in callbacks:
                cb.on_train_begin(state)
            for epoch in range(total_epochs):
                if state.stop or state.iteration >= total_iterations:
                    break
                state.epoch, state.metrics = epoch, {}
                loader.set_epoch(epoch)
                for cb in callbacks:
                    cb.on_epoch_begin(state)
                t0 = time.perf_counter()
                row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
                row.update(epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"])
                row["train_loss"], row["train_acc"] = epoch_runner.run(loader)
                row["iteration"] = state.iteration
                if not math.isfinite(row["train_loss"]):
                    diverged = state.stop = True
                last = epoch == total_epochs - 1 or state.iteration >= total_iterations or state.stop
                if last or (config.eval_every and (epoch + 1) % config.eval_every == 0):
                    val_res, test_res = evaluate_now()
                    evaluated_at = (state.iteration, val_res, test_res)
                    if val_res is not None:
                        row.update(val_acc=val_res.accuracy, val_loss=val_res.loss)
                    row.update(test_acc=test_res.accuracy, test_loss=test_res.loss)
                row["time"] = time.perf_counter() - t0
                state.history.append(row)
                for cb in callbacks:
                    cb.on_epoch_end(state)
                clash = sorted(set(state.metrics) & set(ROW_KEYS))
                if clash:
                    raise PrunelabError(f"callback metrics {clash} collide with the training-loop columns")
                row.update(state.metrics)
                bar.show(row)
            for cb in callbacks:
                cb.on_train_end(state)
        finally:
            bar.close()
    elapsed = time.perf_counter() - start
    # Re-evaluate unless the last evaluation saw the final model: no step since, and no callback
    # with an on_epoch_end/on_train_end hook (which may have changed the weights, e.g. pruned them).
    hooks_after_eval = any(
        type(cb).on_epoch_end is not Callback.on_epoch_end or type(cb).on_train_end is not Callback.on_train_end
        for cb in callbacks
    )
    if evaluated_at is not None and evaluated_at[0] == state.iteration and not hooks_after_eval:
        _, val_res, test_res = evaluated_at
    else:
        val_res, test_res = evaluate_now()
    scored = [r for r in state.history if r.get("val_acc") is not None]
    best = max(scored, key=lambda r: r["val_acc"])["epoch"] if scored else None
    return TrainResult(
        history=state.history, final=test_res, final_val=val_res, best_epoch=best,
        epochs=len(state.history), iterations=state.iteration, time=elapsed,
        stopped_early=state.stop and not diverged and state.iteration < total_iterations,
        diverged=diverged,
    )
