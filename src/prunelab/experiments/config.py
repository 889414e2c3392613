"""Typed run configs that are also a run's identity (the OpenLTH way).

A :class:`RunConfig` describes one run: train -> prune (schedule) -> fine-tune -> evaluate ->
analyses. Its hash names the run's folder, so a repeated run is found, not recomputed. The hash
covers only the fields that **differ from their defaults** (plus :data:`FORMAT_VERSION`): adding a
new option with a default keeps every existing run folder valid. Method names are case-insensitive
and stored in their registered (lower-case) spelling; method options are validated against the
pydantic model registered with the method and stored without their defaults, so
``options={"iterations": 100}`` for SynFlow (its default) is the same run as no options.

A :class:`SweepConfig` is a base run plus lists (criteria, allocations, sparsities, seeds, and a
``grid`` of any other dotted field); it expands to the cartesian product, each distinct run once.
Both read from TOML (``prunelab run CONFIG.toml``) and are the same objects the CLI flags fill in.

Not part of the identity: the data root, the output folder, the device, the resources a run asks
an executor for, and progress display (a run on another device is the same experiment; results are
deterministic per device).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prunelab.analysis.stages import ANALYSES
from prunelab.data import DATASETS
from prunelab.errors import PrunelabError, validation_error
from prunelab.models import MODELS
from prunelab.pruning import ALLOCATIONS, CRITERIA, SCHEDULES
from prunelab.pruning.context import parse_options
from prunelab.train import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Bumped when the meaning of a stored field changes (never for a new defaulted field).
FORMAT_VERSION = 2
#: RunConfig fields that do not change a run's result.
NOT_IDENTITY = ("data_root", "device", "resources", "checkpoint_every")


def identity_hash(identity: dict[str, Any]) -> str:
    """The 16-hex-digit name of a folder whose content is determined by ``identity`` (a JSON dict)."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _non_default(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_defaults=True)


def _without_defaults(options: dict[str, Any], methods: list[tuple[str, str, Any]]) -> dict[str, Any]:
    """Validated ``options`` minus the keys equal to their method's default (they do not change the run)."""
    out = {}
    for k, v in options.items():
        default = next((m.model_fields[k].get_default(call_default_factory=True)
                        for _, _, fn in methods if (m := getattr(fn, "options_model", None)) and k in m.model_fields),
                       object())
        if v != default:
            out[k] = v
    return out


