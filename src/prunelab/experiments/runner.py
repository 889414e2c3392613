"""One run of the experiment engine: train -> prune (schedule) -> fine-tune -> evaluate -> analyses.

Layout of an output folder::

    OUT/
      dense/<dense-hash>/   model.safetensors, rewind_<k>.safetensors, history.json, config.json (shared)
      runs/<run-hash>/      config.json, metrics.jsonl, events.json, masks.safetensors,
                            model.safetensors, result.json (written last: its presence marks the run done)
      results.csv           one row per finished run in the folder (rebuilt from runs/*/result.json)
      accuracy_vs_compression.png

A finished run is found by its hash and not recomputed. Every file is written atomically, and a
run (and a dense model) is computed under a file lock (``filelock``), so two drivers or workers on
one folder never compute the same thing at the same time: the second waits and then finds it.
A killed process loses only the run it was computing; its lock is released by the OS.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors.torch import load_file
from torch import nn

from prunelab import data as data_mod
from prunelab import models
from prunelab.analysis.sparsity import sparsity_report
from prunelab.analysis.stages import RunInfo, run_analysis
from prunelab.callbacks import Callback
from prunelab.errors import PrunelabError
from prunelab.experiments.config import RunConfig
from prunelab.masks import Masks
from prunelab.pruning import prune
from prunelab.pruning.schedules import SCHEDULES, DenseStage, ScheduleContext
from prunelab.report.tables import flatten
from prunelab.train import evaluate, fit, save_state_dict
from prunelab.utils import atomic_write_json, atomic_write_text, resolve_device, seed_everything
from prunelab.version import __version__

#: Result columns that are not deterministic functions of the config (excluded when comparing runs).
VOLATILE = ("seconds", "device", "torch_version", "prunelab_version", "host")
#: Schedules whose runs start from the (shared, cached) dense model.
DENSE_SCHEDULES = ("none", "oneshot", "imp")


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

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state.get("state")


class StageCheckpoints:
    """``fit`` with a resumable checkpoint per training stage of one run (``prunelab.train.fit``'s
    ``checkpoint=``): the i-th call of a run checkpoints to ``<folder>/stage<i>`` every
    ``every`` epochs, so a killed run resumes inside the stage it was in. ``every = 0``: none."""

    def __init__(self, folder: Path, every: int) -> None:
        self.folder, self.every, self.calls = folder, every, 0

    def __call__(self, model, data, config, callbacks=(), progress=True):
        i, self.calls = self.calls, self.calls + 1
        if not self.every:
            return fit(model, data, config, callbacks=callbacks, progress=progress)
        return fit(model, data, config, callbacks=callbacks, progress=progress,
                   checkpoint=self.folder / f"stage{i}", checkpoint_every=self.every)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


@contextmanager
def torch_threads(n: float) -> Iterator[None]:
    """Run with ``max(1, int(n))`` intra-op threads (a run's ``resources.cpus``), then restore.

    Every executor runs a config with the same thread count, so results do not depend on where a
    run was computed (CPU reductions can differ in the last bit across thread counts).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class DataCache:
    """Datasets loaded once per process, keyed by everything that changes their content."""

    def __init__(self) -> None:
        self._cache: dict[tuple, Any] = {}

    def get(self, cfg: RunConfig, device: torch.device):
        key = (cfg.dataset, cfg.data_root, cfg.val_fraction, cfg.seed if cfg.val_fraction else 0, cfg.normalize,
               json.dumps(cfg.data_kwargs, sort_keys=True), cfg.train_subset, cfg.test_subset, str(device))
        if key not in self._cache:
            ds = data_mod.load(cfg.dataset, root=cfg.data_root, val_fraction=cfg.val_fraction, seed=cfg.seed,
                               normalize=cfg.normalize, **cfg.data_kwargs)
            if cfg.train_subset is not None:
                if cfg.train_subset > len(ds.y_train):
                    raise PrunelabError(f"train_subset={cfg.train_subset} but {cfg.dataset} has only "
                                        f"{len(ds.y_train)} training examples")
                ds = dataclasses.replace(ds, x_train=ds.x_train[: cfg.train_subset],
                                         y_train=ds.y_train[: cfg.train_subset])
            if cfg.test_subset is not None:
                if cfg.test_subset > len(ds.y_test):
                    raise PrunelabError(f"test_subset={cfg.test_subset} but {cfg.dataset} has only "
                                        f"{len(ds.y_test)} test examples")
                ds = dataclasses.replace(ds, x_test=ds.x_test[: cfg.test_subset], y_test=ds.y_test[: cfg.test_subset])
            self._cache[key] = ds.to(device)
        return self._cache[key]


def build_model(cfg: RunConfig, ds: Any) -> nn.Module:
    """The run's model, initialised from the run's seed."""
    seed_everything(cfg.seed)
    return models.create(cfg.model, num_classes=ds.num_classes, input_shape=ds.input_shape, **cfg.model_kwargs)


def training_batches(ds, samples: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A seeded random subset of ``samples`` training examples, in batches, for data-dependent criteria."""
    n = min(samples, len(ds.x_train))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds.x_train), generator=g)[:n].to(ds.x_train.device)
    x, y = ds.x_train[idx], ds.y_train[idx]
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def make_prune_fn(cfg: RunConfig, batches) -> Callable[[nn.Module, float, Masks | None], Masks]:
    p = cfg.prune
    options = dict(p.options)
    if p.criterion == "upa":  # undecayed pruning's lambda is the training weight decay (Good et al. 2022)
        options.setdefault("weight_decay", cfg.train.weight_decay)

    def prune_fn(model: nn.Module, sparsity: float, masks: Masks | None) -> Masks:
        return prune(
            model,
            sparsity,
            criterion=p.criterion,
            allocation=p.allocation,
            data=batches,
            seed=cfg.seed,
            masks=masks,
            exclude=tuple(p.exclude) if masks is None else (),  # masks already say what is prunable
            iterations=p.iterations,
            update=p.update,
            options=dict(options),
            sparsity_kind=p.sparsity_kind,
            effective=p.effective_prune,
        )

    return prune_fn


def _schedule_fields(schedule: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The schedule's validated options as the ``ScheduleContext`` fields it reads."""
    names = {"oneshot": {"finetune": "oneshot_finetune"}, "imp": {"rate": "imp_rate"}, "gradual": {"start": "gradual_start", "end": "gradual_end",
             "every": "gradual_every"}, "earlybird": {"threshold": "earlybird_threshold", "window": "earlybird_window"}}
    rename = names.get(schedule, {})
    return {rename[k]: v for k, v in settings.items() if k in rename}


def rewind_iteration(cfg: RunConfig) -> int:
    return int(getattr(cfg.prune.schedule_settings(), "rewind_iteration", 0))


def dense_stage(cfg: RunConfig, out_dir: Path, model: nn.Module, ds: Any, init_state: dict, *,
                progress: bool = True) -> DenseStage:
    """Train (or load the cached) dense model of ``cfg``: shared by every run with its dense hash."""
    ddir = out_dir / "dense" / cfg.dense_hash()
    k = rewind_iteration(cfg)
    files = (ddir / "model.safetensors", ddir / f"rewind_{k}.safetensors", ddir / "history.json")
    ddir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(ddir / ".lock")):
        remove_stale_tmp_files(ddir)
        if all(f.exists() for f in files):
            return DenseStage(load_file(str(files[0])), load_file(str(files[1])), json.loads(files[2].read_text()))
        model.load_state_dict(init_state)
        rec = RecordWeights(k)
        res = StageCheckpoints(ddir / "train_state", cfg.checkpoint_every)(
            model, ds, cfg.train_config().model_copy(update={"device": str(ds.x_train.device)}), callbacks=[rec],
            progress=progress)
        history = [dict(r, stage="dense") for r in res.history]
        final = _cpu_state(model)
        rewind = rec.state if rec.state is not None else final
        save_state_dict(files[1], rewind)
        atomic_write_json(files[2], history)
        atomic_write_json(ddir / "config.json", cfg.dense_identity())
        save_state_dict(files[0], final)
        return DenseStage(final, rewind, history)


def ensure_dense(cfg: RunConfig, out_dir: str | Path, *, progress: bool = False, data_cache: DataCache | None = None,
                 ) -> str:
    """Compute the dense stage of ``cfg`` if it is not on disk yet (an executor's first wave); its hash."""
    out_dir = Path(out_dir)
    with torch_threads(cfg.resources.cpus):
        device = resolve_device(cfg.device)
        ds = (data_cache or DataCache()).get(cfg, device)
        model = build_model(cfg, ds).to(device)
        dense_stage(cfg, out_dir, model, ds, _cpu_state(model), progress=progress)
    return cfg.dense_hash()


def remove_stale_tmp_files(folder: Path) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files an atomic write left when its process was killed.

    Called with the folder's lock held, so no live writer of this folder can own them."""
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def result_path(out_dir: str | Path, cfg: RunConfig) -> Path:
    return Path(out_dir) / "runs" / cfg.run_hash() / "result.json"


def read_result(path: Path) -> dict[str, Any] | None:
    """The finished run's row, or None if the run is not finished (no or unreadable result.json)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_one(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    data_cache: DataCache | None = None,
    force: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Run (or find) one config; returns (result row, computed?). Safe to call from many processes."""
    out_dir = Path(out_dir)
    path = result_path(out_dir, cfg)
    if not force and (row := read_result(path)) is not None:
        return row, False
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / ".lock")):
        if not force and (row := read_result(path)) is not None:  # another process finished it meanwhile
            return row, False
        remove_stale_tmp_files(path.parent)
        try:
            with torch_threads(cfg.resources.cpus):
                row = _compute(cfg, out_dir, path.parent, progress=progress, data_cache=data_cache or DataCache())
            atomic_write_json(path, row)
        except OSError as e:  # disk full, folder made read-only meanwhile, ...: one line, the run stays undone
            where = f" {e.filename!r}" if getattr(e, "filename", None) else f" in {str(path.parent)!r}"
            raise PrunelabError(f"could not write{where}: {e.strerror or e}; the run is not recorded (finished "
                                f"dense models and training checkpoints are kept: rerun to resume)") from None
    return row, True


