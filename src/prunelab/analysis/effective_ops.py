"""The boolean connectivity network of effective sparsity, op by op (helper of ``analysis.effective``).

Vysogorets & Kempe, "Connectivity Matters: Neural Network Pruning Through the Lens of Effective
Sparsity", JMLR 24 (2023). ``prunelab.analysis.effective`` traces a model (``torch.fx``, else
``torch.export``) and runs its graph through :class:`Network`, which evaluates every op on
connectivity values instead of numbers. docs/effective_sparsity.md states the rule of each op; this
module implements them.

Every activation is an :class:`Act` of up to three 0/1 float tensors of the activation's shape:

* ``r`` ("reached"): 1 where the unit depends on a source (an input, a parameter read directly);
  carries the gradient. After every op that sums, a straight-through boolean ``x -> [x > 0]``
  (backward ``g -> [g > 0]``) keeps it in {0, 1}. With ``sum(outputs)`` as the loss, a unit's
  gradient is positive iff it reaches an output, so a kept weight's gradient is positive iff it lies
  on a source-to-output path.
* ``n`` ("non-zero"): 1 where the unit is not identically zero in the *bias-free network* (the model
  with every bias, normalisation shift and constant added to an activation removed). ``n >= r``.
  It differs from ``r`` only at constants that are not zero: ``sigmoid(0) = 0.5`` of a pruned gate,
  the uniform softmax of a pruned attention score. A product of two activations passes a path
  through one factor only where the other is non-zero. ``None`` means ``n == r``.
* ``m`` ("minus infinity"): 1 where a huge negative constant (an additive attention mask, at most
  ``-1e4``, ``-inf`` included) was added or written; softmax, exp and sigmoid send those entries to
  exactly 0. ``None`` means no such entry.

Parameters not used through a known weight slot are :class:`Param` objects until an op decides their
role: the weight of a Linear/conv/matmul/embedding (its mask, or all ones), a scale (BatchNorm,
LayerNorm, ``x * gamma``: the mask times ``weight != 0``), or a source (``cls_token``, position
embeddings: the mask, or all ones). Parameters whose name contains ``bias`` are constants.
"""

from __future__ import annotations

import builtins
import operator
from collections import namedtuple
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.errors import PrunelabError

#: an additive constant at most this (``-inf`` included) is an attention mask: softmax gives 0 there
MASK_VALUE = -1e4

_MaxResult = namedtuple("_MaxResult", ["values", "indices"])


class Unsupported(PrunelabError):
    """An op (or a trace) the connectivity network cannot handle: the caller may try ``torch.export``."""


# ---------------------------------------------------------------------------------------------------
# Values


