"""Upper bounds on the number of linear regions of a ReLU MLP, dense and pruned.

Conventions (as in Serra, Tjandraatmadja & Ramalingam, ICML 2018): ``input_dim`` is n_0 and
``hidden_widths`` are n_1..n_L, the widths of the **hidden ReLU layers only**. The output layer of a
classifier is linear: it creates no region boundary, so it is not part of the bound. Functions that
take a whole MLP's widths (:func:`mlp_bound`) drop the last entry for that reason.

- :func:`serra_bound`: Serra et al. 2018, Theorem 1 (and, with ``ranks``, the variant with
  rank(W^l) in place of the last n_l in the min):
  ``sum_{(j_1..j_L) in J} prod_l C(n_l, j_l)``,
  ``J = {0 <= j_l <= min(n_0, n_1 - j_1, ..., n_{l-1} - j_{l-1}, n_l)}``, evaluated exactly with
  the memoised recurrence ``R(l, d) = sum_{j <= min(n_l, d)} C(n_l, j) R(l+1, min(n_l - j, d))``,
  ``R(L+1, d) = 1``, bound ``= R(1, n_0)``. Unrolling the recurrence gives exactly the J-sum (``d``
  carries ``min(n_0, n_1 - j_1, ...)``); the test suite checks it against itertools.product.
- :func:`expected_bound`: Cai et al. (CPAIOR 2023) Theorem 1, the expected bound when layer l keeps
  a fraction p_l of its weights: the rank k of W^l (an n_l x n_{l-1} matrix) limits both the number
  of hyperplanes that can cut a d-dimensional region and the dimension passed on,
  ``R(l, d) = sum_k P(k) sum_{j <= min(k, d)} C(n_l, j) R(l+1, min(n_l - j, d, k))``.
  P(k) comes from :mod:`.rank`. Probabilities are floats, so this is computed in log2 space with
  log-sum-exp; when every P(k) is a point mass (e.g. all densities 1) the exact integer is
  computed too. At density 1 the rank is min(n_l, n_{l-1}) and the recurrence equals Theorem 1
  (d <= n_{l-1} always), which the tests check.
- Restricted to a d-dimensional affine subspace (e.g. through d+1 sample points): replace n_0 by d
  (``subspace_dim``), as in Serra et al.; :func:`affine_dim` gives d for a set of points.

Choice not fixed by the papers: terms whose probability is below 2^-(sum n_l + 64) times the
largest are dropped from the log-sum-exp; since R <= 2^(sum n_l), they change the result by less
than 2^-64 relative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from prunelab.analysis.affine import mlp_layers
from prunelab.analysis.regions.rank import RANK_METHODS, RankDistribution, rank_distribution
from prunelab.errors import PrunelabError

EXACT_DIGITS_SHOWN = 100  # the CLI prints the integer when it has at most this many digits


@dataclass(frozen=True)
class RegionBound:
    """An upper bound on the number of linear regions.

    ``log2`` is always set; ``exact`` is the integer when it was computed exactly (dense bounds,
    or sparse bounds whose rank distributions are all point masses), else None.
    """

    log2: float
    exact: int | None
    input_dim: int
    hidden_widths: tuple[int, ...]
    densities: tuple[float, ...] | None
    method: str

    @property
    def digits(self) -> int | None:
        return None if self.exact is None else len(str(self.exact))

    def to_row(self) -> dict:
        return {
            "bound_method": self.method,
            "bound_log2": self.log2,
            "bound_exact": None if self.exact is None or (self.digits or 0) > EXACT_DIGITS_SHOWN else str(self.exact),
            "bound_input_dim": self.input_dim,
            "bound_hidden_widths": ",".join(map(str, self.hidden_widths)),
            "bound_densities": None if self.densities is None else ",".join(f"{p:g}" for p in self.densities),
        }


def _check_dims(input_dim: int, hidden_widths: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    if not isinstance(input_dim, (int, np.integer)) or isinstance(input_dim, bool) or input_dim < 0:
        raise PrunelabError(f"input dimension must be a non-negative integer, got {input_dim!r}")
    widths = tuple(hidden_widths)
    if not widths:
        raise PrunelabError("hidden_widths is empty: give the width of at least one hidden ReLU layer")
    for w in widths:
        if not isinstance(w, (int, np.integer)) or isinstance(w, bool) or w < 1:
            raise PrunelabError(f"hidden widths must be positive integers, got {list(widths)!r}")
    return int(input_dim), tuple(int(w) for w in widths)


def _exact_recurrence(d0: int, widths: tuple[int, ...], caps: tuple[int, ...], cap_dim: bool) -> int:
    """R(1, d0) with j_l <= min(caps[l], d); if ``cap_dim`` the dimension passed on is also <= caps[l]."""
    L = len(widths)

    @cache
    def R(l: int, d: int) -> int:
        if l == L:
            return 1
        n, k = widths[l], caps[l]
        total = 0
        for j in range(min(k, d) + 1):
            nxt = min(n - j, d, k) if cap_dim else min(n - j, d)
            total += math.comb(n, j) * R(l + 1, nxt)
        return total

    return R(0, d0)


def serra_bound(
    input_dim: int, hidden_widths: Sequence[int], ranks: Sequence[int] | None = None
) -> RegionBound:
    """Serra et al. 2018 Theorem 1 as an exact integer; with ``ranks``, rank(W^l) replaces the last n_l.

    ``input_dim`` is n_0 (or the dimension d of an affine subspace of the input space),
    ``hidden_widths`` the widths n_1..n_L of the hidden ReLU layers (not the linear output layer).
    """
    d0, widths = _check_dims(input_dim, hidden_widths)
    if ranks is None:
        caps, method = widths, "serra2018"
    else:
        caps = tuple(ranks)
        if len(caps) != len(widths) or any(
            not isinstance(k, (int, np.integer)) or k < 0 or k > n for k, n in zip(caps, widths)
        ):
            raise PrunelabError(
                f"ranks must be one integer 0 <= rank_l <= n_l per hidden layer {list(widths)}, got {list(caps)!r}"
            )
        caps, method = tuple(int(k) for k in caps), "serra2018-rank"
    value = _exact_recurrence(d0, widths, caps, cap_dim=False)
    return RegionBound(math.log2(value), value, d0, widths, None, method)


def _logsumexp2(a: np.ndarray, axis: int | None = None) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log2(np.sum(np.exp2(a - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def _log2_comb(n: int) -> np.ndarray:
    j = np.arange(n + 1)
    return np.array(
        [(math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1)) / math.log(2.0) for x in j]
    )


def _log2_expected(d0: int, widths: tuple[int, ...], dists: Sequence[RankDistribution]) -> float:
    """log2 of Cai et al.'s recurrence, bottom-up over layers, for all dimensions d that can occur."""
    L = len(widths)
    reach = [d0]  # the largest dimension that can reach layer l
    for n in widths[:-1]:
        reach.append(min(reach[-1], n))
    cutoff = sum(widths) + 64
    nxt = np.zeros(reach[-1] + 1)  # log2 R(L+1, d) = log2 1
    for l in range(L - 1, -1, -1):
        n = widths[l]
        logp = np.asarray(dists[l].log2_probs)
        ks = np.nonzero(logp >= logp.max() - cutoff)[0]
        logc = _log2_comb(n)
        dims = range(reach[l] + 1) if l > 0 else [d0]
        cur = np.full(reach[l] + 1, -np.inf)
        last = l == L - 1
        if last:
            prefix = np.logaddexp2.accumulate(logc)  # log2 sum_{j<=m} C(n, j)
        for d in dims:
            if last:
                inner = prefix[np.minimum(ks, min(d, n))]
            else:
                j = np.arange(min(n, d) + 1)
                idx = np.minimum(np.minimum(n - j[None, :], d), ks[:, None])
                terms = logc[j][None, :] + nxt[idx]
                terms = np.where(j[None, :] <= ks[:, None], terms, -np.inf)
                inner = _logsumexp2(terms, axis=1)
            cur[d] = float(_logsumexp2(logp[ks] + inner))
        nxt = cur
    return float(nxt[d0])


