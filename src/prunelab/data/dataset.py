"""The :class:`Dataset` every prunelab run trains on, the ``DATASETS`` registry and :func:`load`.

A registered loader returns :class:`RawSplits` (arrays as stored, e.g. ``uint8`` pixels); :func:`load`
then does what is common to all datasets, in this order:

1. carve the validation split out of the training split (seeded, uniform without replacement, not
   stratified; both parts keep the file order);
2. scale pixels to [0, 1] (divide by ``RawSplits.scale``) and convert to float32;
3. with ``normalize=True``, compute per-channel mean and (population) standard deviation on the
   remaining training split only and apply ``(x - mean) / std`` to every split.

"Channel" is dimension 1 of ``x``: the colour channel of ``(N, C, H, W)`` images, each feature of
``(N, D)`` vectors. A channel with zero variance keeps std 1 (nothing to rescale).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from torch import Tensor

from prunelab.data.files import data_root
from prunelab.errors import PrunelabError
from prunelab.registry import Registry


@dataclass
class Dataset:
    """Train/test (and optional validation) tensors plus what a model and a report need to know.

    ``x_*`` are float32 ``(N, *input_shape)``, ``y_*`` int64 ``(N,)``. ``mean``/``std`` are the
    per-channel statistics already applied (0 and 1 when not normalised), so
    ``x * std + mean`` gives back pixels in [0, 1].
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_val: Tensor | None
    y_val: Tensor | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]

    def to(self, device: str | torch.device) -> Dataset:
        """A copy with every tensor on ``device`` (tensors already there are shared, not copied)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)

    def input_box(self, low: float, high: float) -> tuple[Tensor, Tensor]:
        """The pixel box ``[low, high]`` (per pixel, in the [0, 1] units of the raw images) in the
        model's input space: ``(lower, upper)`` float64 CPU tensors with one entry per input, in the
        order of ``x.flatten()``, i.e. ``(pixel - mean) / std`` of each input's channel.

        With ``normalize=False`` (mean 0, std 1) this is the box itself; for standardised data it is
        the set of inputs whose pixels lie in ``[low, high]`` (e.g. the domain of exact compression).
        """
        for which, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v):
                raise PrunelabError(f"input box {which} bound must be a finite number, got {v!r}")
        if low > high:
            raise PrunelabError(f"input box [{low}, {high}] is empty; need low <= high")
        shape = tuple(self.input_shape)
        if not shape or len(self.mean) != shape[0] or len(self.std) != shape[0]:
            raise PrunelabError(
                f"dataset {self.name!r} has {len(self.mean)} channel means and {len(self.std)} stds "
                f"but input shape {shape}; need one per channel (the first input dimension)"
            )
        mean = torch.tensor(self.mean, dtype=torch.float64)
        std = torch.tensor(self.std, dtype=torch.float64)
        view = (-1,) + (1,) * (len(shape) - 1)

        def mapped(pixel: float) -> Tensor:
            return ((float(pixel) - mean) / std).reshape(view).expand(shape).flatten()

        return mapped(low), mapped(high)

    def __repr__(self) -> str:
        val = 0 if self.y_val is None else len(self.y_val)
        return (
            f"Dataset({self.name!r}, train={len(self.y_train)}, val={val}, test={len(self.y_test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"device={self.x_train.device})"
        )


@dataclass
class RawSplits:
    """What a loader returns: arrays as stored, ``x / scale`` being the pixels in [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: list[str]
    scale: float = 1.0


Loader = Callable[..., RawSplits]
DATASETS: Registry[Loader] = Registry("dataset")
"""name -> ``fn(root: Path, download: bool, **kw) -> RawSplits``."""


def load(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    normalize: bool = True,
    download: bool = True,
    **kw: Any,
) -> Dataset:
    """Load dataset ``name`` (see ``DATASETS.names()``) as float32 tensors on the CPU.

    ``val_fraction`` of the training split becomes the validation split, chosen by ``seed`` (the
    only thing ``seed`` changes). ``root`` is the data root (default ``$PRUNELAB_DATA``, else
    ``~/.cache/prunelab/data``); missing files are downloaded when ``download`` is true. Extra
    keywords go to the dataset's loader (e.g. ``n_train`` for ``synthetic``).
    """
    loader = DATASETS.get(name)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, Real) or not (
        0.0 <= val_fraction < 1.0
    ):
        raise PrunelabError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise PrunelabError(f"seed must be a non-negative integer, got {seed!r}")
    for flag, value in (("normalize", normalize), ("download", download)):
        if not isinstance(value, bool):
            raise PrunelabError(f"{flag} must be True or False, got {value!r}")
    _check_keywords(name, loader, kw)
    raw = loader(root=data_root(root), download=download, **kw)

    x_train, y_train, x_val, y_val = _split_validation(raw.x_train, raw.y_train, val_fraction, seed)
    channels = x_train.shape[1]
    if normalize:
        mean, std = channel_stats(x_train, raw.scale)
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels

    def tensor(x: np.ndarray) -> Tensor:
        return _to_float(x, raw.scale, mean, std)

    return Dataset(
        name=name.lower(),
        x_train=tensor(x_train),
        y_train=_labels(y_train),
        x_test=tensor(raw.x_test),
        y_test=_labels(raw.y_test),
        x_val=None if x_val is None else tensor(x_val),
        y_val=None if y_val is None else _labels(y_val),
        mean=mean,
        std=std,
        num_classes=raw.num_classes,
        input_shape=tuple(int(d) for d in raw.x_train.shape[1:]),
        class_names=list(raw.class_names),
    )


