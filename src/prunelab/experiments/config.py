"""Typed run configs that are also a run's identity (the OpenLTH way).

A :class:`RunConfig` describes one train -> prune -> fine-tune -> evaluate run. Its hash (over the
fields that change the result) names the run's folder, so a repeated run is found, not recomputed.
A :class:`SweepConfig` is the same with lists for criterion, allocation, sparsity and seed; it
expands to the cartesian product of runs. Both read from TOML (``prunelab run CONFIG.toml``) and are
the same objects the CLI flags fill in.

Not part of the identity: the data root, the output folder, the device and progress display (a run
on another device is the same experiment; results are deterministic per device).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prunelab.errors import PrunelabError, validation_error
from prunelab.train import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def identity_hash(identity: dict[str, Any]) -> str:
    """The 16-hex-digit name of a folder whose content is determined by ``identity`` (a JSON dict)."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PruneConfig(BaseModel):
    """How and when to prune (one run).

    ``sparsity`` is the fraction of prunable weights removed; ``sparsity_kind="effective"`` makes it
    a target for the *effective* sparsity (Vysogorets & Kempe 2023) instead of the direct one.
    """

    model_config = ConfigDict(extra="forbid")

    criterion: str = "magnitude"
    allocation: Union[str, dict[str, float]] = "global"
    sparsity: float = Field(0.9, description="fraction of prunable weights removed, in [0, 1)")
    sparsity_kind: Literal["direct", "effective"] = "direct"
    effective_prune: bool = Field(False, description="drop disconnected weights and re-spend their budget")
    schedule: Literal["at_init", "oneshot", "imp", "gradual", "earlybird"] = "oneshot"
    update: Optional[str] = Field("auto", description="weight update after pruning: auto (the criterion's "
                                  "own), none, obs, cbs")
    data_samples: int = Field(1024, gt=0, description="training samples given to data-dependent criteria")
    data_batch: int = Field(256, gt=0)
    iterations: Optional[int] = Field(None, gt=0, description="score/prune rounds (SynFlow default 100)")
    exclude: list[str] = Field(default_factory=list, description="fnmatch patterns of layers not pruned")
    options: dict[str, Any] = Field(default_factory=dict, description="criterion-specific options")
    # iterative magnitude pruning (Frankle & Carbin 2019; rewinding: Frankle et al. 2020)
    imp_rate: float = Field(0.2, gt=0, lt=1, description="fraction of remaining weights pruned per round")
    rewind_iteration: int = Field(0, ge=0, description="rewind to weights at this iteration (0 = init)")
    # gradual pruning (Zhu & Gupta 2017)
    gradual_start: float = Field(0.1, ge=0, le=1, description="fraction of training when pruning starts")
    gradual_end: float = Field(0.6, ge=0, le=1, description="fraction of training when pruning ends")
    gradual_every: int = Field(50, gt=0, description="iterations between pruning steps")
    # early-bird tickets (You et al. 2020; partition distance: You et al. 2022)
    earlybird_threshold: float = Field(0.16, gt=0, lt=1, description="partition-distance threshold")
    earlybird_window: int = Field(3, gt=0, description="epochs compared by the early-bird rule")

    @field_validator("update")
    @classmethod
    def _none_update(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None or v.lower() in ("none", "") else v

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"sparsity {v!r} is outside [0, 1)")
        return v


class RunConfig(BaseModel):
    """One run: dataset, model, dense training, pruning, fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "digits"
    model: str = "mlp"
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(0.0, ge=0, lt=1)
    train: TrainConfig = Field(default_factory=TrainConfig)
    finetune: Optional[TrainConfig] = None
    prune: PruneConfig = Field(default_factory=PruneConfig)
    seed: int = Field(0, ge=0)
    # not part of the identity:
    data_root: Optional[str] = None
    device: str = "auto"


    def identity(self) -> dict[str, Any]:
        """The fields that determine the result (device and paths excluded)."""
        d = self.model_dump(mode="json")
        for k in ("data_root", "device"):
            d.pop(k, None)
        for k in ("train", "finetune"):
            if d.get(k):
                d[k].pop("device", None)
        return d

    def run_hash(self) -> str:
        return identity_hash(self.identity())

    def dense_identity(self) -> dict[str, Any]:
        """What the dense (pre-pruning) model depends on: shared by every criterion of a sweep."""
        d = self.identity()
        return {k: d[k] for k in ("dataset", "model", "model_kwargs", "val_fraction", "train", "seed")}

    def dense_hash(self) -> str:
        return identity_hash(self.dense_identity())

    def finetune_config(self) -> TrainConfig:
        return self.finetune if self.finetune is not None else self.train


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


class SweepConfig(BaseModel):
    """A grid of runs: criteria x allocations x sparsities x seeds over one base :class:`RunConfig`."""

    model_config = ConfigDict(extra="forbid")

    base: RunConfig = Field(default_factory=RunConfig)
    criteria: list[str] = Field(default_factory=lambda: ["magnitude"])
    allocations: list[Union[str, dict[str, float]]] = Field(default_factory=lambda: ["global"])
    sparsities: list[float] = Field(default_factory=lambda: [0.9])
    seeds: list[int] = Field(default_factory=lambda: [0])

    @field_validator("sparsities")
    @classmethod
    def _sparsities(cls, v: list[float]) -> list[float]:
        for s in v:
            if not 0.0 <= s < 1.0:
                raise ValueError(f"sparsity {s!r} is outside [0, 1)")
        return v

    @model_validator(mode="after")
    def _non_empty(self) -> "SweepConfig":
        for name in ("criteria", "allocations", "sparsities", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty; give at least one value")
        return self

    def expand(self) -> list[RunConfig]:
        runs = []
        for crit, alloc, sp, seed in itertools.product(
            self.criteria, self.allocations, self.sparsities, self.seeds
        ):
            prune = self.base.prune.model_copy(update={"criterion": crit, "allocation": alloc, "sparsity": sp})
            runs.append(self.base.model_copy(update={"prune": prune, "seed": seed}))
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
    ``[prune]``, ...) plus the sweep lists ``criteria``, ``allocations``, ``sparsities``, ``seeds``;
    inside ``[prune]`` a list-valued ``criterion``/``allocation``/``sparsity`` is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise PrunelabError(f"config file {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PrunelabError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    return sweep_from_dict(raw)


def sweep_from_dict(raw: dict[str, Any]) -> SweepConfig:
    raw = dict(raw)
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
    if "prune" in raw:
        raw["prune"] = prune
    sweep["base"] = raw
    return build(SweepConfig, sweep, "config")