class MethodSpec(BaseModel):
    """A registered method with its options: ``{name = "units", options = {samples = 500}}``.

    ``label`` (default: the name) prefixes the columns an analysis adds to ``results.csv``, so the
    same analysis can run twice with different options.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None


class Resources(BaseModel):
    """What one run asks an executor for (Ray task resources); not part of the identity."""

    model_config = ConfigDict(extra="forbid")

    cpus: float = Field(1.0, gt=0, description="CPU cores per run")
    gpus: float = Field(0.0, ge=0, description="GPUs per run (fractions share a GPU)")


class PruneConfig(BaseModel):
    """How and when to prune (one run).

    ``sparsity`` is the fraction of prunable weights removed; ``sparsity_kind="effective"`` makes it
    a target for the *effective* sparsity (Vysogorets & Kempe 2023) instead of the direct one.
    ``schedule`` says when (``SCHEDULES``; ``none`` trains dense and prunes nothing), with its own
    typed ``schedule_options``; ``options`` are the criterion's (see ``prunelab list``).
    """

    model_config = ConfigDict(extra="forbid")

    criterion: str = "magnitude"
    allocation: str | dict[str, float] = "global"
    sparsity: float = Field(0.9, description="fraction of prunable weights removed, in [0, 1)")
    sparsity_kind: str = Field("direct", description="direct or effective")
    effective_prune: bool = Field(False, description="drop disconnected weights and re-spend their budget")
    schedule: str = Field("oneshot", description="when to prune (see prunelab list)")
    schedule_options: dict[str, Any] = Field(default_factory=dict, description="the schedule's options")
    update: str | None = Field("auto", description="weight update after pruning: auto (the criterion's "
                                  "own), none, obs, cbs")
    data_samples: int = Field(1024, gt=0, description="training samples given to data-dependent criteria")
    data_batch: int = Field(256, gt=0)
    iterations: int | None = Field(None, gt=0, description="score/prune rounds (SynFlow default 100)")
    exclude: list[str] = Field(default_factory=list, description="fnmatch patterns of layers not pruned")
    options: dict[str, Any] = Field(default_factory=dict, description="criterion-specific options")

    @field_validator("update")
    @classmethod
    def _none_update(cls, v: str | None) -> str | None:
        return None if v is None or v.lower() in ("none", "") else v.lower()

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"sparsity {v!r} is outside [0, 1)")
        return v

    @field_validator("sparsity_kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v.lower() not in ("direct", "effective"):
            raise ValueError(f"sparsity_kind {v!r} is not one of: direct, effective")
        return v.lower()

    @model_validator(mode="after")
    def _methods(self) -> PruneConfig:
        for name, registry in (("criterion", CRITERIA), ("schedule", SCHEDULES)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, registry.canonical(value))
            except PrunelabError as e:
                raise ValueError(str(e)) from None
        if isinstance(self.allocation, str):
            try:
                object.__setattr__(self, "allocation", ALLOCATIONS.canonical(self.allocation))
            except PrunelabError as e:
                raise ValueError(str(e)) from None
        else:
            for layer, s in self.allocation.items():
                if not 0.0 <= s < 1.0:
                    raise ValueError(f"allocation[{layer!r}] = {s!r} is outside [0, 1)")
        if self.update not in (None, "auto"):
            from prunelab.pruning import UPDATES

            if self.update not in UPDATES:
                raise ValueError(f"unknown update {self.update!r}; valid: auto, none, {', '.join(UPDATES.names())}")
        try:
            options = parse_options(self._methods_sharing_options(), self.options)
            sched = SCHEDULES.parse_options(self.schedule, self.schedule_options)
        except PrunelabError as e:
            raise ValueError(str(e)) from None
        object.__setattr__(self, "options", _without_defaults(options, self._methods_sharing_options()))
        object.__setattr__(self, "schedule_options", _non_default(sched))
        return self

    def _methods_sharing_options(self) -> list[tuple[str, str, Any]]:
        """Criterion, allocation and weight update: the methods that read ``options``."""
        crit = CRITERIA.get(self.criterion)
        out = [("criterion", self.criterion, crit)]
        if isinstance(self.allocation, str):
            out.append(("allocation", self.allocation, ALLOCATIONS.get(self.allocation)))
        update = getattr(crit, "default_update", None) if self.update == "auto" else self.update
        if update:
            from prunelab.pruning import UPDATES

            out.append(("update", update, UPDATES.get(update)))
        return out

    def schedule_settings(self) -> BaseModel:
        return SCHEDULES.parse_options(self.schedule, self.schedule_options)


def _method_list(value: Any) -> Any:
    """``["units", {name = "exact", options = {...}}]`` -> MethodSpec dicts."""
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    return [{"name": v} if isinstance(v, str) else v for v in value]


class RunConfig(BaseModel):
    """One run: dataset, model, dense training, pruning, fine-tuning, analyses."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "digits"
    model: str = "mlp"
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    data_kwargs: dict[str, Any] = Field(default_factory=dict, description="options of the dataset loader")
    normalize: bool = Field(True, description="standardise inputs per channel")
    val_fraction: float = Field(0.0, ge=0, lt=1)
    train_subset: int | None = Field(None, gt=0, description="train on the first N training examples only")
    test_subset: int | None = Field(None, gt=0, description="evaluate on the first N test examples only")
    train: TrainConfig = Field(default_factory=TrainConfig)
    finetune: TrainConfig | None = None
    prune: PruneConfig = Field(default_factory=PruneConfig)
    analyses: list[MethodSpec] = Field(default_factory=list, description="analyses run on the final model")
    seed: int = Field(0, ge=0, description="the run's seed: init, batch order (fine-tuning uses seed + 1)")
    # not part of the identity:
    data_root: str | None = None
    device: str = "auto"
    resources: Resources = Field(default_factory=Resources)
    checkpoint_every: int = Field(1, ge=0, description="epochs between resumable training checkpoints (0: none)")

    @field_validator("analyses", mode="before")
    @classmethod
    def _analyses_shorthand(cls, v: Any) -> Any:
        return _method_list(v)

    @field_validator("train", "finetune")
    @classmethod
    def _no_nested_seed(cls, v: TrainConfig | None, info: Any) -> TrainConfig | None:
        if v is not None and "seed" in v.model_fields_set:
            raise ValueError(
                f"{info.field_name}.seed is not used in a run: the run's seed (top-level `seed` / `seeds`) "
                "seeds training, and fine-tuning uses seed + 1"
            )
        return v

    @model_validator(mode="after")
    def _names(self) -> RunConfig:
        for name, registry in (("dataset", DATASETS), ("model", MODELS)):
            try:
                object.__setattr__(self, name, registry.canonical(getattr(self, name)))
            except PrunelabError as e:
                raise ValueError(str(e)) from None
        specs, labels = [], set()
        for spec in self.analyses:
            try:
                name = ANALYSES.canonical(spec.name)
                opts = ANALYSES.parse_options(name, spec.options)
            except PrunelabError as e:
                raise ValueError(str(e)) from None
            label = spec.label or name
            if label in labels:
                raise ValueError(f"analysis label {label!r} is used twice; give one of them a `label`")
            labels.add(label)
            specs.append(MethodSpec(name=name, options=_non_default(opts), label=spec.label))
        object.__setattr__(self, "analyses", specs)
        return self

    def identity(self) -> dict[str, Any]:
        """The fields that determine the result and differ from their defaults, plus the format version."""
        d = self.model_dump(mode="json", exclude_defaults=True, exclude=set(NOT_IDENTITY))
        for k in ("train", "finetune"):
            if isinstance(d.get(k), dict):
                d[k].pop("device", None)
                if not d[k] and k == "train":
                    d.pop(k)
        d["format"] = FORMAT_VERSION
        return d

    def run_hash(self) -> str:
        return identity_hash(self.identity())

    def dense_identity(self) -> dict[str, Any]:
        """What the dense (pre-pruning) model depends on: shared by every criterion of a sweep."""
        d = self.identity()
        keys = ("dataset", "model", "model_kwargs", "data_kwargs", "normalize", "val_fraction", "train_subset",
                "test_subset", "train", "seed", "format")
        return {k: d[k] for k in keys if k in d}

    def dense_hash(self) -> str:
        return identity_hash(self.dense_identity())

    def train_config(self) -> TrainConfig:
        """The dense-training recipe with the seed actually used (the run's)."""
        return self.train.model_copy(update={"seed": self.seed})

    def finetune_config(self) -> TrainConfig:
        """The fine-tuning recipe (the training one unless given) with the seed actually used (seed + 1)."""
        base = self.finetune if self.finetune is not None else self.train
        return base.model_copy(update={"seed": self.seed + 1})

    def row(self) -> dict[str, Any]:
        """Every config field as it was used, flat (``prune.criterion``), for ``results.csv``."""
        d = self.model_dump(mode="json", exclude=set(NOT_IDENTITY))
        d["train"] = self.train_config().model_dump(mode="json")
        d["finetune"] = self.finetune_config().model_dump(mode="json")
        for k in ("train", "finetune"):
            d[k].pop("device", None)
        d["analyses"] = [s.label or s.name for s in self.analyses]
        return d