def _compute(cfg: RunConfig, out_dir: Path, run_dir: Path, *, progress: bool, data_cache: DataCache) -> dict:
    atomic_write_json(run_dir / "config.json", cfg.model_dump(mode="json"))
    device = resolve_device(cfg.device)
    ds = data_cache.get(cfg, device)
    model = build_model(cfg, ds).to(device)
    init_state = _cpu_state(model)
    train_cfg = cfg.train_config().model_copy(update={"device": str(device)})
    ft_cfg = cfg.finetune_config().model_copy(update={"device": str(device)})
    started = time.time()
    dense_eval: list[Any] = []

    def dense() -> DenseStage:
        stage = dense_stage(cfg, out_dir, model, ds, init_state, progress=progress)
        net = build_model(cfg, ds).to(device)
        net.load_state_dict(stage.final)
        dense_eval.append(evaluate(net, ds.x_test, ds.y_test))
        return stage

    settings = cfg.prune.schedule_settings()
    batches = training_batches(ds, cfg.prune.data_samples, cfg.prune.data_batch, cfg.seed)
    ctx = ScheduleContext(
        model=model,
        data=ds,
        train=train_cfg,
        finetune=ft_cfg,
        sparsity=cfg.prune.sparsity,
        prune_fn=make_prune_fn(cfg, batches),
        dense=dense,
        fit=StageCheckpoints(run_dir / "train_state", cfg.checkpoint_every),
        progress=progress,
        options=settings,
        exclude=tuple(cfg.prune.exclude),
        **_schedule_fields(cfg.prune.schedule, settings.model_dump()),
    )
    result = SCHEDULES.get(cfg.prune.schedule)(ctx)
    masks = result.masks
    model.eval()
    final = evaluate(model, ds.x_test, ds.y_test)
    report = sparsity_report(model, masks, ds.input_shape)

    lines = "".join(json.dumps(r, default=float) + "\n" for r in result.history)
    atomic_write_text(run_dir / "metrics.jsonl", lines)
    atomic_write_json(run_dir / "events.json", result.events)
    masks.save(run_dir / "masks.safetensors")
    save_state_dict(run_dir / "model.safetensors", _cpu_state(model))

    row = flatten(cfg.row())
    row.update(
        run_hash=cfg.run_hash(),
        test_accuracy=final.accuracy,
        test_loss=final.loss,
        per_class_recall=";".join(f"{r:.4f}" for r in final.per_class_recall),
        **report.summary(),
    )
    if dense_eval:
        row["dense_test_accuracy"] = dense_eval[0].accuracy
    accs = [r["test_acc"] for r in result.history if r.get("stage") != "dense" and r.get("test_acc") is not None]
    row["best_test_accuracy"] = max(accs) if accs else None
    info = RunInfo(seed=cfg.seed, history=result.history, final=final,
                   dense=dense_eval[0] if dense_eval else None, config=cfg.model_dump(mode="json"))
    for spec in cfg.analyses:
        row.update(run_analysis(spec.name, model, masks, ds, spec.options, info, label=spec.label))
    row.update(seconds=round(time.time() - started, 2), device=str(device), torch_version=torch.__version__,
               prunelab_version=__version__)
    return row


def collect_rows(out_dir: str | Path, order: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Every finished run's row in ``out_dir/runs`` (the table is always what the folders hold).

    Rows of ``order`` (run hash -> position, e.g. the current sweep) come first in that order, the
    other runs of the folder after them, by hash.
    """
    runs = Path(out_dir) / "runs"
    rows = []
    for d in sorted(runs.iterdir()) if runs.is_dir() else []:
        row = read_result(d / "result.json")
        if row is not None:
            rows.append(row)
    order = order or {}
    rows.sort(key=lambda r: (order.get(r.get("run_hash"), len(order)), str(r.get("run_hash"))))
    return rows


def check_writable(out_dir: str | Path) -> Path:
    """Create ``out_dir`` and prove a file can be written there, before any work starts."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{time.time_ns()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise PrunelabError(f"cannot write to output folder {str(out)!r}: {e.strerror or e}") from None
    return out
