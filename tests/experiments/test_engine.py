"""The experiment engine: run identity, typed options, analyses as a stage, executors, faults."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from prunelab.analysis.stages import ANALYSES
from prunelab.errors import PrunelabError
from prunelab.experiments.config import PruneConfig, RunConfig, SweepConfig, build, load_sweep
from prunelab.experiments.runner import VOLATILE
from prunelab.experiments.sweep import run_sweep
from prunelab.report.tables import read_csv

SMALL = {"dataset": "digits", "model": "mlp", "model_kwargs": {"widths": [24]}, "device": "cpu",
         "train": {"epochs": 1, "lr": 0.05, "batch_size": 128},
         "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 128},
         "prune": {"schedule": "oneshot", "data_samples": 128}}


def small_sweep(**extra) -> SweepConfig:
    raw = {"base": json.loads(json.dumps(SMALL)), "criteria": ["magnitude", "random"], "sparsities": [0.5, 0.8],
           "seeds": [0], **extra}
    return build(SweepConfig, raw)


def _metrics(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


# --- identity ------------------------------------------------------------------------------------
def test_pinned_hash_literals():
    # If one of these changes, every finished run folder would silently be recomputed: never change
    # a default, bump FORMAT_VERSION only when a stored field changes meaning.
    assert RunConfig().run_hash() == "0b0a51ca69f81b9b"
    cfg = build(RunConfig, {"model_kwargs": {"widths": [24]}, "train": {"epochs": 2, "lr": 0.05},
                            "prune": {"criterion": "snip", "sparsity": 0.8, "schedule": "at_init"}, "seed": 1})
    assert cfg.run_hash() == "58f82a3586d57ec3"
    assert cfg.dense_hash() == "5679057fbb20c8f2"


def test_adding_a_defaulted_field_keeps_every_hash():
    class PruneConfigPlus(PruneConfig):
        brand_new_option: float = 0.25

    class RunConfigPlus(RunConfig):
        another_new_option: str = "default"
        prune: PruneConfigPlus = Field(default_factory=PruneConfigPlus)

    raw = {"model_kwargs": {"widths": [24]}, "prune": {"criterion": "snip", "sparsity": 0.8}, "seed": 1}
    old, new = build(RunConfig, raw), build(RunConfigPlus, raw)
    assert new.run_hash() == old.run_hash() and new.dense_hash() == old.dense_hash()
    changed = build(RunConfigPlus, {**raw, "prune": {**raw["prune"], "brand_new_option": 0.5}})
    assert changed.run_hash() != old.run_hash()  # a non-default value is part of the identity
    assert build(RunConfigPlus, {**raw, "another_new_option": "x"}).run_hash() != old.run_hash()


def test_defaults_given_explicitly_and_name_case_do_not_change_the_hash():
    a = build(RunConfig, {"prune": {"criterion": "magnitude"}})
    b = build(RunConfig, {"prune": {"criterion": "Magnitude", "allocation": "GLOBAL", "sparsity": 0.9},
                          "dataset": "Digits"})
    assert a.run_hash() == b.run_hash() == RunConfig().run_hash()
    # an option given at its default is the same run as no option
    c = build(RunConfig, {"prune": {"schedule": "imp", "schedule_options": {"rate": 0.2}}})
    d = build(RunConfig, {"prune": {"schedule": "imp"}})
    assert c.run_hash() == d.run_hash() and c.prune.schedule_options == {}


def test_sweep_values_are_normalised():
    s = build(SweepConfig, {"criteria": ["Magnitude", "magnitude", "random"], "sparsities": [0.5, 0.5],
                            "seeds": [0, 0, 1]})
    assert s.criteria == ["magnitude", "random"] and s.sparsities == [0.5] and s.seeds == [0, 1]
    assert len(s.expand()) == 4


def test_grid_expands_any_field():
    s = small_sweep(criteria=["magnitude"], sparsities=[0.5], grid={"train.l1": [0.0, 1e-4], "model_kwargs.widths": [[8], [16]]})
    runs = s.expand()
    assert [(r.train.l1, r.model_kwargs["widths"]) for r in runs] == [(0.0, [8]), (0.0, [16]), (1e-4, [8]), (1e-4, [16])]
    with pytest.raises(PrunelabError, match="grid key 'colour.x' names no run-config field"):
        small_sweep(grid={"colour.x": [1]})


@pytest.mark.parametrize("section", ["train", "finetune"])
def test_a_nested_seed_is_rejected_not_ignored(section):
    raw = json.loads(json.dumps(SMALL))
    raw[section]["seed"] = 5
    with pytest.raises(PrunelabError, match=rf"{section}.seed is not used in a run"):
        build(RunConfig, raw)


def test_the_row_records_the_seeds_actually_used():
    row = build(RunConfig, {**SMALL, "seed": 3}).row()
    assert row["seed"] == 3 and row["train"]["seed"] == 3 and row["finetune"]["seed"] == 4


# --- typed options -------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, message", [
    ({"prune": {"schedule": "imp", "schedule_options": {"rte": 0.5}}},
     "unknown option 'rte' for schedule 'imp'; valid: rate, rewind_iteration"),
    ({"prune": {"schedule": "oneshot", "schedule_options": {"rate": 0.5}}},
     "unknown option 'rate' for schedule 'oneshot'; valid: finetune"),
    ({"prune": {"schedule": "at_init", "schedule_options": {"rate": 0.5}}},
     "unknown option 'rate' for schedule 'at_init'; valid: none (it takes no options)"),
    ({"analyses": [{"name": "units", "options": {"sampels": 3}}]},
     "unknown option 'sampels' for analysis 'units'; valid: split, samples"),
    ({"analyses": ["no_such_analysis"]}, "unknown analysis 'no_such_analysis'; valid: "),
    ({"prune": {"criterion": "magnitud"}}, "unknown criterion 'magnitud'; valid: "),
    ({"prune": {"allocation": "globl"}}, "unknown allocation 'globl'; valid: "),
    ({"prune": {"schedule": "sometimes"}}, "unknown schedule 'sometimes'; valid: "),
])
def test_unknown_methods_and_options_are_one_line_errors(raw, message):
    with pytest.raises(PrunelabError) as e:
        build(RunConfig, raw)
    assert message in str(e.value) and "\n" not in str(e.value)


# --- analyses as a stage -------------------------------------------------------------------------
class _FirstLayerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = Field(1.0, description="multiplies the count")


@pytest.fixture
def first_layer_analysis():
    name = "test_first_layer_kept"
    if name not in ANALYSES:
        @ANALYSES.register(name, options=_FirstLayerOptions)
        def first_layer_kept(model, masks, data, options, run):
            first = next(iter(masks.values()))
            return {"kept": options.scale * int(first.sum()), "inputs": int(data.x_train[0].numel())}
    return name


def test_an_analysis_registered_in_a_test_appears_in_results_csv_of_a_toml_sweep(tmp_path, first_layer_analysis):
    toml = tmp_path / "sweep.toml"
    toml.write_text(textwrap.dedent(f"""
        dataset = "digits"
        model = "mlp"
        device = "cpu"
        seeds = [0]
        analyses = ["effective", {{ name = "{first_layer_analysis}", options = {{ scale = 2.0 }} }}]
        [model_kwargs]
        widths = [24]
        [train]
        epochs = 1
        [prune]
        schedule = "at_init"
        criterion = "random"
        sparsity = [0.5, 0.75]
    """))
    res = run_sweep(load_sweep(toml), tmp_path / "out", progress=False)
    rows = read_csv(res.csv_path)
    assert len(rows) == 2
    for row, sparsity in zip(rows, (0.5, 0.75)):
        # first layer 64 x 24 = 1536 weights; global random pruning keeps about (1 - s) of them
        kept = row[f"{first_layer_analysis}.kept"]
        assert kept % 2 == 0 and abs(kept / 2 / 1536 - (1 - sparsity)) < 0.08
        assert row[f"{first_layer_analysis}.inputs"] == 64
        assert row["effective.direct_sparsity"] == pytest.approx(row["sparsity"], abs=0.01)
        assert row["effective.effective_sparsity"] >= row["effective.direct_sparsity"] - 1e-12


# --- results table over the whole folder -----------------------------------------------------------
def test_a_second_sweep_into_the_same_folder_keeps_every_row(tmp_path):
    a = run_sweep(small_sweep(criteria=["magnitude"]), tmp_path, progress=False)
    b = run_sweep(small_sweep(criteria=["random"], sparsities=[0.5, 0.8, 0.9]), tmp_path, progress=False)
    rows = read_csv(b.csv_path)
    assert len(rows) == 5 and len(a.rows) == 2 and len(b.rows) == 3
    assert {r["run_hash"] for r in rows} == {r["run_hash"] for r in a.rows + b.rows}
    assert len(list((tmp_path / "sweeps").glob("*.json"))) == 2


def test_unwritable_output_is_an_error_before_training(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions do not stop us
            pytest.skip("the file system lets this user write to a read-only folder")
        t0 = time.time()
        with pytest.raises(PrunelabError, match="cannot write to output folder"):
            run_sweep(small_sweep(), ro / "out", progress=False)
        assert time.time() - t0 < 5
    finally:
        ro.chmod(0o700)


def test_output_inside_a_file_is_an_error_before_training(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(PrunelabError, match="cannot write to output folder"):
        run_sweep(small_sweep(), f / "out", progress=False)


def test_plain_progress_lines_when_not_a_terminal(tmp_path):
    import io

    stream = io.StringIO()
    run_sweep(small_sweep(criteria=["magnitude"]), tmp_path, progress=True, stream=stream)
    lines = [l for l in stream.getvalue().splitlines() if l.startswith("sweep: ")]
    assert len(lines) == 2 and lines[0].startswith("sweep: 1/2 done") and lines[1].startswith("sweep: 2/2 done")
    assert "elapsed" in lines[0] and "left" in lines[0] and "\x1b[" not in stream.getvalue()


# --- executors -----------------------------------------------------------------------------------
def test_processes_executor_gives_the_local_results(tmp_path):
    local = run_sweep(small_sweep(), tmp_path / "local", progress=False)
    jobs = run_sweep(small_sweep(), tmp_path / "jobs", progress=False, jobs=2)
    assert _metrics(read_csv(jobs.csv_path)) == _metrics(read_csv(local.csv_path))
    assert jobs.computed == 4


def test_ray_executor_gives_the_local_results_number_for_number(tmp_path):
    ray = pytest.importorskip("ray")
    local = run_sweep(small_sweep(), tmp_path / "local", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_sweep(small_sweep(), tmp_path / "ray", progress=False, executor="ray")
    finally:
        ray.shutdown()
    assert remote.computed == 4
    assert _metrics(read_csv(remote.csv_path)) == _metrics(read_csv(local.csv_path))
    # one dense model per seed, shared by both criteria and both sparsities
    assert len(list((tmp_path / "ray" / "dense").iterdir())) == 1


DRIVER = """
import json, sys
from prunelab.experiments.config import build, SweepConfig
from prunelab.experiments.sweep import run_sweep
raw = json.loads(sys.argv[1])
res = run_sweep(build(SweepConfig, raw), sys.argv[2], progress=False)
print(json.dumps({"computed": res.computed, "found": res.found}))
"""


def _driver(raw: dict, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(raw), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _raw(**extra) -> dict:
    return {"base": json.loads(json.dumps(SMALL)), "criteria": ["magnitude", "random"],
            "sparsities": [0.5, 0.7, 0.9], "seeds": [0], **extra}


def test_sigkill_at_random_moments_loses_only_runs_in_flight(tmp_path):
    raw = _raw()
    reference = run_sweep(build(SweepConfig, raw), tmp_path / "ref", progress=False)
    out = tmp_path / "killed"
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        proc = _driver(raw, out)
        time.sleep(rng.uniform(2.0, 4.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    final = _driver(raw, out)
    stdout, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr
    assert kills >= 1
    rows = read_csv(out / "results.csv")
    assert len(rows) == 6 and len({r["run_hash"] for r in rows}) == 6  # nothing lost, nothing duplicated
    assert _metrics(rows) == _metrics(read_csv(reference.csv_path))


def test_two_concurrent_drivers_compute_each_run_exactly_once(tmp_path):
    raw = _raw()
    procs = [_driver(raw, tmp_path), _driver(raw, tmp_path)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    counts = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert sum(c["computed"] for c in counts) == 6
    assert all(c["computed"] + c["found"] == 6 for c in counts)
    assert len(read_csv(tmp_path / "results.csv")) == 6


def test_a_full_disk_is_a_one_line_error_before_any_training(tmp_path, monkeypatch):
    import errno

    from prunelab.experiments import runner

    trained = []
    monkeypatch.setattr(runner, "fit", lambda *a, **k: trained.append(1))

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(PrunelabError) as e:
        run_sweep(small_sweep(), tmp_path / "out", progress=False)
    assert str(e.value) == f"cannot write to output folder {str(tmp_path / 'out')!r}: No space left on device"
    assert trained == []


def test_a_write_failure_after_training_is_a_one_line_error_and_the_dense_model_is_kept(tmp_path, monkeypatch):
    import errno

    from prunelab.experiments import runner

    real = runner.save_state_dict

    def fail_for_runs(path, state):
        if "runs" in Path(path).parts:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, state)

    monkeypatch.setattr(runner, "save_state_dict", fail_for_runs)
    with pytest.raises(PrunelabError) as e:
        run_sweep(small_sweep(criteria=["magnitude"], sparsities=[0.5]), tmp_path, progress=False)
    assert str(e.value).startswith("could not write '") and "No space left on device" in str(e.value)
    assert "\n" not in str(e.value)
    assert len(list((tmp_path / "dense").glob("*/model.safetensors"))) == 1  # the dense training is not lost
    monkeypatch.setattr(runner, "save_state_dict", real)
    res = run_sweep(small_sweep(criteria=["magnitude"], sparsities=[0.5]), tmp_path, progress=False)
    assert res.computed == 1


def test_stale_tmp_files_of_a_killed_writer_are_removed_on_the_rerun(tmp_path):
    cfg = small_sweep(criteria=["magnitude"], sparsities=[0.5]).expand()[0]
    run_dir = tmp_path / "runs" / cfg.run_hash()
    run_dir.mkdir(parents=True)
    stale = run_dir / ".model.safetensors.k3j2.tmp"
    stale.write_bytes(b"half a file")
    keep = run_dir / "notes.txt"
    keep.write_text("mine")
    run_sweep(small_sweep(criteria=["magnitude"], sparsities=[0.5]), tmp_path, progress=False)
    assert not stale.exists() and keep.read_text() == "mine"
    assert not list(run_dir.glob(".*.tmp"))


def test_train_and_test_subsets_take_the_first_examples(tmp_path):
    from prunelab.experiments.runner import DataCache

    cfg = build(RunConfig, {**SMALL, "train_subset": 100, "test_subset": 50})
    ds = DataCache().get(cfg, __import__("torch").device("cpu"))
    full = DataCache().get(build(RunConfig, SMALL), __import__("torch").device("cpu"))
    assert len(ds.y_train) == 100 and len(ds.y_test) == 50
    assert (ds.x_test == full.x_test[:50]).all() and (ds.y_train == full.y_train[:100]).all()
    assert cfg.dense_hash() != build(RunConfig, SMALL).dense_hash()
    with pytest.raises(PrunelabError, match="test_subset=100000 but digits has only 360 test examples"):
        DataCache().get(build(RunConfig, {**SMALL, "test_subset": 100000}), __import__("torch").device("cpu"))


@pytest.mark.parametrize("counting", ["prunable", "openlth"])
def test_imp_counting_conventions_through_the_engine(tmp_path, counting):
    import math

    raw = json.loads(json.dumps(SMALL))
    raw["prune"].update(schedule="imp", exclude=["3.*"], schedule_options={"rate": 0.2, "counting": counting})
    res = run_sweep(build(SweepConfig, {"base": raw, "criteria": ["magnitude"], "sparsities": [0.5]}), tmp_path,
                    progress=False)
    events = json.loads(next((tmp_path / "runs").iterdir()).joinpath("events.json").read_text())
    prunable, ignored = 64 * 24, 24 * 10  # digits MLP 64-24-10 with its output layer ("3.weight") excluded
    first = round(events[0]["sparsity"] * prunable)
    expected = math.ceil(0.2 * (prunable + ignored)) + 1 if counting == "openlth" else round(0.2 * prunable)
    assert first == expected
    assert res.rows[0]["prune.schedule_options.counting" if counting == "openlth" else "prune.schedule"] in (
        counting, "imp")
    assert events[-1]["sparsity"] == pytest.approx(0.5, abs=1 / prunable)  # the last round is clipped to the target


def test_an_analysis_registered_in_a_test_shows_in_prunelab_list(first_layer_analysis):
    from click.testing import CliRunner

    from prunelab.cli import main

    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    assert f"{first_layer_analysis}(scale=1.0)" in result.output  # with its typed option and default
