"""Build the smaller MLP that computes the same function on the domain, and prove it by checking.

Serra, Kumar & Ramalingam, "Lossless Compression of Deep Neural Networks" (CPAIOR 2020), §3 (and
Serra, Yu, Kumar & Ramalingam, NeurIPS 2021, §3), for hidden layer k with pre-activation
``g = W h + b`` feeding ``g' = W' relu(g) + b'``:

* **Stably inactive** units output 0 on D: delete their rows of (W, b) and their columns of W'.
* **Stably active** units are linear on D, ``relu(g_A) = W_A h + b_A``. A rank-revealing QR with column
  pivoting of ``W_A^T`` (``scipy.linalg.qr(pivoting=True)``) picks a basis B of the rows; each other
  row is ``W_D = K W_B`` (K by least squares), so ``g_D = K g_B + (b_D - K b_B)`` and, as both are
  active, ``relu(g_D) = K relu(g_B) + (b_D - K b_B)``. Folding: ``W'[:, B] += W'[:, D] K`` and
  ``b' += W'[:, D] (b_D - K b_B)``; the D units are deleted. (Working on W alone, not on [W | b], keeps
  the basis as small as the rank of W.)
* A layer whose remaining units are **all** stably active is affine on D: it is merged with the next
  layer, ``(W' W, W' b + b')`` (``merge_linear="always"``, the papers' rule; ``"if_smaller"`` merges
  only when that does not add connections, ``"never"`` keeps the layer). A layer with no unit left is
  always merged (the rest of the network sees a constant).

The algebra is float64; the returned model has the original dtype and device. **Verification is part
of the result**: the compressed model is compared with the original (float64 reference) on the given
data and ``n_points`` uniform points of D. The outputs must agree to
``tolerance = 1e-4 * max(1, max |f(x)|)`` (float32 rounding of both models is ~1e-6 relative; a
unit wrongly deleted moves outputs by ~1e-1) and the predicted classes must be identical wherever the
original's top-two margin exceeds ``2 * tolerance`` (closer ties are counted in ``n_ties``, since
float32 rounding may break them either way). A mismatch raises :class:`PrunelabError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn

from prunelab.analysis.affine import AffineLayer, mlp_layers
from prunelab.analysis.exact.domain import Box, make_box, points_in_box
from prunelab.analysis.exact.forward import chunks, outputs
from prunelab.analysis.exact.stable import StabilityResult
from prunelab.errors import PrunelabError
from prunelab.utils import atomic_write_bytes

MERGE_RULES = ("always", "if_smaller", "never")
RTOL = 1e-4
FORMAT = "prunelab-exact-mlp"


@dataclass
class CompressionResult:
    """The compressed ``model`` (``nn.Sequential(Flatten, Linear, ReLU, ..., Linear)``), its size
    before/after (hidden neurons, Linear layers, connections = non-zero weights) and the check that it
    matches the original: ``verified``, ``max_abs_diff``, ``tolerance``, ``n_points``, ``n_ties``.
    ``per_layer`` has one dict per original hidden layer (units removed, folded, kept, merged).

    Two size metrics, not to be confused: ``neurons_removed_fraction`` (hidden units removed over
    hidden units, ``inactive_removed + active_folded`` of them) is what Serra, Kumar & Ramalingam
    (CPAIOR 2020, Table 1) report as "network compression"; ``connections_removed_fraction`` (non-zero
    weights removed) is the usual pruning measure and can be much smaller, since folding and merging
    may fill zeros of the next layer."""

    model: nn.Sequential
    widths_before: list[int]
    widths_after: list[int]
    connections_before: int
    connections_after: int
    verified: bool
    max_abs_diff: float
    tolerance: float
    n_points: int
    n_ties: int
    per_layer: list[dict[str, Any]] = field(default_factory=list)

    @property
    def neurons_before(self) -> int:
        return sum(self.widths_before[1:-1])

    @property
    def neurons_after(self) -> int:
        return sum(self.widths_after[1:-1])

    @property
    def layers_before(self) -> int:
        return len(self.widths_before) - 1

    @property
    def layers_after(self) -> int:
        return len(self.widths_after) - 1

    @property
    def connections_removed_fraction(self) -> float:
        return 1.0 - self.connections_after / max(self.connections_before, 1)

    @property
    def neurons_removed_fraction(self) -> float:
        """Hidden units removed over hidden units: the "network compression" of CPAIOR 2020, Table 1."""
        return 1.0 - self.neurons_after / max(self.neurons_before, 1)

    @property
    def inactive_removed(self) -> int:
        """Stably inactive units deleted."""
        return sum(int(row["inactive_removed"]) for row in self.per_layer)

    @property
    def active_folded(self) -> int:
        """Stably active units removed: folded into the next layer, or all of a merged layer."""
        return sum(int(row["active_folded"]) for row in self.per_layer)

    @property
    def neurons_removed_per_layer(self) -> list[int]:
        return [int(row["width"]) - int(row["kept"]) for row in self.per_layer]

    def to_row(self) -> dict[str, Any]:
        return {
            "widths_before": "-".join(map(str, self.widths_before)),
            "widths_after": "-".join(map(str, self.widths_after)),
            "neurons_before": self.neurons_before,
            "neurons_after": self.neurons_after,
            "neurons_removed": self.neurons_before - self.neurons_after,
            "neurons_removed_fraction": round(self.neurons_removed_fraction, 6),
            "neurons_removed_per_layer": ",".join(map(str, self.neurons_removed_per_layer)),
            "inactive_removed": self.inactive_removed,
            "active_folded": self.active_folded,
            "layers_before": self.layers_before,
            "layers_after": self.layers_after,
            "connections_before": self.connections_before,
            "connections_after": self.connections_after,
            "connections_removed": self.connections_before - self.connections_after,
            "connections_removed_fraction": round(self.connections_removed_fraction, 6),
            "verified": self.verified,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "n_points": self.n_points,
            "n_ties": self.n_ties,
        }


def _basis(w_active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank-revealing QR of the rows of ``w_active``: (basis rows, dependent rows, K) with
    ``w_active[dep] ≈ K @ w_active[basis]``."""
    n = w_active.shape[0]
    if n == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 0))
    _, r, piv = scipy.linalg.qr(w_active.T, mode="economic", pivoting=True)
    diag = np.abs(np.diag(r))
    tol = (diag[0] if diag.size else 0.0) * max(w_active.shape) * np.finfo(np.float64).eps
    rank = int(np.sum(diag > tol)) if diag.size and diag[0] > 0 else 0
    basis, dep = np.sort(piv[:rank]), np.sort(piv[rank:])
    if rank == 0:
        return basis, dep, np.zeros((len(dep), 0))
    k, *_ = np.linalg.lstsq(w_active[basis].T, w_active[dep].T, rcond=None)
    return basis, dep, k.T


