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

Resumable runs: ``fit(..., checkpoint=PATH, checkpoint_every=N)`` writes the whole training state
(model, optimizer, scheduler, counters, history, every callback's ``state_dict``, RNG states) at the
end of every N-th epoch in one atomic write; a later ``fit`` with the same arguments resumes from it
and ends with the same weights as an uninterrupted run (bitwise on the CPU). See ``docs/training.md``.

Divergence: a non-finite training loss raises :class:`TrainingDiverged`. On the CPU the loss is
checked every step (reading a CPU scalar costs no device sync); on other devices the per-epoch sums
that the loop reads anyway are checked, so no step waits for the host.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunelab.analysis.evaluate import EvalResult, evaluate
from prunelab.callbacks import Callback, TrainState
from prunelab.data.loader import TensorLoader
from prunelab.errors import PrunelabError
from prunelab.models.adapters import ModelAdapter, TensorAdapter, adapter_for, check_adapter, is_transformers_model
from prunelab.train.adapted import PairLoader, Tally, evaluate_pair, pair_tensors, split_pair
from prunelab.train.checkpoint import check_fits, load_train_state, remove_stale_tmp, save_train_state
from prunelab.train.config import TrainConfig
from prunelab.train.jumpstart import Jumpstart
from prunelab.train.lr_schedule import lr_factor
from prunelab.train.progress import ProgressBar
from prunelab.train.regularizers import L1Regularizer
from prunelab.utils import resolve_device, seed_everything

ROW_KEYS = ("epoch", "iteration", "lr", "train_loss", "train_acc", "val_acc", "val_loss",
            "test_acc", "test_loss", "time")

#: the file name of the training checkpoint when ``fit(checkpoint=...)`` names a folder
CHECKPOINT_NAME = "train_checkpoint.safetensors"
#: device types on which the training loss is checked every step (a scalar read costs no sync there)
CHECK_EVERY_STEP_ON = ("cpu",)
#: evenly spaced training samples hashed into a checkpoint's identity (all labels are hashed)
_FINGERPRINT_ROWS = 1024

_CAUSES = ("likely causes: a learning rate too high for this model and optimizer (try a 10x smaller "
           "lr or a warm-up), inputs with huge values (normalise the data), or a callback's extra loss")


class TrainingDiverged(PrunelabError):
    """The training loss became NaN or infinite, or training ended with a model whose loss is.

    ``epoch`` is 1-based; ``iteration`` is the 1-based optimizer step at which the loss was seen (where
    only per-epoch sums are checked, off the CPU, the epoch's last step); ``lr`` is the learning rate
    of that step and ``loss`` the offending value.
    """

    def __init__(self, message: str, *, epoch: int, iteration: int, lr: float, loss: float) -> None:
        super().__init__(message)
        self.epoch, self.iteration, self.lr, self.loss = epoch, iteration, lr, loss


@dataclass
class TrainResult:
    """The per-epoch ``history`` rows and the final evaluation of the trained model.

    ``final`` is on the test split, ``final_val`` on the validation split (None without one);
    ``best_epoch`` is the history ``epoch`` with the highest validation accuracy among evaluated
    epochs (None without validation data), for model selection. ``time`` is the training time in
    seconds, summed over the sessions of a resumed run; ``resumed_from`` the 1-based epoch after which
    the checkpoint it resumed from was written (None for a fresh start). A diverged run raises
    :class:`TrainingDiverged` instead of returning.
    """

    history: list[dict[str, Any]]
    final: EvalResult
    final_val: EvalResult | None = None
    best_epoch: int | None = None
    epochs: int = 0
    iterations: int = 0
    time: float = 0.0
    stopped_early: bool = False
    resumed_from: int | None = None

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {**self.final.to_row("test_"), "epochs": self.epochs,
                               "iterations": self.iterations, "train_time": self.time,
                               "stopped_early": self.stopped_early}
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
    x = x.to(device)
    if x.is_floating_point():
        bad = int((~torch.isfinite(x)).sum())  # one pass and one sync per split, once per fit
        if bad:
            raise PrunelabError(f"data.x_{name} has {bad} NaN or infinite values (of {x.numel()}); "
                                "training on them gives a NaN model")
    return x, y.to(device, dtype=torch.long)


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


def _diverged(state: TrainState, loss: float, iteration: int, lr: float, where: str) -> TrainingDiverged:
    epoch = state.epoch + 1
    return TrainingDiverged(
        f"training diverged: the training loss is {loss}{' ' + where if where else ''} at epoch "
        f"{epoch}/{state.total_epochs}, "
        f"iteration {iteration}/{state.total_iterations} (lr {lr:g}); {_CAUSES}",
        epoch=epoch, iteration=iteration, lr=lr, loss=loss,
    )


class _Epoch:
    """Runs one epoch of optimizer steps and sums loss/hits on the device (read once, at the end)."""

    def __init__(self, state: TrainState, callbacks: Sequence[Callback], loss_fn: nn.Module,
                 bar: ProgressBar, y_train: torch.Tensor | None, adapter: ModelAdapter | None = None) -> None:
        self.state, self.callbacks, self.loss_fn, self.bar = state, callbacks, loss_fn, bar
        self.y_train = y_train
        self.adapter = adapter  # None: plain (x, y) tensors, model(x), loss_fn; else the adapter's call and loss
        self.check_each_step = state.device.type in CHECK_EVERY_STEP_ON

    def run(self, loader: TensorLoader) -> tuple[float, float]:
        """Train over ``loader`` (until it ends, the step budget is spent or ``stop``); (loss, acc).

        Raises :class:`TrainingDiverged` before the step whose loss (with the callbacks' extra
        losses) is not finite (CPU), or at the end of an epoch whose summed losses are not (elsewhere).
        """
        state, callbacks = self.state, self.callbacks
        model, optimizer = state.model, state.optimizer
        loss_sum = torch.zeros((), device=state.device)
        extra_sum = torch.zeros((), device=state.device)
        hits = torch.zeros((), dtype=torch.long, device=state.device)
        seen = 0
        adapter = self.adapter
        tally = Tally(state.device) if adapter is not None else None
        for xb, yb in loader:
            for cb in callbacks:
                cb.on_batch_begin(state, xb, yb)
            if adapter is None:
                outputs = model(xb)
                if state.iteration == 0:
                    _check_batch(outputs, xb, self.y_train)
                loss = self.loss_fn(outputs, yb)
            else:
                outputs = adapter.forward(model, (xb, yb))
                loss = adapter.loss_from_logits(outputs, (xb, yb))
            total = loss
            for cb in callbacks:
                extra = cb.extra_loss(state, xb, yb, outputs)
                if extra is not None:
                    total = total + extra
            if self.check_each_step:
                value = total.item()
                if not math.isfinite(value):
                    raise _diverged(state, value, state.iteration + 1, optimizer.param_groups[0]["lr"],
                                    "(with the callbacks' extra losses)" if total is not loss else "")
            elif total is not loss:
                extra_sum += (total - loss).detach()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            for cb in callbacks:
                cb.after_backward(state)
            optimizer.step()
            state.scheduler.step()
            state.iteration += 1
            for cb in callbacks:
                cb.after_step(state)
            if tally is None:
                loss_sum += loss.detach() * yb.shape[0]
                hits += (outputs.detach().argmax(dim=1) == yb).sum()
                seen += yb.shape[0]
            else:
                tally.add(adapter, outputs, (xb, yb), loss)
            self.bar.advance()
            if state.stop or state.iteration >= state.total_iterations:
                break
        if tally is not None:
            mean, acc = tally.result()
        else:
            mean, acc = float(loss_sum) / max(seen, 1), int(hits) / max(seen, 1)
        if not self.check_each_step:
            extras = float(extra_sum)
            if not math.isfinite(mean + extras):
                bad = mean if not math.isfinite(mean) else extras
                raise _diverged(state, bad, state.iteration, optimizer.param_groups[0]["lr"],
                                "(summed over the epoch)")
        return mean, acc


def _training_adapter(model: nn.Module, data: Any, adapter: ModelAdapter | None,
                      config: TrainConfig) -> ModelAdapter | None:
    """The adapter ``fit`` trains through, or None for the plain path (tensors, ``model(x)``, the loop's
    cross-entropy): ``adapter=`` when given, else :func:`adapter_for` for a ``transformers`` model or
    dict inputs. Options that only the plain path implements are refused rather than ignored."""
    if adapter is not None:
        adapter = check_adapter(adapter)
    elif is_transformers_model(model) or isinstance(getattr(data, "x_train", None), Mapping):
        adapter = adapter_for(model)
    if adapter is None:
        return None
    refused = {"augment": config.augment, "label_smoothing": config.label_smoothing > 0,
               "jumpstart": config.jumpstart > 0}
    bad = [k for k, v in refused.items() if v]
    if bad:
        who = "a transformers model" if is_transformers_model(model) else f"adapter {type(adapter).__name__}"
        raise PrunelabError(f"training {who}: {', '.join(bad)} is not supported (it needs image tensors or a plain "
                            f"model, and the loss is the adapter's); set {' and '.join(bad)} off")
    if isinstance(adapter, TensorAdapter) and not getattr(adapter, "custom_loss", False) and not isinstance(
            getattr(data, "x_train", None), Mapping):
        return None  # the plain path is the same computation, bit for bit the zoo's
    return adapter


# ---------------------------------------------------------------------------------------------
# Resumable training


def checkpoint_file(checkpoint: str | os.PathLike) -> Path:
    """The training-checkpoint file that ``fit(checkpoint=...)`` uses: the path itself when it ends in
    ``.safetensors``, else ``<folder>/train_checkpoint.safetensors``."""
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, (str, os.PathLike)):
        raise PrunelabError(f"checkpoint must be a folder or a .safetensors path, got {checkpoint!r}")
    path = Path(checkpoint)
    if path.suffix == ".safetensors":
        return path
    if path.suffix and not path.is_dir():
        raise PrunelabError(
            f"checkpoint {str(path)!r} must be a folder or a file ending in .safetensors, not {path.suffix!r}"
        )
    return path / CHECKPOINT_NAME