def _check_keywords(name: str, loader: Loader, kw: dict[str, Any]) -> None:
    allowed = [p for p in inspect.signature(loader).parameters if p not in ("root", "download")]
    bad = sorted(set(kw) - set(allowed))
    if bad:
        raise PrunelabError(
            f"dataset {name!r} takes no option {', '.join(map(repr, bad))}; "
            f"valid: {', '.join(allowed) or 'none'}"
        )


def _split_validation(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    if fraction == 0:
        return x, y, None, None
    n = len(y)
    n_val = int(round(fraction * n))
    if not 1 <= n_val <= n - 1:
        raise PrunelabError(
            f"val_fraction={fraction} of {n} training examples gives {n_val} validation examples; "
            f"choose a fraction between {1 / n:.3g} and {(n - 1) / n:.3g}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def channel_stats(
    x: np.ndarray, scale: float = 1.0, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (dim 1) mean and population std of ``x / scale``, accumulated in float64.

    One pass over chunks of samples (memory stays small for CIFAR); for integer pixels the sums
    are exact, so the statistics are exact up to the final division.
    """
    axes = (0,) + tuple(range(2, x.ndim))
    total = np.zeros(x.shape[1])
    total_sq = np.zeros(x.shape[1])
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk].astype(np.float64)
        total += block.sum(axis=axes)
        total_sq += np.square(block).sum(axis=axes)
    count = x.size // x.shape[1]
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)
    std = np.sqrt(var)
    std[std == 0] = scale  # constant channel: leave it unscaled
    return tuple(float(m / scale) for m in mean), tuple(float(s / scale) for s in std)


def _to_float(
    x: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]
) -> Tensor:
    """float32 tensor of ``(x / scale - mean) / std`` (per channel) in a fresh copy of ``x``."""
    out = torch.from_numpy(x.astype(np.float32))
    view = (1, -1) + (1,) * (x.ndim - 2)
    shift = torch.tensor([m * scale for m in mean], dtype=torch.float32).view(view)
    div = torch.tensor([s * scale for s in std], dtype=torch.float32).view(view)
    if any(mean):
        out.sub_(shift)
    if not torch.all(div == 1):
        out.div_(div)
    return out


def _labels(y: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(y, dtype=np.int64))


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """A loader option that must be an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise PrunelabError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    bad = isinstance(value, bool) or not isinstance(value, Real)
    if bad or not math.isfinite(value) or value <= 0:
        raise PrunelabError(f"{name} must be a positive number, got {value!r}")
    return float(value)
