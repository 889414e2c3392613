"""Flatness of the loss at the trained weights: top Hessian eigenvalues and the gradient second moment.

Bartoldson, Morcos, Barbu & Erlebacher (NeurIPS 2020, Sec. 5 and their code) measure, on a fixed set
of 512 test samples with the model in eval mode: the largest eigenvalues of the Hessian of the mean
cross-entropy with respect to all parameters (power iteration with deflation, via Hessian-vector
products), and the trace of the (uncentred) second moment of per-sample gradients,
tr E[g g^T] = (1/N) sum_i ||grad l_i||^2 (their ``covariance_of_gradient_trace``). Lower values mean a
flatter minimum, which they find after less stable pruning.

Hessian-vector products use double backpropagation (Pearlmutter 1994): Hv = d/dw (grad L . v).
Two eigen-solvers: ``power`` (power iteration with deflation: the eigenvalues of largest *magnitude*,
as in the authors' code) and ``lanczos`` (ARPACK's implicitly restarted Lanczos through
``scipy.sparse.linalg.eigsh``, ``which="LA"``: the largest *algebraic* eigenvalues). With ``masks``,
both work in the subspace of kept weights (H restricted to them: v -> m * H(m * v)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from prunelab.errors import PrunelabError
from prunelab.utils import eval_mode

METHODS = ("power", "lanczos")
DEFAULT_SAMPLES = 512


@dataclass
class FlatnessResult:
    """``eigenvalues`` in decreasing order; ``grad_second_moment_trace`` (NaN if not computed)."""

    eigenvalues: list[float]
    grad_second_moment_trace: float = math.nan
    num_samples: int = 0
    num_parameters: int = 0
    method: str = "power"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {f"hessian_eig_{i + 1}": v for i, v in enumerate(self.eigenvalues)}
        row.update(grad_second_moment_trace=self.grad_second_moment_trace,
                   flatness_samples=self.num_samples, flatness_method=self.method)
        return row


def fixed_subset(x: torch.Tensor, y: torch.Tensor, n: int = DEFAULT_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples (the authors use test samples 0..511): the same set for every model."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PrunelabError(f"number of samples must be a positive integer, got {n!r}")
    return x[:n], y[:n]


def _check_data(x: Any, y: Any) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() == 0 or y.dim() != 1:
        raise PrunelabError("x must be a tensor (N, ...) and y a label tensor (N,)")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise PrunelabError(f"x and y need the same, non-zero number of rows, got {x.shape[0]} and {y.shape[0]}")


class HessianOperator:
    """v -> H v for the mean cross-entropy of ``model`` on (x, y), over ``params`` (default: all).

    The model is put in eval mode while in use (``with`` block or explicit calls; the mode is
    restored by :meth:`close`). ``chunk`` limits how many samples go through one double-backward.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        masks: Mapping[str, torch.Tensor] | None = None,
        params: Sequence[str] | None = None,
        chunk: int = 512,
    ) -> None:
        _check_data(x, y)
        self.model = model
        named = dict(model.named_parameters())
        names = list(params) if params is not None else [k for k, p in named.items() if p.requires_grad]
        unknown = [k for k in names if k not in named]
        if unknown or not names:
            raise PrunelabError(f"unknown or no parameters {unknown}; the model has {', '.join(named)}")
        self.names = names
        self.params = [named[k] for k in names]
        device = self.params[0].device
        self.x, self.y = x.to(device), y.to(device)
        self.masks = None
        if masks is not None:
            bad = [k for k in masks if k not in named]
            if bad:
                raise PrunelabError(f"masks name no parameter of the model: {bad}")
            self.masks = [
                masks[k].to(device=device, dtype=named[k].dtype) if k in masks else None for k in names
            ]
        self.chunk = chunk
        self.size = sum(p.numel() for p in self.params)
        self._mode = eval_mode(model)  # restored by close()
        self._mode.__enter__()

    def close(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None

    def __enter__(self) -> HessianOperator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        parts, i = [], 0
        for p in self.params:
            parts.append(v[i : i + p.numel()].view_as(p))
            i += p.numel()
        return parts

    def _project(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.masks is None:
            return parts
        return [t if m is None else t * m for t, m in zip(parts, self.masks)]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector ``v`` (length :attr:`size`, any float dtype; returned in that dtype)."""
        dtype = v.dtype
        vs = self._project(self._split(v.to(self.params[0].dtype)))
        n = self.x.shape[0]
        out = [torch.zeros_like(p) for p in self.params]
        for s in range(0, n, self.chunk):
            xb, yb = self.x[s : s + self.chunk], self.y[s : s + self.chunk]
            loss = F.cross_entropy(self.model(xb), yb, reduction="sum") / n
            g = torch.autograd.grad(loss, self.params, create_graph=True)
            dot = sum((gi * vi).sum() for gi, vi in zip(g, vs))
            hv = torch.autograd.grad(dot, self.params, allow_unused=True)
            out = [o + h.detach() if h is not None else o for o, h in zip(out, hv)]
        out = self._project(out)
        return torch.cat([o.reshape(-1) for o in out]).to(dtype)

    def dense(self) -> torch.Tensor:
        """The full Hessian (size x size), column by column: for tests and tiny models only."""
        eye = torch.eye(self.size, dtype=torch.float64, device=self.x.device)
        return torch.stack([self.matvec(eye[i]) for i in range(self.size)], dim=1)


def _power(op: HessianOperator, k: int, iters: int, tol: float, seed: int) -> list[float]:
    """Power iteration with deflation against the eigenvectors found so far."""
    gen = torch.Generator().manual_seed(seed)
    found: list[tuple[float, torch.Tensor]] = []
    for _ in range(k):
        v = torch.randn(op.size, generator=gen, dtype=torch.float64).to(op.x.device)
        v /= v.norm()
        value = 0.0
        for _ in range(iters):
            hv = op.matvec(v)
            for lam, u in found:
                hv = hv - lam * (u @ v) * u
            new_value = float(v @ hv)
            norm = hv.norm()
            if norm == 0:
                value = 0.0
                break
            v = hv / norm
            if abs(new_value - value) <= tol * max(abs(value), 1e-12):
                value = new_value
                break
            value = new_value
        found.append((value, v))
    return [lam for lam, _ in found]


def _lanczos(op: HessianOperator, k: int, iters: int, tol: float, seed: int) -> list[float]:
    from scipy.sparse.linalg import LinearOperator, eigsh

    def mv(v: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.asarray(v, dtype=np.float64).reshape(-1)).to(op.x.device)
        return op.matvec(t).cpu().numpy()

    lin = LinearOperator((op.size, op.size), matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(op.size)
    values = eigsh(lin, k=k, which="LA", v0=v0, maxiter=iters * op.size, tol=tol, return_eigenvectors=False)
    return sorted(values.tolist(), reverse=True)


def hessian_eigenvalues(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    k: int = 1,
    *,
    method: str = "power",
    masks: Mapping[str, torch.Tensor] | None = None,
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    chunk: int = 512,
) -> list[float]:
    """The top-``k`` Hessian eigenvalues of the mean cross-entropy on (x, y), in decreasing order.

    ``method="power"``: power iteration with deflation (largest magnitude; ``iters`` steps per
    eigenvalue at most, stopping when the Rayleigh quotient changes by less than ``tol`` relatively).
    ``method="lanczos"``: ARPACK Lanczos (largest algebraic; ``tol`` is ARPACK's). The result is
    sorted in decreasing order either way.
    """
    if method not in METHODS:
        raise PrunelabError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise PrunelabError(f"k must be a positive integer, got {k!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise PrunelabError(f"iters must be a positive integer, got {iters!r}")
    if not tol > 0:
        raise PrunelabError(f"tol must be > 0, got {tol!r}")
    with HessianOperator(model, x, y, masks=masks, chunk=chunk) as op:
        limit = op.size - 1 if method == "lanczos" else op.size
        if k > limit:
            raise PrunelabError(f"k={k} is too large for {op.size} parameters with method {method!r} (max {limit})")
        values = (_power if method == "power" else _lanczos)(op, k, iters, tol, seed)
    return sorted(values, reverse=True)


def gradient_second_moment_trace(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, chunk: int = 128
) -> float:
    """tr E[g g^T] = (1/N) sum_i ||grad_w l(x_i, y_i)||^2 over all trainable parameters (eval mode).

    Per-sample gradients come from ``torch.func.vmap(grad(...))`` in chunks of ``chunk`` samples.
    """
    _check_data(x, y)
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise PrunelabError("the model has no trainable parameters")
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    device = next(iter(params.values())).device

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**p, **buffers}, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    total = 0.0
    with eval_mode(model):
        for s in range(0, x.shape[0], chunk):
            g = per_sample(params, x[s : s + chunk].to(device), y[s : s + chunk].to(device))
            total += float(sum(t.double().square().sum() for t in g.values()))
    return total / x.shape[0]


def flatness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    k: int = 1,
    *,
    samples: int = DEFAULT_SAMPLES,
    method: str = "power",
    masks: Mapping[str, torch.Tensor] | None = None,
    iters: int = 100,
    seed: int = 0,
) -> FlatnessResult:
    """Both measures on the first ``samples`` of (x, y) (pass the test split, as the paper does)."""
    xs, ys = fixed_subset(x, y, samples)
    values = hessian_eigenvalues(model, xs, ys, k, method=method, masks=masks, iters=iters, seed=seed)
    trace = gradient_second_moment_trace(model, xs, ys)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FlatnessResult(values, trace, int(xs.shape[0]), n_params, method)