def _sha256(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _identity(config: TrainConfig, model: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
              splits: dict[str, tuple[torch.Tensor, torch.Tensor] | None],
              callbacks: Sequence[Callback]) -> dict[str, Any]:
    """What makes a checkpoint belong to this call: config, initial weights, data, callback types."""
    x, y = train
    rows = x[:: max(1, x.shape[0] // _FINGERPRINT_ROWS)]
    dump = config.model_dump(mode="json")
    return {
        "config_hash": hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest(),
        "config": dump,
        "initial_weights": _sha256(sorted(model.state_dict().items())),
        "data": {"x_train": list(x.shape), "x_train_sample": _sha256([("x", rows)]), "y_train": _sha256([("y", y)]),
                 **{f"x_{k}": list(v[0].shape) if v is not None else None for k, v in splits.items()}},
        # class names only: a script's callback is __main__.X when run, script.X when imported
        "callbacks": [type(cb).__qualname__ for cb in callbacks],
    }


def _identity_pairs(config: TrainConfig, model: nn.Module, adapter: ModelAdapter, train: Any,
                    splits: dict[str, Any], callbacks: Sequence[Callback]) -> dict[str, Any]:
    """:func:`_identity` for adapter batches: the same fields, every tensor of the batch fingerprinted."""
    n = adapter.batch_size(train)
    rows = adapter.select(train, torch.arange(0, n, max(1, n // _FINGERPRINT_ROWS)))
    dump = config.model_dump(mode="json")
    return {
        "config_hash": hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest(),
        "config": dump,
        "initial_weights": _sha256(sorted(model.state_dict().items())),
        "data": {"train": {k: list(v.shape) for k, v in pair_tensors(train)}, "train_sample": _sha256(pair_tensors(rows)),
                 "adapter": type(adapter).__qualname__,
                 **{k: ({t: list(v.shape) for t, v in pair_tensors(p)} if p is not None else None)
                    for k, p in splits.items()}},
        "callbacks": [type(cb).__qualname__ for cb in callbacks],
    }


def _mismatch(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What differs between the saved identity and this call's, in words (None when nothing)."""
    if saved.get("config_hash") != now["config_hash"]:
        old, new = saved.get("config", {}), now["config"]
        diff = [f"{k}={old.get(k)!r} in the checkpoint, {new.get(k)!r} now"
                for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return "another training config: " + ("; ".join(diff) or "different hash")
    if saved.get("initial_weights") != now["initial_weights"]:
        return "other initial weights (the model passed to fit differs from the checkpointed run's)"
    if saved.get("data") != now["data"]:
        return f"other data: {saved.get('data')} in the checkpoint, {now['data']} now"
    if saved.get("callbacks") != now["callbacks"]:
        return f"other callbacks: {saved.get('callbacks')} in the checkpoint, {now['callbacks']} now"
    return None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Checkpointer:
    """Writes, verifies, restores and finally removes the training checkpoint of one ``fit`` call."""

    def __init__(self, file: Path, every: int, identity: dict[str, Any]) -> None:
        self.file, self.every, self.identity = file, every, identity
        remove_stale_tmp(file)  # left by an atomic write that a crash interrupted
        self.saved: dict[str, Any] | None = None
        if self.file.exists():
            if not self.file.is_file():
                raise PrunelabError(f"training checkpoint {str(self.file)!r} exists but is not a file")
            saved = load_train_state(self.file)
            why = _mismatch(saved.get("identity", {}), identity)
            if why is not None:
                raise PrunelabError(f"training checkpoint {str(self.file)!r} belongs to {why}; delete it "
                                    "to start over or pass another checkpoint path")
            self.saved = saved

    def due(self, epoch: int) -> bool:
        return (epoch + 1) % self.every == 0

    def save(self, state: TrainState, callbacks: Sequence[Callback], elapsed: float) -> None:
        cb_states = []
        for cb in callbacks:
            s = cb.state_dict()
            if not isinstance(s, dict):
                raise PrunelabError(f"{type(cb).__name__}.state_dict() must return a dict, got {type(s).__name__}")
            cb_states.append(s)
        save_train_state(self.file, {
            "identity": self.identity,
            "loop": {"next_epoch": state.epoch + 1, "iteration": state.iteration, "elapsed": elapsed},
            "history": state.history,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "callbacks": cb_states,
            "rng": _rng_state(),
        })

    def restore(self, state: TrainState, callbacks: Sequence[Callback]) -> tuple[int, float]:
        """Put the saved state back (after ``on_train_begin``); returns (next epoch, elapsed seconds)."""
        saved = self.saved
        assert saved is not None
        check_fits(self.file, state.model, saved["model"])
        state.model.load_state_dict(saved["model"], strict=True)
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        loop = saved["loop"]
        state.history[:] = saved["history"]
        state.iteration = loop["iteration"]
        state.epoch = loop["next_epoch"] - 1
        for cb, s in zip(callbacks, saved["callbacks"], strict=True):
            cb.load_state_dict(s)
        _set_rng_state(saved["rng"])  # last: on_train_begin and the restores may draw numbers
        self.saved = None
        return loop["next_epoch"], loop["elapsed"]

    def remove(self) -> None:
        self.file.unlink(missing_ok=True)
        remove_stale_tmp(self.file)


def fit(
    model: nn.Module,
    data: Any,
    config: TrainConfig | dict[str, Any] | None = None,
    callbacks: Iterable[Callback] = (),
    progress: bool = True,
    *,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    adapter: ModelAdapter | None = None,
) -> TrainResult:
    """Train ``model`` (in place) on ``data.x_train, data.y_train`` with cross-entropy and ``config``.

    Models that a :class:`~prunelab.models.adapters.ModelAdapter` calls (``transformers`` models,
    chosen by :func:`~prunelab.models.adapters.adapter_for`, or any model with ``adapter=``) train on
    the same ``data`` fields, where ``x_*`` may be a dict of tensors and ``y_*`` may be missing (a
    causal LM's targets are its next tokens), with the adapter's loss; the accuracy columns are the
    adapter's (per token for token-level heads, NaN without a class target); see
    :mod:`prunelab.train.adapted`. CIFAR augmentation, label smoothing and jumpstart are for image
    tensors and plain models, and are refused there.

    ``data`` is a :class:`prunelab.data.Dataset` (any object with tensors ``x_train, y_train,
    x_test, y_test`` and optionally ``x_val, y_val`` works). The model and the tensors are moved to
    ``config.device``. Each epoch ends with a history row (see :data:`ROW_KEYS`; evaluation columns
    are None on epochs without evaluation) merged with the callbacks' ``state.metrics``. The model
    is evaluated at the end of every ``eval_every``-th epoch and of the last one.

    ``checkpoint`` (a folder, which gets ``train_checkpoint.safetensors``, or a ``.safetensors``
    path) makes the run resumable: the training state is written atomically after every
    ``checkpoint_every``-th epoch (default 1; not after the last), a call that finds a checkpoint of
    the same config, initial weights, data and callback types resumes from it (another one is a
    :class:`PrunelabError`), stale temporary files of the checkpoint are removed, and the checkpoint
    is deleted when training succeeds. Neither argument changes the result.

    Raises :class:`TrainingDiverged` when the training loss (or the final model's loss) is not finite.
    """
    config = _as_config(config)
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if checkpoint is None and checkpoint_every is not None:
        raise PrunelabError(f"checkpoint_every={checkpoint_every!r} needs a checkpoint path (checkpoint=None)")
    if checkpoint_every is None:
        checkpoint_every = 1
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every <= 0:
        raise PrunelabError(f"checkpoint_every must be a positive number of epochs, got {checkpoint_every!r}")
    ckpt_file = checkpoint_file(checkpoint) if checkpoint is not None else None
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise PrunelabError(f"callbacks must be prunelab.train.Callback instances, got {type(cb).__name__}")
    if config.l1 > 0:
        callbacks.insert(0, L1Regularizer(config.l1))
    if config.jumpstart > 0:
        callbacks.insert(0, Jumpstart(config.jumpstart, aggregate=config.jumpstart_aggregate,
                                      sites=config.jumpstart_sites))

    adapter = _training_adapter(model, data, adapter, config)
    device = resolve_device(config.device)
    if adapter is None:
        train, test, val = (_split(data, name, device) for name in ("train", "test", "val"))
        if train is None or test is None:
            raise PrunelabError("data needs x_train, y_train, x_test and y_test tensors")
    seed_everything(config.seed)
    model.to(device)
    if adapter is not None:
        train, test, val = (split_pair(data, name, adapter, model, device) for name in ("train", "test", "val"))
        if train is None or test is None:
            raise PrunelabError(f"data needs x_train and x_test (tensors or dicts of tensors, with y_train / "
                                f"y_test or 'labels' where {type(model).__name__} needs labels)")
        loader: TensorLoader | PairLoader = PairLoader(adapter, train, config.batch_size, shuffle=True,
                                                       seed=config.seed)
    else:
        loader = TensorLoader(*train, config.batch_size, shuffle=True, seed=config.seed,
                              augment="cifar" if config.augment else None)
    steps_per_epoch = len(loader)
    if config.iterations is not None:
        total_iterations, total_epochs = config.iterations, math.ceil(config.iterations / steps_per_epoch)
    else:
        assert config.epochs is not None
        total_iterations, total_epochs = config.epochs * steps_per_epoch, config.epochs
    checkpointer = None
    if ckpt_file is not None:
        identity = (_identity(config, model, train, {"test": test, "val": val}, callbacks) if adapter is None
                    else _identity_pairs(config, model, adapter, train, {"test": test, "val": val}, callbacks))
        checkpointer = _Checkpointer(ckpt_file, checkpoint_every, identity)
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, step, steps_per_epoch, total_iterations)
    )
    state = TrainState(model=model, optimizer=optimizer, config=config, data=data, device=device,
                       scheduler=scheduler, steps_per_epoch=steps_per_epoch,
                       total_iterations=total_iterations, total_epochs=total_epochs)
    eval_bs = max(1024, config.batch_size) if adapter is None else max(64, config.batch_size)

    def evaluate_now() -> tuple[EvalResult | None, EvalResult]:
        if adapter is not None:
            return (evaluate_pair(model, adapter, val, eval_bs) if val is not None else None,
                    evaluate_pair(model, adapter, test, eval_bs))
        return (evaluate(model, *val, batch_size=eval_bs) if val is not None else None,
                evaluate(model, *test, batch_size=eval_bs))

    resuming = checkpointer is not None and checkpointer.saved is not None
    done_before = checkpointer.saved["loop"]["iteration"] if resuming else 0  # type: ignore[union-attr]
    bar = ProgressBar(progress, total_iterations, total_epochs=total_epochs, completed=done_before)
    epoch_runner = _Epoch(state, callbacks, nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
                          bar, train[1], adapter)
    evaluated_at: tuple[int, EvalResult | None, EvalResult] | None = None
    first_epoch, elapsed_before, resumed_from = 0, 0.0, None
    start = time.perf_counter()
    model.train()
    with _deterministic(config.deterministic, device):
        try:
            for cb in callbacks:
                cb.on_train_begin(state)
            if resuming:
                assert checkpointer is not None
                first_epoch, elapsed_before = checkpointer.restore(state, callbacks)
                resumed_from = first_epoch
                bar.note(f"train: resuming from {checkpointer.file} after epoch {first_epoch}/{total_epochs} "
                         f"(iteration {state.iteration}/{total_iterations})")
            for epoch in range(first_epoch, total_epochs):
                if state.stop or state.iteration >= total_iterations:
                    break
                state.epoch, state.metrics = epoch, {}
                loader.set_epoch(epoch)
                bar.begin_epoch(epoch + 1)
                for cb in callbacks:
                    cb.on_epoch_begin(state)
                t0 = time.perf_counter()
                row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
                row.update(epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"])
                row["train_loss"], row["train_acc"] = epoch_runner.run(loader)
                row["iteration"] = state.iteration
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
                last = last or state.stop
                bar.show(row, last=last)
                if checkpointer is not None and not last and checkpointer.due(epoch):
                    checkpointer.save(state, callbacks, elapsed_before + time.perf_counter() - start)
            for cb in callbacks:
                cb.on_train_end(state)
        finally:
            bar.close()
    elapsed = elapsed_before + time.perf_counter() - start
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
    for split, res in (("test", test_res), ("validation", val_res)):
        if res is not None and not math.isfinite(res.loss):
            raise TrainingDiverged(
                f"training diverged: the final model's {split} loss is {res.loss} (non-finite weights or "
                f"outputs) after epoch {len(state.history)}/{total_epochs}, iteration "
                f"{state.iteration}/{total_iterations} (lr {optimizer.param_groups[0]['lr']:g}); {_CAUSES}",
                epoch=len(state.history), iteration=state.iteration, lr=optimizer.param_groups[0]["lr"],
                loss=res.loss,
            )
    if checkpointer is not None:
        checkpointer.remove()
    scored = [r for r in state.history if r.get("val_acc") is not None]
    best = max(scored, key=lambda r: r["val_acc"])["epoch"] if scored else None
    return TrainResult(
        history=state.history, final=test_res, final_val=val_res, best_epoch=best,
        epochs=len(state.history), iterations=state.iteration, time=elapsed,
        stopped_early=state.stop and state.iteration < total_iterations, resumed_from=resumed_from,
    )
