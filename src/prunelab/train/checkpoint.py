"""Model checkpoints, and the training-state checkpoints of resumable ``fit`` runs.

``save_checkpoint("run/model.safetensors", model, meta)`` writes ``run/model.safetensors`` (every
parameter and buffer of ``model.state_dict()``) and ``run/model.json`` (``meta``), each atomically.
Loading never unpickles anything.

A *training* checkpoint (:func:`save_train_state` / :func:`load_train_state`, used by
``fit(..., checkpoint=...)``) is one safetensors file: the tensors of a nested state (model,
optimizer, callbacks, RNG) in its body and everything else as JSON in its header metadata, so one
atomic write replaces the whole checkpoint (two files could be caught half-updated by a crash).
:func:`pack` / :func:`unpack` split a nested state into the two and join them back exactly (tuples,
int dict keys and NumPy arrays survive the JSON).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.utils import atomic_write_bytes, atomic_write_json


def meta_path(path: str | os.PathLike) -> Path:
    """Where the JSON metadata of checkpoint ``path`` lives: the same name with suffix ``.json``."""
    return Path(path).with_suffix(".json")


def _jsonable(obj: Any) -> Any:
    """Pydantic models become dicts, tuples lists, tensors (small ones) lists; the rest goes as is."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Write ``model.state_dict()`` (parameters and buffers) to ``path`` and ``meta`` to its ``.json``."""
    path = Path(path)
    if path.suffix == ".json":
        raise PrunelabError(f"checkpoint path {str(path)!r} must not end in .json (the metadata goes there)")
    if meta is not None and not isinstance(meta, dict):
        raise PrunelabError(f"meta must be a dict, got {type(meta).__name__}")
    save_state_dict(path, model.state_dict())
    atomic_write_json(meta_path(path), _jsonable(meta or {}))


def save_state_dict(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> None:
    """Write a state dict (or any name -> tensor mapping) to ``path`` as safetensors, atomically."""
    # clone: safetensors refuses tensors that share storage (tied weights), and needs contiguous CPU data
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    atomic_write_bytes(path, save_safetensors(tensors, metadata={"format": "pt"}))


def load_checkpoint(path: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """Load the tensors at ``path`` into ``model`` (strict: same keys and shapes) and return the meta.

    Tensors are copied into the model's existing parameters and buffers, so they keep the model's
    device. A checkpoint without its ``.json`` returns ``{}``.
    """
    path = Path(path)
    if not path.is_file():
        raise PrunelabError(f"checkpoint {str(path)!r} does not exist")
    try:
        tensors = load_safetensors(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as exc:
        raise PrunelabError(f"checkpoint {str(path)!r} is not a readable safetensors file: {exc}") from None
    check_fits(path, model, tensors)
    model.load_state_dict(tensors, strict=True)
    meta_file = meta_path(path)
    if not meta_file.is_file():
        return {}
    try:
        return json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PrunelabError(f"checkpoint metadata {str(meta_file)!r} is not valid JSON: {exc}") from None


def check_fits(path: str | os.PathLike, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Raise one :class:`PrunelabError` listing the keys and shapes in which ``tensors`` (read from
    ``path``) differ from ``model.state_dict()``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in tensors and tensors[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise PrunelabError(
            f"checkpoint {str(path)!r} does not fit the model: missing {missing}, unexpected {unexpected}, "
            f"shape mismatches {wrong}"
        )


# ---------------------------------------------------------------------------------------------
# Training-state checkpoints (resumable fit)

TRAIN_STATE_FORMAT = "prunelab-train-state"
TRAIN_STATE_VERSION = 1
_META_KEY = "prunelab_train_state"
_MARKERS = ("__tensor__", "__tuple__", "__items__", "__ndarray__")


def pack(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """The JSON-able form of the nested state ``obj``; its tensors go into ``tensors`` under their path.

    Tensors become ``{"__tensor__": key}`` (copied to the CPU), tuples ``{"__tuple__": [...]}``,
    dicts with a non-str key (or a key that looks like a marker) ``{"__items__": [[k, v], ...]}``,
    NumPy arrays ``{"__ndarray__": [...], "dtype": ...}``, NumPy scalars Python numbers. Anything
    else that JSON cannot hold is a :class:`PrunelabError` naming its path.
    """
    if isinstance(obj, torch.Tensor):
        key, n = path or "tensor", 1
        while key in tensors:  # {"a.b": x, "a": {"b": y}} flatten to the same path
            key, n = f"{path or 'tensor'}#{n}", n + 1
        # clone: safetensors refuses tensors that share storage and needs contiguous CPU data
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        plain = all(isinstance(k, str) and k not in _MARKERS for k in obj)
        if plain:
            return {k: pack(v, tensors, f"{path}.{k}" if path else k) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise PrunelabError(
                    f"training state {path or '<root>'!r} has a key {k!r} of type {type(k).__name__}; "
                    "keys must be str or int"
                )
            items.append([k, pack(v, tensors, f"{path}.{k}" if path else str(k))])
        return {"__items__": items}
    raise PrunelabError(
        f"training state {path or '<root>'!r} is a {type(obj).__name__}, which a checkpoint cannot hold; "
        "use tensors, numbers, strings, bools, None, lists, tuples and dicts"
    )


def unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`pack`."""
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        key = obj["__tensor__"]
        if key not in tensors:
            raise PrunelabError(f"the training checkpoint lacks the tensor {key!r}")
        return tensors[key]
    if "__tuple__" in obj:
        return tuple(unpack(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: unpack(v, tensors) for k, v in obj["__items__"]}
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    return {k: unpack(v, tensors) for k, v in obj.items()}


def save_train_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write the nested ``state`` to ``path`` (one safetensors file, JSON in its header), atomically."""
    tensors: dict[str, torch.Tensor] = {}
    doc = {"format": TRAIN_STATE_FORMAT, "version": TRAIN_STATE_VERSION, "state": pack(state, tensors)}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    atomic_write_bytes(path, save_safetensors(tensors, metadata={"format": "pt", _META_KEY: blob}))


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read what :func:`save_train_state` wrote (tensors on the CPU); a clear error for anything else."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        tensors = load_safetensors(raw)
        header_len = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError) as exc:
        raise PrunelabError(
            f"training checkpoint {str(path)!r} is not a readable safetensors file ({exc}); delete it to start over"
        ) from None
    try:
        doc = json.loads(meta[_META_KEY])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise PrunelabError(
            f"{str(path)!r} is not a prunelab training checkpoint (no training state in its header); "
            "pass another checkpoint path"
        ) from None
    if doc.get("format") != TRAIN_STATE_FORMAT or doc.get("version") != TRAIN_STATE_VERSION:
        raise PrunelabError(
            f"training checkpoint {str(path)!r} has format {doc.get('format')!r} version {doc.get('version')!r}; "
            f"this prunelab reads {TRAIN_STATE_FORMAT!r} version {TRAIN_STATE_VERSION}"
        )
    return unpack(doc["state"], tensors)


def stale_tmp_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files that a crashed :func:`prunelab.utils.atomic_write_bytes` of ``path`` left
    beside it (``.<name>.<random>.tmp``)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.glob(f".{path.name}.*.tmp") if p.is_file())


def remove_stale_tmp(path: str | os.PathLike) -> list[Path]:
    """Delete :func:`stale_tmp_files` of ``path``; returns what was deleted."""
    removed = []
    for p in stale_tmp_files(path):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:  # pragma: no cover - removed concurrently
            pass
    return removed
