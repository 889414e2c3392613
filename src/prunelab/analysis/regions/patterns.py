"""Activation patterns: which hidden ReLUs are on, and the cheap region-count proxy built on them.

A linear region of a ReLU MLP is taken, as in Serra, Tjandraatmadja & Ramalingam (ICML 2018), to be
the set of inputs sharing one activation pattern (unit on iff its pre-activation is > 0). Counting
the distinct patterns met by a set of inputs (e.g. the training set) is the cheap proxy used by
many papers (e.g. Novak et al. 2018, Hanin & Rolnick 2019): a lower bound on the number of regions
that only counts regions containing an input.

This module also holds the shared helpers of the exact counters: reading an MLP and restricting it
to an affine subspace ``x = origin + basis^T y`` of its input (a line or a plane).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunelab.analysis.affine import AffineLayer, mlp_layers
from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class Affine:
    """A hidden or output layer as float64 numpy arrays: ``z = W h + b`` (``relu`` if a ReLU follows)."""

    weight: np.ndarray
    bias: np.ndarray
    relu: bool


def hidden_affines(model_or_layers: nn.Module | Sequence[AffineLayer], masks: Mapping | None = None) -> list[Affine]:
    """The hidden ReLU layers of an MLP (masks applied) as numpy float64; the linear output layer is dropped."""
    layers = (
        mlp_layers(model_or_layers, masks) if isinstance(model_or_layers, nn.Module) else list(model_or_layers)
    )
    hidden = [Affine(l.weight.numpy(), l.bias.numpy(), True) for l in layers if l.relu]
    if not hidden:
        raise PrunelabError("the model has no hidden ReLU layer: its input space is a single linear region")
    return hidden


def as_points(x: torch.Tensor | np.ndarray | Sequence, dim: int, what: str = "inputs") -> np.ndarray:
    """``x`` as a float64 (N, dim) array; one input of any shape with ``dim`` entries becomes (1, dim)."""
    try:
        arr = np.asarray(x.detach().cpu().double() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    except (TypeError, ValueError):
        raise PrunelabError(f"{what} must be a numeric tensor or array, got {type(x).__name__}") from None
    if arr.size == dim:
        arr = arr.reshape(1, dim)
    elif arr.ndim < 2 or int(np.prod(arr.shape[1:])) != dim:
        raise PrunelabError(
            f"{what} must have {dim} entries each (the model's input dimension), got shape {tuple(arr.shape)}"
        )
    if not np.all(np.isfinite(arr)):
        raise PrunelabError(f"{what} contain NaN or infinite values")
    return arr.reshape(arr.shape[0], dim)


def restrict(hidden: list[Affine], origin: np.ndarray, basis: np.ndarray) -> list[Affine]:
    """The same network on the subspace ``x = origin + basis.T @ y`` (basis is (k, n_0)): y has k dims."""
    first = hidden[0]
    w = first.weight @ basis.T
    b = first.weight @ origin + first.bias
    return [Affine(w, b, True)] + hidden[1:]


def patterns_of(hidden: list[Affine], x: np.ndarray) -> np.ndarray:
    """Boolean (N, total hidden units) activation patterns of the inputs ``x`` (N, n_0)."""
    out = []
    h = x
    for layer in hidden:
        z = h @ layer.weight.T + layer.bias
        on = z > 0
        out.append(on)
        h = np.where(on, z, 0.0)
    return np.concatenate(out, axis=1)


def pattern_keys(patterns: np.ndarray) -> np.ndarray:
    """One hashable key per row of a boolean pattern matrix (bits packed into a void scalar)."""
    packed = np.packbits(patterns, axis=1)
    return np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()


@dataclass(frozen=True)
class PatternCount:
    """Distinct activation patterns among ``num_inputs`` inputs: a lower bound on the region count."""

    num_patterns: int
    num_inputs: int
    num_units: int

    def to_row(self) -> dict:
        return {
            "pattern_regions": self.num_patterns,
            "pattern_inputs": self.num_inputs,
            "pattern_units": self.num_units,
        }


def count_patterns(
    model: nn.Module,
    inputs: torch.Tensor | np.ndarray,
    masks: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = 8192,
) -> PatternCount:
    """Number of distinct hidden activation patterns over ``inputs`` (N, ...) — the cheap proxy.

    A lower bound on the number of linear regions: it counts only regions that contain an input.
    """
    hidden = hidden_affines(model, masks)
    n0 = hidden[0].weight.shape[1]
    x = as_points(inputs, n0)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PrunelabError(f"batch_size must be a positive integer, got {batch_size!r}")
    keys = [
        np.unique(pattern_keys(patterns_of(hidden, x[i : i + batch_size]))) for i in range(0, x.shape[0], batch_size)
    ]
    units = sum(l.weight.shape[0] for l in hidden)
    return PatternCount(len(np.unique(np.concatenate(keys))), x.shape[0], units)