def _compress_layers(
    layers: list[AffineLayer], stable: StabilityResult, merge_linear: str
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[dict[str, Any]]]:
    """The affine layers (W, b) of the compressed network (ReLU between consecutive ones)."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    report = []
    cur_w, cur_b = layers[0].weight.numpy().copy(), layers[0].bias.numpy().copy()
    for k, info in enumerate(stable.layers):
        status = np.array(info.status)
        next_w, next_b = layers[k + 1].weight.numpy().copy(), layers[k + 1].bias.numpy().copy()
        keep = np.flatnonzero(status != "inactive")
        active = np.flatnonzero(status == "active")
        row = {"layer": info.name, "width": len(status), "inactive_removed": len(status) - len(keep)}
        if len(active) == len(keep):  # affine on D (or constant): candidate for merging
            merged_w = next_w[:, keep] @ cur_w[keep]
            merged_b = next_w[:, keep] @ cur_b[keep] + next_b
            separate = np.count_nonzero(cur_w[keep]) + np.count_nonzero(next_w[:, keep])
            if len(keep) == 0 or merge_linear == "always" or (
                merge_linear == "if_smaller" and np.count_nonzero(merged_w) <= separate
            ):
                cur_w, cur_b = merged_w, merged_b
                report.append({**row, "active_folded": len(active), "kept": 0, "merged": True})
                continue
        basis, dep, kmat = _basis(cur_w[active])
        b_idx, d_idx = active[basis], active[dep]
        if len(d_idx):
            next_b = next_b + next_w[:, d_idx] @ (cur_b[d_idx] - kmat @ cur_b[b_idx])
            next_w[:, b_idx] += next_w[:, d_idx] @ kmat
        rows = np.sort(np.setdiff1d(keep, d_idx))
        out.append((cur_w[rows], cur_b[rows]))
        report.append({**row, "active_folded": len(d_idx), "kept": len(rows), "merged": False})
        cur_w, cur_b = next_w[:, rows], next_b
    out.append((cur_w, cur_b))
    return out, report


def _to_module(affine: list[tuple[np.ndarray, np.ndarray]], dtype: torch.dtype) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Flatten()]
    for j, (w, b) in enumerate(affine):
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        mods.append(lin.to(dtype))
        if j < len(affine) - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def _check_same_network(model: nn.Module, stable: StabilityResult) -> None:
    if not isinstance(stable, StabilityResult):
        raise PrunelabError(f"stable must be a StabilityResult from find_stable_neurons, got {type(stable).__name__}")
    current = mlp_layers(model)
    ref = stable.network
    same = len(current) == len(ref) and all(
        c.weight.shape == r.weight.shape
        and bool(torch.all((c.weight == r.weight) | (r.weight == 0)))
        and bool(torch.equal(c.bias, r.bias))
        for c, r in zip(current, ref)
    )
    if not same:
        raise PrunelabError(
            "the model differs from the one find_stable_neurons analysed (shapes or weights changed); "
            "run find_stable_neurons on this model first"
        )


def verify(
    layers: list[AffineLayer], compressed: nn.Module, points: np.ndarray
) -> tuple[float, float, int]:
    """(max |f - f_c|, tolerance, near ties) over ``points``; raises if outputs or classes disagree."""
    param = next(compressed.parameters())
    max_diff, scale, ties, wrong = 0.0, 1.0, 0, 0
    results = []
    with torch.no_grad():
        for part in chunks(points):
            ref = outputs(layers, part)
            got = compressed(torch.from_numpy(part).to(param.device, param.dtype)).double().cpu().numpy()
            results.append((ref, got))
            scale = max(scale, float(np.abs(ref).max(initial=0.0)))
    tol = RTOL * scale
    for ref, got in results:
        max_diff = max(max_diff, float(np.abs(ref - got).max(initial=0.0)))
        if ref.shape[1] > 1:
            top2 = np.sort(ref, axis=1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) > 2 * tol
            ties += int((~clear).sum())
            wrong += int((ref.argmax(1) != got.argmax(1))[clear].sum())
    if not max_diff <= tol or wrong:
        raise PrunelabError(
            f"compressed model does not match the original on the domain: max |output difference| = "
            f"{max_diff:.3g} (allowed {tol:.3g}), {wrong} changed predictions over {len(points)} points; "
            "a unit was wrongly reported stable or the domain/data do not match the analysis"
        )
    return max_diff, tol, ties


def compress(
    model: nn.Module,
    stable: StabilityResult,
    data: Any = None,
    domain: Any = None,
    *,
    n_points: int = 10_000,
    seed: int = 0,
    merge_linear: str = "always",
) -> CompressionResult:
    """Delete stably inactive units, fold stably active ones, and verify the smaller MLP.

    ``stable``: the :func:`find_stable_neurons` result for this model (its masks are already in
    ``stable.network``). ``data``: inputs (N, ...) in the domain to check on, besides ``n_points``
    uniform points of ``domain`` (default: the analysed box; seeded by ``seed``).
    """
    if merge_linear not in MERGE_RULES:
        raise PrunelabError(f"unknown merge_linear {merge_linear!r}; valid: {', '.join(MERGE_RULES)}")
    if not isinstance(n_points, int) or n_points < 0:
        raise PrunelabError(f"n_points must be a non-negative integer, got {n_points!r}")
    _check_same_network(model, stable)
    layers = stable.network
    box: Box = stable.domain if domain is None else make_box(domain, stable.domain.dim)
    if np.any(box.lower < stable.domain.lower) or np.any(box.upper > stable.domain.upper):
        raise PrunelabError("the verification domain must lie inside the domain the stability was proven on")
    points = np.concatenate([points_in_box(data, box), box.sample(n_points, seed)])
    if len(points) == 0:
        raise PrunelabError("nothing to verify on: give data or n_points > 0")

    affine, report = _compress_layers(layers, stable, merge_linear)
    param = next(model.parameters())
    compressed = _to_module(affine, param.dtype)
    max_diff, tol, ties = verify(layers, compressed, points)
    compressed = compressed.to(param.device)
    return CompressionResult(
        model=compressed,
        widths_before=[layers[0].weight.shape[1]] + [lay.weight.shape[0] for lay in layers],
        widths_after=[affine[0][0].shape[1]] + [w.shape[0] for w, _ in affine],
        connections_before=int(sum(torch.count_nonzero(lay.weight) for lay in layers)),
        connections_after=int(sum(np.count_nonzero(w) for w, _ in affine)),
        verified=True,
        max_abs_diff=max_diff,
        tolerance=tol,
        n_points=len(points),
        n_ties=ties,
        per_layer=report,
    )


def save_compressed(path: str | os.PathLike, result: CompressionResult) -> None:
    """Write the compressed model as safetensors (``layers.{j}.weight/bias``) with its report."""
    tensors = {}
    linears = [m for m in result.model if isinstance(m, nn.Linear)]
    for j, lin in enumerate(linears):
        tensors[f"layers.{j}.weight"] = lin.weight.detach().cpu().contiguous()
        tensors[f"layers.{j}.bias"] = lin.bias.detach().cpu().contiguous()
    meta = {"format": FORMAT, "report": json.dumps(result.to_row(), default=str)}
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


def load_compressed(path: str | os.PathLike) -> nn.Sequential:
    """Rebuild the ``nn.Sequential`` written by :func:`save_compressed`."""
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (OSError, SafetensorError) as exc:
        raise PrunelabError(f"cannot read {os.fspath(path)!r} as safetensors: {exc}") from None
    n = len(tensors) // 2
    names = [f"layers.{j}.{p}" for j in range(n) for p in ("weight", "bias")]
    if meta.get("format") != FORMAT or n == 0 or sorted(names) != sorted(tensors):
        raise PrunelabError(f"{os.fspath(path)!r} is not a compressed MLP written by save_compressed")
    affine = [(tensors[f"layers.{j}.weight"], tensors[f"layers.{j}.bias"]) for j in range(n)]
    return _to_module([(w.double().numpy(), b.double().numpy()) for w, b in affine], affine[0][0].dtype)
