"""Name -> object registries (criteria, allocations, schedules, analyses, callbacks, models, datasets).

A new method is one function plus one ``@REGISTRY.register("name", options=MyOptions)`` line. The
optional ``options`` is a pydantic model of the method's settings (its fields, defaults and
descriptions): an unknown or misspelt option is then a one-line :class:`PrunelabError` naming the
valid ones, and the options show in ``prunelab list`` and in a run's config. The CLI lists the valid
names from here, and an unknown name is an error that lists them. Names are case-insensitive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from prunelab.errors import PrunelabError, validation_error

T = TypeVar("T")


class NoOptions(BaseModel):
    """The options model of a method that takes none."""

    model_config = ConfigDict(extra="forbid")


class Registry(Generic[T]):
    """A named collection of callables of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._options: dict[str, type[BaseModel]] = {}

    def register(self, name: str, options: type[BaseModel] | None = None) -> Callable[[T], T]:
        """Decorator: ``@registry.register("magnitude", options=MagnitudeOptions)``.

        Names are lower case and unique. ``options`` (a pydantic model whose config forbids extra
        fields) types the method's settings; without it the method takes none.
        """
        key = name.lower()
        if options is not None and (not isinstance(options, type) or not issubclass(options, BaseModel)):
            raise TypeError(f"options of {self.kind} {name!r} must be a pydantic BaseModel class")
        if options is not None and options.model_config.get("extra") != "forbid":
            raise TypeError(f"options model {options.__name__} of {self.kind} {name!r} must forbid extra fields")

        def add(obj: T) -> T:
            if key in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[key] = obj
            model = options or getattr(obj, "options_model", None) or NoOptions
            self._options[key] = model
            try:  # so that code holding the function (prunelab.prune) finds its options model
                obj.options_model = model  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return add

    def canonical(self, name: Any) -> str:
        """The registered (lower-case) spelling of ``name``; a :class:`PrunelabError` if unknown."""
        if not isinstance(name, str) or name.lower() not in self._items:
            raise PrunelabError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return name.lower()

    def get(self, name: str) -> T:
        """The object registered as ``name``; a :class:`PrunelabError` listing valid names if none."""
        return self._items[self.canonical(name)]

    def options_model(self, name: str) -> type[BaseModel]:
        """The pydantic model of ``name``'s options (:class:`NoOptions` when it takes none)."""
        return self._options[self.canonical(name)]

    def parse_options(self, name: str, options: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
        """Validate ``options`` for method ``name``: unknown keys and bad values are one-line errors."""
        model = self.options_model(name)
        if isinstance(options, model):
            return options
        if options is None:
            options = {}
        if isinstance(options, BaseModel):
            options = options.model_dump()
        if not isinstance(options, Mapping):
            raise PrunelabError(f"options of {self.kind} {name!r} must be a table of settings, got {options!r}")
        unknown = sorted(set(options) - set(model.model_fields))
        if unknown:
            valid = ", ".join(model.model_fields) or "none (it takes no options)"
            raise PrunelabError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
                f"{self.kind} {name!r}; valid: {valid}"
            )
        try:
            return model.model_validate(dict(options))
        except ValidationError as err:
            raise validation_error(err, f"options of {self.kind} {name!r}", model) from None

    def describe(self, name: str) -> str:
        """``name(option=default, ...)``: the one-line summary ``prunelab list`` shows."""
        model = self.options_model(name)
        parts = []
        for field, info in model.model_fields.items():
            default = info.get_default(call_default_factory=True)
            parts.append(f"{field}={default!r}")
        return f"{name.lower()}({', '.join(parts)})" if parts else name.lower()

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
