"""The model registry and :func:`create`: check the request, build the model, record its input.

A model builder is ``fn(num_classes, input_shape, *, options...) -> nn.Module`` registered with
``@MODELS.register("name")``. Its keyword-only parameters are the options ``create`` accepts for that
name; anything else is an error naming the bad keyword and the allowed ones. Builders check that the
input shape suits them and their option values; ``create`` checks everything common to all models.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.init import INITS, torch_init_
from prunelab.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def create(
    name: str,
    num_classes: int = 10,
    input_shape: Sequence[int] = (1, 28, 28),
    *,
    init: str = "he",
    **kw: Any,
) -> nn.Module:
    """Build model ``name`` for inputs of shape ``input_shape`` (no batch axis) and ``num_classes`` outputs.

    Weights are drawn from the global torch generator (seed it with ``torch.manual_seed`` first);
    the zoo's models draw exactly one normal sample per Linear/Conv weight and nothing else (see
    :func:`prunelab.models.init.he_init_`). ``init="torch"`` (any model; in a config
    ``model_kwargs = { init = "torch" }``) then re-draws them with PyTorch's default initialisers
    (:func:`prunelab.models.init.torch_init_`). The model is on the CPU, in float32 and in training
    mode, with ``model.input_shape`` (a tuple) and ``model.num_classes`` set.
    """
    builder = MODELS.get(name)
    key = name.lower()
    num_classes = positive_int(num_classes, "num_classes")
    shape = as_input_shape(input_shape)
    if not isinstance(init, str) or init.lower() not in INITS:
        raise PrunelabError(f"model init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
    _check_options(key, builder, kw)
    model = builder(num_classes, shape, **kw)
    if init.lower() == "torch":
        torch_init_(model)
    model.input_shape = shape
    model.num_classes = num_classes
    return model


def _check_options(name: str, builder: Callable[..., nn.Module], kw: dict[str, Any]) -> None:
    params = inspect.signature(builder).parameters.values()
    allowed = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    allowed.append("init")
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise PrunelabError(
            f"model {name!r} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed) if allowed else 'none'}"
        )
    missing = [
        p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty and p.name not in kw
    ]
    if missing:
        raise PrunelabError(f"model {name!r} needs option(s) {', '.join(missing)}")


def positive_int(value: Any, what: str) -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (bools are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise PrunelabError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def as_input_shape(value: Any) -> tuple[int, ...]:
    """A non-empty tuple of positive integers: ``(C, H, W)`` for images, ``(D,)`` for vectors."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise PrunelabError(
            f"input_shape must be a non-empty sequence of positive integers such as (1, 28, 28), got {value!r}"
        )
    return tuple(positive_int(v, f"every entry of input_shape {tuple(value)!r}") for v in value)


def require_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise PrunelabError(f"{what} must be True or False, got {value!r}")
    return value


def require_image(name: str, shape: tuple[int, ...], min_size: int, why: str) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)`` with ``H, W >= min_size``, else an error saying what ``name`` needs."""
    if len(shape) != 3 or shape[1] < min_size or shape[2] < min_size:
        raise PrunelabError(
            f"model {name!r} needs image inputs (C, H, W) with H, W >= {min_size} ({why}); "
            f"got input_shape {shape}"
        )
    return shape[0], shape[1], shape[2]
