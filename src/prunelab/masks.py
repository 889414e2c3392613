"""Pruning masks: which weights of which layers are kept.

A :class:`Masks` maps a parameter name (as in ``model.named_parameters()``, e.g. ``"features.0.weight"``)
to a ``torch.bool`` tensor of that parameter's shape; ``True`` means the weight is kept. Masks are
immutable values: ``&``, ``|``, ``to`` and ``clone`` return new ones. They can be saved as safetensors
and converted to and from the reparametrisation of ``torch.nn.utils.prune``.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunelab.errors import PrunelabError
from prunelab.models.adapters import is_conv1d, is_transformers_model
from prunelab.utils import atomic_write_bytes

#: Module types whose ``weight`` is prunable unless the caller says otherwise (never biases, never BN).
#: ``transformers.Conv1D`` (GPT-2's Linear with a transposed weight) counts as an ``nn.Linear``
#: everywhere; it is recognised by duck typing (:func:`prunelab.models.adapters.is_conv1d`), so
#: ``transformers`` need not be installed.
DEFAULT_PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ORDER_KEY = "prunelab_order"  # safetensors metadata entry holding the layer order


def _check_include(include: Any) -> tuple[tuple[type[nn.Module], ...] | None, tuple[str, ...]]:
    """(module types or None for the default set, fnmatch patterns of names to add)."""
    if include is None:
        return None, ()
    if isinstance(include, (type, str)):
        include = (include,)
    if (
        not isinstance(include, (tuple, list))
        or not include
        or not all((isinstance(t, type) and issubclass(t, nn.Module)) or isinstance(t, str) for t in include)
    ):
        raise PrunelabError(
            f"include must be a non-empty tuple of nn.Module subclasses (e.g. (nn.Linear, nn.Conv2d)) and/or "
            f"fnmatch patterns of module or weight names (e.g. ('lm_head', '*.wte')), got {include!r}"
        )
    types_ = tuple(t for t in include if isinstance(t, type))
    return (types_ or None), tuple(t for t in include if isinstance(t, str))


def _check_exclude(exclude: Any) -> tuple[str, ...]:
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        return (exclude,)
    if not isinstance(exclude, (tuple, list)) or not all(isinstance(p, str) for p in exclude):
        raise PrunelabError(
            f"exclude must be a tuple of fnmatch patterns on parameter or module names "
            f"(e.g. ('fc*', 'classifier.*')), got {exclude!r}"
        )
    return tuple(exclude)


def _is_torch_pruned(module: nn.Module, name: str = "weight") -> bool:
    return hasattr(module, f"{name}_orig") and hasattr(module, f"{name}_mask")


def _of_types(module: nn.Module, types_: tuple[type[nn.Module], ...]) -> bool:
    """``isinstance`` with ``transformers.Conv1D`` counted as an ``nn.Linear``."""
    if isinstance(module, types_):
        return True
    return any(issubclass(nn.Linear, t) for t in types_) and is_conv1d(module)


def _block_lists(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and name}


def _in_block(mod_name: str, lists: set[str]) -> bool:
    """Whether module ``mod_name`` lies inside one of the ``nn.ModuleList`` s named in ``lists``."""
    parts = mod_name.split(".")
    return any(".".join(parts[:i]) in lists for i in range(1, len(parts)))


def prunable_modules(
    model: nn.Module,
    include: tuple[type[nn.Module] | str, ...] | None = None,
    exclude: tuple[str, ...] = (),
) -> dict[str, nn.Module]:
    """Parameter name -> the module owning that prunable ``weight``, in registration order.

    ``include`` picks module types (default :data:`DEFAULT_PRUNABLE`, ``transformers.Conv1D``
    counting as ``nn.Linear``) and may add weights by fnmatch patterns of module or weight names
    (``include=("lm_head",)`` adds the head to the default set; a pattern that matches nothing is an
    error); ``exclude`` drops any layer whose module name or parameter name matches one of the fnmatch
    patterns (``"fc*"`` drops ``fc1.weight``).

    For a ``transformers`` model the default set is the Linear-like projections inside its stack of
    blocks (the ``nn.ModuleList`` of layers: attention and MLP projections); embeddings, poolers,
    classifier and LM heads, and a ViT's patch projection are left out (add them by pattern).

    A weight shared by several modules (tied embeddings and LM head) is listed once, under the name
    ``named_parameters`` gives it (``transformer.wte.weight`` for GPT-2's tied ``lm_head``); it is
    prunable if one of its modules is, and excluded if any of its names matches ``exclude``.
    """
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    types_, add = _check_include(include)
    patterns = _check_exclude(exclude)
    transformers_default = types_ is None and is_transformers_model(model)
    lists = _block_lists(model) if transformers_default else set()
    canonical: dict[int, str] = {}
    for name, p in model.named_parameters():
        canonical.setdefault(id(p), name)
    chosen: dict[int, tuple[str, nn.Module]] = {}
    aliases: dict[int, set[str]] = {}
    matched: set[str] = set()
    for mod_name, module in model.named_modules():
        param_name = f"{mod_name}.weight" if mod_name else "weight"
        if types_ is None:
            by_type = _of_types(module, DEFAULT_PRUNABLE) and (not transformers_default or _in_block(mod_name, lists))
        else:
            by_type = _of_types(module, types_)
        weight = module._parameters.get("weight")
        names = (mod_name, param_name, canonical.get(id(weight), param_name))
        hits = {p for p in add for n in names if fnmatch.fnmatchcase(n, p)}
        if (by_type or hits) and _is_torch_pruned(module):
            raise PrunelabError(
                f"module {mod_name!r} carries a torch.nn.utils.prune reparametrisation; call "
                "prunelab.pruning.from_torch_prune(model) to read its masks and "
                "prunelab.pruning.make_permanent(model) before using prunelab masks"
            )
        if not isinstance(weight, nn.Parameter):
            continue
        matched |= hits
        aliases.setdefault(id(weight), set()).update(names)
        if (by_type or hits) and id(weight) not in chosen:
            chosen[id(weight)] = (canonical.get(id(weight), param_name), module)
    unmatched = [p for p in add if p not in matched]
    if unmatched:
        raise PrunelabError(
            f"include pattern {unmatched[0]!r} matches no module or weight of {type(model).__name__}; give module "
            "types as classes (nn.Linear) and patterns as names (e.g. 'lm_head', '*.wte', 'fc1.weight')"
        )
    out: dict[str, nn.Module] = {}
    for key, (name, module) in chosen.items():
        if any(fnmatch.fnmatchcase(n, p) for p in patterns for n in aliases[key]):
            continue
        out[name] = module
    return out


def prunable_parameters(
    model: nn.Module,
    include: tuple[type[nn.Module] | str, ...] | None = None,
    exclude: tuple[str, ...] = (),
) -> dict[str, nn.Parameter]:
    """Parameter name -> prunable weight (see :func:`prunable_modules` for ``include``/``exclude``)."""
    return {name: mod.weight for name, mod in prunable_modules(model, include, exclude).items()}


def _split(param_name: str) -> tuple[str, str]:
    """``"features.0.weight"`` -> (``"features.0"``, ``"weight"``)."""
    mod_name, _, attr = param_name.rpartition(".")
    return mod_name, attr


class Masks(Mapping[str, torch.Tensor]):
    """Parameter name -> bool tensor (True = kept). Operations return new masks.

    Counts (:meth:`num_kept`, :meth:`sparsity`, ...) are over the masked parameters only; sparsity is
    the fraction removed, density the fraction kept.
    """

    __hash__ = None  # type: ignore[assignment]  # mutable tensors inside: not hashable

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(masks, Mapping):
            raise PrunelabError(f"masks must be a mapping of name -> bool tensor, got {type(masks).__name__}")
        data: dict[str, torch.Tensor] = {}
        for key, value in masks.items():
            if not isinstance(key, str):
                raise PrunelabError(f"mask keys must be parameter names (str), got {key!r}")
            if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
                what = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise PrunelabError(f"mask {key!r} must be a torch.bool tensor, got {what}")
            data[key] = value
        self._data = data

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def ones(
        cls,
        model: nn.Module,
        include: tuple[type[nn.Module] | str, ...] | None = None,
        exclude: tuple[str, ...] = (),
    ) -> Masks:
        """All-kept masks for every prunable weight (see :func:`prunable_modules`)."""
        params = prunable_parameters(model, include, exclude)
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})

    @classmethod
    def from_weights(
        cls,
        model: nn.Module,
        include: tuple[type[nn.Module] | str, ...] | None = None,
        exclude: tuple[str, ...] = (),
    ) -> Masks:
        """Masks of the non-zero prunable weights (e.g. of a pruned checkpoint saved without masks)."""
        params = prunable_parameters(model, include, exclude)
        return cls({n: p.detach() != 0 for n, p in params.items()})

    # --- Mapping protocol ---------------------------------------------------------------------
    def __getitem__(self, key: str) -> torch.Tensor:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping) or set(self) != set(other):
            return False
        return all(
            isinstance(other[k], torch.Tensor)
            and other[k].shape == v.shape
            and torch.equal(other[k].to(v.device, torch.bool), v)
            for k, v in self._data.items()
        )

    def __repr__(self) -> str:
        return f"Masks({len(self)} layers, sparsity={self.sparsity():.4f})" if self else "Masks(empty)"

    # --- combination --------------------------------------------------------------------------
    def _same_layout(self, other: Mapping[str, torch.Tensor], op: str) -> None:
        if not isinstance(other, Mapping):
            raise PrunelabError(f"cannot {op} Masks with {type(other).__name__}")
        if set(self) != set(other):
            diff = sorted(set(self) ^ set(other))
            raise PrunelabError(f"cannot {op} masks with different layers; not in both: {diff}")
        for k, v in self._data.items():
            if other[k].shape != v.shape:
                raise PrunelabError(
                    f"cannot {op} masks: layer {k!r} has shape {tuple(v.shape)} vs {tuple(other[k].shape)}"
                )

    def __and__(self, other: Mapping[str, torch.Tensor]) -> Masks:
        self._same_layout(other, "intersect (&)")
        return Masks({k: v & other[k].to(v.device, torch.bool) for k, v in self._data.items()})

    def __or__(self, other: Mapping[str, torch.Tensor]) -> Masks:
        self._same_layout(other, "unite (|)")
        return Masks({k: v | other[k].to(v.device, torch.bool) for k, v in self._data.items()})

    def to(self, device: torch.device | str) -> Masks:
        return Masks({k: v.to(device) for k, v in self._data.items()})

    def clone(self) -> Masks:
        return Masks({k: v.clone() for k, v in self._data.items()})

    # --- counts -------------------------------------------------------------------------------
    def num_kept(self) -> int:
        return int(sum(int(torch.count_nonzero(v)) for v in self._data.values()))

    def num_total(self) -> int:
        return int(sum(v.numel() for v in self._data.values()))

    def density(self) -> float:
        """Fraction of masked weights kept (1.0 for empty masks)."""
        total = self.num_total()
        return self.num_kept() / total if total else 1.0

    def sparsity(self) -> float:
        """Fraction of masked weights removed."""
        return 1.0 - self.density()

    def per_layer(self) -> dict[str, dict[str, float | int]]:
        """name -> {"kept", "total", "density", "sparsity"}."""
        out: dict[str, dict[str, float | int]] = {}
        for k, v in self._data.items():
            kept, total = int(torch.count_nonzero(v)), v.numel()
            density = kept / total if total else 1.0
            out[k] = {"kept": kept, "total": total, "density": density, "sparsity": 1.0 - density}
        return out

    # --- model interaction --------------------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """PrunelabError unless every mask names a parameter of ``model`` with the same shape."""
        params = dict(model.named_parameters())
        unknown = [k for k in self._data if k not in params]
        if unknown:
            k = unknown[0]
            mod_name, attr = _split(k)
            owner = _get_module(model, mod_name)
            hint = ""
            if owner is not None and _is_torch_pruned(owner, attr):
                hint = " (the module carries a torch prune reparametrisation: call make_permanent first)"
            more = ""
            if len(unknown) > 1:
                shown = ", ".join(map(repr, unknown[1:4])) + (", ..." if len(unknown) > 4 else "")
                more = f" (and {len(unknown) - 1} more: {shown})"
            raise PrunelabError(
                f"mask {k!r}{more} names no parameter of the model{hint}; prunable parameters: "
                f"{', '.join(prunable_parameters(model)) or '(none)'}"
            )
        for k, v in self._data.items():
            if tuple(params[k].shape) != tuple(v.shape):
                raise PrunelabError(
                    f"mask {k!r} has shape {tuple(v.shape)} but the parameter has shape "
                    f"{tuple(params[k].shape)}"
                )

    def apply(self, model: nn.Module) -> None:
        """Zero the masked-out weights of ``model`` in place (after :meth:`validate`)."""
        self.validate(model)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in self._data.items():
                p = params[k]
                p.masked_fill_(~v.to(p.device), 0.0)  # exact 0 even for inf/NaN weights

    # --- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """Write the masks to ``path`` as safetensors (atomically; ``metadata`` is str -> str).

        safetensors does not keep the order of its tensors, so the layer order (which allocations such
        as ``uniform_plus`` rely on) is stored in the metadata key ``prunelab_order``.
        """
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self._data.items()}
        if metadata is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise PrunelabError(f"metadata must map str to str, got {metadata!r}")
        meta = {**(metadata or {}), _ORDER_KEY: json.dumps(list(self._data))}
        atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> Masks:
        """Read masks written by :meth:`save`; every tensor must be bool."""
        path = Path(path)
        if not path.is_file():
            raise PrunelabError(f"mask file {str(path)!r} does not exist")
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                order = json.loads((f.metadata() or {}).get(_ORDER_KEY, "[]"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types on corrupt files
            raise PrunelabError(f"{str(path)!r} is not a readable safetensors file: {exc}") from None
        if sorted(order) == sorted(tensors):
            tensors = {k: tensors[k] for k in order}
        for k, v in tensors.items():
            if v.dtype != torch.bool:
                raise PrunelabError(f"{str(path)!r}: tensor {k!r} has dtype {v.dtype}, masks must be torch.bool")
        return cls({k: v.to(device) for k, v in tensors.items()})


def _get_module(model: nn.Module, mod_name: str) -> nn.Module | None:
    try:
        return model.get_submodule(mod_name) if mod_name else model
    except AttributeError:
        return None


def _owner(model: nn.Module, param_name: str) -> tuple[nn.Module, str]:
    mod_name, attr = _split(param_name)
    module = _get_module(model, mod_name)
    if module is None:
        raise PrunelabError(f"mask {param_name!r}: the model has no module {mod_name!r}")
    return module, attr


def to_torch_prune(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Register ``torch.nn.utils.prune.custom_from_mask`` for every mask (in place).

    Afterwards each module has ``weight_orig`` (parameter) and ``weight_mask`` (buffer), as torch's
    pruning utilities expect. On a module that is already torch-pruned, torch combines the masks.
    """
    masks = masks if isinstance(masks, Masks) else Masks(masks)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        module, attr = _owner(model, name)
        current = params.get(name, params.get(f"{name}_orig"))
        if current is None or tuple(current.shape) != tuple(mask.shape):
            raise PrunelabError(f"mask {name!r} does not match a parameter of the model (shape {tuple(mask.shape)})")
        torch_prune.custom_from_mask(module, attr, mask.to(current.device))


def from_torch_prune(model: nn.Module) -> Masks:
    """Read the ``<name>_mask`` buffers of every torch-pruned module back into :class:`Masks`."""
    out: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                attr = hook._tensor_name
                key = f"{mod_name}.{attr}" if mod_name else attr
                out[key] = getattr(module, f"{attr}_mask").detach() != 0
    return Masks(out)


def make_permanent(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> None:
    """Remove every torch prune reparametrisation (weights become plain zeroed parameters).

    With ``masks``, also zero the weights they mask out, so the model ends with plain parameters that
    carry exactly the pruning of ``masks`` (and of any torch masks it had).
    """
    for _, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
    if masks is not None:
        (masks if isinstance(masks, Masks) else Masks(masks)).apply(model)
