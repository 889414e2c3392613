"""What the ``prunelab`` commands do, as plain functions returning result objects.

The CLI (``prunelab.cli``) only parses options, calls one of these and prints what it returns, so
every command is also a Python call (and testable without a shell):

* :func:`train_model` - train one model into ``OUT/train-<identity hash>/``;
* :func:`sweep_from_options` - a validated :class:`SweepConfig` from a TOML file plus overrides
  (``prunelab run`` then calls :func:`prunelab.experiments.sweep.run_sweep`);
* :func:`prune_run` - one-shot pruning of a run folder, no fine-tuning;
* :func:`count_run_regions` - linear regions of a run folder's MLP;
* :func:`exact_compress_run` - stable ReLUs and the exactly equivalent smaller network of a run folder;
* :func:`print_results` - the key columns of a results table (``prunelab run``, ``report``, ``demo``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from prunelab import data as data_mod
from prunelab import models
from prunelab.analysis.evaluate import EvalResult, evaluate
from prunelab.analysis.exact import (
    CompressionResult,
    StabilityResult,
    compress,
    find_stable_neurons,
    parse_domain,
    save_compressed,
)
from prunelab.analysis.regions import regions_summary
from prunelab.analysis.sparsity import SparsityReport, sparsity_report
from prunelab.errors import PrunelabError
from prunelab.experiments.artifacts import load_run
from prunelab.experiments.config import SweepConfig, build, identity_hash, load_sweep
from prunelab.experiments.runner import training_batches
from prunelab.masks import Masks
from prunelab.pruning import ALLOCATIONS, CRITERIA, SCHEDULES
from prunelab.pruning.api import prune
from prunelab.report.tables import results_table
from prunelab.train import TrainConfig, TrainResult, fit, save_checkpoint
from prunelab.utils import atomic_write_json, resolve_device, seed_everything

STABILITY_COLUMNS = ["layer", "width", "stably_active", "stably_inactive", "unstable", "unresolved"]
STABILITY_HEADERS = ["layer", "width", "active", "inactive", "unstable", "unresolved"]


# ------------------------------------------------------------------------------------ results table
def print_results(rows: list[dict[str, Any]], console: Console, title: str | None = None,
                  detail: str | None = None) -> None:
    """Print the results table of ``rows`` (:func:`prunelab.report.tables.results_table`) on ``console``."""
    console.print(results_table(rows, title, width=min(console.width, 100), detail=detail))


# -------------------------------------------------------------------------------------------- train
@dataclass
class TrainedModel:
    """What :func:`train_model` wrote: ``run_dir`` holds ``model.safetensors`` and ``config.json``."""

    run_dir: Path
    checkpoint: Path
    identity: dict[str, Any]
    result: TrainResult

    @property
    def final(self) -> EvalResult:
        """The test-split evaluation of the trained model."""
        return self.result.final


def train_identity(model: str, dataset: str, model_kwargs: dict[str, Any], val_fraction: float,
                   normalize: bool, config: TrainConfig) -> dict[str, Any]:
    """Everything that sets the trained weights (the device and paths excluded)."""
    return {"model": model, "dataset": dataset, "model_kwargs": model_kwargs, "val_fraction": val_fraction,
            "normalize": normalize,
            "train": {k: v for k, v in config.model_dump(mode="json").items() if k != "device"}}


def train_model(model: str, dataset: str, *, model_kwargs: dict[str, Any] | None = None,
                data_root: str | None = None, val_fraction: float = 0.0, normalize: bool = True,
                out: str | Path = "runs", train: TrainConfig | dict[str, Any] | None = None,
                progress: bool = True) -> TrainedModel:
    """Train one model into ``out/train-<hash>/`` (``model.safetensors`` and ``config.json``).

    The folder is named by :func:`~prunelab.experiments.config.identity_hash` of
    :func:`train_identity`, so the same settings always land in the same folder.
    """
    model_kwargs = dict(model_kwargs or {})
    cfg = train if isinstance(train, TrainConfig) else build(TrainConfig, dict(train or {}), "training options")
    device = resolve_device(cfg.device)
    models.MODELS.canonical(model)  # a misspelt model is an error before the data is read
    data_mod.DATASETS.canonical(dataset)
    ds = data_mod.load(dataset, root=data_root, val_fraction=val_fraction, seed=cfg.seed,
                       normalize=normalize).to(device)
    seed_everything(cfg.seed)
    net = models.create(model, num_classes=ds.num_classes, input_shape=ds.input_shape, **model_kwargs).to(device)
    identity = train_identity(model, dataset, model_kwargs, val_fraction, normalize, cfg)
    run_dir = Path(out) / f"train-{identity_hash(identity)}"
    result = fit(net, ds, cfg, progress=progress)
    meta = dict(identity, device=str(device), history=result.history,
                test_accuracy=result.final.accuracy, test_loss=result.final.loss)
    checkpoint = run_dir / "model.safetensors"
    save_checkpoint(checkpoint, net, meta)
    atomic_write_json(run_dir / "config.json", meta)
    return TrainedModel(run_dir, checkpoint, identity, result)


# ---------------------------------------------------------------------------------------------- run
def sweep_from_options(config: str | Path | None = None, *, base: dict[str, Any] | None = None,
                       model_kwargs: dict[str, Any] | None = None, criteria: list[str] | None = None,
                       allocations: list[str] | None = None, sparsities: list[float] | None = None,
                       seeds: list[int] | None = None, epochs: int | None = None,
                       finetune_epochs: int | None = None,
                       prune: dict[str, Any] | None = None) -> SweepConfig:
    """The sweep of a TOML ``config`` (default: :class:`SweepConfig`'s defaults) with overrides.

    ``base`` overrides top-level run fields (None values are ignored), ``model_kwargs`` is merged
    into the config's, ``epochs`` / ``finetune_epochs`` replace the (fine-)training length, ``prune``
    overrides ``[prune]`` fields (its ``options`` are merged), and the four lists replace the sweep's
    lists. Unknown dataset, model, criterion, allocation or schedule names fail here, before any
    training.

    Only what the file sets is carried over (``exclude_unset``), so the result is exactly the file
    plus the overrides, validated once, with every other field at its default.
    """
    raw = load_sweep(config).model_dump(mode="json", exclude_unset=True) if config else {}
    run = raw.setdefault("base", {})
    for k, v in (base or {}).items():
        if v is not None:
            run[k] = v
    if model_kwargs:
        run["model_kwargs"] = {**run.get("model_kwargs", {}), **model_kwargs}
    if epochs is not None:
        run.setdefault("train", {}).update(epochs=epochs, iterations=None)
    if finetune_epochs is not None:
        run["finetune"] = dict(run.get("finetune") or run.get("train", {}), epochs=finetune_epochs,
                               iterations=None)
    prune = copy.deepcopy(prune or {})
    options = prune.pop("options", None)
    run_prune = run.setdefault("prune", {})
    run_prune.update(prune)
    if options:
        run_prune["options"] = {**run_prune.get("options", {}), **options}
    for key, val in (("criteria", criteria), ("allocations", allocations), ("sparsities", sparsities),
                     ("seeds", seeds)):
        if val is not None:
            raw[key] = list(val)
    sweep = build(SweepConfig, raw, "run options")
    check_names(sweep)
    return sweep


def check_names(sweep: SweepConfig) -> None:
    """Fail fast (before any training) on unknown names."""
    data_mod.DATASETS.get(sweep.base.dataset)
    models.MODELS.get(sweep.base.model)
    for c in sweep.criteria:
        CRITERIA.get(c)
    for a in sweep.allocations:
        if isinstance(a, str):
            ALLOCATIONS.get(a)
    SCHEDULES.get(sweep.base.prune.schedule)


# -------------------------------------------------------------------------------------------- prune
@dataclass
class PrunedRun:
    """What :func:`prune_run` wrote to ``out_dir`` (masks, pruned model, config) and measured."""

    out_dir: Path
    masks: Masks
    report: SparsityReport
    before: EvalResult
    after: EvalResult
    meta: dict[str, Any]


def prune_run(run_dir: str | Path, sparsity: float, criterion: str = "magnitude", allocation: str = "global", *,
              sparsity_kind: str = "direct", effective: bool = False, update: str | None = "auto",
              iterations: int | None = None, data_samples: int = 1024, seed: int = 0,
              data_root: str | None = None, out: str | Path | None = None,
              options: dict[str, Any] | None = None) -> PrunedRun:
    """One-shot pruning of a trained model on disk (no fine-tuning), evaluated before and after.

    Writes ``masks.safetensors``, ``model.safetensors`` and ``config.json`` to ``out`` (default
    ``RUN_DIR/pruned-<criterion>-<allocation>-<sparsity>``). ``update=None`` means no weight update.
    """
    options = dict(options or {})
    CRITERIA.get(criterion)
    ALLOCATIONS.get(allocation)
    run = load_run(run_dir, data_root=data_root)
    ds, model = run.dataset, run.model
    before = evaluate(model, ds.x_test, ds.y_test)
    batches = training_batches(ds, data_samples, 256, seed)
    masks = prune(model, sparsity, criterion, allocation, data=batches, seed=seed, masks=run.masks,
                  iterations=iterations, update=update, options=options,
                  sparsity_kind=sparsity_kind, effective=effective)
    after = evaluate(model, ds.x_test, ds.y_test)
    report = sparsity_report(model, masks, ds.input_shape)
    out_dir = Path(out) if out else Path(run.path) / f"pruned-{criterion}-{allocation}-{sparsity:g}"
    out_dir.mkdir(parents=True, exist_ok=True)
    masks.save(out_dir / "masks.safetensors")
    save_checkpoint(out_dir / "model.safetensors", model, {})
    meta = {**run.config, **report.summary(),
            "pruned_from": str(run.path), "criterion": criterion, "allocation": allocation,
            "target_sparsity": sparsity, "sparsity_kind": sparsity_kind, "effective": effective,
            "update": update, "seed": seed, "options": options,
            "test_accuracy_before": before.accuracy, "test_accuracy": after.accuracy}
    atomic_write_json(out_dir / "config.json", meta)
    return PrunedRun(out_dir, masks, report, before, after, meta)


# ------------------------------------------------------------------------------------------ regions
def count_run_regions(run_dir: str | Path, mode: str = "line", *, samples: int = 10, inputs: int = 1000,
                      seed: int = 0, time_limit: float = 60.0, data_root: str | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """:func:`~prunelab.analysis.regions.regions_summary` of a run folder's (masked) MLP on its
    first ``inputs`` test inputs."""
    run = load_run(run_dir, data_root=data_root)
    x = run.dataset.x_test[:inputs]
    return regions_summary(run.model, x, run.masks, mode, samples=samples, seed=seed, time_limit=time_limit,
                           progress=progress)


# -------------------------------------------------------------------------------------------- exact
@dataclass
class ExactCompression:
    """What :func:`exact_compress_run` found and wrote (the compressed model at ``path``)."""

    path: Path
    method: str
    stable: StabilityResult
    result: CompressionResult

    def stability_rows(self) -> list[dict[str, Any]]:
        return self.stable.to_rows()

    def to_row(self) -> dict[str, Any]:
        return self.result.to_row()


def _inside(x: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | None:
    """Rows of ``x`` (N, D) that lie in the box up to 1e-9 (float32 rounding of the normalised
    data), clipped into it, as float64: the only valid witnesses and test points. None when no row
    does (the analysis then uses random points of the box only)."""
    lower, upper = box
    xd = x.detach().to("cpu", torch.float64)
    kept = xd[((xd >= lower - 1e-9) & (xd <= upper + 1e-9)).all(dim=1)]
    return torch.minimum(torch.maximum(kept, lower), upper) if len(kept) else None


def exact_compress_run(run_dir: str | Path, domain: str = "box:0,1", *, time_limit: float = 600.0,
                       method: str = "single_milp", data_samples: int = 10000, data_root: str | None = None,
                       out: str | Path | None = None, progress: bool = True, solver: str = "highs") -> ExactCompression:
    """Stable-neuron analysis and exact compression of a trained MLP on disk.

    ``domain`` is a box in pixel units (``"box:0,1"``), mapped by :meth:`Dataset.input_box` through
    the dataset's per-channel normalisation, so a model trained on standardised inputs is analysed
    over exactly the images whose pixels lie in the box. The first ``data_samples`` training inputs
    inside the box are witnesses of unstable units; the compressed network is checked on the test
    inputs inside the box and written to ``out`` (default ``RUN_DIR/compressed.safetensors``).
    """
    if isinstance(data_samples, bool) or not isinstance(data_samples, int) or data_samples < 0:
        raise PrunelabError(f"data_samples must be an integer >= 0, got {data_samples!r}")
    low, high = parse_domain(domain)
    run = load_run(run_dir, data_root=data_root)
    ds = run.dataset
    box = ds.input_box(low, high)
    witnesses = None
    if data_samples:
        x = ds.x_train[:data_samples]
        witnesses = _inside(x.reshape(len(x), -1), box)
    stable = find_stable_neurons(run.model, box, data=witnesses, time_limit=time_limit, masks=run.masks,
                                 method=method, progress=progress, solver=solver)
    test = _inside(ds.x_test.reshape(len(ds.x_test), -1), box)
    result = compress(run.model, stable, data=test)
    path = Path(out) if out else Path(run.path) / "compressed.safetensors"
    save_compressed(path, result)
    return ExactCompression(path, method, stable, result)
