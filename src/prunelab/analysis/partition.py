"""Activation patterns on a canvas of inputs, the partition distance between two checkpoints, and
pictures of the input-space partition.

A ReLU network is a continuous piecewise-affine spline: every ReLU splits its input space along the
zero set of its pre-activation, and the **activation pattern** of an input (which units are on, unit
on iff pre-activation > 0) names the region of the spline partition that holds it (Balestriero &
Baraniuk, ICML 2018, "A spline theory of deep networks"). You, Balestriero, Lu, Kou, Shi, Zhang, Wu,
Lin & Baraniuk (TMLR 2022, "Max-Affine Spline Insights Into Deep Network Pruning", Sec. 4) observe that
this partition settles early in training and compare it between epochs: the **partition distance**
between two checkpoints is, for each ReLU layer, the normalised Hamming distance between their sign
patterns on a fixed *canvas* of inputs (the fraction of (input, unit) pairs whose sign differs), then
averaged over layers with equal weights. That is what their reference code computes (``getDiff`` on
the outputs of every BatchNorm, which feed the ReLUs in VGG but not in post-activation ResNets, where a
block's second BatchNorm is added to the shortcut first; layers averaged), on a canvas of
100 x 100 inputs ``a x_0 + b x_1``, a, b in [0, 1], through two test images.

Choices made here (the paper leaves them open):

* the ReLU inputs are recorded wherever a ReLU is applied -- ``nn.ReLU`` modules and functional
  ``torch.relu`` / ``F.relu`` / ``Tensor.relu`` calls alike (a ``TorchFunctionMode``), so any model
  works, including prunelab's ResNets whose ReLUs are function calls. A *site* is named after the
  innermost module running when the ReLU is called (``features.2``), with ``:k`` added for its k-th
  further ReLU call in the same forward (``layer1.0:1``); the model itself is ``model``;
* for a conv layer every (channel, position) is a unit, as in the reference code;
* the model runs in eval mode (BatchNorm with running statistics), as in the reference code;
* patterns are bit-packed (one bit per input and unit), so a VGG-16 snapshot on 1000 inputs is ~35 MB.

Canvases: :func:`plane_canvas` (a grid on the plane through three inputs,
``x0 + s (x1 - x0) + t (x2 - x0)``, the parametrisation of :mod:`prunelab.analysis.regions`; the
reference canvas is the plane through the origin and two images) or any tensor of inputs, e.g. a
seeded sample of the training set.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from prunelab.errors import PrunelabError
from prunelab.utils import eval_mode

RELU_FUNCTIONS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_})
_INPLACE_RELU = frozenset({F.relu_, torch.relu_, Tensor.relu_})
MODEL_SITE = "model"


# --- recording ReLU inputs -------------------------------------------------------------------------
class _ReluMode(TorchFunctionMode):
    """Intercepts every ReLU call while active and hands its input to the recorder."""

    def __init__(self, recorder: ReluInputs) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in RELU_FUNCTIONS and args and isinstance(args[0], Tensor):
            inplace = func in _INPLACE_RELU or bool(kwargs.get("inplace", False)) or (
                func is F.relu and len(args) > 1 and bool(args[1])
            )
            x = args[0]
            self.recorder._record(x.clone() if inplace else x)  # an in-place ReLU overwrites x
        return func(*args, **kwargs)


class ReluInputs:
    """Records the input (pre-activation) of every ReLU applied during ``model``'s forward passes.

    Use as a context manager (hooks are on the model only inside it)::

        with ReluInputs(model) as rec:
            model(x)
        rec.values   # {site: pre-activation tensor of the last forward}

    ``values`` holds the tensors of the most recent forward pass (recording only while ``enabled``);
    ``detach=False`` keeps them in the autograd graph (for regularisers such as jumpstart). The
    recording survives an exception in the forward (the hooks that stop it always run).
    """

    def __init__(self, model: nn.Module, detach: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise PrunelabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.detach = detach
        self.enabled = True
        self.values: dict[str, Tensor] = {}
        self._stack: list[str] = []
        self._mode: _ReluMode | None = None
        self._handles: list[Any] = []

    # hooks -----------------------------------------------------------------------------------
    def _enter_model(self, module: nn.Module, inputs: Any) -> None:
        if not self.enabled or self._mode is not None:
            return
        self.values, self._stack = {}, [MODEL_SITE]
        self._mode = _ReluMode(self)
        self._mode.__enter__()

    def _exit_model(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
            self._stack = []

    def _push(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any) -> None:
            if self._mode is not None:
                self._stack.append(name)

        return hook

    def _pop(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self._mode is not None and len(self._stack) > 1:
            self._stack.pop()

    def _record(self, x: Tensor) -> None:
        base = self._stack[-1] if self._stack else MODEL_SITE
        name, k = base, 0
        while name in self.values:
            k += 1
            name = f"{base}:{k}"
        self.values[name] = x.detach() if self.detach else x

    # attach / detach -------------------------------------------------------------------------
    def __enter__(self) -> ReluInputs:
        if self._handles:
            raise PrunelabError("this ReluInputs recorder is already attached to its model")
        self._handles.append(self.model.register_forward_pre_hook(self._enter_model))
        self._handles.append(self.model.register_forward_hook(self._exit_model, always_call=True))
        for name, module in self.model.named_modules():
            if module is self.model:
                continue
            self._handles.append(module.register_forward_pre_hook(self._push(name)))
            self._handles.append(module.register_forward_hook(self._pop, always_call=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._mode is not None:  # only if a forward was interrupted between the two hooks
            self._exit_model(self.model, (), None)


# --- patterns --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActivationPatterns:
    """Sign patterns (pre-activation > 0) of every ReLU site on a canvas of ``num_points`` inputs.

    ``bits[site]`` is ``(num_points, ceil(units / 8))`` uint8, one bit per unit (``np.packbits`` order,
    padding bits 0); ``shapes[site]`` is the per-input shape of the site (``(C, H, W)`` for a conv).
    """

    bits: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    num_points: int

    @property
    def sites(self) -> list[str]:
        return list(self.bits)

    def num_units(self, site: str) -> int:
        return int(np.prod(self.shapes[site], dtype=np.int64))

    def pattern(self, site: str) -> Tensor:
        """The bool pattern of ``site``: ``(num_points, *shape)``."""
        if site not in self.bits:
            raise PrunelabError(f"unknown ReLU site {site!r}; sites: {', '.join(self.bits)}")
        units = self.num_units(site)
        flat = np.unpackbits(self.bits[site], axis=1, count=units).astype(bool)
        return torch.from_numpy(flat).reshape(self.num_points, *self.shapes[site])

    def region_ids(self) -> np.ndarray:
        """For each input, the index of its region (its full pattern over all sites), 0..regions-1."""
        rows = np.concatenate([self.bits[s] for s in self.bits], axis=1)
        _, inverse = np.unique(rows, axis=0, return_inverse=True)
        return inverse.reshape(-1)


def masked_copy(model: nn.Module, masks: Mapping[str, Tensor] | None) -> nn.Module:
    """``model`` itself without masks, else a deep copy with every masked parameter multiplied by its mask."""
    if masks is None:
        return model
    params = dict(model.named_parameters())
    unknown = [k for k in masks if k not in params]
    if unknown:
        raise PrunelabError(f"masks name parameters the model does not have: {unknown[:5]}")
    out = copy.deepcopy(model)
    out_params = dict(out.named_parameters())
    with torch.no_grad():
        for k, m in masks.items():
            if tuple(m.shape) != tuple(out_params[k].shape):
                raise PrunelabError(
                    f"mask {k!r} has shape {tuple(m.shape)}, the parameter {tuple(out_params[k].shape)}"
                )
            out_params[k].mul_(m.to(out_params[k].device, out_params[k].dtype))
    return out


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_canvas(canvas: Any) -> Tensor:
    if not isinstance(canvas, Tensor) or canvas.dim() < 2 or canvas.shape[0] == 0:
        shape = tuple(canvas.shape) if isinstance(canvas, Tensor) else type(canvas).__name__
        raise PrunelabError(f"canvas must be a tensor of inputs (N, *input_shape) with N >= 1, got {shape}")
    if not canvas.is_floating_point():
        raise PrunelabError(f"canvas must be a floating-point tensor, got dtype {canvas.dtype}")
    return canvas


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PrunelabError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def for_each_batch(
    model: nn.Module, canvas: Tensor, batch_size: int = 512
) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """Run ``model`` (eval mode, no grad) over ``canvas`` in batches; yield (inputs, {site: pre-activation})."""
    canvas = _check_canvas(canvas)
    batch_size = _check_batch_size(batch_size)
    device = _device_of(model)
    with eval_mode(model), torch.no_grad(), ReluInputs(model) as rec:
        for start in range(0, canvas.shape[0], batch_size):
            xb = canvas[start : start + batch_size].to(device)
            model(xb)
            if not rec.values:
                raise PrunelabError(
                    f"{type(model).__name__} applied no ReLU: activation patterns need a ReLU network"
                )
            yield xb, dict(rec.values)


def activation_patterns(
    model: nn.Module,
    canvas: Tensor,
    masks: Mapping[str, Tensor] | None = None,
    batch_size: int = 512,
) -> ActivationPatterns:
    """The sign pattern of every ReLU site of ``model`` (masks applied to a copy) on ``canvas``."""
    net = masked_copy(model, masks)
    chunks: dict[str, list[np.ndarray]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for xb, values in for_each_batch(net, canvas, batch_size):
        if chunks and list(values) != list(chunks):
            raise PrunelabError("the model applied different ReLUs on different batches; patterns need a fixed graph")
        for site, z in values.items():
            shapes[site] = tuple(z.shape[1:])
            on = (z > 0).reshape(z.shape[0], -1).cpu().numpy()
            chunks.setdefault(site, []).append(np.packbits(on, axis=1))
    bits = {s: np.concatenate(c, axis=0) for s, c in chunks.items()}
    return ActivationPatterns(bits=bits, shapes=shapes, num_points=int(canvas.shape[0]))


@dataclass(frozen=True)
class PartitionDistance:
    """Normalised Hamming distance per ReLU site and their unweighted mean (You et al. 2022)."""

    per_layer: dict[str, float]
    mean: float

    def to_row(self) -> dict[str, Any]:
        return {"partition_distance": self.mean, **{f"partition_distance.{k}": v for k, v in self.per_layer.items()}}


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def _popcount(a: np.ndarray) -> int:
    if hasattr(np, "bitwise_count"):
        return int(np.bitwise_count(a).sum(dtype=np.int64))
    return int(_POPCOUNT[a].sum())  # numpy < 2.0


def pattern_distance(a: ActivationPatterns, b: ActivationPatterns) -> PartitionDistance:
    """Per-site fraction of (input, unit) pairs whose sign differs between ``a`` and ``b``; their mean."""
    if not isinstance(a, ActivationPatterns) or not isinstance(b, ActivationPatterns):
        raise PrunelabError("pattern_distance compares two ActivationPatterns (from activation_patterns)")
    if list(a.bits) != list(b.bits) or a.shapes != b.shapes or a.num_points != b.num_points:
        raise PrunelabError(
            "the two patterns do not match: they must come from the same architecture on the same canvas "
            f"(sites {list(a.shapes.items())[:3]}... on {a.num_points} points vs "
            f"{list(b.shapes.items())[:3]}... on {b.num_points} points)"
        )
    per = {
        s: _popcount(np.bitwise_xor(a.bits[s], b.bits[s])) / (a.num_points * a.num_units(s)) for s in a.bits
    }
    return PartitionDistance(per_layer=per, mean=float(np.mean(list(per.values()))))


def partition_distance(
    model_a: nn.Module,
    model_b: nn.Module,
    canvas: Tensor,
    masks_a: Mapping[str, Tensor] | None = None,
    masks_b: Mapping[str, Tensor] | None = None,
    batch_size: int = 512,
) -> PartitionDistance:
    """Partition distance between two checkpoints of one architecture on ``canvas``."""
    return pattern_distance(
        activation_patterns(model_a, canvas, masks_a, batch_size),
        activation_patterns(model_b, canvas, masks_b, batch_size),
    )


# --- canvases --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plane:
    """A ``resolution x resolution`` grid on the plane ``x0 + s (x1 - x0) + t (x2 - x0)``.

    ``points[i * resolution + j]`` is the input at ``(s[j], t[i])`` (row i = t, column j = s).
    """

    points: Tensor
    s: np.ndarray
    t: np.ndarray

    @property
    def resolution(self) -> int:
        return len(self.s)


def plane_canvas(x0: Tensor, x1: Tensor, x2: Tensor, resolution: int = 100, margin: float = 0.1) -> Plane:
    """Grid with s, t in ``[-margin, 1 + margin]`` on the plane through ``x0, x1, x2`` (corners s,t = 0/1).

    The reference canvas of You et al. (2022) is ``plane_canvas(zeros, img0, img1, margin=0)``.
    """
    anchors = []
    for name, x in (("x0", x0), ("x1", x1), ("x2", x2)):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise PrunelabError(f"{name} must be a floating-point tensor (one input, no batch axis)")
        anchors.append(x.detach())
    if not (anchors[0].shape == anchors[1].shape == anchors[2].shape):
        raise PrunelabError(f"x0, x1, x2 must have one shape, got {[tuple(a.shape) for a in anchors]}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise PrunelabError(f"resolution must be an integer >= 2, got {resolution!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 10:
        raise PrunelabError(f"margin must be a number in [0, 10), got {margin!r}")
    s = np.linspace(-margin, 1 + margin, resolution)
    t = np.linspace(-margin, 1 + margin, resolution)
    tt, ss = np.meshgrid(t, s, indexing="ij")  # row = t, column = s
    x0_, d1, d2 = anchors[0], anchors[1] - anchors[0], anchors[2] - anchors[0]
    sv = torch.from_numpy(ss.reshape(-1)).to(x0_.dtype).view(-1, *([1] * x0_.dim()))
    tv = torch.from_numpy(tt.reshape(-1)).to(x0_.dtype).view(-1, *([1] * x0_.dim()))
    points = x0_.unsqueeze(0) + sv * d1.unsqueeze(0) + tv * d2.unsqueeze(0)
    return Plane(points=points, s=s, t=t)


def sample_canvas(x: Tensor, n: int, seed: int = 0) -> Tensor:
    """``n`` inputs drawn without replacement from ``x`` by ``seed`` (a canvas of samples)."""
    x = _check_canvas(x)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n:
        raise PrunelabError(f"canvas size n must be a positive integer, got {n!r}")
    n = min(n, x.shape[0])
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx.to(x.device)]


# --- pictures --------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def region_image(ids: np.ndarray, resolution: int, seed: int = 0) -> np.ndarray:
    """RGB image (resolution, resolution, 3): one random colour per region, boundaries black."""
    grid = ids.reshape(resolution, resolution)
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.25, 1.0, size=(int(ids.max()) + 1, 3))
    img = colours[grid]
    edge = np.zeros_like(grid, dtype=bool)
    edge[:, 1:] |= grid[:, 1:] != grid[:, :-1]
    edge[1:, :] |= grid[1:, :] != grid[:-1, :]
    img[edge] = 0.0
    return img


def plot_partitions(
    panels: Sequence[tuple[str, nn.Module, Mapping[str, Tensor] | None]],
    plane: Plane,
    path: str | Path,
    batch_size: int = 512,
) -> dict[str, int]:
    """One panel per ``(title, model, masks)``: the plane's points coloured by region; returns regions met.

    The three anchor inputs are marked (s, t) = (0, 0), (1, 0), (0, 1). The count is the number of
    distinct activation patterns on the grid: a lower bound on the regions meeting the plane.
    """
    if not panels:
        raise PrunelabError("plot_partitions needs at least one (title, model, masks) panel")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    counts: dict[str, int] = {}
    extent = (plane.s[0], plane.s[-1], plane.t[0], plane.t[-1])
    for ax, (title, model, masks) in zip(axes[0], panels):
        ids = activation_patterns(model, plane.points, masks, batch_size).region_ids()
        counts[title] = int(ids.max()) + 1
        ax.imshow(region_image(ids, plane.resolution), origin="lower", extent=extent, interpolation="nearest")
        ax.scatter([0, 1, 0], [0, 0, 1], c="white", edgecolors="black", s=40, zorder=3)
        ax.set_title(f"{title}\n{counts[title]} regions on the grid", fontsize=9)
        ax.set_xlabel("s")
        ax.set_ylabel("t")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return counts


def plot_distance_curve(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float | None]]],
    path: str | Path,
    thresholds: Mapping[str, float] | None = None,
    found: Mapping[str, int | None] | None = None,
    title: str | None = None,
) -> Path:
    """Early-bird distance against epoch, one line per rule: ``{label: (epochs, distances)}``.

    Epochs with no distance yet (window not full) are skipped; ``thresholds`` draws dashed lines,
    ``found`` a dotted vertical line at each rule's early-bird epoch.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (label, (epochs, dists)) in enumerate(curves.items()):
        pts = [(e, d) for e, d in zip(epochs, dists) if d is not None]
        colour = f"C{i % 10}"
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, color=colour, label=label)
        if thresholds and label in thresholds:
            ax.axhline(thresholds[label], color=colour, ls="--", lw=1)
        if found and found.get(label) is not None:
            ax.axvline(found[label], color=colour, ls=":", lw=1.5)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("max distance to the previous epochs in the window")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
