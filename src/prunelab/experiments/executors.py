"""Where the runs of a sweep are computed: in this process, in N local processes, or as Ray tasks.

Every executor does the same two waves: first the distinct dense models the runs start from (one
task per dense hash), then each run, started as soon as its dense model is on disk. Results go to
the run folders (``runner.run_one``), so every executor leaves the same files and the same
``results.csv``; file locks make concurrent workers and drivers safe. An executor yields
``(config, row, computed)`` as runs finish, in completion order.

* ``local``: one run after another in this process (each run's own training progress is shown).
* ``processes``: ``--jobs N`` worker processes (``concurrent.futures`` with the ``spawn`` start
  method, which is safe with torch's thread pools).
* ``ray``: Ray tasks on a cluster (``--address``, default: start a local Ray). Each task asks for
  the ``resources.cpus`` / ``resources.gpus`` its config says. The output folder must be on a file
  system all Ray nodes share. Ray is an optional extra: ``pip install prunelab[ray]``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.experiments.config import RunConfig
from prunelab.experiments.runner import DENSE_SCHEDULES, DataCache, ensure_dense, run_one
from prunelab.pruning.second_order import enable_shared_fisher, release_shared_fisher, shared_fisher
from prunelab.registry import Registry

Done = tuple[RunConfig, dict[str, Any], bool]
Executor = Callable[..., Iterator[Done]]
EXECUTORS: Registry[Executor] = Registry("executor")


def needs_dense(cfg: RunConfig) -> bool:
    return cfg.prune.schedule in DENSE_SCHEDULES


def by_dense_model(runs: Sequence[RunConfig]) -> list[RunConfig]:
    """``runs`` reordered so that runs from one dense model follow one another (groups in order of
    first appearance, runs in their order within a group; runs without a dense model stay where they
    are relative to their group). A worker then meets the same dense model, masks and data several
    times in a row, and the Fisher it kept (:func:`prunelab.pruning.second_order.shared_fisher`) is
    reused instead of recomputed."""
    groups: dict[str, list[RunConfig]] = {}  # insertion order = order of first appearance
    for i, cfg in enumerate(runs):
        groups.setdefault(cfg.dense_hash() if needs_dense(cfg) else f"#{i}", []).append(cfg)
    return [cfg for group in groups.values() for cfg in group]


def dense_groups(runs: Sequence[RunConfig]) -> dict[str, RunConfig]:
    """One representative config per dense hash that some run starts from."""
    out: dict[str, RunConfig] = {}
    for cfg in runs:
        if needs_dense(cfg):
            out.setdefault(cfg.dense_hash(), cfg)
    return out


@EXECUTORS.register("local")
def local(runs: Sequence[RunConfig], out_dir: Path, *, progress: bool = True, force: bool = False,
          on_start: Callable[[RunConfig], None] | None = None, **_: Any) -> Iterator[Done]:
    """One run after another, in this process (dense models are computed by the first run needing them);
    runs from one dense model consecutively, sharing their Fisher (:func:`by_dense_model`)."""
    cache = DataCache()
    try:
        for cfg in by_dense_model(runs):
            if on_start:
                on_start(cfg)
            with shared_fisher(keep=True):
                row, did = run_one(cfg, out_dir, progress=progress, data_cache=cache, force=force)
            yield cfg, row, did
    finally:
        release_shared_fisher()


# --- local processes -------------------------------------------------------------------------------
def _worker_dense(cfg_json: dict, out_dir: str) -> str:
    return ensure_dense(RunConfig.model_validate(cfg_json), out_dir)


def _worker_run(cfg_json: dict, out_dir: str, force: bool) -> tuple[dict, bool]:
    enable_shared_fisher()  # a worker process runs one sweep's runs: keep the last Fisher between them
    return run_one(RunConfig.model_validate(cfg_json), out_dir, progress=False, force=force)


def _cfg_json(cfg: RunConfig) -> dict:
    return cfg.model_dump(mode="json", exclude_unset=True)


@EXECUTORS.register("processes")
def processes(runs: Sequence[RunConfig], out_dir: Path, *, jobs: int = 2, force: bool = False,
              on_start: Callable[[RunConfig], None] | None = None, **_: Any) -> Iterator[Done]:
    """``jobs`` worker processes: dense models first, each run as soon as its dense model exists."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise PrunelabError(f"jobs must be a positive integer, got {jobs!r}")
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        dense_futs = {h: pool.submit(_worker_dense, _cfg_json(c), str(out_dir)) for h, c in dense_groups(runs).items()}
        pending: dict[cf.Future, RunConfig] = {}
        waiting = by_dense_model(runs)

        def submit_ready() -> None:
            for cfg in list(waiting):
                dep = dense_futs.get(cfg.dense_hash()) if needs_dense(cfg) else None
                if dep is None or dep.done():
                    if dep is not None:
                        dep.result()  # re-raise a failed dense training
                    waiting.remove(cfg)
                    if on_start:
                        on_start(cfg)
                    pending[pool.submit(_worker_run, _cfg_json(cfg), str(out_dir), force)] = cfg

        submit_ready()
        while pending or waiting:
            if not pending:
                cf.wait([f for f in dense_futs.values() if not f.done()], return_when=cf.FIRST_COMPLETED)
                submit_ready()
                continue
            done, _ = cf.wait(list(pending) + [f for f in dense_futs.values() if not f.done()],
                              return_when=cf.FIRST_COMPLETED)
            for fut in done:
                if fut in pending:
                    cfg = pending.pop(fut)
                    row, did = fut.result()
                    yield cfg, row, did
            submit_ready()


