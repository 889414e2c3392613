"""The experiment runner: train -> prune -> fine-tune -> evaluate, for a sweep of configs.

Layout of an output folder::

    OUT/
      dense/<dense-hash>/   model.safetensors, rewind_<k>.safetensors, history.json  (shared)
      runs/<run-hash>/      config.json, metrics.jsonl, masks.safetensors, model.safetensors,
                            result.json   (written last: its presence marks the run done)
      results.csv           one row per run of the sweep (config fields + metrics)
      accuracy_vs_compression.png

A repeated run is found by its hash and not recomputed; a sweep that died resumes at the first run
without ``result.json``; every file is written atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file
from torch import nn

from prunelab import data as data_mod
from prunelab import models
from prunelab.analysis.sparsity import sparsity_report
from prunelab.experiments.config import RunConfig, SweepConfig
from prunelab.masks import Masks
from prunelab.pruning import prune
from prunelab.pruning.schedules import SCHEDULES, DenseStage, ScheduleContext
from prunelab.report.plots import accuracy_vs_compression
from prunelab.report.tables import flatten, write_csv
from prunelab.train import Callback, evaluate, fit, save_state_dict
from prunelab.utils import atomic_write_json, atomic_write_text, resolve_device, seed_everything
from prunelab.version import __version__


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    csv_path: Path
    plot_path: Path
    computed: int
    found: int


class RecordWeights(Callback):
    """Keeps a copy of the weights after iteration ``k`` (0 = before training) for rewinding."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_begin(self, state) -> None:
        if self.k == 0:
            self.state = _cpu_state(state.model)

    def after_step(self, state) -> None:
        if self.state is None and state.iteration >= self.k:
            self.state = _cpu_state(state.model)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


class _DataCache:
    def __init__(self) -> None:
        self._cache: dict[tuple, Any] = {}

    def get(self, cfg: RunConfig, device: torch.device):
        key = (cfg.dataset, cfg.data_root, cfg.val_fraction, cfg.seed if cfg.val_fraction else 0, str(device))
        if key not in self._cache:
            ds = data_mod.load(cfg.dataset, root=cfg.data_root, val_fraction=cfg.val_fraction, seed=cfg.seed)
            self._cache[key] = ds.to(device)
        return self._cache[key]