def _check_densities(densities: Sequence[float], n: int, what: str) -> tuple[float, ...]:
    ds = tuple(densities)
    if len(ds) != n:
        raise PrunelabError(f"give one density per {what} ({n}), got {len(ds)}: {list(ds)!r}")
    for p in ds:
        if not isinstance(p, (int, float, np.floating)) or isinstance(p, bool) or not (0.0 <= float(p) <= 1.0):
            raise PrunelabError(f"densities (fractions kept) must be numbers in [0, 1], got {list(ds)!r}")
    return tuple(float(p) for p in ds)


def expected_bound(
    input_dim: int,
    hidden_widths: Sequence[int],
    densities: Sequence[float],
    rank: str = "analytic",
    seed: int = 0,
    subspace_dim: int | None = None,
) -> RegionBound:
    """Cai et al. 2023 Theorem 1: the expected bound when hidden layer l keeps a fraction ``densities[l]``.

    W^l is n_l x n_{l-1} with n_0 = ``input_dim``; ``rank`` (``"analytic"`` | ``"montecarlo"``) picks
    how P(rank W^l = k) is obtained (see :mod:`.rank`); ``subspace_dim`` restricts the count to a
    d-dimensional affine subspace of the input (d replaces n_0 as the starting dimension).
    """
    n0, widths = _check_dims(input_dim, hidden_widths)
    ps = _check_densities(densities, len(widths), "hidden layer")
    d0 = n0 if subspace_dim is None else subspace_dim
    if not isinstance(d0, (int, np.integer)) or d0 < 0 or d0 > n0:
        raise PrunelabError(f"subspace_dim must be an integer in [0, {n0}], got {subspace_dim!r}")
    if rank not in RANK_METHODS:
        raise PrunelabError(f"unknown rank method {rank!r}; valid: {', '.join(RANK_METHODS)}")
    fan_in = (n0,) + widths[:-1]
    dists = [rank_distribution(n, m, p, rank, seed) for n, m, p in zip(widths, fan_in, ps)]
    exact = None
    if all(dist.is_point_mass() for dist in dists):
        caps = tuple(dist.support()[0] for dist in dists)
        exact = _exact_recurrence(int(d0), widths, caps, cap_dim=True)
        log2 = math.log2(exact)
    else:
        log2 = _log2_expected(int(d0), widths, dists)
    return RegionBound(log2, exact, int(d0), widths, ps, f"cai2023-{rank}")