def _dedupe(values: list) -> list:
    out: list = []
    for v in values:
        key = json.dumps(v, sort_keys=True, default=str)
        if key not in {json.dumps(o, sort_keys=True, default=str) for o in out}:
            out.append(v)
    return out


def _lower_names(values: list) -> list:
    return [v.lower() if isinstance(v, str) else v for v in values]


def _set_dotted(d: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        if d.get(p) is None:
            d[p] = {}
        if not isinstance(d[p], dict):
            raise PrunelabError(f"grid key {path!r}: {p!r} is not a table of settings")
        d = d[p]
    if isinstance(value, dict) and isinstance(d.get(parts[-1]), dict):
        d[parts[-1]] = {**d[parts[-1]], **value}  # a table merges into the section: {criterion=..., allocation=...}
    else:
        d[parts[-1]] = value


class SweepConfig(BaseModel):
    """A grid of runs: criteria x allocations x sparsities x seeds x ``grid`` over one base :class:`RunConfig`.

    ``grid`` maps a dotted field of the run config to a list of values, e.g.
    ``{"train.l1": [0, 5e-4], "model_kwargs.widths": [[100, 100], [200, 200]]}``; a table value is
    merged into the section it names, so ``{"prune": [{criterion = "random", allocation = "erk"},
    {criterion = "snip"}]}`` sweeps method combinations (it overrides ``criteria``/``allocations``).
    Duplicate values run once; names are compared case-insensitively.
    """

    model_config = ConfigDict(extra="forbid")

    base: RunConfig = Field(default_factory=RunConfig)
    criteria: list[str] = Field(default_factory=lambda: ["magnitude"])
    allocations: list[str | dict[str, float]] = Field(default_factory=lambda: ["global"])
    sparsities: list[float] = Field(default_factory=lambda: [0.9])
    seeds: list[int] = Field(default_factory=lambda: [0])
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted field -> values")

    @field_validator("criteria", "allocations", mode="after")
    @classmethod
    def _names(cls, v: list) -> list:
        return _dedupe(_lower_names(v))

    @field_validator("sparsities")
    @classmethod
    def _sparsities(cls, v: list[float]) -> list[float]:
        for s in v:
            if not 0.0 <= s < 1.0:
                raise ValueError(f"sparsity {s!r} is outside [0, 1)")
        return _dedupe(v)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        for s in v:
            if s < 0:
                raise ValueError(f"seed {s!r} must be >= 0")
        return _dedupe(v)

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid[{key!r}] is empty; give at least one value")
            if key.split(".")[0] not in RunConfig.model_fields:
                raise ValueError(f"grid key {key!r} names no run-config field; valid roots: "
                                 f"{', '.join(RunConfig.model_fields)}")
        return {k: _dedupe(vals) for k, vals in v.items()}

    @model_validator(mode="after")
    def _non_empty(self) -> SweepConfig:
        for name in ("criteria", "allocations", "sparsities", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty; give at least one value")
        for c in self.criteria:
            if c not in CRITERIA:
                raise ValueError(f"unknown criterion {c!r}; valid: {', '.join(CRITERIA.names())}")
        for a in self.allocations:
            if isinstance(a, str) and a not in ALLOCATIONS:
                raise ValueError(f"unknown allocation {a!r}; valid: {', '.join(ALLOCATIONS.names())}")
        return self

    def expand(self) -> list[RunConfig]:
        """Every distinct run of the grid (by hash), in grid order."""
        base = self.base.model_dump(mode="json", exclude_unset=True)
        base.setdefault("prune", {})
        grid_keys = list(self.grid)
        runs, seen = [], set()
        for crit, alloc, sp, seed, *extra in itertools.product(
            self.criteria, self.allocations, self.sparsities, self.seeds, *self.grid.values()
        ):
            d = copy.deepcopy(base)
            d["prune"] = {**d["prune"], "criterion": crit, "allocation": alloc, "sparsity": sp}
            d["seed"] = seed
            for key, value in zip(grid_keys, extra):
                _set_dotted(d, key, value)
            cfg = build(RunConfig, d, "sweep run")
            h = cfg.run_hash()
            if h not in seen:
                seen.add(h)
                runs.append(cfg)
        return runs


def build(model: type[BaseModel], data: dict[str, Any], what: str = "config") -> Any:
    """Validate ``data`` into ``model``, turning pydantic's errors into one :class:`PrunelabError`."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise validation_error(err, what, model) from None


def load_sweep(path: str | Path) -> SweepConfig:
    """Read a sweep from TOML.

    Top-level keys are :class:`RunConfig` fields (``dataset``, ``model``, ``[train]``, ``[finetune]``,
    ``[prune]``, ``analyses``, ...) plus the sweep lists ``criteria``, ``allocations``, ``sparsities``,
    ``seeds`` and a ``[grid]`` table; inside ``[prune]`` a list-valued ``criterion``/``allocation``/
    ``sparsity`` is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise PrunelabError(f"config file {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PrunelabError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    return sweep_from_dict(raw)


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def sweep_from_dict(raw: dict[str, Any]) -> SweepConfig:
    raw = copy.deepcopy(dict(raw))
    sweep: dict[str, Any] = {}
    prune = dict(raw.get("prune", {}))
    for plural, singular, holder in (
        ("criteria", "criterion", prune),
        ("allocations", "allocation", prune),
        ("sparsities", "sparsity", prune),
        ("seeds", "seed", raw),
    ):
        if plural in raw:
            sweep[plural] = _as_list(raw.pop(plural))
        elif singular in holder:
            v = holder.pop(singular)
            sweep[plural] = v if isinstance(v, list) else [v]
        if holder is prune and sweep.get(plural) and isinstance(sweep[plural][0], (str, dict)):
            # the base run names the sweep's first method, so that its options are checked against a
            # method the sweep runs (every expanded run is checked against its own)
            prune[singular] = sweep[plural][0]
    if "grid" in raw:
        sweep["grid"] = {k: _as_list(v) for k, v in raw.pop("grid").items()}
    if "prune" in raw:
        raw["prune"] = prune
    sweep["base"] = raw
    return build(SweepConfig, sweep, "config")
