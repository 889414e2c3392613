"""Empirical Fisher ``F = damping * I + (1/N) sum_n g_n g_n^T`` and its block-diagonal inverse.

The empirical Fisher stands in for the Hessian of the loss at a trained model (Hassibi & Stork 1993,
OBS; Singh & Alistarh 2020, WoodFisher, Eq. 4). It is kept as the gradient matrix ``G`` (N x d, see
:mod:`.gradients`) and never formed as a d x d matrix: products ``F v`` are ``damping*v + G^T (G v) / N``.

The inverse is block-diagonal over the blocks of a :class:`Layout` and computed for all blocks of one
size at once (batched), by whichever route is cheaper for that size ``b``:

* ``b <= N``: Cholesky of the b x b block ``F_b = damping*I + G_b^T G_b / N``, then its inverse;
* ``N < b``:  Woodbury, ``F_b^-1 = (I - G_b^T (N*damping*I + G_b G_b^T)^-1 G_b) / damping``, which
  factors only an N x N matrix.

With ``full=True`` and ``N < d`` the single d x d block is never formed: :class:`LowRankInverse` keeps
only the Cholesky factor of the N x N matrix ``N*damping*I + G G^T`` and applies the same Woodbury
identity implicitly (``diag(F^-1)``, ``F^-1 v``); CBS-U with the full Fisher needs no inverse at all
(:func:`prunelab.pruning.second_order.cbs.cbs_delta_full`).

Both are exact (up to rounding) and equal the sequential rank-1 recursion WoodFisher uses
(Singh & Alistarh 2020, Eq. 8-9), ``F_n^-1 = F_{n-1}^-1 - F_{n-1}^-1 g g^T F_{n-1}^-1 / (N + g^T F_{n-1}^-1 g)``,
``F_0^-1 = I / damping``, which :func:`recursive_inverse` implements as the slow reference.
Products are formed in float64 (the damping is small next to the largest eigenvalues, so float32 Gram
matrices lose the small eigenvalues the inverse is most sensitive to).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pydantic
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.pruning.second_order.gradients import gradient_matrix, sample_pool
from prunelab.pruning.second_order.layout import Layout, make_layout

GiB = 2**30

#: ctx.options key -> FisherOptions field
_KEYS = {
    "fisher_samples": "samples",
    "fisher_batch": "batch",
    "damping": "damping",
    "block_size": "block_size",
    "full": "full",
    "fisher_memory_gb": "memory_limit_gb",
}


class FisherOptions(pydantic.BaseModel):
    """How to build the empirical Fisher. Read from ``ctx.options`` by :meth:`from_options`.

    ``samples``: N, the number of gradients (``fisher_samples``). ``batch``: samples averaged into each
    gradient, 1 = per-sample (``fisher_batch``); N * batch samples are drawn from the data.
    ``damping``: lambda added to the diagonal (``damping``). ``block_size``: kept weights per diagonal
    block, None = one block per layer (``block_size``). ``full``: one block over all layers (``full``).
    ``memory_limit_gb``: largest single array (G or one inverse block) allowed.

    The default ``block_size=1000`` is our choice: per-layer blocks of MLPNet's first layer (31,360
    weights) would need 7.9 GB in float64; WoodFisher and CBS also use chunks of this order.
    ``full=True`` uses the whole Fisher; with ``N < d`` it is applied through G and an N x N
    factor (8 N^2 bytes), never as a d x d matrix. The CBS-S *selection* uses the full Fisher by
    default whatever these say (``cbs_selection``, see :class:`.cbs.CBSOptions`).
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True)

    samples: int = pydantic.Field(1000, ge=1)
    batch: int = pydantic.Field(1, ge=1)
    damping: float = pydantic.Field(1e-3, gt=0.0, allow_inf_nan=False)
    block_size: int | None = pydantic.Field(1000, ge=1)
    full: bool = False
    memory_limit_gb: float = pydantic.Field(2.0, gt=0.0, allow_inf_nan=False)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> FisherOptions:
        """Build from ``ctx.options`` keys (``fisher_samples``, ``fisher_batch``, ``damping``,
        ``block_size``, ``full``, ``fisher_memory_gb``); a ``FisherOptions`` under ``"fisher"`` wins."""
        options = dict(options or {})
        if "fisher" in options:
            if not isinstance(options["fisher"], FisherOptions):
                raise PrunelabError(f"options['fisher'] must be a FisherOptions, got {type(options['fisher']).__name__}")
            return options["fisher"]
        values = {field: options[key] for key, field in _KEYS.items() if key in options}
        try:
            return cls(**values)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            key = {v: k for k, v in _KEYS.items()}.get(str(first["loc"][0]), first["loc"][0])
            raise PrunelabError(f"bad Fisher option {key}={first.get('input')!r}: {first['msg']}") from None


