"""The Combinatorial Brain Surgeon (Yu, Serra, Ramalingam & Zhe, ICML 2022): CBS-S and CBS-U.

**CBS-S** (selection, their Sec. 4.1 and Algorithm 1) chooses the set P of weights to prune jointly, by
minimising ``sum_{k,m} A_km y_k y_m`` with ``A_km = w_k F_km w_m``, y the 0/1 indicator of P and F the
*undamped* empirical Fisher ``G^T G / N``, subject to ``|P| = n_prune``. The objective is
``||G[:, P] w_P||^2 / N``: it is applied through G and one residual vector ``z = G[:, P] w_P``, never
as a d x d matrix, and needs no inverse. By default (``cbs_selection="auto"``) F is the **full**
Fisher, as in the paper and the authors' code (``greedy_alg/greedy.py``: ``get_F_IJ`` /
``cal_HW`` read ``F_ij = mean_n G_ni G_nj`` straight from G); ``"blocks"`` restricts it to the
Fisher's diagonal blocks (one residual ``z_b`` per block; ``greedy_alg/greedyblock.py``). Memory rule:
beyond G itself (``4 N d`` bytes, which the Fisher needs anyway), the full selection needs
``8 (N + 6 d + 2 window N)`` bytes plus 32 MiB of column chunks (:func:`full_selection_bytes`);
``auto`` takes it whenever that fits in ``fisher_memory_gb``, else the blocks.

1. *Randomised magnitude initialisation*: global magnitude pruning, and ``inits`` selections that keep
   the largest weights within random chunks of the weights; the one with the lowest measured loss on
   the data wins (their "magnitude perturbation", reference code ``constructive_greedy_prune_one_iter``).
2. *Swap local search*: each pass sorts P by ``alpha_i = 2 w_i F_{i,P} w_P - w_i^2 F_ii`` (the drop of
   the objective if i is restored, descending) and the kept weights by ``beta_j - gamma_{j,i0}`` with
   ``beta_j = 2 w_j F_{j,P} w_P + w_j^2 F_jj`` (the rise if j is pruned) and i0 the first of P
   (ascending), as the reference code does. Walking down P, weight i is swapped with the first kept j
   within ``window`` positions of i's rank whose swap changes the objective by
   ``-alpha_i + beta_j - gamma_ij <= -epsilon`` (``gamma_ij = 2 w_i F_ij w_j``); alpha/beta are
   recomputed exactly from the current residuals, so swaps accepted earlier in the pass are accounted
   for. A pass ends after ``misses`` weights of P found no partner (tau). Up to ``passes`` passes; a
   pass with no swap ends the search. After every pass the network loss of the selection is measured
   (the criterion: mean loss over all of ``ctx.batches``, selection zeroed, no update) and the
   selection with the lowest loss is returned.

Choices the paper leaves open, written down: the chunked initialisation splits the kept budget over
chunks in proportion to chunk size (largest remainder, so the total is exact). The reference code
(``constructive_greedy_prune_one_iter``) rounds each chunk's budget *up* and gives the last chunk
only what is left, so its perturbed starts keep more weights than the target whenever the rounding
overshoots (MLPNet: 712 instead of 647 kept at 0.98, 1,780 for 1,618 at 0.95, 3,382 for 3,236 at 0.9;
:func:`prunelab.experiments.reproductions.cbs.authors_kept`) and the search keeps that count; we
keep the exact count, so a recorded sparsity is the one pruned. The reference ranks 50 starts (its
``--max-mag-perb`` default: magnitude + 49 perturbed) by the loss on 5,000 samples; ``inits``
defaults to 5 (49 changed CBS-S at 0.98 on the authors' MLPNet by +0.75 points, within the seed sd;
``benchmarks/cbs_authors_count.py``). A pass with no accepted swap stops the search (the reference
stops when the very first pair fails, and also when the measured loss has not improved for 5 passes);
ties are broken by index.

**CBS-U** (update, their Sec. 4.2, Eq. 11-12): for the pruned set P, the change ``dw`` minimising
``1/2 dw^T F dw`` subject to ``dw_P = -w_P`` (damped F) is ``dw = -F^-1[:, P] lambda`` with
``[F^-1]_PP lambda = w_P``. It zeroes the pruned weights exactly, can follow any selection, and with a
block-diagonal F is solved per block (:func:`cbs_delta`). With the full Fisher (``full=True``) the
same minimiser is computed from F restricted to the kept weights K (:func:`cbs_delta_full`):
``dw_K = F_KK^-1 F_KP w_P`` (a Schur-complement identity, equal to the paper's formula), and with
``F = damping I + G^T G / N`` that is ``dw_K = G_K^T (N damping I + G_K G_K^T)^-1 G_P w_P``: one N x N
system, no inverse of F. The authors' code (``cal_delta_w_base``) forms the full d x d ``F^-1`` and
solves ``[F^-1]_PP lambda = w_P``; same result, which we do not do because that matrix needs 8 d^2
bytes (8.4 GB on MLPNet).

**Registration contract.** CBS-S selects a *set* for a given sparsity, not per-weight scores. The ``cbs``
criterion therefore reads the target sparsity (fraction of all masked weights that must end up pruned)
from ``ctx.options["sparsity"]`` and must be used with allocation ``"global"`` (if
``ctx.options["allocation"]`` is present it must say so). Its scores encode the set: ``1 + t`` for
weights it keeps, ``t`` for weights it prunes, 0 for weights already pruned, with ``t = |w| / (4 max|w|)``
a magnitude tie-breaker, so a global top-k that is off by one from our count still agrees with it.
Without ``ctx.options["sparsity"]`` the criterion raises :class:`PrunelabError`.
``cbs.default_update = "cbs"``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic
import torch
from torch import nn
from torch.func import functional_call

from prunelab.errors import PrunelabError
from prunelab.pruning.context import CRITERIA, UPDATES, ScoreContext
from prunelab.pruning.second_order.fisher import BlockInverse, GiB, fisher_for, gram64, matvec64, rmatvec64
from prunelab.pruning.second_order.gradients import eval_mode
from prunelab.pruning.second_order.layout import Layout, removed_coordinates, write_weights
from prunelab.pruning.second_order.options import flat_options
from prunelab.pruning.second_order.woodfisher import unpack_scores

SELECTIONS = ("auto", "full", "blocks")


class CBSOptions(pydantic.BaseModel):
    """CBS-S search settings (paper defaults). ctx.options keys: ``cbs_epsilon``, ``cbs_window``,
    ``cbs_misses``, ``cbs_passes``, ``cbs_inits``, ``cbs_selection`` (which Fisher the selection
    uses: ``auto`` = full if :func:`full_selection_bytes` fits in ``fisher_memory_gb``, else the
    Fisher's blocks; ``full``; ``blocks``)."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    epsilon: float = pydantic.Field(1e-4, ge=0.0, allow_inf_nan=False)  # least accepted decrease
    window: int = pydantic.Field(10, ge=1)  # rho
    misses: int = pydantic.Field(20, ge=0)  # tau
    passes: int = pydantic.Field(100, ge=0)
    inits: int = pydantic.Field(5, ge=0)  # random chunked-magnitude initialisations
    selection: Literal["auto", "full", "blocks"] = "auto"

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> CBSOptions:
        options = dict(options or {})
        values = {k[4:]: v for k, v in options.items() if k.startswith("cbs_")}
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            valid = ", ".join(f"cbs_{f}" for f in cls.model_fields)
            raise PrunelabError(f"unknown CBS option cbs_{unknown[0]}; valid: {valid}")
        try:
            return cls(**values)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            raise PrunelabError(f"bad CBS option cbs_{first['loc'][0]}={first.get('input')!r}: {first['msg']}") from None


class SelectionProblem:
    """The CBS-S quadratic ``sum_b ||G_b[:, P] w_P||^2 / N`` with its alpha/beta/gamma terms.

    ``weights`` (d,), ``grads`` G (N, d), ``blocks`` the (start, end) column ranges of the diagonal
    blocks; ``((0, d),)`` is the full Fisher (:func:`selection_blocks` picks them). The state of a
    selection is its residuals ``z`` (n_blocks, N), z_b = G_b[:, P] w_P.
    Bulk products (``z`` at the start of a pass, ``F_{.,P} w_P`` for ordering) run in G's dtype —
    float32 for network gradients, a relative error near 1e-6, far below the default epsilon — and each
    candidate swap is then evaluated in float64 from ``z`` (float64 G makes everything float64).
    """

    chunk_elements = 2**22  # float64 elements per column chunk (32 MiB)

    def __init__(self, weights: torch.Tensor, grads: torch.Tensor, blocks: tuple[tuple[int, int], ...]) -> None:
        self.w = weights.to(device=grads.device, dtype=torch.float64)
        self.grads = grads
        self.n = grads.shape[0]
        self.blocks = blocks
        sizes = torch.tensor([e - s for s, e in blocks], dtype=torch.long)
        self.block_of = torch.repeat_interleave(torch.arange(len(blocks)), sizes).to(grads.device)
        step = max(1, self.chunk_elements // max(self.n, 1))  # columns per float64 chunk
        d = grads.shape[1]
        self.fdiag = torch.cat([(grads[:, c : c + step].double() ** 2).sum(0) for c in range(0, d, step)]) / self.n

    @property
    def dim(self) -> int:
        return int(self.w.numel())

    def residuals(self, pruned: torch.Tensor) -> torch.Tensor:
        """z_b = G_b[:, P] w_P for every block, (n_blocks, N) float64 (products in G's dtype)."""
        wp = torch.where(pruned, self.w, torch.zeros((), dtype=torch.float64, device=self.w.device))
        wp = wp.to(self.grads.dtype)
        return torch.stack([self.grads[:, s:e] @ wp[s:e] for s, e in self.blocks]).double()

    def objective(self, pruned: torch.Tensor) -> float:
        """sum_{k,m in P} w_k F_km w_m, from scratch."""
        return float((self.residuals(pruned) ** 2).sum()) / self.n

    def f_times_wp(self, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(F_{i,P} w_P for i in idx), in float64."""
        g = self.grads[:, idx].double()
        return (g * z[self.block_of[idx]].T).sum(0) / self.n

    def f_times_wp_all(self, z: torch.Tensor) -> torch.Tensor:
        """F_{i,P} w_P for every i, products in G's dtype (used only to order candidates)."""
        zs = z.to(self.grads.dtype)
        return torch.cat([self.grads[:, s:e].T @ zs[b] for b, (s, e) in enumerate(self.blocks)]).double() / self.n

    def alpha(self, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Objective decrease if pruned weights ``idx`` were restored (one at a time)."""
        w = self.w[idx]
        return 2 * w * self.f_times_wp(z, idx) - w * w * self.fdiag[idx]

    def beta(self, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Objective increase if kept weights ``idx`` were pruned (one at a time)."""
        w = self.w[idx]
        return 2 * w * self.f_times_wp(z, idx) + w * w * self.fdiag[idx]

    def gamma(self, i: int, idx: torch.Tensor) -> torch.Tensor:
        """2 w_i F_ij w_j for j in idx (zero across blocks); in column chunks of 32 MiB."""
        gi = self.grads[:, i].double()
        step = max(1, self.chunk_elements // max(self.n, 1))
        parts = [self.grads[:, idx[c : c + step]].double().T @ gi for c in range(0, idx.numel(), step)]
        f_ij = (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=gi.device)) / self.n
        same = self.block_of[idx] == self.block_of[i]
        return torch.where(same, 2 * self.w[i] * f_ij * self.w[idx], torch.zeros((), dtype=torch.float64, device=f_ij.device))

    def swap_change(self, z: torch.Tensor, i: int, idx: torch.Tensor) -> torch.Tensor:
        """Objective change of restoring pruned i and pruning kept j, for each j in idx."""
        i_t = torch.tensor([i], device=idx.device)
        return -self.alpha(z, i_t) + self.beta(z, idx) - self.gamma(i, idx)

    def apply_swap(self, z: torch.Tensor, i: int, j: int) -> None:
        """Update the residuals in place: i leaves P, j joins it."""
        z[self.block_of[i]] -= self.w[i] * self.grads[:, i].double()
        z[self.block_of[j]] += self.w[j] * self.grads[:, j].double()


@dataclass
class SelectionResult:
    """Outcome of :func:`cbs_select`: the pruned set and what the search did."""

    pruned: torch.Tensor  # (d,) bool
    loss: float  # measured loss of the returned selection
    objective: float  # its CBS-S objective
    init_losses: list[float] = field(default_factory=list)
    pass_losses: list[float] = field(default_factory=list)
    pass_objectives: list[float] = field(default_factory=list)
    pass_swaps: list[int] = field(default_factory=list)
    pass_seconds: list[float] = field(default_factory=list)


def magnitude_selection(weights: torch.Tensor, n_prune: int) -> torch.Tensor:
    """(d,) bool: the ``n_prune`` smallest |w| (global magnitude pruning)."""
    pruned = torch.zeros(weights.numel(), dtype=torch.bool, device=weights.device)
    if n_prune > 0:
        pruned[torch.topk(weights.abs(), n_prune, largest=False, sorted=False).indices] = True
    return pruned


def chunked_magnitude_selection(weights: torch.Tensor, n_prune: int, generator: torch.Generator) -> torch.Tensor:
    """Magnitude pruning within random chunks (CBS's perturbed initialisation).

    The coordinates are shuffled and cut into ``min(sqrt(d), 1000)`` chunks; each chunk keeps its
    largest weights, the kept budget shared in proportion to chunk size (largest remainder).
    """
    d = weights.numel()
    n_keep = d - n_prune
    perm = torch.randperm(d, generator=generator).to(weights.device)
    n_chunks = max(1, min(math.isqrt(d), 1000))
    bounds = [round(c * d / n_chunks) for c in range(n_chunks + 1)]
    sizes = torch.tensor([bounds[c + 1] - bounds[c] for c in range(n_chunks)], dtype=torch.float64)
    quota = sizes * n_keep / d
    keep = quota.floor().long()
    short = n_keep - int(keep.sum())
    order = torch.argsort(quota - keep.double(), descending=True, stable=True)
    keep[order[:short]] += 1
    pruned = torch.ones(d, dtype=torch.bool, device=weights.device)
    for c in range(n_chunks):
        members = perm[bounds[c] : bounds[c + 1]]
        k = int(keep[c])
        if k:
            pruned[members[torch.topk(weights[members].abs(), k).indices]] = False
    return pruned


def swap_pass(problem: SelectionProblem, pruned: torch.Tensor, opts: CBSOptions) -> int:
    """One swap pass of Algorithm 1, in place on ``pruned``; returns the number of swaps made."""
    z = problem.residuals(pruned)
    fw = problem.f_times_wp_all(z)
    w, fd = problem.w, problem.fdiag
    p_idx = torch.nonzero(pruned).reshape(-1)
    r_idx = torch.nonzero(~pruned).reshape(-1)
    if p_idx.numel() == 0 or r_idx.numel() == 0:
        return 0
    alpha = 2 * w[p_idx] * fw[p_idx] - w[p_idx] ** 2 * fd[p_idx]
    p_idx = p_idx[torch.argsort(alpha, descending=True, stable=True)]
    i0 = int(p_idx[0])
    beta = 2 * w[r_idx] * fw[r_idx] + w[r_idx] ** 2 * fd[r_idx]
    s, e = problem.blocks[int(problem.block_of[i0])]
    gamma0 = torch.zeros_like(beta)
    in_block = (r_idx >= s) & (r_idx < e)
    if bool(in_block.any()):
        gamma0[in_block] = problem.gamma(i0, r_idx[in_block])
    r_idx = r_idx[torch.argsort(beta - gamma0, stable=True)]
    used = torch.zeros(r_idx.numel(), dtype=torch.bool)
    swaps = misses = 0
    for rank in range(p_idx.numel()):
        if misses > opts.misses:
            break
        lo, hi = max(0, rank - opts.window), min(r_idx.numel(), rank + opts.window)
        cand = torch.arange(lo, hi)[~used[lo:hi]] if hi > lo else torch.zeros(0, dtype=torch.long)
        if cand.numel() == 0:
            misses += 1
            continue
        i = int(p_idx[rank])
        js = r_idx[cand.to(r_idx.device)]
        ok = torch.nonzero(problem.swap_change(z, i, js) <= -opts.epsilon).reshape(-1)
        if ok.numel() == 0:
            misses += 1
            continue
        q = int(ok[0])
        j = int(js[q])
        problem.apply_swap(z, i, j)
        pruned[i], pruned[j] = False, True
        used[int(cand[q])] = True
        swaps += 1
    return swaps


def cbs_select(
    problem: SelectionProblem,
    n_prune: int,
    opts: CBSOptions | None = None,
    generator: torch.Generator | None = None,
    loss_of: Callable[[torch.Tensor], float] | None = None,
) -> SelectionResult:
    """CBS-S: prune exactly ``n_prune`` coordinates (Algorithm 1 of Yu et al. 2022).

    ``loss_of(pruned) -> float`` measures a selection (the network loss on a data subset with those
    weights zeroed); ``None`` uses the CBS-S objective itself.
    """
    opts = opts or CBSOptions()
    generator = generator or torch.Generator().manual_seed(0)
    if not isinstance(n_prune, int) or not 0 <= n_prune <= problem.dim:
        raise PrunelabError(f"n_prune must be an integer in [0, {problem.dim}], got {n_prune!r}")
    measure = loss_of or problem.objective
    inits = [magnitude_selection(problem.w, n_prune)]
    inits += [chunked_magnitude_selection(problem.w, n_prune, generator) for _ in range(opts.inits)]
    init_losses = [float(measure(p)) for p in inits]
    best_k = min(range(len(inits)), key=lambda k: init_losses[k])
    best, best_loss = inits[best_k].clone(), init_losses[best_k]
    result = SelectionResult(best, best_loss, 0.0, init_losses=init_losses)
    current = best.clone()
    for _ in range(opts.passes):
        t0 = time.perf_counter()
        swaps = swap_pass(problem, current, opts)
        result.pass_seconds.append(time.perf_counter() - t0)
        result.pass_swaps.append(swaps)
        if swaps == 0:
            break
        loss = float(measure(current))
        result.pass_losses.append(loss)
        result.pass_objectives.append(problem.objective(current))
        if loss < best_loss:
            best, best_loss = current.clone(), loss
    result.pruned, result.loss, result.objective = best, best_loss, problem.objective(best)
    return result


def full_selection_bytes(n: int, d: int, window: int) -> int:
    """Scratch of a full-Fisher CBS-S beyond G: the residual (N), F_{.,P} w_P, alpha, beta and two
    orderings (6 d), the candidate columns (2 window N), all float64, plus 32 MiB column chunks."""
    return 8 * (n + 6 * d + 2 * window * n) + 2**25


def selection_blocks(layout: Layout, n: int, opts: CBSOptions, memory_limit_gb: float) -> tuple[tuple[int, int], ...]:
    """The diagonal blocks CBS-S works with: one block over everything (full Fisher) or the layout's."""
    full = ((0, layout.dim),)
    if opts.selection == "blocks":
        return layout.blocks
    fits = full_selection_bytes(n, layout.dim, opts.window) <= memory_limit_gb * GiB
    if opts.selection == "full" and not fits:
        need = full_selection_bytes(n, layout.dim, opts.window) / GiB
        raise PrunelabError(f"full-Fisher CBS-S needs {need:.2f} GiB of scratch, above fisher_memory_gb="
                            f"{memory_limit_gb}; use cbs_selection='blocks' or raise fisher_memory_gb")
    return full if fits else layout.blocks


def cbs_delta_full(grads: torch.Tensor, weights: torch.Tensor, pruned: torch.Tensor, damping: float,
                   memory_limit_gb: float = 2.0) -> torch.Tensor:
    """CBS-U with the full damped Fisher ``F = damping I + G^T G / N``, without any inverse of F.

    ``dw_P = -w_P`` and ``dw_K = F_KK^-1 F_KP w_P`` on the kept set K, with ``F_KP w_P = G_K^T z / N``,
    ``z = G_P w_P``: for ``|K| <= N`` the |K| x |K| system ``(damping I + G_K^T G_K / N) dw_K = G_K^T z / N``,
    otherwise ``dw_K = G_K^T (N damping I + G_K G_K^T)^-1 z`` (N x N). Float64; (dim,).
    """
    if not (isinstance(damping, (int, float)) and damping > 0):
        raise PrunelabError(f"damping must be a positive number, got {damping!r}")
    n, d = grads.shape
    pruned = pruned.to(device=grads.device, dtype=torch.bool)
    w = weights.to(device=grads.device, dtype=torch.float64)
    delta = torch.where(pruned, -w, torch.zeros((), dtype=torch.float64, device=w.device))
    kept = ~pruned
    n_kept = int(kept.sum())
    if n_kept == 0 or n_kept == d:
        return delta
    z = matvec64(grads, torch.where(pruned, w, torch.zeros((), dtype=torch.float64, device=w.device)))
    size = min(n_kept, n)
    if 8.0 * (size * size + n * size) > memory_limit_gb * GiB:
        raise PrunelabError(f"full-Fisher CBS-U needs {8.0 * (size * size + n * size) / GiB:.1f} GiB, above "
                            f"fisher_memory_gb={memory_limit_gb}; lower fisher_samples or use blocks (full=False)")
    if n_kept <= n:
        g_k = grads[:, kept].double()
        a = g_k.T @ g_k / n
        a.diagonal().add_(float(damping))
        delta[kept] = torch.linalg.solve(a, g_k.T @ z / n)
    else:
        m = gram64(grads, kept)
        m.diagonal().add_(n * float(damping))
        u = torch.linalg.solve(m, z)
        delta[kept] = rmatvec64(grads, u)[kept]
    return delta


def cbs_delta(inverse: BlockInverse, weights: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """CBS-U: ``dw = -F^-1[:, P] lambda`` with ``[F^-1]_PP lambda = w_P``, per block; (dim,) float64."""
    if not isinstance(inverse, BlockInverse):
        raise PrunelabError("cbs_delta needs a block-diagonal inverse; for the full Fisher use cbs_delta_full")
    w = weights.to(torch.float64)
    delta = torch.zeros_like(w)
    for block, (s, e) in zip(inverse.blocks, inverse.layout.blocks):
        p = torch.nonzero(pruned[s:e]).reshape(-1)
        if p.numel() == 0:
            continue
        lam = torch.linalg.solve(block[p][:, p], w[s:e][p])
        delta[s:e] = -(block[:, p] @ lam)
    return delta


def target_prune_count(masks: Mapping[str, torch.Tensor], ctx: ScoreContext) -> int:
    """How many currently kept weights CBS-S must prune, from ``ctx.options["sparsity"]``."""
    sparsity = ctx.options.get("sparsity")
    if sparsity is None:
        raise PrunelabError(
            "criterion 'cbs' selects a set for one sparsity: it needs ctx.options['sparsity'] (the fraction "
            "of prunable weights to remove), which prunelab.prune sets; use it with allocation 'global'"
        )
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise PrunelabError(f"ctx.options['sparsity'] must be a number in [0, 1), got {sparsity!r}")
    allocation = ctx.options.get("allocation", "global")
    if allocation != "global":
        raise PrunelabError(f"criterion 'cbs' chooses one global set; use allocation 'global', not {allocation!r}")
    total = sum(int(m.numel()) for m in masks.values())
    already = total - sum(int(m.bool().sum()) for m in masks.values())
    n_prune = int(round(sparsity * total)) - already
    if n_prune < 0:
        raise PrunelabError(
            f"target sparsity {sparsity} is below the masks' current sparsity {already / total:.4f}; "
            "pruning never revives weights"
        )
    return n_prune


def network_loss(
    model: nn.Module, layout: Layout, weights: torch.Tensor, batches, loss_fn, adapter=None
) -> Callable[[torch.Tensor], float]:
    """``pruned -> loss`` of the network with those kept weights zeroed (no update), over ``batches``
    (through the model ``adapter`` when given: token models, ``ModelOutput`` outputs)."""
    params = dict(model.named_parameters())
    fixed = {n: p.detach() for n, p in params.items() if n not in layout.names}
    fixed.update(dict(model.named_buffers()))

    def loss(pruned: torch.Tensor) -> float:
        vec = torch.where(pruned, torch.zeros((), dtype=weights.dtype, device=weights.device), weights)
        tensors = {n: t.to(dtype=params[n].dtype, device=params[n].device) for n, t in layout.unpack(vec).items()}
        total, count = 0.0, 0
        with torch.no_grad(), eval_mode(model):
            for batch in batches:
                if adapter is None:
                    x, y = batch
                    n = x.shape[0]
                    total += float(loss_fn(functional_call(model, {**fixed, **tensors}, (x,)), y)) * n
                else:
                    n = adapter.batch_size(batch)
                    total += float(adapter.loss(model, batch, {**fixed, **tensors})) * n
                count += n
        return total / count

    return loss


@CRITERIA.register("cbs", options=flat_options("CBSCriterionOptions", cbs=CBSOptions))
def cbs(model: nn.Module, masks: Mapping[str, torch.Tensor], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """CBS-S selection encoded as scores (see the module docstring for the contract)."""
    n_prune = target_prune_count(masks, ctx)
    opts = CBSOptions.from_options(ctx.options)
    state = fisher_for(model, masks, ctx, "cbs")
    blocks = selection_blocks(state.layout, state.grads.shape[0], opts, state.options.memory_limit_gb)
    problem = SelectionProblem(state.weights, state.grads, blocks)
    adapter = ctx.adapter_for(model)
    plain = type(adapter).__name__ == "TensorAdapter"  # the zoo: exactly the computation it always did
    loss_of = network_loss(model, state.layout, state.weights, ctx.require_data("cbs"), ctx.loss_fn,
                           None if plain else adapter)
    result = cbs_select(problem, n_prune, opts, ctx.generator(offset=104729), loss_of)
    mag = state.weights.abs()
    tie = mag / (4 * float(mag.max())) if float(mag.max()) > 0 else torch.zeros_like(mag)
    scores = torch.where(result.pruned, tie, 1.0 + tie)
    return unpack_scores(state.layout, model, scores)


cbs.default_update = "cbs"  # type: ignore[attr-defined]


@UPDATES.register("cbs", options=flat_options("CBSUpdateOptions", criterion=False, cbs=CBSOptions))
def cbs_update(model: nn.Module, old_masks: Mapping[str, torch.Tensor], new_masks: Mapping[str, torch.Tensor], ctx: ScoreContext) -> None:
    """CBS-U after any selection: the jointly optimal update of the quadratic model (damped F);
    per block, or with ``full`` through the Fisher restricted to the kept weights."""
    state = fisher_for(model, old_masks, ctx, "cbs update")
    pruned = removed_coordinates(state.layout, old_masks, new_masks).to(state.weights.device)
    if state.options.full:
        delta = cbs_delta_full(state.grads, state.weights, pruned, state.options.damping, state.options.memory_limit_gb)
    else:
        delta = cbs_delta(state.inverse, state.weights, pruned)
    write_weights(model, state.layout, state.weights + delta, new_masks)
