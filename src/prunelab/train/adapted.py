"""Training data for models that a :class:`~prunelab.models.adapters.ModelAdapter` calls: token models
(``transformers`` BERT, GPT-2, Llama, T5, ...) and any model with a custom adapter.

``fit`` takes the same ``data`` object for them as for the zoo (``x_train, y_train, x_test, y_test``,
optionally ``x_val, y_val``), where an ``x_*`` may be a dict of tensors (``input_ids``,
``attention_mask``, ...; a ``labels`` key is taken as the targets) and a ``y_*`` may be missing or None
(a causal LM predicts its own next tokens). Each split becomes one adapter batch, checked once against
the model (:meth:`ModelAdapter.check`: shapes, label ranges, a probe forward pass); the loader draws
mini-batches from it by index (:meth:`ModelAdapter.select`), shuffled with the same per-epoch CPU
generator as :class:`~prunelab.data.loader.TensorLoader`, so runs are reproducible and resumable
in the same way.

Loss and accuracy are the adapter's: the loss its ``loss_from_logits`` (the model's own loss, e.g.
next-token cross-entropy), the accuracy the share of positions that count where the argmax is the
target (:meth:`ModelAdapter.scored`: per sample for classification, per token for token-level heads;
NaN for tasks without a class accuracy: regression, multi-label). Means over a split are weighted by
the positions each batch's loss averages over, so they are per token for token-level heads.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from prunelab.analysis.evaluate import EvalResult
from prunelab.errors import PrunelabError
from prunelab.models.adapters import ModelAdapter, Pair
from prunelab.utils import eval_mode


def split_pair(data: Any, name: str, adapter: ModelAdapter, model: nn.Module, device: torch.device) -> Pair | None:
    """``data.x_<name>`` / ``data.y_<name>`` as one checked adapter batch on ``device`` (None when
    ``data`` has no ``x_<name>``)."""
    x = getattr(data, f"x_{name}", None)
    if x is None:
        return None
    y = getattr(data, f"y_{name}", None)
    if not isinstance(x, (torch.Tensor, Mapping)):
        raise PrunelabError(f"data.x_{name} must be a tensor or a dict of tensors (input_ids, attention_mask, ...) "
                            f"for {type(model).__name__}, got {type(x).__name__}")
    if isinstance(x, Mapping) and "labels" in x and y is not None:
        raise PrunelabError(f"data gives the {name} labels twice (x_{name}['labels'] and y_{name}); give one")
    try:
        (pair,) = adapter.batches(x if isinstance(x, Mapping) and y is None else (x, y), device)
    except PrunelabError as exc:
        raise PrunelabError(f"data ({name} split): {exc}") from None
    (pair,) = adapter.check(model, [pair])
    if adapter.batch_size(pair) == 0:
        raise PrunelabError(f"data.x_{name} is empty")
    return pair


def pair_tensors(pair: Pair) -> list[tuple[str, torch.Tensor]]:
    """The named tensors of a batch (``inputs`` / ``inputs.<key>``, ``targets``), for fingerprints."""
    inputs, targets = pair
    out = sorted((f"inputs.{k}", v) for k, v in inputs.items()) if isinstance(inputs, Mapping) else [("inputs", inputs)]
    return out + ([("targets", targets)] if targets is not None else [])


class PairLoader:
    """Mini-batches of one adapter batch, drawn by index: the :class:`~prunelab.data.loader.TensorLoader`
    contract (``len``, ``set_epoch``, one epoch per iteration, permutation from a CPU generator seeded
    with ``seed + epoch``) for batches whose inputs are a dict of tensors."""

    def __init__(self, adapter: ModelAdapter, pair: Pair, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise PrunelabError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.adapter, self.pair, self.batch_size = adapter, pair, batch_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.num_samples = adapter.batch_size(pair)

    def __len__(self) -> int:
        return (self.num_samples + self.batch_size - 1) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise PrunelabError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def __iter__(self) -> Iterator[Pair]:
        n, bs = self.num_samples, self.batch_size
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        self.epoch += 1
        for start in range(0, n, bs):
            yield self.adapter.select(self.pair, order[start : start + bs])


class Tally:
    """Running loss and hits of one pass, summed on the device and read once (no sync per batch)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.hits = torch.zeros((), dtype=torch.long, device=device)
        self.scored = 0  # positions with a class target
        self.weight = 0  # positions the losses average over

    def add(self, adapter: ModelAdapter, logits: torch.Tensor, batch: Pair, loss: torch.Tensor) -> None:
        predicted, target, weight = adapter.scored(logits.detach(), batch)
        self.loss += loss.detach().to(torch.float64) * weight
        self.weight += weight
        if predicted is not None and target is not None:
            self.hits += (predicted == target).sum()
            self.scored += int(target.numel())

    def result(self) -> tuple[float, float]:
        """(mean loss, accuracy); accuracy NaN where no position has a class target."""
        mean = float(self.loss) / max(self.weight, 1)
        return mean, (int(self.hits) / self.scored if self.scored else math.nan)


def evaluate_pair(model: nn.Module, adapter: ModelAdapter, pair: Pair, batch_size: int = 256) -> EvalResult:
    """Mean loss and accuracy of ``model`` on ``pair`` (eval mode, no gradients, modes restored)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    tally = Tally(device)
    n, classes = adapter.batch_size(pair), 0
    with eval_mode(model), torch.no_grad():
        for start in range(0, n, batch_size):
            batch = adapter.select(pair, torch.arange(start, min(n, start + batch_size)))
            logits = adapter.forward(model, batch)
            classes = int(logits.shape[-1])
            tally.add(adapter, logits, batch, adapter.loss_from_logits(logits, batch))
    loss, acc = tally.result()
    return EvalResult(accuracy=acc, loss=loss, num_classes=classes, num_samples=n)