def training_batches(ds, samples: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A seeded random subset of ``samples`` training examples, in batches, for data-dependent criteria."""
    n = min(samples, len(ds.x_train))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds.x_train), generator=g)[:n].to(ds.x_train.device)
    x, y = ds.x_train[idx], ds.y_train[idx]
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def make_prune_fn(cfg: RunConfig, batches) -> Callable[[nn.Module, float, Optional[Masks]], Masks]:
    p = cfg.prune
    options = dict(p.options)
    if p.criterion == "upa":  # undecayed pruning's lambda is the training weight decay (Good et al. 2022)
        options.setdefault("weight_decay", cfg.train.weight_decay)

    def prune_fn(model: nn.Module, sparsity: float, masks: Optional[Masks]) -> Masks:
        return prune(
            model,
            sparsity,
            criterion=p.criterion,
            allocation=p.allocation,
            data=batches,
            seed=cfg.seed,
            masks=masks,
            exclude=tuple(p.exclude),
            iterations=p.iterations,
            update=p.update,
            options=dict(options),
            sparsity_kind=p.sparsity_kind,
            effective=p.effective_prune,
        )

    return prune_fn


def run_one(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    data_cache: _DataCache | None = None,
    force: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Run (or find) one config; returns (result row, computed?)."""
    out_dir = Path(out_dir)
    run_dir = out_dir / "runs" / cfg.run_hash()
    result_path = run_dir / "result.json"
    if result_path.exists() and not force:
        return json.loads(result_path.read_text()), False
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", cfg.model_dump(mode="json"))

    device = resolve_device(cfg.device)
    data_cache = data_cache or _DataCache()
    ds = data_cache.get(cfg, device)
    seed_everything(cfg.seed)
    model = models.create(cfg.model, num_classes=ds.num_classes, input_shape=ds.input_shape, **cfg.model_kwargs)
    model.to(device)
    init_state = _cpu_state(model)
    train_cfg = cfg.train.model_copy(update={"seed": cfg.seed, "device": str(device)})
    ft_cfg = cfg.finetune_config().model_copy(update={"seed": cfg.seed + 1, "device": str(device)})
    started = time.time()

    def dense() -> DenseStage:
        ddir = out_dir / "dense" / cfg.dense_hash()
        k = cfg.prune.rewind_iteration
        files = (ddir / "model.safetensors", ddir / f"rewind_{k}.safetensors", ddir / "history.json")
        if all(f.exists() for f in files):
            return DenseStage(load_file(str(files[0])), load_file(str(files[1])), json.loads(files[2].read_text()))
        model.load_state_dict(init_state)
        rec = RecordWeights(k)
        res = fit(model, ds, train_cfg, callbacks=[rec], progress=progress)
        history = [dict(r, stage="dense") for r in res.history]
        ddir.mkdir(parents=True, exist_ok=True)
        final = _cpu_state(model)
        rewind = rec.state if rec.state is not None else final
        save_state_dict(files[1], rewind)
        atomic_write_json(files[2], history)
        save_state_dict(files[0], final)
        atomic_write_json(ddir / "config.json", cfg.dense_identity())
        return DenseStage(final, rewind, history)

    batches = training_batches(ds, cfg.prune.data_samples, cfg.prune.data_batch, cfg.seed)
    ctx = ScheduleContext(
        model=model,
        data=ds,
        train=train_cfg,
        finetune=ft_cfg,
        sparsity=cfg.prune.sparsity,
        prune_fn=make_prune_fn(cfg, batches),
        dense=dense,
        fit=fit,
        imp_rate=cfg.prune.imp_rate,
        gradual_start=cfg.prune.gradual_start,
        gradual_end=cfg.prune.gradual_end,
        gradual_every=cfg.prune.gradual_every,
        earlybird_threshold=cfg.prune.earlybird_threshold,
        earlybird_window=cfg.prune.earlybird_window,
        progress=progress,
    )
    result = SCHEDULES.get(cfg.prune.schedule)(ctx)
    masks = result.masks
    final = evaluate(model, ds.x_test, ds.y_test)
    report = sparsity_report(model, masks, ds.input_shape)

    lines = "".join(json.dumps(r, default=float) + "\n" for r in result.history)
    atomic_write_text(run_dir / "metrics.jsonl", lines)
    atomic_write_json(run_dir / "events.json", result.events)
    masks.save(run_dir / "masks.safetensors")
    save_state_dict(run_dir / "model.safetensors", _cpu_state(model))

    row = flatten(cfg.identity())
    row.update(
        run_hash=cfg.run_hash(),
        test_accuracy=final.accuracy,
        test_loss=final.loss,
        per_class_recall=";".join(f"{r:.4f}" for r in final.per_class_recall),
        **report.summary(),
        seconds=round(time.time() - started, 2),
        device=str(device),
        torch_version=torch.__version__,
        prunelab_version=__version__,
    )
    accs = [r["test_acc"] for r in result.history if r.get("stage") != "dense" and r.get("test_acc") is not None]
    row["best_test_accuracy"] = max(accs) if accs else None
    atomic_write_json(result_path, row)
    return row, True


def run_sweep(
    sweep: SweepConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    force: bool = False,
    on_run: Callable[[int, int, dict[str, Any], bool], None] | None = None,
) -> SweepResult:
    """Run every config of the sweep (finding finished ones), then write results.csv and the plot."""
    out_dir = Path(out_dir)
    runs = sweep.expand()
    cache = _DataCache()
    rows, computed, found = [], 0, 0
    for i, cfg in enumerate(runs):
        row, did = run_one(cfg, out_dir, progress=progress, data_cache=cache, force=force)
        rows.append(row)
        computed += did
        found += not did
        if on_run:
            on_run(i, len(runs), row, did)
        # keep the table current so a crash mid-sweep still leaves the finished rows on disk
        write_csv(out_dir / "results.csv", rows)
    csv_path = write_csv(out_dir / "results.csv", rows)
    plot_path = accuracy_vs_compression(csv_path, out_dir / "accuracy_vs_compression.png",
                                        title=f"{sweep.base.model} on {sweep.base.dataset}")
    atomic_write_json(out_dir / "sweep.json", sweep.model_dump(mode="json"))
    return SweepResult(rows, csv_path, plot_path, computed, found)