def mlp_bound(
    widths: Sequence[int],
    densities: Sequence[float] | None = None,
    rank: str = "analytic",
    seed: int = 0,
    subspace_dim: int | None = None,
) -> RegionBound:
    """The bound for a whole MLP given as ``[n_0, n_1, ..., n_L, n_out]`` (what ``prunelab bound`` takes).

    ``densities`` has one entry per weight layer (``len(widths) - 1``); the output layer's density
    is accepted but does not enter the bound (a linear layer creates no region boundary). With no
    densities, or all hidden densities 1, this is Serra et al.'s exact dense bound.
    """
    ws = list(widths)
    if len(ws) < 3:
        raise PrunelabError(
            f"widths must list the input dimension, at least one hidden width and the output width "
            f"(e.g. 784,100,100,10), got {ws!r}"
        )
    n0, hidden = ws[0], ws[1:-1]
    _check_dims(n0, hidden)
    if isinstance(ws[-1], bool) or not isinstance(ws[-1], (int, np.integer)) or ws[-1] < 1:
        raise PrunelabError(f"the output width must be a positive integer, got {ws[-1]!r}")
    if densities is None:
        ps = (1.0,) * len(hidden)
    else:
        ps = _check_densities(densities, len(ws) - 1, "weight layer")[:-1]
    if all(p == 1.0 for p in ps) and subspace_dim is None:
        return serra_bound(n0, hidden)
    return expected_bound(n0, hidden, ps, rank=rank, seed=seed, subspace_dim=subspace_dim)


def model_bound(model: torch.nn.Module, masks=None, subspace_dim: int | None = None) -> RegionBound:
    """Serra et al. 2018's rank bound (Theorem 1 with rank(W^l)) for a concrete, possibly pruned MLP.

    Ranks are numerical ranks (``torch.linalg.matrix_rank``, float64, default tolerance) of the masked
    hidden-layer weights, read with :func:`prunelab.analysis.affine.mlp_layers`.
    """


    layers = mlp_layers(model, masks)
    hidden = [l for l in layers if l.relu]
    if not hidden:
        raise PrunelabError("the model has no hidden ReLU layer, so it has exactly one linear region")
    n0 = layers[0].weight.shape[1]
    d0 = n0 if subspace_dim is None else subspace_dim
    if not isinstance(d0, (int, np.integer)) or not (0 <= d0 <= n0):
        raise PrunelabError(f"subspace_dim must be an integer in [0, {n0}], got {subspace_dim!r}")
    ranks = [int(torch.linalg.matrix_rank(l.weight)) for l in hidden]
    return serra_bound(int(d0), [l.weight.shape[0] for l in hidden], ranks)


def affine_dim(points: torch.Tensor | np.ndarray, tol: float | None = None) -> int:
    """Dimension of the affine hull of ``points`` (N, ...): the d of the subspace through them."""
    x = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    if x.ndim < 1 or x.shape[0] < 1:
        raise PrunelabError(f"points must be a non-empty (N, ...) array, got shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] == 1:
        return 0
    return int(np.linalg.matrix_rank(x[1:] - x[0], tol=tol))


def format_bound(bound: RegionBound) -> str:
    """Human-readable lines for the CLI: log2 of the bound and, if at most 100 digits, the integer."""
    lines = [
        f"architecture: n0={bound.input_dim}, hidden={list(bound.hidden_widths)}"
        + ("" if bound.densities is None else f", hidden densities={[f'{p:g}' for p in bound.densities]}"),
        f"method: {bound.method}",
        f"log2(bound) = {bound.log2:.6f}",
    ]
    if bound.exact is not None and (bound.digits or 0) <= EXACT_DIGITS_SHOWN:
        lines.append(f"bound = {bound.exact}")
    else:
        exp10 = bound.log2 * math.log10(2.0)
        mant = 10 ** (exp10 - math.floor(exp10))
        kind = "exact, " + str(bound.digits) + " digits" if bound.exact is not None else "expected value"
        lines.append(f"bound ~ {mant:.6f}e{math.floor(exp10)} ({kind})")
    return "\n".join(lines)
