"""Command-line options shared by the commands, generated from the typed configs where they exist.

Typed (pydantic) config fields become options, so the CLI and the Python API say the same thing:
every field of :class:`~prunelab.train.TrainConfig` or :class:`~prunelab.experiments.config.PruneConfig`
is a flag with the field's default and description (:func:`field_options`, read back with
:func:`collect`). Also here: the Fisher flags of the second-order criteria and the parsers of
comma-separated lists and model arguments (bad values raise a one-line ``PrunelabError``).
"""

from __future__ import annotations

import json
import types
from typing import Any, Literal, Union, get_args, get_origin

import click
from pydantic import BaseModel

from prunelab.errors import PrunelabError


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        return tp, True
    return tp, False


class _ListType(click.ParamType):
    """Comma-separated values: ``--milestones 50,75``."""

    def __init__(self, item: type) -> None:
        self.item = item
        self.name = f"list[{item.__name__}]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        if value is None or value == "":
            return []
        try:
            return [self.item(v) for v in str(value).split(",") if v.strip() != ""]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.item.__name__}", param, ctx)


class _JSONType(click.ParamType):
    name = "json"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            self.fail(f"{value!r} is not valid JSON", param, ctx)


def _click_type(tp: Any) -> tuple[Any, bool]:
    """(click type, is_flag)."""
    tp, _ = _unwrap_optional(tp)
    origin = get_origin(tp)
    if tp is bool:
        return bool, True
    if origin is Literal:
        return click.Choice([str(a) for a in get_args(tp)]), False
    if tp in (int, float, str):
        return tp, False
    if origin is list:
        (item,) = get_args(tp) or (str,)
        return _ListType(item if item in (int, float, str) else str), False
    return _JSONType(), False


def field_options(model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = ()):
    """A decorator adding one click option per field of ``model``: ``--{prefix}{field-name}``.

    Options default to None (meaning "the config's default"), so only flags the user gives
    override a config file; the help text shows the real default.
    """

    def decorate(f):
        for name, info in reversed(list(model.model_fields.items())):
            if name in skip:
                continue
            ctype, is_flag = _click_type(info.annotation)
            flag = f"--{prefix}{name.replace('_', '-')}"
            dest = f"{prefix.replace('-', '_')}{name}"
            default = info.get_default(call_default_factory=True)
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            help_text = (info.description or "") + f"  [default: {shown}]"
            if is_flag:
                f = click.option(f"{flag}/--no-{prefix}{name.replace('_', '-')}", dest, default=None,
                                 help=help_text)(f)
            else:
                f = click.option(flag, dest, type=ctype, default=None, help=help_text)(f)
        return f

    return decorate


def collect(kwargs: dict[str, Any], model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Pop the options of ``model`` from ``kwargs``; keep only those the user gave."""
    out = {}
    p = prefix.replace("-", "_")
    for name in model.model_fields:
        v = kwargs.pop(f"{p}{name}", None)
        if v is not None:
            out[name] = v
    return out


def second_order_options(fisher_samples, fisher_batch, damping, block_size, full_fisher) -> dict[str, Any]:
    """Fisher settings of the woodfisher / cbs criteria and the obs / cbs updates, as ctx.options."""
    opts: dict[str, Any] = {}
    if fisher_samples is not None:
        opts["fisher_samples"] = fisher_samples
    if fisher_batch is not None:
        opts["fisher_batch"] = fisher_batch
    if damping is not None:
        opts["damping"] = damping
    if block_size is not None:
        opts["block_size"] = None if block_size == 0 else block_size
    if full_fisher:
        opts["full"] = True
    return opts


def fisher_flags(f):
    f = click.option("--full-fisher", is_flag=True, help="one Fisher block over all layers (small nets only)")(f)
    f = click.option("--block-size", type=click.IntRange(min=0), default=None,
                     help="kept weights per Fisher block; 0 = one block per layer  [default: 1000]")(f)
    f = click.option("--damping", type=float, default=None, help="Fisher damping lambda  [default: 1e-3]")(f)
    f = click.option("--fisher-batch", type=click.IntRange(min=1), default=None,
                     help="samples averaged per Fisher gradient (1 = per-sample)  [default: 1]")(f)
    f = click.option("--fisher-samples", type=click.IntRange(min=1), default=None,
                     help="number of Fisher gradients N  [default: 1000]")(f)
    return f


def comma_list(text: str | None, kind: type, flag: str) -> list | None:
    """``"a,b,c"`` as a list of ``kind`` (None stays None: the option was not given)."""
    if text is None:
        return None
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PrunelabError(f"{flag} {text!r} must be a comma-separated list of {kind.__name__}") from None


def model_kwargs(widths: str | None, extra: str | None) -> dict[str, Any]:
    """The model's keyword arguments from ``--model-kwargs`` (JSON) and ``--widths`` (``300,100``)."""
    kw: dict[str, Any] = {}
    if extra:
        try:
            parsed = json.loads(extra)
        except json.JSONDecodeError:
            raise PrunelabError(f"--model-kwargs {extra!r} is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise PrunelabError(f"--model-kwargs {extra!r} must be a JSON object, e.g. '{{\"batch_norm\": false}}'")
        kw.update(parsed)
    if widths:
        try:
            kw["widths"] = [int(w) for w in widths.split(",")]
        except ValueError:
            raise PrunelabError(f"--widths {widths!r} must be comma-separated integers, e.g. 300,100") from None
    return kw