@dataclass
class BlockInverse:
    """The block-diagonal ``F^-1``: ``blocks[k]`` is the (b_k x b_k) float64 inverse of block k."""

    layout: Layout
    blocks: list[torch.Tensor]
    damping: float

    def diag(self) -> torch.Tensor:
        """diag(F^-1), (dim,) float64."""
        return torch.cat([b.diagonal() for b in self.blocks])

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """F^-1 v for v of shape (dim,), float64."""
        v = v.to(torch.float64)
        return torch.cat([b @ v[s:e] for b, (s, e) in zip(self.blocks, self.layout.blocks)])

    def dense(self) -> torch.Tensor:
        """The whole (dim x dim) matrix; for tests on small problems only."""
        return torch.block_diag(*self.blocks)


def matvec64(grads: torch.Tensor, v: torch.Tensor, step: int | None = None) -> torch.Tensor:
    """``G v`` in float64 for G (N, d) of any dtype, in column chunks (no float64 copy of G)."""
    n, d = grads.shape
    step = step or max(1, 2**22 // max(n, 1))
    out = torch.zeros(n, dtype=torch.float64, device=grads.device)
    v = v.to(device=grads.device, dtype=torch.float64)
    for c in range(0, d, step):
        out += grads[:, c : c + step].double() @ v[c : c + step]
    return out


def rmatvec64(grads: torch.Tensor, u: torch.Tensor, step: int | None = None) -> torch.Tensor:
    """``G^T u`` in float64 for G (N, d) of any dtype, in column chunks."""
    n, d = grads.shape
    step = step or max(1, 2**22 // max(n, 1))
    u = u.to(device=grads.device, dtype=torch.float64)
    return torch.cat([grads[:, c : c + step].double().T @ u for c in range(0, d, step)])


def gram64(grads: torch.Tensor, columns: torch.Tensor | None = None, step: int | None = None) -> torch.Tensor:
    """``G_C G_C^T`` (N x N, float64) over the columns ``columns`` (bool (d,); None = all), chunked."""
    n, d = grads.shape
    step = step or max(1, 2**22 // max(n, 1))
    out = torch.zeros(n, n, dtype=torch.float64, device=grads.device)
    for c in range(0, d, step):
        g = grads[:, c : c + step]
        if columns is not None:
            g = g[:, columns[c : c + step].to(grads.device)]
        if g.shape[1]:
            g = g.double()
            out += g @ g.T
    return out


@dataclass
class LowRankInverse:
    """The full ``F^-1`` for ``F = damping*I + G^T G / N`` with N < d, never formed (Woodbury).

    ``F^-1 = (I - G^T M^-1 G) / damping`` with ``M = N*damping*I + G G^T`` (N x N); ``chol`` is M's
    lower Cholesky factor. Same interface as :class:`BlockInverse` for ``diag``, ``matvec``, ``dense``.
    """

    layout: Layout
    grads: torch.Tensor
    damping: float
    chol: torch.Tensor

    _diag: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def diag(self) -> torch.Tensor:
        """diag(F^-1) = (1 - ||L^-1 g_q||^2) / damping for every column g_q of G (M = L L^T), (dim,)
        float64. One triangular solve per column chunk (N^2 d flops, half of a ``cholesky_solve``);
        computed once and kept (WoodFisher's saliency and its OBS update both read it)."""
        if self._diag is None:
            n, d = self.grads.shape
            step = max(1, 2**22 // max(n, 1))
            parts = []
            for c in range(0, d, step):
                h = torch.linalg.solve_triangular(self.chol, self.grads[:, c : c + step].double(), upper=False)
                parts.append(1.0 - (h * h).sum(0))
            self._diag = torch.cat(parts) / self.damping
        return self._diag

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """F^-1 v = (v - G^T M^-1 (G v)) / damping, float64."""
        v = v.to(device=self.grads.device, dtype=torch.float64)
        u = torch.cholesky_solve(matvec64(self.grads, v)[:, None], self.chol)[:, 0]
        return (v - rmatvec64(self.grads, u)) / self.damping

    def dense(self) -> torch.Tensor:
        """The whole (dim x dim) matrix; for tests on small problems only."""
        g = self.grads.double()
        out = -(g.T @ torch.cholesky_solve(g, self.chol))
        out.diagonal().add_(1.0)
        return out / self.damping


def full_inverse(grads: torch.Tensor, layout: Layout, damping: float, memory_limit_gb: float = 2.0) -> LowRankInverse:
    """:class:`LowRankInverse` of the full damped Fisher (one N x N Cholesky, 8 N^2 bytes)."""
    if not (isinstance(damping, (int, float)) and damping > 0):
        raise PrunelabError(f"damping must be a positive number, got {damping!r}")
    n, dim = grads.shape
    if dim != layout.dim:
        raise PrunelabError(f"gradient matrix has {dim} columns; the layout has {layout.dim} coordinates")
    _check_memory(2 * 8.0 * n * n, f"the full Fisher's {n} x {n} Woodbury factor", memory_limit_gb)
    m = gram64(grads)
    m.diagonal().add_(n * float(damping))
    return LowRankInverse(layout, grads, float(damping), _cholesky(m))


def _grouped(layout: Layout) -> dict[int, list[int]]:
    """Block indices grouped by block size (blocks of one size are inverted in one batched call)."""
    groups: dict[int, list[int]] = {}
    for k, (s, e) in enumerate(layout.blocks):
        groups.setdefault(e - s, []).append(k)
    return groups


def _check_memory(nbytes: float, what: str, limit_gb: float) -> None:
    if nbytes > limit_gb * GiB:
        raise PrunelabError(
            f"{what} needs {nbytes / GiB:.1f} GiB, above memory_limit_gb={limit_gb}; lower block_size "
            f"(e.g. 1000) or fisher_samples, or raise fisher_memory_gb"
        )


def block_inverse(
    grads: torch.Tensor, layout: Layout, damping: float, memory_limit_gb: float = 2.0, work_bytes: int = 2**28
) -> BlockInverse:
    """Block-diagonal inverse of ``F = damping*I + G^T G / N`` by batched Cholesky or Woodbury.

    ``grads`` is G (N x dim) on any device; the result lives on the same device, in float64.
    ``work_bytes`` bounds the float64 scratch used per batched call.
    """
    if not (isinstance(damping, (int, float)) and damping > 0):
        raise PrunelabError(f"damping must be a positive number, got {damping!r}")
    n, dim = grads.shape
    if dim != layout.dim:
        raise PrunelabError(f"gradient matrix has {dim} columns; the layout has {layout.dim} coordinates")
    out: list[torch.Tensor | None] = [None] * len(layout.blocks)
    for size, members in _grouped(layout).items():
        _check_memory(size * size * 8, f"a Fisher block of {size} weights", memory_limit_gb)
        inner = min(size, n)
        per_block = 8 * (n * size + 2 * size * size + inner * inner)
        _check_memory(per_block, f"inverting a Fisher block of {size} weights from {n} gradients", memory_limit_gb)
        step = max(1, work_bytes // per_block)
        for lo in range(0, len(members), step):
            group = members[lo : lo + step]
            g = torch.stack([grads[:, layout.blocks[k][0] : layout.blocks[k][1]] for k in group]).double()
            inv = _batched_inverse(g, float(damping))
            for k, m in zip(group, inv):
                out[k] = m
    return BlockInverse(layout, out, float(damping))  # type: ignore[arg-type]


def _batched_inverse(g: torch.Tensor, damping: float) -> torch.Tensor:
    """(k, N, b) gradients -> (k, b, b) inverses of damping*I + g^T g / N."""
    k, n, b = g.shape
    if b <= n:
        f = g.transpose(1, 2) @ g / n
        f.diagonal(dim1=1, dim2=2).add_(damping)
        chol = _cholesky(f)
        return torch.cholesky_inverse(chol)
    gram = g @ g.transpose(1, 2)
    gram.diagonal(dim1=1, dim2=2).add_(n * damping)
    chol = _cholesky(gram)
    inv = -(g.transpose(1, 2) @ torch.cholesky_solve(g, chol))
    inv.diagonal(dim1=1, dim2=2).add_(1.0)
    return inv / damping


def _cholesky(a: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(a)
    if bool((info != 0).any()):
        raise PrunelabError("the damped Fisher is not positive definite in float64; raise damping")
    return chol


def recursive_inverse(grads: torch.Tensor, damping: float) -> torch.Tensor:
    """Reference: F^-1 by N sequential Sherman-Morrison rank-1 updates (WoodFisher, Eq. 8-9).

    ``grads``: (N, b) or (k, N, b) (k blocks at once) -> (b, b) or (k, b, b), float64. Slow (N steps of
    O(b^2) each); used to check :func:`block_inverse` and as the baseline in the benchmark.
    """
    squeeze = grads.dim() == 2
    g = (grads[None] if squeeze else grads).double()
    k, n, b = g.shape
    inv = torch.eye(b, dtype=torch.float64, device=g.device).repeat(k, 1, 1) / damping
    for t in range(n):
        gt = g[:, t, :, None]  # (k, b, 1)
        u = inv @ gt  # F^-1 g
        denom = n + (gt.transpose(1, 2) @ u)  # (k, 1, 1)
        inv.baddbmm_(u, (u / denom).transpose(1, 2), alpha=-1.0)  # in place: no b x b temporary
    return inv[0] if squeeze else inv


def quadratic_loss(delta: torch.Tensor, grads: torch.Tensor, layout: Layout, damping: float) -> float:
    """The quadratic model of the loss change ``1/2 delta^T F delta`` with the damped block-diagonal F.

    This is the objective OBS/WoodFisher/CBS-U minimise (the first-order term is dropped at a trained
    model). Applied implicitly through G: ``1/2 (damping ||delta||^2 + sum_blocks ||G_b delta_b||^2 / N)``.
    """
    delta = delta.to(torch.float64)
    n = grads.shape[0]
    total = damping * float(delta @ delta)
    for s, e in layout.blocks:
        total += float(((grads[:, s:e].double() @ delta[s:e]) ** 2).sum()) / n
    return 0.5 * total


@dataclass
class FisherState:
    """Everything second-order pruning needs about one masked network: layout, weights w, G, F^-1."""

    layout: Layout
    weights: torch.Tensor  # (dim,) float64, the kept prunable weights
    grads: torch.Tensor  # (N, dim) float32
    options: FisherOptions
    _inverse: BlockInverse | LowRankInverse | None = field(default=None, repr=False)

    @property
    def inverse(self) -> BlockInverse | LowRankInverse:
        """F^-1 (computed on first use, then kept): block-diagonal, or with ``full`` and N < d implicit."""
        if self._inverse is None:
            opts = self.options
            if opts.full and self.layout.dim > self.grads.shape[0]:
                self._inverse = full_inverse(self.grads, self.layout, opts.damping, opts.memory_limit_gb)
            else:
                self._inverse = block_inverse(self.grads, self.layout, opts.damping, opts.memory_limit_gb)
        return self._inverse


def build_fisher(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    loss_fn,
    options: FisherOptions,
    generator: torch.Generator,
    adapter: Any = None,
) -> FisherState:
    """Draw ``options.samples * options.batch`` samples, collect G and pack the weights.

    ``adapter`` (a :class:`prunelab.models.adapters.ModelAdapter`; None = plain tensor batches and
    ``loss_fn``) says how to pool the batches and what the loss is."""
    layout = make_layout(model, masks, options.block_size, options.full)
    _check_memory(4.0 * options.samples * layout.dim, f"the gradient matrix ({options.samples} x {layout.dim})", options.memory_limit_gb)
    x, y = sample_pool(batches, options.samples * options.batch, generator, adapter)
    grads = gradient_matrix(model, layout, dict(masks), x, y, loss_fn, options.batch, adapter=adapter)
    weights = layout.pack(dict(model.named_parameters())).to(device=grads.device, dtype=torch.float64)
    return FisherState(layout, weights, grads, options)


_CACHE_ATTR = "_prunelab_second_order_fisher"


def _digest_tensor(digest: Any, t: torch.Tensor) -> None:
    t = t.detach()
    digest.update(f"{t.dtype}{tuple(t.shape)}{t.device.type}".encode())
    digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _fingerprint(model: nn.Module, masks: Mapping[str, torch.Tensor], ctx: Any, options: FisherOptions) -> tuple:
    """Identifies (weights, masks, data, options): parameters' in-place version counters and storage,
    a digest of the mask bits, the identity of the batch list, the seed."""
    digest = hashlib.blake2b(digest_size=16)
    for name, mask in masks.items():
        digest.update(name.encode())
        _digest_tensor(digest, mask.bool())
    params = tuple((n, p._version, p.data_ptr()) for n, p in model.named_parameters())
    return (params, digest.hexdigest(), id(ctx.batches), ctx.seed, options)


# --- sharing one Fisher between prunelab.prune calls ------------------------------------------------
class _Shared:
    """The process-wide slot of :func:`shared_fisher`: on/off and the last (content key, state)."""

    enabled = False
    entry: tuple[tuple, FisherState] | None = None


def _digest_tree(digest: Any, obj: Any) -> bool:
    """Feed tensors / numbers / strings in nested lists, tuples and dicts to ``digest``; False if
    ``obj`` holds anything else (then no content key exists and nothing is shared)."""
    if isinstance(obj, torch.Tensor):
        _digest_tensor(digest, obj)
        return True
    if obj is None or isinstance(obj, (bool, int, float, str)):
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())
        return True
    if isinstance(obj, Mapping):
        digest.update(f"map{len(obj)}".encode())
        return all(_digest_tree(digest, k) and _digest_tree(digest, obj[k]) for k in sorted(obj, key=str))
    if isinstance(obj, (list, tuple)):
        digest.update(f"seq{len(obj)}".encode())
        return all(_digest_tree(digest, v) for v in obj)
    return False


def _content_key(model: nn.Module, masks: Mapping[str, torch.Tensor], ctx: Any, options: FisherOptions) -> tuple | None:
    """What the Fisher state is a function of, by content: the model's class, every parameter and
    buffer, the masks, the data batches, the seed, the options, the loss and the adapter (class and
    settings). None when the data cannot be digested."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        digest.update(name.encode())
        _digest_tensor(digest, t)
    for name in sorted(masks):
        digest.update(name.encode())
        _digest_tensor(digest, masks[name].bool())
    if not _digest_tree(digest, list(ctx.batches)):
        return None
    return (digest.hexdigest(), ctx.seed, options, ctx.loss_fn, _adapter_key(ctx.adapter))


def _adapter_key(adapter: Any) -> Any:
    """An adapter by its class and attributes (each call builds a new one; its state is its loss and
    settings); by identity when an attribute is unhashable (never equal across calls: a safe miss)."""
    if adapter is None:
        return None
    key = (type(adapter), tuple(sorted(vars(adapter).items())))
    try:
        hash(key)
    except TypeError:
        return ("id", id(adapter))
    return key


@contextmanager
def shared_fisher(keep: bool = False) -> Iterator[None]:
    """Within this block, ``prunelab.prune`` calls on the *same* network, masks, data, seed and Fisher
    options reuse one Fisher state (gradients G, its inverse or Woodbury factor, diag(F^-1)) instead of
    recomputing it: a sweep that prunes one dense model to several sparsities, or with WoodFisher, CBS-S
    and CBS-U, pays for the Fisher once. Sameness is checked by content (a digest of every parameter,
    buffer, mask bit and data tensor), so a changed weight or batch is always a miss. One state is kept
    (the last; a miss frees it before the next is built) and dropped when the block ends, unless
    ``keep`` (then :func:`release_shared_fisher` drops it). The experiment engine's executors run every
    run this way; library calls outside such a block share nothing.
    """
    before = _Shared.enabled
    _Shared.enabled = True
    try:
        yield
    finally:
        _Shared.enabled = before
        if not (before or keep):
            _Shared.entry = None


def enable_shared_fisher() -> None:
    """Turn :func:`shared_fisher` on for the rest of this process (a sweep's worker processes)."""
    _Shared.enabled = True


def release_shared_fisher() -> None:
    """Drop the Fisher state kept by :func:`shared_fisher` (frees its memory)."""
    _Shared.entry = None


def fisher_for(model: nn.Module, masks: Mapping[str, torch.Tensor], ctx: Any, who: str) -> FisherState:
    """The Fisher state of ``model`` under ``masks`` for a :class:`ScoreContext`, cached on ``ctx``.

    A criterion and the update that follows it within one ``prunelab.prune`` call see the same weights
    and masks, so the gradients and the inverse are computed once. The cache key covers weights, masks,
    data, seed and options, so a stale entry is never used; it lives as long as ``ctx``. Inside
    :func:`shared_fisher` the state is also kept between calls, keyed by content.
    """
    options = FisherOptions.from_options(ctx.options)
    batches = ctx.require_data(who)
    key = _fingerprint(model, masks, ctx, options)
    cached = getattr(ctx, _CACHE_ATTR, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    shared_key = _content_key(model, masks, ctx, options) if _Shared.enabled else None
    if shared_key is not None and _Shared.entry is not None and _Shared.entry[0] == shared_key:
        state = _Shared.entry[1]
        setattr(ctx, _CACHE_ATTR, (key, state))
        return state
    _Shared.entry = None  # free the old state before building the next
    adapter = ctx.adapter_for(model) if hasattr(ctx, "adapter_for") else None
    state = build_fisher(model, masks, batches, ctx.loss_fn, options, ctx.generator(offset=7919), adapter)
    setattr(ctx, _CACHE_ATTR, (key, state))
    if shared_key is not None:
        _Shared.entry = (shared_key, state)
    return state
