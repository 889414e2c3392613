"""Accuracy, loss and per-class recall of a classifier on a tensor dataset."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.utils import eval_mode


@dataclass(frozen=True)
class EvalResult:
    """``accuracy`` in [0, 1]; ``loss`` the mean cross-entropy; ``per_class_recall[c]`` the accuracy on
    the samples of class ``c`` (NaN for a class with no samples)."""

    accuracy: float
    loss: float
    per_class_recall: list[float] = field(default_factory=list)
    num_classes: int = 0
    num_samples: int = 0

    def to_row(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}acc`` and ``{prefix}loss`` for a results table."""
        return {f"{prefix}acc": self.accuracy, f"{prefix}loss": self.loss}


def _device_of(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return fallback


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1024,
    num_classes: int | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``(x, y)`` in eval mode without gradients, then restore every module's mode.

    Batches are moved to the model's device; counts stay on the device and are read once at the
    end. ``num_classes`` defaults to the width of the model's output.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise PrunelabError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if y.dim() != 1 or x.dim() == 0 or x.shape[0] != y.shape[0]:
        raise PrunelabError(
            f"need x of shape (N, ...) and labels y of shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] == 0:
        raise PrunelabError("cannot evaluate on an empty dataset (0 samples)")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise PrunelabError(f"labels y must be an integer tensor, got dtype {y.dtype}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise PrunelabError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = _device_of(model, x.device)
    with eval_mode(model), torch.no_grad():
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        hits = count = None
        classes = num_classes
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)
            yb = y[start : start + batch_size].to(device, non_blocking=True).long()
            out = model(xb)
            if start == 0:
                if out.dim() != 2 or out.shape[0] != xb.shape[0]:
                    raise PrunelabError(
                        f"model output has shape {tuple(out.shape)}; expected (batch, num_classes) logits"
                    )
                classes = classes or out.shape[1]
                top = int(y.max())
                if int(y.min()) < 0 or top >= min(classes, out.shape[1]):
                    raise PrunelabError(
                        f"labels must lie in 0..{min(classes, out.shape[1]) - 1}, found {int(y.min())}..{top}"
                    )
                hits = torch.zeros(classes, dtype=torch.long, device=device)
                count = torch.zeros(classes, dtype=torch.long, device=device)
            loss_sum += F.cross_entropy(out.float(), yb, reduction="sum").double()
            correct = out.argmax(dim=1) == yb
            hits += torch.bincount(yb[correct], minlength=classes)[:classes]
            count += torch.bincount(yb, minlength=classes)[:classes]
    assert hits is not None and count is not None and classes is not None
    n = int(x.shape[0])
    hits_l, count_l = hits.tolist(), count.tolist()
    recall = [h / c if c else math.nan for h, c in zip(hits_l, count_l)]
    return EvalResult(
        accuracy=sum(hits_l) / n,
        loss=float(loss_sum) / n,
        per_class_recall=recall,
        num_classes=int(classes),
        num_samples=n,
    )
