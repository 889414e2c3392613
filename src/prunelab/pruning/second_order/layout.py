"""Which weights the Fisher is over, in which order, and how they are cut into diagonal blocks.

Second-order methods work on one flat vector of the *prunable, still kept* weights: the weights named by
the masks, with the already-pruned coordinates dropped (they are fixed at zero and take no part in the
Fisher, its inverse, the saliencies or the updates). :class:`Layout` packs parameters into that vector
and back, and records the diagonal blocks of the Fisher approximation: one block per layer, per chunk of
``block_size`` consecutive kept weights of a layer (the chunking used by WoodFisher, Singh & Alistarh
2020, Sec. 5, and by CBS, Yu et al. 2022, Sec. 5), or one block over everything (``full``).
Blocks never straddle two layers, so a chunked layer's last block may be smaller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class Layout:
    """The packed coordinate system of the kept prunable weights.

    ``names``/``shapes``: the masked parameters, in mask order. ``kept[k]``: flat indices (into the
    parameter's ``numel``) of its kept weights. ``offsets[k]``: where that layer starts in the packed
    vector. ``blocks``: ``(start, end)`` ranges of the packed vector, each inside one layer.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    kept: tuple[torch.Tensor, ...]
    offsets: tuple[int, ...]
    blocks: tuple[tuple[int, int], ...]

    @property
    def dim(self) -> int:
        """Number of coordinates (kept prunable weights)."""
        return self.offsets[-1] + int(self.kept[-1].numel()) if self.names else 0

    def pack(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The kept coordinates of ``tensors[name]`` for every layer, concatenated: (dim,)."""
        parts = [tensors[n].detach().reshape(-1)[k.to(tensors[n].device)] for n, k in zip(self.names, self.kept)]
        return torch.cat(parts) if parts else torch.zeros(0)

    def unpack(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`pack`: full-shape tensors, zero at the coordinates not in the layout."""
        if vector.shape != (self.dim,):
            raise PrunelabError(f"vector has shape {tuple(vector.shape)}; this layout needs ({self.dim},)")
        out: dict[str, torch.Tensor] = {}
        for name, shape, kept, start in zip(self.names, self.shapes, self.kept, self.offsets):
            flat = torch.zeros(shape.numel(), dtype=vector.dtype, device=vector.device)
            flat[kept.to(vector.device)] = vector[start : start + kept.numel()]
            out[name] = flat.reshape(shape)
        return out


def check_block_size(block_size: object) -> int | None:
    """``None`` (one block per layer) or a positive int; anything else is a :class:`PrunelabError`."""
    if block_size is None:
        return None
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise PrunelabError(f"block_size must be a positive integer or None (one block per layer), got {block_size!r}")
    return block_size


def make_layout(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    block_size: int | None = None,
    full: bool = False,
) -> Layout:
    """The layout of the weights kept by ``masks`` (a mapping parameter name -> bool tensor).

    Every mask key must name a parameter of ``model`` with the mask's shape. ``full=True`` makes one
    block over all coordinates (exact Fisher, only for small networks); otherwise each layer is cut
    into chunks of ``block_size`` kept weights (``None``: the whole layer is one block).
    """
    block_size = check_block_size(block_size)
    if not isinstance(masks, Mapping) or len(masks) == 0:
        raise PrunelabError("masks must be a non-empty mapping parameter name -> bool tensor")
    params = dict(model.named_parameters())
    names, shapes, kept, offsets, blocks = [], [], [], [], []
    start = 0
    for name, mask in masks.items():
        if name not in params:
            raise PrunelabError(f"mask {name!r} names no parameter of the model; parameters: {', '.join(params)}")
        if not isinstance(mask, torch.Tensor) or mask.shape != params[name].shape:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise PrunelabError(f"mask {name!r} has shape {got}; parameter has {tuple(params[name].shape)}")
        idx = torch.nonzero(mask.detach().reshape(-1).bool(), as_tuple=False).reshape(-1).cpu()
        names.append(name)
        shapes.append(params[name].shape)
        kept.append(idx)
        offsets.append(start)
        n = int(idx.numel())
        step = n if block_size is None else block_size
        if not full:
            blocks.extend((s, min(s + step, start + n)) for s in range(start, start + n, max(step, 1)))
        start += n
    if start == 0:
        raise PrunelabError("the masks keep no weight: there is nothing left to prune")
    if full:
        blocks = [(0, start)]
    return Layout(tuple(names), tuple(shapes), tuple(kept), tuple(offsets), tuple(blocks))


def removed_coordinates(
    layout: Layout, old_masks: Mapping[str, torch.Tensor], new_masks: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """(dim,) bool: the coordinates kept by ``old_masks`` (the layout's) that ``new_masks`` prunes.

    ``new_masks`` must have the same keys and may not revive a weight ``old_masks`` pruned.
    """
    if set(new_masks) != set(layout.names):
        raise PrunelabError(
            f"new masks cover {sorted(new_masks)}; the old masks cover {sorted(layout.names)}"
        )
    for name in layout.names:
        old, new = old_masks[name].bool(), new_masks[name].to(old_masks[name].device).bool()
        if old.shape != new.shape:
            raise PrunelabError(f"mask {name!r}: new shape {tuple(new.shape)} differs from old {tuple(old.shape)}")
        if bool((new & ~old).any()):
            raise PrunelabError(f"mask {name!r}: the new mask keeps weights the old mask pruned; updates only remove")
    kept = layout.pack({n: new_masks[n] for n in layout.names})
    return ~kept.bool()


def write_weights(
    model: nn.Module, layout: Layout, vector: torch.Tensor, new_masks: Mapping[str, torch.Tensor]
) -> None:
    """Set the layout's weights of ``model`` to ``vector`` and every weight ``new_masks`` prunes to 0."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, full in layout.unpack(vector).items():
            p = params[name]
            keep = new_masks[name].to(device=p.device, dtype=torch.bool)
            p.copy_(torch.where(keep, full.to(device=p.device, dtype=p.dtype), torch.zeros((), dtype=p.dtype, device=p.device)))
