"""Float64 forward passes through the affine layers of an MLP (the reference for every check)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from prunelab.analysis.affine import AffineLayer


def preactivations(layers: list[AffineLayer], x: np.ndarray) -> list[np.ndarray]:
    """Pre-activations ``g_k`` of every layer (hidden and output) at the rows of ``x`` (n, n_inputs)."""
    out = []
    h = np.asarray(x, dtype=np.float64)
    for layer in layers:
        g = h @ layer.weight.numpy().T + layer.bias.numpy()
        out.append(g)
        h = np.maximum(g, 0.0) if layer.relu else g
    return out


def outputs(layers: list[AffineLayer], x: np.ndarray) -> np.ndarray:
    """The network's output (logits) at the rows of ``x``, float64."""
    return preactivations(layers, x)[-1]


def chunks(x: np.ndarray, size: int = 4096) -> Iterator[np.ndarray]:
    for start in range(0, len(x), size):
        yield x[start : start + size]


def sign_witnesses(layers: list[AffineLayer], x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per hidden layer: which units are positive (> 0) at some row of ``x``, and which negative (< 0)."""
    hidden = layers[:-1]
    pos = [np.zeros(lay.weight.shape[0], dtype=bool) for lay in hidden]
    neg = [np.zeros(lay.weight.shape[0], dtype=bool) for lay in hidden]
    for part in chunks(x):
        for k, g in enumerate(preactivations(hidden, part) if hidden else []):
            pos[k] |= np.any(g > 0.0, axis=0)
            neg[k] |= np.any(g < 0.0, axis=0)
    return pos, neg
