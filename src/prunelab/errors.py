"""The one exception type for bad input.

Every check of user input raises :class:`PrunelabError` with a message that names the bad value and
what is allowed. The CLI turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations

from typing import Any


class PrunelabError(ValueError):
    """Bad input to prunelab: the message names the bad value and the allowed ones."""


def _fields_at(model: Any, loc: tuple) -> list[str]:
    """The field names of the (nested) pydantic model that ``loc`` points into."""
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if hasattr(cand, "model_fields"):
                model = cand
                break
        else:
            return []
    return list(getattr(model, "model_fields", {}))


def validation_error(err: Any, what: str = "config", model: Any = None) -> PrunelabError:
    """One :class:`PrunelabError` line for a pydantic ``ValidationError``: each bad field with its value
    (``lr=-0.1: lr must be a positive number``); an unknown field with the valid ones of its section
    (``unknown field 'lrr'; valid: optimizer, lr, ...``) when ``model`` (the validated class) is given."""
    parts = []
    for e in err.errors():
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        loc = tuple(e.get("loc", ()))
        name = ".".join(str(p) for p in loc)
        if e.get("type") == "extra_forbidden":
            valid = _fields_at(model, loc) if model is not None else []
            parts.append(f"unknown field {name!r}" + (f"; valid: {', '.join(valid)}" if valid else ""))
        elif name:
            value = e.get("input")
            parts.append(f"{name}={value!r}: {msg}" if not isinstance(value, dict) else f"{name}: {msg}")
        else:
            parts.append(msg)
    return PrunelabError(f"invalid {what}: " + "; ".join(parts))