# --- Ray -------------------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PrunelabError("--executor ray needs Ray: pip install 'prunelab[ray]'") from None
    return ray


@EXECUTORS.register("ray")
def ray_tasks(runs: Sequence[RunConfig], out_dir: Path, *, address: str | None = None, force: bool = False,
              on_start: Callable[[RunConfig], None] | None = None, ray_init: dict | None = None,
              **_: Any) -> Iterator[Done]:
    """Ray tasks: one per dense model, then one per run depending on its dense model's task."""
    ray = _import_ray()
    started_here = False
    if not ray.is_initialized():
        kwargs = dict(ray_init or {})
        if address:
            kwargs["address"] = address
        kwargs.setdefault("log_to_driver", False)
        try:
            ray.init(**kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise PrunelabError(f"could not connect to Ray at {address or 'a new local cluster'!r}: {e}") from None
        started_here = True
    try:
        dense_task = ray.remote(_worker_dense)
        run_task = ray.remote(_ray_run)
        dense_refs = {}
        for h, cfg in dense_groups(runs).items():
            opts = {"num_cpus": cfg.resources.cpus, "num_gpus": cfg.resources.gpus}
            dense_refs[h] = dense_task.options(**opts).remote(_cfg_json(cfg), str(out_dir))
        refs = {}
        for cfg in by_dense_model(runs):
            opts = {"num_cpus": cfg.resources.cpus, "num_gpus": cfg.resources.gpus}
            dep = dense_refs.get(cfg.dense_hash()) if needs_dense(cfg) else None
            if on_start:
                on_start(cfg)
            refs[run_task.options(**opts).remote(_cfg_json(cfg), str(out_dir), force, dep)] = cfg
        remaining = list(refs)
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=1)
            for ref in ready:
                row, did = ray.get(ref)
                yield refs[ref], row, did
    finally:
        if started_here:
            ray.shutdown()


def _ray_run(cfg_json: dict, out_dir: str, force: bool, dense_done: Any = None) -> tuple[dict, bool]:
    # ``dense_done`` is the dense task's result: Ray passes it only once that task has finished
    return _worker_run(cfg_json, out_dir, force)