class _Boolean(torch.autograd.Function):
    """Straight-through boolean: forward ``x -> [x > 0]``, backward ``g -> [g > 0]``.

    Forward marks "reached from a source", backward marks "reaches an output"; both stay in {0, 1}.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return (grad > 0).to(grad.dtype)


def boolean(x: Tensor) -> Tensor:
    return _Boolean.apply(x)


def _pos(t: Tensor) -> Tensor:
    return (t > 0).to(torch.float32)


class Act:
    """One activation of the connectivity network (see the module docstring)."""

    __slots__ = ("m", "n", "r")

    def __init__(self, r: Tensor, n: Tensor | None = None, m: Tensor | None = None) -> None:
        self.r = r
        self.n = n
        self.m = m

    @property
    def nz(self) -> Tensor:
        return self.n if self.n is not None else _pos(self.r.detach())

    @property
    def keep(self) -> Tensor | None:
        return None if self.m is None else 1.0 - self.m


class Param:
    """A parameter read in forward() whose role the consuming op decides.

    ``conn`` is its connectivity tensor (the mask as a leaf that collects gradients, or all ones),
    ``value`` its real (detached) value, both moved by the same view ops; ``axes`` maps the current
    dims to the parameter's own dims (``None`` once a reshape loses track), for per-unit reports.
    """

    __slots__ = ("axes", "conn", "key", "value")

    def __init__(self, key: str, conn: Tensor, value: Tensor, axes: tuple[int, ...] | None) -> None:
        self.key = key
        self.conn = conn
        self.value = value
        self.axes = axes


def _walk(obj: Any, leaf: Callable[[Any], Any]) -> Any:
    if isinstance(obj, (Act, Param)):
        return leaf(obj)
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        if hasattr(obj, "_fields"):  # a namedtuple
            return type(obj)(*(_walk(o, leaf) for o in obj))
        return [_walk(o, leaf) for o in obj] if isinstance(obj, list) else tuple(_walk(o, leaf) for o in obj)
    if isinstance(obj, dict):
        return {k: _walk(v, leaf) for k, v in obj.items()}
    if isinstance(obj, slice):
        return obj
    return leaf(obj) if isinstance(obj, Tensor) else obj


def _find(obj: Any, kind: type | tuple[type, ...]) -> list[Any]:
    if isinstance(obj, kind):
        return [obj]
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        return [x for o in obj for x in _find(o, kind)]
    if isinstance(obj, dict):
        return [x for o in obj.values() for x in _find(o, kind)]
    return []


def has_live(args: Any, kwargs: Any) -> bool:
    """Does a call touch an activation or a parameter (else it is evaluated on real constants)?"""
    return bool(_find(args, (Act, Param)) or _find(kwargs, (Act, Param)))


def _is_data(t: Any) -> bool:
    return isinstance(t, Tensor) and t.is_floating_point()


def _channel(which: str) -> Callable[[Any], Any]:
    """Leaf map for one channel: Acts give that channel, float constants their 0/1 counterpart."""

    def leaf(x: Any) -> Any:
        if isinstance(x, Act):
            if which == "r":
                return x.r
            if which == "n":
                return x.nz
            return x.m if x.m is not None else torch.zeros_like(x.r)
        if _is_data(x):  # a constant block of data (integer tensors are indices, kept as they are)
            if which == "r":
                return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
            if which == "n":
                return (x != 0).to(torch.float32)
            return (x <= MASK_VALUE).to(torch.float32)
        return x

    return leaf


def _wrap(r: Any, n: Any, m: Any) -> Any:
    if isinstance(r, Tensor):
        if not r.is_floating_point():
            return r
        return Act(r, n, m)
    if isinstance(r, (list, tuple)) and not isinstance(r, torch.Size) and any(isinstance(x, Tensor) for x in r):
        ns = n if n is not None else [None] * len(r)
        ms = m if m is not None else [None] * len(r)
        return tuple(_wrap(a, b, c) for a, b, c in zip(r, ns, ms))
    return r


def _bshape(t: Tensor, shape: torch.Size) -> Tensor:
    return t if t.shape == shape else t.expand(shape)


# ---------------------------------------------------------------------------------------------------
# The network


class Network:
    """Evaluates graph nodes on connectivity values.

    ``masks``: parameter name -> bool mask; ``params``: canonical parameter name -> parameter;
    ``alias``: ``id(parameter)`` -> canonical name (tied weights share one name and one leaf).
    """

    def __init__(self, params: dict[str, Tensor], masks: dict[str, Tensor], device: torch.device) -> None:
        self.params = params
        self.masks = masks
        self.device = device
        self.leaves: dict[str, Tensor] = {}
        self._ones: dict[str, Tensor] = {}
        #: masked key -> [(boolean output r, output unit axis, weight unit axis)] of its weight uses
        self.records: dict[str, list[tuple[Tensor, int, int]]] = {}
        self.used: set[str] = set()  # masked keys read in forward()
        self.token_values: set[int] = set()  # id() of the integer values computed from the model's inputs
        for key, mask in masks.items():
            self.leaves[key] = mask.to(device=device, dtype=torch.float32).requires_grad_(True)

    # -- parameters ---------------------------------------------------------------------------------

    def param(self, key: str) -> Any:
        """A parameter as read in forward(): a constant if its name says bias, else a Param."""
        p = self.params[key]
        if "bias" in key.rpartition(".")[2]:
            return p.detach()
        if key in self.leaves:
            self.used.add(key)
            conn = self.leaves[key]
        else:
            if key not in self._ones:
                self._ones[key] = torch.ones(p.shape, dtype=torch.float32, device=self.device)
            conn = self._ones[key]
        return Param(key, conn, p.detach(), tuple(range(p.dim())))

    def source(self, p: Param) -> Act:
        """A parameter used as data (cls_token, position embeddings): an always-connected source."""
        return Act(p.conn)

    def scale(self, p: Any, like: Tensor) -> Tensor:
        """0/1 scale of a normalisation weight or ``x * gamma``: mask times ``weight != 0``."""
        if isinstance(p, Param):
            return p.conn * (p.value != 0).to(torch.float32)
        if isinstance(p, Tensor):
            return (p != 0).to(torch.float32)
        return torch.ones((), dtype=like.dtype, device=like.device)

    def record(self, p: Param, out: Tensor, out_axis: int, cur_axis: int | None) -> None:
        if p.key not in self.leaves or cur_axis is None or p.axes is None:
            return
        if out.requires_grad:
            out.retain_grad()
        self.records.setdefault(p.key, []).append((out, out_axis, p.axes[cur_axis]))

    def as_act(self, x: Any, like: Tensor | None = None) -> Act:
        """Data operand as an Act: Params become sources, float constants non-zero constants."""
        if isinstance(x, Act):
            return x
        if isinstance(x, Param):
            return self.source(x)
        if isinstance(x, Tensor):
            return Act(torch.zeros(x.shape, dtype=torch.float32, device=x.device), (x != 0).to(torch.float32))
        raise Unsupported(f"cannot use {type(x).__name__} {x!r} as an activation")

    def sources(self, obj: Any) -> Any:
        return _walk(obj, lambda x: self.source(x) if isinstance(x, Param) else x)


# ---------------------------------------------------------------------------------------------------
# Rules


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


_VIEW_KEEP_AXES = {"contiguous", "clone", "detach", "detach_", "alias", "lift_fresh_copy", "to", "_to_copy", "float",
                   "double", "half", "bfloat16", "type_as", "type"}


def _param_axes(name: str, p: Param, args: tuple, kwargs: dict, out: Tensor) -> tuple[int, ...] | None:
    if p.axes is None:
        return None
    if name in _VIEW_KEEP_AXES or out.shape == p.conn.shape and name in {"view", "reshape", "expand"}:
        return p.axes
    if name in {"t", "T", "mT", "numpy_T"} and len(p.axes) == 2:
        return p.axes[::-1]
    if name in {"transpose", "swapaxes"}:
        d0, d1 = _arg(args, kwargs, 1, "dim0"), _arg(args, kwargs, 2, "dim1")
        if isinstance(d0, int) and isinstance(d1, int):
            axes = list(p.axes)
            axes[d0], axes[d1] = axes[d1], axes[d0]
            return tuple(axes)
    if name == "permute":
        dims = args[1:] if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else _arg(args, kwargs, 1, "dims")
        if dims is not None:
            return tuple(p.axes[d] for d in dims)
    return None


def move(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    """Ops that only move, copy or select values (view, permute, cat, split, getitem, gather, ...)."""
    acts = _find(args, Act) + _find(kwargs, Act)
    params = _find(args, Param) + _find(kwargs, Param)
    if not acts and len(params) == 1:  # a view of one parameter keeps its role open
        p = params[0]
        conn = fn(*_walk(args, lambda x: x.conn if isinstance(x, Param) else x),
                  **_walk(kwargs, lambda x: x.conn if isinstance(x, Param) else x))
        if not isinstance(conn, Tensor):
            if isinstance(conn, tuple) and conn and all(isinstance(c, Tensor) for c in conn):  # split/chunk
                vals = fn(*_walk(args, lambda x: x.value if isinstance(x, Param) else x),
                          **_walk(kwargs, lambda x: x.value if isinstance(x, Param) else x))
                return tuple(Param(p.key, c, v, None) for c, v in zip(conn, vals))
            return conn  # size(), dim(), dtype, ...
        value = fn(*_walk(args, lambda x: x.value if isinstance(x, Param) else x),
                   **_walk(kwargs, lambda x: x.value if isinstance(x, Param) else x))
        return Param(p.key, conn, value, _param_axes(name, p, args, kwargs, conn))
    args, kwargs = net.sources(args), net.sources(kwargs)
    acts = _find(args, Act) + _find(kwargs, Act)
    r = fn(*_walk(args, _channel("r")), **_walk(kwargs, _channel("r")))
    if not isinstance(r, (Tensor, list, tuple)) or isinstance(r, torch.Size):
        return r
    need_n = any(a.n is not None for a in acts) or any(
        _is_data(c) and bool((c != 0).any()) for c in _find(args, Tensor) + _find(kwargs, Tensor))
    n = fn(*_walk(args, _channel("n")), **_walk(kwargs, _channel("n"))) if need_n else None
    need_m = any(a.m is not None for a in acts) or any(
        _is_data(c) and bool((c <= MASK_VALUE).any()) for c in _find(args, Tensor) + _find(kwargs, Tensor))
    m = fn(*_walk(args, _channel("m")), **_walk(kwargs, _channel("m"))) if need_m else None
    return _wrap(r, n, m)


def identity(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    """Dtype/device casts, contiguous, detach (connectivity ignores autograd), dropout."""
    for v in list(args[1:]) + list(kwargs.values()):
        if isinstance(v, torch.dtype) and not (v.is_floating_point or v.is_complex):
            raise Unsupported(f"casting an activation to {v} (a data-dependent integer) has no path semantics")
    x = args[0] if args else next(iter(kwargs.values()))
    return x


def _first_act(net: Network, args: tuple, kwargs: dict) -> Act:
    for x in list(args) + list(kwargs.values()):
        if isinstance(x, (Act, Param)):
            return net.as_act(x)
    raise Unsupported("no activation among the arguments")


def elementwise(zero_preserving: bool | Callable[[tuple, dict], bool]) -> Callable:
    """f applied entry by entry: connectivity as it is. An f with f(0) != 0 (sigmoid, exp) makes every
    entry non-zero (n = 1); a huge negative mask entry goes to 0 through it."""

    def rule(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
        a = _first_act(net, args, kwargs)
        zp = zero_preserving(args, kwargs) if callable(zero_preserving) else zero_preserving
        if zp:
            return Act(a.r, a.n)
        keep = a.keep
        if keep is None:
            return Act(a.r, torch.ones_like(a.r))
        return Act(a.r * keep, keep)

    return rule


def _clamp_zp(args: tuple, kwargs: dict) -> bool:
    lo = _arg(args, kwargs, 1, "min", None)
    hi = _arg(args, kwargs, 2, "max", None)
    lo = kwargs.get("min_val", lo) if "min_val" in kwargs else lo
    hi = kwargs.get("max_val", hi) if "max_val" in kwargs else hi
    ok_lo = lo is None or (not isinstance(lo, Tensor) and lo <= 0)
    ok_hi = hi is None or (not isinstance(hi, Tensor) and hi >= 0)
    return ok_lo and ok_hi


def _hardtanh_zp(args: tuple, kwargs: dict) -> bool:
    lo = _arg(args, kwargs, 1, "min_val", -1.0)
    hi = _arg(args, kwargs, 2, "max_val", 1.0)
    return lo <= 0 <= hi


def _pow_rule(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    base, exp = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "exponent")
    if isinstance(base, (Act, Param)) and not isinstance(exp, (Act, Param, Tensor)):
        a = net.as_act(base)
        if exp == 0:  # x ** 0 == 1: a constant
            return Act(torch.zeros_like(a.r), torch.ones_like(a.r))
        return elementwise(exp > 0)(net, fn, (a,), {})
    if not isinstance(base, (Act, Param)) and not isinstance(base, Tensor):  # c ** x: never zero
        return elementwise(False)(net, fn, (exp,), {})
    raise Unsupported(f"{name}: a power with an activation as exponent is not supported")


def summing(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    """Sums with positive weights (sum, mean, avg-pool, interpolation): reached if any input is."""
    args, kwargs = net.sources(args), net.sources(kwargs)
    acts = _find(args, Act) + _find(kwargs, Act)
    r = fn(*_walk(args, _channel("r")), **_walk(kwargs, _channel("r")))
    n = None
    if any(a.n is not None for a in acts):
        n = _pos(fn(*_walk(args, _channel("n")), **_walk(kwargs, _channel("n"))))
    return Act(boolean(r), n)


def _as_sum(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    """max/min/amax/logsumexp/var/norm over dims: like a sum over the same dims (a max could pick a
    zero and hide a live input). max(a, b) of two tensors is like a + b."""
    x = args[0] if args else kwargs.get("input", kwargs.get("self"))
    other = _arg(args, kwargs, 1, "other")
    if isinstance(other, (Act, Param, Tensor)) and name in {"max", "min", "maximum", "minimum", "fmax", "fmin"}:
        return add(net, operator.add, (x, other), {})
    dim = _arg(args, kwargs, 1, "dim")
    if name in {"norm", "linalg_vector_norm", "vector_norm"}:
        dim = _arg(args, kwargs, 2, "dim")
    keepdim = bool(kwargs.get("keepdim", False))
    if name in {"var", "std", "var_mean", "std_mean"}:
        keepdim = bool(kwargs.get("keepdim", args[3] if len(args) > 3 and isinstance(args[3], bool) else False))
    elif len(args) > 2 and isinstance(args[2], bool):
        keepdim = args[2]
    elif name in {"norm", "linalg_vector_norm", "vector_norm"} and len(args) > 3 and isinstance(args[3], bool):
        keepdim = args[3]
    a = net.as_act(x)
    dims = dim if dim is not None and dim != [] else tuple(range(a.r.dim()))
    if isinstance(dims, int):
        dims = (dims,)
    out = summing(net, lambda t: t.sum(dim=tuple(dims), keepdim=keepdim), (a,), {})
    if name in {"logsumexp"}:
        out = Act(out.r, torch.ones_like(out.r))
    if name in {"max", "min"} and dim is not None and not isinstance(dim, (list, tuple)):  # (values, indices)
        idx = getattr(torch, name)(a.r.detach(), dim, keepdim).indices
        return _MaxResult(out, idx)
    if name in {"var_mean", "std_mean"}:
        return (out, out)
    return out


def mixing(dim_of: Callable[[tuple, dict, Act], int]) -> Callable:
    """softmax / log_softmax / softmin over an axis: every output entry depends on every input entry
    of the axis, and is non-zero; entries with a -inf-like mask become 0 and pass nothing."""

    def rule(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
        a = _first_act(net, args, kwargs)
        return mix(a, dim_of(args, kwargs, a))

    return rule


def mix(a: Act, dim: int) -> Act:
    keep = a.keep
    r = a.r if keep is None else a.r * keep
    r = boolean(r.sum(dim, keepdim=True)).expand_as(a.r)
    if keep is None:
        return Act(r, torch.ones_like(a.r))
    return Act(r * keep, keep)


def _softmax_dim(args: tuple, kwargs: dict, a: Act) -> int:
    dim = _arg(args, kwargs, 1, "dim")
    if dim is None:  # legacy implicit dim of F.softmax
        dim = 0 if a.r.dim() in (0, 1, 3) else 1
    return dim


def add(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    """a + b, a - b: reached where either is; a constant added to an activation is dropped (bias-like),
    except that entries at or below -1e4 (attention masks) are marked for softmax."""
    a = _arg(args, kwargs, 0, "input", kwargs.get("self"))
    b = _arg(args, kwargs, 1, "other")
    a, b = net.sources(a), net.sources(b)
    if isinstance(a, Act) and isinstance(b, Act):
        shape = torch.broadcast_shapes(a.r.shape, b.r.shape)
        r = boolean(a.r + b.r)
        n = None if a.n is None and b.n is None else _pos(a.nz + b.nz)
        m = None if a.m is None and b.m is None else (_pos(_bshape(a.m if a.m is not None else torch.zeros(()), shape)
                                                          + _bshape(b.m if b.m is not None else torch.zeros(()), shape)))
        return Act(r, n, m)
    x, c = (a, b) if isinstance(a, Act) else (b, a)
    if not isinstance(c, Tensor):
        return x
    shape = torch.broadcast_shapes(x.r.shape, c.shape)
    r, n, m = x.r, x.n, x.m
    if shape != x.r.shape:
        r = r + torch.zeros(shape, dtype=r.dtype, device=r.device)
        n = None if n is None else _bshape(n, shape)
        m = None if m is None else _bshape(m, shape)
    if c.is_floating_point():
        cut = c <= MASK_VALUE
        if bool(cut.any()):
            cut = _bshape(cut.to(torch.float32), shape)
            m = cut if m is None else _pos(m + cut)
    return Act(r, n, m)


def _scalar_zero(c: Any) -> bool:
    return not isinstance(c, Tensor) and c == 0


def mul(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    """a * b. Activation x constant: cut where the constant is 0. Activation x parameter (a scale such
    as HF RMSNorm's weight or a layer scale): the mask times ``weight != 0``. Activation x
    activation: reached where one factor is reached and the other is non-zero."""
    a = _arg(args, kwargs, 0, "input", kwargs.get("self"))
    b = _arg(args, kwargs, 1, "other")
    if isinstance(a, Param) and isinstance(b, Param):
        a, b = net.source(a), net.source(b)
    if not isinstance(a, Act) and not isinstance(b, Act):
        p, c = (a, b) if isinstance(a, Param) else (b, a)
        a, b = net.source(p), c
    if isinstance(a, Act) and isinstance(b, Act):
        return product(net, torch.mul, a, b)
    x, c = (a, b) if isinstance(a, Act) else (b, a)
    if isinstance(c, Param):
        s = net.scale(c, x.r)
    elif isinstance(c, Tensor):
        s = (c != 0).to(torch.float32)
    elif _scalar_zero(c):
        return Act(x.r * 0.0)
    else:
        return x
    r = x.r * s
    n = None if x.n is None else x.n * _pos(s.detach())
    m = None if x.m is None else _bshape(x.m, r.shape)
    return Act(r, n, m)


def div(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    """a / b = a * (1 / b), where 1 / b is non-zero everywhere (infinite where b is 0)."""
    a = _arg(args, kwargs, 0, "input", kwargs.get("self"))
    b = _arg(args, kwargs, 1, "other")
    if isinstance(a, Act) and isinstance(b, Param):  # x / parameter: a scale, cut where masked
        r = a.r * b.conn
        return Act(r, None if a.n is None else a.n * _pos(b.conn.detach()))
    if isinstance(b, (Act, Param)):
        rb = net.as_act(b)
        recip = Act(rb.r, torch.ones_like(rb.r))
        if isinstance(a, (Act, Param)):
            return product(net, torch.mul, net.as_act(a), recip)
        if isinstance(a, Tensor):
            return mul(net, torch.mul, (recip, a), {})
        return recip if not _scalar_zero(a) else Act(recip.r * 0.0)
    x = net.as_act(a)
    if isinstance(b, Tensor):
        return Act(x.r, x.n, x.m if x.m is None else _bshape(x.m, x.r.shape))
    return x


def product(net: Network, f: Callable[[Tensor, Tensor], Tensor], a: Any, b: Any,
            record: tuple[int, Callable[[int], int | None]] | None = None) -> Act:
    """A map linear in each of two operands (matmul, einsum, linear, conv, ``*``).

    One operand a parameter (or constant) and one an activation: the parameter is a weight, its mask
    (all ones if unmasked) is the weight of the connectivity network. Both activations: the output is
    reached through ``a`` where ``b`` is non-zero and through ``b`` where ``a`` is:
    ``[f(r_a, n_b) + f(n_a, r_b) > 0]``. ``record``: (output unit axis, weight dim -> current dim of
    the weight tensor that indexes the output units) for per-unit reports.
    """
    if isinstance(a, Param) and isinstance(b, Param):
        a, b = net.source(a), net.source(b)
    if isinstance(a, Act) and isinstance(b, Act):
        r = boolean(f(a.r, b.nz) + f(a.nz, b.r))
        n = None if a.n is None and b.n is None else _pos(f(a.nz, b.nz))
        return Act(r, n)
    if isinstance(a, Param):
        w, x, w_first = a, b, True
    elif isinstance(b, Param) or isinstance(a, Act) and isinstance(b, Tensor):
        w, x, w_first = b, a, False
    elif isinstance(b, Act) and isinstance(a, Tensor):
        w, x, w_first = a, b, True
    else:
        raise Unsupported(f"a product of {type(a).__name__} and {type(b).__name__} is not supported")
    x = net.as_act(x)
    if isinstance(w, Param):
        wt = w.conn
    else:
        wt = (w != 0).to(torch.float32)
    r = boolean(f(wt, x.r) if w_first else f(x.r, wt))
    n = None
    if x.n is not None:
        wd = wt.detach()
        n = _pos(f(wd, x.n) if w_first else f(x.n, wd))
    if isinstance(w, Param) and record is not None:
        out_axis, cur = record
        net.record(w, r, out_axis, cur(w.conn.dim()) if cur is not None else None)
    return Act(r, n)


def _matmul_record(w_first: bool) -> tuple[int, Callable[[int], int | None]]:
    # x @ W: output units are the last dim, indexed by W's last dim; W @ x: dim -2 of both
    return (-2, lambda d: d - 2 if d >= 2 else None) if w_first else (-1, lambda d: d - 1)


def matmul(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    a, b = _arg(args, kwargs, 0, "input", kwargs.get("self")), _arg(args, kwargs, 1, "other", kwargs.get("mat2"))
    w_first = isinstance(a, Param) and not isinstance(b, Param)
    return product(net, torch.matmul, a, b, _matmul_record(w_first))


def addmm(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    """addmm/baddbmm(bias, a, b): the bias is dropped, the rest is a @ b."""
    a, b = _arg(args, kwargs, 1, "mat1", kwargs.get("batch1")), _arg(args, kwargs, 2, "mat2", kwargs.get("batch2"))
    w_first = isinstance(a, Param) and not isinstance(b, Param)
    return product(net, torch.matmul, a, b, _matmul_record(w_first))


def einsum(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    eq = args[0]
    ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    if len(ops) != 2:
        raise Unsupported(f"{name}: einsum of {len(ops)} operands is not supported (only 2)")
    return product(net, lambda x, y: torch.einsum(eq, x, y), ops[0], ops[1])


def linear(net: Network, x: Any, w: Any, name: str = "") -> Act:
    return product(net, lambda a, b: F.linear(a, b), net.as_act(x), w, (-1, lambda d: 0))


def conv(net: Network, f: Callable[[Tensor, Tensor], Tensor], x: Any, w: Any, transposed: bool = False) -> Act:
    """Convolutions: output channels (dim 1) are indexed by weight dim 0 (dim 1 if transposed)."""
    return product(net, f, net.as_act(x), w, (1, lambda d: 1 if transposed else 0))


def _linear_fn(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    return linear(net, _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight"), name)


def _conv_fn(transposed: bool) -> Callable:
    def rule(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
        x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
        rest = list(args[3:])
        kw = {k: v for k, v in kwargs.items() if k not in ("input", "weight", "bias")}
        is_t = transposed or (name.startswith("aten.convolution") and bool(_arg(args, kwargs, 6, "transposed", False)))
        return conv(net, lambda a, b: fn(a, b, None, *rest, **kw), x, w, is_t)

    return rule


def embedding(net: Network, weight: Any, ids: Any, name: str = "", padding_idx: int | None = None) -> Act:
    """Embedding lookup.

    Indices that come from the model's inputs (token ids): every row (token) is an input unit that any
    position may hold, so output feature f at every position is reached iff some row keeps its entry
    f, and an entry (row, f) is effective iff kept and feature f reaches an output at some position;
    the ``padding_idx`` row is a fixed pad vector (never trained, zero by default), not an input unit.
    Constant indices (position ids from ``arange`` or a buffer, relative-position buckets): the rows
    read, as the lookup reads them.
    """
    if isinstance(ids, (Act, Param)):
        raise Unsupported(f"{name}: embedding indices computed from activations are not supported")
    if isinstance(weight, Param):
        conn = weight.conn
        if id(ids) not in net.token_values:
            r = F.embedding(ids, conn)
            net.record(weight, r, -1, 1)
            return Act(r)
        if padding_idx is not None and 0 <= padding_idx < conn.shape[0]:
            keep = torch.ones(conn.shape[0], 1, dtype=conn.dtype, device=conn.device)
            keep[padding_idx] = 0.0
            conn = conn * keep
        col = boolean(conn.sum(0))
        r = col.expand(*ids.shape, col.shape[0])
        net.record(weight, r, -1, 1)
        return Act(r)
    if isinstance(weight, Act):
        return move(net, lambda w: F.embedding(ids, w), (weight,), {})
    raise Unsupported(f"{name}: embedding of a constant table")


def _scale_last(net: Network, y: Act, w: Any, ndims: int) -> Act:
    if w is None:
        return y
    if isinstance(w, Act):
        return product(net, torch.mul, y, w)
    s = net.scale(w, y.r)
    r = y.r * s
    return Act(r, None if y.n is None else y.n * _pos(s.detach()))


def _scale_channels(net: Network, y: Act, w: Any) -> Act:
    if w is None:
        return y
    if isinstance(w, Act):
        w = move(net, lambda t: t.view(1, -1, *([1] * (y.r.dim() - 2))), (w,), {})
        return product(net, torch.mul, y, w)
    s = net.scale(w, y.r).view(1, -1, *([1] * (y.r.dim() - 2)))
    return Act(y.r * s, None if y.n is None else y.n * _pos(s.detach()))


def layer_norm(net: Network, x: Any, k: int, w: Any) -> Act:
    """LayerNorm over the last k dims: each output unit depends on every unit of its group (mean and
    variance), times its 0/1 affine scale (mask times ``weight != 0``); the shift is dropped."""
    a = net.as_act(x)
    dims = tuple(range(-k, 0))
    r = boolean(a.r.sum(dims, keepdim=True)).expand_as(a.r)
    n = None if a.n is None else _pos(a.n.sum(dims, keepdim=True)).expand_as(a.r)
    return _scale_last(net, Act(r, n), w, k)


def group_norm(net: Network, x: Any, groups: int, w: Any) -> Act:
    """GroupNorm / InstanceNorm (groups = channels): units of a group of channels, all positions."""
    a = net.as_act(x)
    shape = a.r.shape
    def grouped(t: Tensor) -> Tensor:
        g = t.reshape(shape[0], groups, -1).sum(-1, keepdim=True)
        return g.expand(shape[0], groups, t[0].numel() // groups).reshape(shape)
    r = boolean(grouped(a.r))
    n = None if a.n is None else _pos(grouped(a.n))
    return _scale_channels(net, Act(r, n), w)


def rms_norm(net: Network, x: Any, k: int, w: Any) -> Act:
    """RMSNorm: x / rms(x) is x times a mixing of the group that is never 0 (zero units stay zero)."""
    a = net.as_act(x)
    dims = tuple(range(-k, 0))
    s = Act(boolean(a.r.sum(dims, keepdim=True)).expand_as(a.r), torch.ones_like(a.r))
    return _scale_last(net, product(net, torch.mul, a, s), w, k)


def _normalize_fn(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    """F.normalize: x / max(||x||_p over dim, eps), x times a mixing of the axis that is never 0."""
    a = net.as_act(args[0])
    dim = _arg(args, kwargs, 2, "dim", 1)
    s = Act(boolean(a.r.sum(dim, keepdim=True)).expand_as(a.r), torch.ones_like(a.r))
    return product(net, torch.mul, a, s)


def batch_norm(net: Network, x: Any, w: Any) -> Act:
    """BatchNorm in inference form: a per-channel 0/1 scale (mask times ``weight != 0``)."""
    return _scale_channels(net, net.as_act(x), w)


def sdpa(net: Network, q: Any, k: Any, v: Any, attn_mask: Any, is_causal: bool, enable_gqa: bool) -> Act:
    """softmax(q k^T * scale + mask) v, as products, a softmax and the mask (causal, bool, additive)."""
    q, k, v = net.as_act(q), net.as_act(k), net.as_act(v)
    if enable_gqa and q.r.dim() >= 3 and k.r.shape[-3] != q.r.shape[-3]:
        rep = q.r.shape[-3] // k.r.shape[-3]
        k = move(net, lambda t: t.repeat_interleave(rep, dim=-3), (k,), {})
        v = move(net, lambda t: t.repeat_interleave(rep, dim=-3), (v,), {})
    kt = move(net, lambda t: t.transpose(-2, -1), (k,), {})
    s = product(net, torch.matmul, q, kt)
    L, S = s.r.shape[-2], s.r.shape[-1]
    keep = None
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=s.r.device).tril()
    if isinstance(attn_mask, (Act, Param)):
        s = add(net, operator.add, (s, attn_mask), {})
    elif isinstance(attn_mask, Tensor):
        ok = attn_mask if attn_mask.dtype == torch.bool else attn_mask > MASK_VALUE
        keep = ok if keep is None else keep & ok
    if keep is not None:
        cut = _bshape((~keep).to(torch.float32), s.r.shape) if keep.shape != s.r.shape else (~keep).to(torch.float32)
        m = cut if s.m is None else _pos(s.m + cut)
        s = Act(s.r, s.n, m)
    return product(net, torch.matmul, mix(s, -1), v)


def _sdpa_fn(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    return sdpa(net, _arg(args, kwargs, 0, "query"), _arg(args, kwargs, 1, "key"), _arg(args, kwargs, 2, "value"),
                _arg(args, kwargs, 3, "attn_mask"), bool(_arg(args, kwargs, 5, "is_causal", False)),
                bool(kwargs.get("enable_gqa", False)))


def glu(net: Network, x: Any, dim: int) -> Act:
    """GLU: a * sigmoid(b) of the two halves; sigmoid is never 0, so a pruned gate b leaves a's paths."""
    a, b = move(net, lambda t: t.chunk(2, dim), (net.as_act(x),), {})
    return product(net, torch.mul, a, Act(b.r, torch.ones_like(b.r)))


def _glu_fn(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    return glu(net, args[0], _arg(args, kwargs, 1, "dim", -1))


def where(net: Network, cond: Any, a: Any, b: Any, name: str = "") -> Any:
    """Entry-wise selection by a constant condition: each entry takes the chosen operand's state."""
    if isinstance(cond, (Act, Param)):
        raise Unsupported(f"{name}: a selection whose condition is computed from activations is data-dependent")
    a, b = net.sources(a), net.sources(b)
    ref = a if isinstance(a, Act) else b
    shape = torch.broadcast_shapes(cond.shape, *(t.r.shape if isinstance(t, Act) else getattr(t, "shape", ())
                                                 for t in (a, b)))

    def chan(t: Any, which: str) -> Any:
        if isinstance(t, Act):
            return _channel(which)(t)
        c = t if isinstance(t, Tensor) else torch.tensor(float(t), device=ref.r.device)
        if which == "r":
            return torch.zeros(c.shape, dtype=torch.float32, device=c.device)
        return (c != 0).to(torch.float32) if which == "n" else (c <= MASK_VALUE).to(torch.float32)

    r = _bshape(torch.where(cond, chan(a, "r"), chan(b, "r")), shape)
    n = _bshape(torch.where(cond, chan(a, "n"), chan(b, "n")), shape)
    m = torch.where(cond, chan(a, "m"), chan(b, "m"))
    return Act(r, n, _bshape(m, shape) if bool(m.any()) else None)


def _where_fn(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    return where(net, _arg(args, kwargs, 0, "condition"), _arg(args, kwargs, 1, "input", kwargs.get("self")),
                 _arg(args, kwargs, 2, "other"), name)


def _masked_fill_fn(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    x, mask, value = args[0], _arg(args, kwargs, 1, "mask"), _arg(args, kwargs, 2, "value")
    return where(net, mask, value, x, name)


def pad(net: Network, x: Any, pads: Any, mode: str = "constant", value: Any = None) -> Act:
    """Padding adds constant entries (not reached; non-zero iff the pad value is); other modes copy."""
    a = net.as_act(x)
    if mode != "constant":
        return move(net, lambda t: F.pad(t, pads, mode=mode), (a,), {})
    value = 0.0 if value is None else float(value)
    r = F.pad(a.r, pads, value=0.0)
    n = None
    if value != 0 or a.n is not None:
        n = F.pad(a.nz, pads, value=1.0 if value != 0 else 0.0)
    m = None if a.m is None else F.pad(a.m, pads, value=1.0 if value <= MASK_VALUE else 0.0)
    return Act(r, n, m)


def _pad_fn(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    if name.startswith("aten.constant_pad_nd"):
        return pad(net, args[0], _arg(args, kwargs, 1, "pad"), "constant", _arg(args, kwargs, 2, "value", 0))
    return pad(net, args[0], _arg(args, kwargs, 1, "pad"), _arg(args, kwargs, 2, "mode", "constant"),
               _arg(args, kwargs, 3, "value"))


_AVG_OF_MAX = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_ADAPTIVE_AVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def max_pool(net: Network, d: int, args: tuple, kwargs: dict, where: str, with_indices: bool = False) -> Any:
    """Max-pooling -> boolean sum-pooling over the same windows (a max could hide a live input)."""
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    bound = {**dict(zip(names, args)), **kwargs}
    dilation = bound.get("dilation", 1)
    if any(x != 1 for x in (dilation if isinstance(dilation, (tuple, list)) else [dilation])):
        raise Unsupported(f"{where}: max-pooling with dilation={dilation!r} is not supported (only 1)")
    if bound.get("return_indices", False) and not with_indices:
        raise Unsupported(f"{where}: max-pooling with return_indices=True is not supported")
    stride = bound.get("stride") or bound["kernel_size"]
    out = summing(net, lambda t: _AVG_OF_MAX[d](t, bound["kernel_size"], stride, bound.get("padding", 0),
                                                ceil_mode=bool(bound.get("ceil_mode", False)), count_include_pad=True),
                  (net.as_act(bound["input"]),), {})
    if with_indices:
        return (out, torch.zeros(out.r.shape, dtype=torch.long, device=out.r.device))
    return out


def adaptive_max_pool(net: Network, d: int, x: Any, size: Any, with_indices: bool = False) -> Any:
    out = summing(net, lambda t: _ADAPTIVE_AVG[d](t, size), (net.as_act(x),), {})
    if with_indices:
        return (out, torch.zeros(out.r.shape, dtype=torch.long, device=out.r.device))
    return out


def constant_of(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    """zeros_like, new_ones, ...: a constant of an activation's shape (its connectivity is not read)."""
    return fn(*_walk(args, lambda x: x.r.detach() if isinstance(x, Act) else x.value if isinstance(x, Param) else x),
              **_walk(kwargs, lambda x: x.r.detach() if isinstance(x, Act) else x.value if isinstance(x, Param) else x))


def no_op(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> None:
    return None


def _method(name: str) -> Callable:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, name)(*args, **kwargs)

    call.__name__ = name
    return call


# ---------------------------------------------------------------------------------------------------
# Op tables: torch-level (torch.fx graphs) and ATen-level (torch.export graphs)

Rule = Callable[..., Any]

_ZP_NAMES = [
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_", "gelu",
    "silu", "silu_", "mish", "mish_", "hardswish", "hardswish_", "tanh", "tanh_", "tanhshrink", "softshrink",
    "hardshrink", "softsign", "rrelu", "prelu", "neg", "negative", "abs", "absolute", "sqrt", "square", "sin", "sinh",
    "tan", "atan", "asin", "asinh", "atanh", "arctan", "erf", "expm1", "log1p", "sign", "sgn", "trunc", "fix",
    "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "feature_dropout", "positive",
]
_NZ_NAMES = [
    "sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "exp", "exp_", "exp2", "softplus", "cos", "cosh", "rsqrt",
    "reciprocal", "log", "log2", "log10", "logsigmoid", "log_sigmoid", "erfc",
]
_MOVE_NAMES = [
    "view", "view_as", "reshape", "reshape_as", "_unsafe_view", "flatten", "unflatten", "permute", "transpose",
    "swapaxes", "swapdims", "t", "squeeze", "unsqueeze", "expand", "expand_as", "broadcast_to", "repeat", "tile",
    "repeat_interleave", "chunk", "split", "split_with_sizes", "tensor_split", "unbind", "narrow", "select", "slice",
    "movedim", "moveaxis", "cat", "concat", "concatenate", "stack", "hstack", "vstack", "flip", "roll", "gather",
    "index_select", "take_along_dim", "index", "getitem", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
    "native_channel_shuffle", "unfold", "diagonal", "tril", "triu", "as_strided", "upsample_nearest1d",
    "upsample_nearest2d", "upsample_nearest3d", "_unsafe_index", "slice_copy", "select_copy", "view_copy",
    "permute_copy", "expand_copy", "transpose_copy", "squeeze_copy", "unsqueeze_copy", "split_copy",
]
_IDENTITY_NAMES = [
    "contiguous", "clone", "detach", "detach_", "alias", "lift_fresh_copy", "lift_fresh", "to", "_to_copy", "float",
    "double", "half", "bfloat16", "type_as", "type", "requires_grad_", "cpu", "cuda", "native_dropout_identity",
]
_SUM_NAMES = [
    "sum", "mean", "nansum", "nanmean", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "interpolate",
    "upsample", "upsample_bilinear2d", "upsample_linear1d", "upsample_trilinear3d", "upsample_bicubic2d", "cumsum",
    "_upsample_bilinear2d_aa",
]
_AS_SUM_NAMES = ["max", "min", "amax", "amin", "maximum", "minimum", "fmax", "fmin", "logsumexp", "var", "std",
                 "norm", "linalg_vector_norm", "vector_norm", "var_mean", "std_mean"]
_CONST_NAMES = [
    "zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "new_zeros", "new_ones",
    "new_full", "new_empty", "new_tensor", "size", "dim", "numel", "sym_size", "sym_numel", "sym_stride", "stride",
    "is_floating_point", "is_contiguous", "element_size", "nelement", "ndimension", "get_device", "scalar_tensor",
    "dtype", "device", "shape", "ndim", "is_cuda", "layout",
]
_NO_OP_NAMES = ["_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range", "sym_constrain_range_for_size",
                "_assert_async", "_functional_assert_async", "record_stream"]


def _rules_by_name() -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for n in _ZP_NAMES:
        rules[n] = elementwise(True)
    for n in _NZ_NAMES:
        rules[n] = elementwise(False)
    rules.update({"hardtanh": elementwise(_hardtanh_zp), "hardtanh_": elementwise(_hardtanh_zp),
                  "clamp": elementwise(_clamp_zp), "clip": elementwise(_clamp_zp), "clamp_": elementwise(_clamp_zp),
                  "clamp_min": elementwise(lambda a, k: _arg(a, k, 1, "min", 0) <= 0 if not isinstance(_arg(a, k, 1, "min", 0), Tensor) else False),
                  "clamp_max": elementwise(lambda a, k: _arg(a, k, 1, "max", 0) >= 0 if not isinstance(_arg(a, k, 1, "max", 0), Tensor) else False),
                  "pow": _pow_rule, "float_power": _pow_rule})
    for n in _MOVE_NAMES:
        rules[n] = lambda net, fn, a, k, name="", _n=n: move(net, fn, a, k, _n)
    for n in _IDENTITY_NAMES:
        rules[n] = identity
    for n in _SUM_NAMES:
        rules[n] = summing
    for n in _AS_SUM_NAMES:
        rules[n] = lambda net, fn, a, k, name="", _n=n: _as_sum(net, fn, a, k, _n)
    for n in _CONST_NAMES:
        rules[n] = constant_of
    for n in _NO_OP_NAMES:
        rules[n] = no_op
    for n in ("softmax", "_softmax", "log_softmax", "_log_softmax", "softmin", "special_softmax",
              "special_log_softmax", "_safe_softmax"):
        rules[n] = mixing(_softmax_dim)
    for n in ("add", "add_", "sub", "sub_", "subtract", "rsub", "iadd", "isub", "radd"):
        rules[n] = add
    for n in ("mul", "mul_", "multiply", "imul"):
        rules[n] = mul
    for n in ("div", "div_", "divide", "true_divide", "truediv", "itruediv"):
        rules[n] = div
    for n in ("matmul", "mm", "bmm", "imatmul"):
        rules[n] = matmul
    rules.update({
        "addmm": addmm, "baddbmm": addmm, "einsum": einsum, "linear": _linear_fn,
        "conv1d": _conv_fn(False), "conv2d": _conv_fn(False), "conv3d": _conv_fn(False), "convolution": _conv_fn(False),
        "conv_transpose1d": _conv_fn(True), "conv_transpose2d": _conv_fn(True), "conv_transpose3d": _conv_fn(True),
        "scaled_dot_product_attention": _sdpa_fn, "glu": _glu_fn, "where": _where_fn, "masked_fill": _masked_fill_fn,
        "masked_fill_": _masked_fill_fn, "pad": _pad_fn, "constant_pad_nd": _pad_fn,
    })
    return rules


_BY_NAME = _rules_by_name()


def _fx_embedding(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    weight = _arg(args, kwargs, 1, "weight")
    pad_idx = _arg(args, kwargs, 2, "padding_idx")
    if pad_idx is not None and pad_idx < 0:
        pad_idx += (weight.conn if isinstance(weight, Param) else weight.r).shape[0]
    return embedding(net, weight, _arg(args, kwargs, 0, "input"), name, pad_idx)


def _fx_layer_norm(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    shape = _arg(args, kwargs, 1, "normalized_shape")
    return layer_norm(net, args[0], len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1,
                      _arg(args, kwargs, 2, "weight"))


def _fx_group_norm(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    return group_norm(net, args[0], _arg(args, kwargs, 1, "num_groups"), _arg(args, kwargs, 2, "weight"))


def _fx_rms_norm(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    shape = _arg(args, kwargs, 1, "normalized_shape")
    return rms_norm(net, args[0], len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1,
                    _arg(args, kwargs, 2, "weight"))


def _fx_batch_norm(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    return batch_norm(net, args[0], _arg(args, kwargs, 3, "weight"))


def _fx_instance_norm(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    x, w = args[0], _arg(args, kwargs, 3, "weight")
    if _arg(args, kwargs, 5, "use_input_stats", True):
        return group_norm(net, x, net.as_act(x).r.shape[1], w)
    return batch_norm(net, x, w)


def _fx_max_pool(d: int) -> Rule:
    return lambda net, fn, a, k, name="": max_pool(net, d, a, k, name)


def _fx_adaptive_max(d: int) -> Rule:
    def rule(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
        if _arg(args, kwargs, 2, "return_indices", False):
            raise Unsupported(f"{name}: return_indices=True is not supported")
        return adaptive_max_pool(net, d, args[0], _arg(args, kwargs, 1, "output_size"))
    return rule


def _fx_getattr(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    attr = args[1]
    if not isinstance(args[0], (Act, Param)):  # e.g. .values of a max() result
        return getattr(args[0], attr)
    if attr in {"T", "mT", "data"}:
        return move(net, fn, args, kwargs, "T" if attr != "data" else "contiguous")
    return constant_of(net, fn, args, kwargs, name)


def fx_function_rules() -> dict[Any, Rule]:
    """torch-level callables (as torch.fx records them) -> rule."""
    table: dict[Any, Rule] = {}
    modules = (F, torch, operator)
    for name, rule in _BY_NAME.items():
        for mod in modules:
            fn = getattr(mod, name, None)
            if callable(fn) and not isinstance(fn, type):
                table.setdefault(fn, rule)
    table.update({
        operator.getitem: _BY_NAME["getitem"], operator.neg: elementwise(True), operator.pos: elementwise(True),
        operator.add: add, operator.iadd: add, operator.sub: add, operator.isub: add, operator.mul: mul,
        operator.imul: mul, operator.truediv: div, operator.itruediv: div, operator.matmul: matmul,
        builtins.getattr: _fx_getattr, F.embedding: _fx_embedding, F.layer_norm: _fx_layer_norm,
        F.group_norm: _fx_group_norm, F.rms_norm: _fx_rms_norm, F.batch_norm: _fx_batch_norm,
        F.instance_norm: _fx_instance_norm, F.max_pool1d: _fx_max_pool(1), F.max_pool2d: _fx_max_pool(2),
        F.max_pool3d: _fx_max_pool(3), F.adaptive_max_pool1d: _fx_adaptive_max(1),
        F.adaptive_max_pool2d: _fx_adaptive_max(2), F.adaptive_max_pool3d: _fx_adaptive_max(3),
        F.softmax: mixing(_softmax_dim), F.log_softmax: mixing(_softmax_dim), F.softmin: mixing(_softmax_dim),
        F.hardsigmoid: elementwise(False), F.logsigmoid: elementwise(False), F.softplus: elementwise(False),
        F.pad: _pad_fn, torch.where: _where_fn, F.linear: _linear_fn, F.glu: _glu_fn,
        F.scaled_dot_product_attention: _sdpa_fn, torch.einsum: einsum, torch.pow: _pow_rule,
        F.normalize: _normalize_fn,
    })
    for fn in (F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices):
        table.pop(fn, None)
    return table


def fx_method_rules() -> dict[str, tuple[Rule, Callable]]:
    """Tensor method names (call_method nodes) -> (rule, callable)."""
    out = {name: (rule, _method(name)) for name, rule in _BY_NAME.items()}
    out["softmax"] = (mixing(_softmax_dim), _method("softmax"))
    out["log_softmax"] = (mixing(_softmax_dim), _method("log_softmax"))
    for name in ("masked_fill", "masked_fill_"):
        out[name] = (_masked_fill_fn, _method(name))
    return out


# -- ATen (torch.export) -----------------------------------------------------------------------------

def _aten_embedding(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    pad_idx = _arg(args, kwargs, 2, "padding_idx", -1)  # ATen: -1 is "none"
    return embedding(net, args[0], args[1], name, pad_idx if pad_idx >= 0 else None)


def _aten_layer_norm(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    out = layer_norm(net, args[0], len(args[1]), _arg(args, kwargs, 2, "weight"))
    return (out, None, None) if "native" in name else out


def _aten_group_norm(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    if "native" in name:  # native_group_norm(input, weight, bias, N, C, HxW, group, eps)
        return (group_norm(net, args[0], args[6], args[1]), None, None)
    return group_norm(net, args[0], args[1], _arg(args, kwargs, 2, "weight"))


def _aten_rms_norm(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    return rms_norm(net, args[0], len(args[1]), _arg(args, kwargs, 2, "weight"))


def _aten_batch_norm(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    out = batch_norm(net, args[0], _arg(args, kwargs, 1, "weight"))
    if "native" in name or "_batch_norm" in name:
        return (out, None, None) if "functional" not in name else (out, None, None, None, None)
    return out


def _aten_instance_norm(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Act:
    x, w = args[0], _arg(args, kwargs, 1, "weight")
    if _arg(args, kwargs, 5, "use_input_stats", True):
        return group_norm(net, x, net.as_act(x).r.shape[1], w)
    return batch_norm(net, x, w)


def _aten_max_pool(d: int, with_indices: bool) -> Rule:
    return lambda net, fn, a, k, name="": max_pool(net, d, a, k, name, with_indices)


def _aten_adaptive_max(d: int) -> Rule:
    return lambda net, fn, a, k, name="": adaptive_max_pool(net, d, a[0], a[1], with_indices=True)


def _aten_native_dropout(net: Network, fn: Callable, args: tuple, kwargs: dict, name: str = "") -> Any:
    a = net.as_act(args[0])
    return (a, torch.ones(a.r.shape, dtype=torch.bool, device=a.r.device))


def aten_rules() -> dict[Any, Rule]:
    """ATen op packets (torch.ops.aten.X) -> rule."""
    aten = torch.ops.aten
    table: dict[Any, Rule] = {}
    for name, rule in _BY_NAME.items():
        packet = getattr(aten, name, None)
        if packet is not None and name not in {"dim", "size", "stride", "numel", "shape", "dtype", "device"}:
            table[packet] = rule
    table.update({
        aten.embedding: _aten_embedding, aten.layer_norm: _aten_layer_norm, aten.native_layer_norm: _aten_layer_norm,
        aten.group_norm: _aten_group_norm, aten.native_group_norm: _aten_group_norm, aten.rms_norm: _aten_rms_norm,
        aten.batch_norm: _aten_batch_norm, aten._native_batch_norm_legit_no_training: _aten_batch_norm,
        aten._native_batch_norm_legit_functional: _aten_batch_norm, aten.instance_norm: _aten_instance_norm,
        aten.max_pool1d: _aten_max_pool(1, False), aten.max_pool2d: _aten_max_pool(2, False),
        aten.max_pool3d: _aten_max_pool(3, False), aten.max_pool2d_with_indices: _aten_max_pool(2, True),
        aten.max_pool3d_with_indices: _aten_max_pool(3, True), aten.adaptive_max_pool1d: _aten_adaptive_max(1),
        aten.adaptive_max_pool2d: _aten_adaptive_max(2), aten.adaptive_max_pool3d: _aten_adaptive_max(3),
        aten.native_dropout: _aten_native_dropout, aten.sym_size: constant_of,
    })
    return table


# -- modules (torch.fx leaves) -----------------------------------------------------------------------

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_INSTANCENORM = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_ZP_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Tanh,
    nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Softsign, nn.PReLU, nn.RReLU, nn.Identity, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
_NZ_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)
_MOVE_MODULES = (nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
                 nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
                 nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
                 nn.Upsample)
_CONSTPAD_MODULES = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
_SUMMING_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                    nn.AdaptiveAvgPool3d)
_MAX_POOL_MODULES = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
_ADAPTIVE_MAX_MODULES = {nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3}
_MIX_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d)

#: module types the fx tracer keeps as leaves (any other module is traced into)
LEAF_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, *_CONV, *_BATCHNORM, *_INSTANCENORM, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.Embedding,
    *_ZP_MODULES, *_NZ_MODULES, nn.Hardtanh, *_MOVE_MODULES, *_CONSTPAD_MODULES, *_SUMMING_MODULES,
    *_MAX_POOL_MODULES, *_ADAPTIVE_MAX_MODULES, *_MIX_MODULES, nn.GLU,
)


def module_rule(net: Network, target: str, mod: nn.Module, x: Any, where: str) -> Any:
    """A leaf module call of a torch.fx graph. ``net.param(f"{target}.weight")`` reads its weight."""

    def weight() -> Any:
        return None if getattr(mod, "weight", None) is None else net.param(f"{target}.weight")

    if isinstance(mod, nn.Linear):
        return linear(net, x, weight(), where)
    if isinstance(mod, _CONV):
        return conv(net, lambda a, w: mod._conv_forward(a, w, None), x, weight())
    if isinstance(mod, _BATCHNORM):
        return batch_norm(net, x, weight())
    if isinstance(mod, _INSTANCENORM):
        a = net.as_act(x)
        if mod.track_running_stats:  # inference form: running statistics, a per-channel scale
            return batch_norm(net, a, weight())
        return group_norm(net, a, a.r.shape[1], weight())
    if isinstance(mod, nn.LayerNorm):
        return layer_norm(net, x, len(mod.normalized_shape), weight())
    if isinstance(mod, nn.GroupNorm):
        return group_norm(net, x, mod.num_groups, weight())
    if isinstance(mod, nn.RMSNorm):
        return rms_norm(net, x, len(mod.normalized_shape), weight())
    if isinstance(mod, nn.Embedding):
        return embedding(net, weight(), x, where, mod.padding_idx)
    if isinstance(mod, _ZP_MODULES):
        return elementwise(True)(net, mod, (x,), {})
    if isinstance(mod, _NZ_MODULES):
        return elementwise(False)(net, mod, (x,), {})
    if isinstance(mod, nn.Hardtanh):
        return elementwise(mod.min_val <= 0 <= mod.max_val)(net, mod, (x,), {})
    if isinstance(mod, nn.Softmax2d):
        return mix(net.as_act(x), -3)
    if isinstance(mod, _MIX_MODULES):
        a = net.as_act(x)
        return mix(a, _softmax_dim((a, mod.dim), {}, a))
    if isinstance(mod, nn.GLU):
        return glu(net, x, mod.dim)
    if isinstance(mod, nn.Upsample):
        return summing(net, mod, (x,), {})
    if isinstance(mod, _MOVE_MODULES):
        return move(net, mod, (x,), {})
    if isinstance(mod, _CONSTPAD_MODULES):
        return pad(net, x, mod.padding, "constant", mod.value)
    if isinstance(mod, _SUMMING_MODULES):
        return summing(net, mod, (x,), {})
    if type(mod) in _MAX_POOL_MODULES:
        kw = {"stride": mod.stride, "padding": mod.padding, "dilation": mod.dilation, "ceil_mode": mod.ceil_mode,
              "return_indices": mod.return_indices}
        return max_pool(net, _MAX_POOL_MODULES[type(mod)], (x, mod.kernel_size), kw, where)
    if type(mod) in _ADAPTIVE_MAX_MODULES:
        if mod.return_indices:
            raise Unsupported(f"{where}: return_indices=True is not supported")
        return adaptive_max_pool(net, _ADAPTIVE_MAX_MODULES[type(mod)], x, mod.output_size)
    raise Unsupported(f"{where} is not supported by effective sparsity (its path semantics are unknown)")
