"""The runner: results on disk, found not recomputed, resumed after a crash, masks respected."""

import json

import pytest
import torch
from safetensors.torch import load_file

from prunelab.experiments.config import SweepConfig, build
from prunelab.experiments.sweep import run_sweep
from prunelab.masks import Masks
from prunelab.pruning.schedules import polynomial_sparsity
from prunelab.report.tables import read_csv


def sweep(schedule="oneshot", criteria=("magnitude", "random"), sparsities=(0.8,), **prune):
    return build(SweepConfig, {
        "base": {"dataset": "digits", "model": "mlp", "model_kwargs": {"widths": [24]}, "device": "cpu",
                 "train": {"epochs": 2, "lr": 0.05, "batch_size": 128},
                 "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 128},
                 "prune": {"schedule": schedule, "data_samples": 256, **prune}},
        "criteria": list(criteria), "sparsities": list(sparsities), "seeds": [0],
    })


def _run_dirs(out):
    return sorted(p for p in (out / "runs").iterdir() if p.is_dir())


def test_sweep_writes_runs_table_and_plot_then_finds_them(tmp_path):
    res = run_sweep(sweep(), tmp_path, progress=False)
    assert (res.computed, res.found) == (2, 0)
    rows = read_csv(res.csv_path)
    assert [r["prune.criterion"] for r in rows] == ["magnitude", "random"]
    for r in rows:
        assert r["sparsity"] == pytest.approx(0.8, abs=1e-3)  # of the prunable weights
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["params"] > r["nonzero"]
        assert r["effective_sparsity"] >= r["sparsity"] - 1e-12
    assert res.plot_path.exists()
    # one dense model shared by both criteria (same dense config and seed)
    assert len(list((tmp_path / "dense").iterdir())) == 1
    for d in _run_dirs(tmp_path):
        masks = Masks.load(d / "masks.safetensors")
        weights = load_file(str(d / "model.safetensors"))
        for name, m in masks.items():
            assert torch.all(weights[name][~m] == 0), f"{d.name}: {name} has non-zero pruned weights"
        assert json.loads((d / "config.json").read_text())["prune"]["sparsity"] == 0.8
        assert (d / "metrics.jsonl").read_text().count("\n") >= 2
    again = run_sweep(sweep(), tmp_path, progress=False)
    assert (again.computed, again.found) == (0, 2)
    assert read_csv(again.csv_path) == rows


def test_interrupted_sweep_resumes_only_missing_runs(tmp_path):
    first = run_sweep(sweep(), tmp_path, progress=False)
    victim = _run_dirs(tmp_path)[0]
    (victim / "result.json").unlink()  # as if the process died before finishing this run
    res = run_sweep(sweep(), tmp_path, progress=False)
    assert (res.computed, res.found) == (1, 1)
    # deterministic: the recomputed run gives the same numbers
    assert [r["test_accuracy"] for r in res.rows] == [r["test_accuracy"] for r in first.rows]


@pytest.mark.parametrize("schedule", ["at_init", "imp", "gradual", "earlybird"])
def test_schedules_reach_the_target_sparsity(tmp_path, schedule):
    options = {"imp": {"rate": 0.5}, "gradual": {"every": 2, "end": 0.5}}.get(schedule, {})
    res = run_sweep(sweep(schedule, criteria=("magnitude",), sparsities=(0.6,), schedule_options=options),
                    tmp_path, progress=False)
    row = res.rows[0]
    assert row["sparsity"] == pytest.approx(0.6, abs=1e-3)
    events = json.loads((_run_dirs(tmp_path)[0] / "events.json").read_text())
    if schedule == "imp":  # 0.5, then clipped to 0.6
        assert [round(e["sparsity"], 3) for e in events] == [0.5, 0.6]
    if schedule == "gradual":
        # digits: 1437 samples / batch 128 -> 12 iterations per epoch, 24 in all; pruning from
        # iteration round(0.1 * 24) = 2 to round(0.5 * 24) = 12 every 2 iterations (Zhu & Gupta eq. 1)
        assert [e["iteration"] for e in events] == [4, 6, 8, 10, 12]
        for e in events:
            assert e["sparsity"] == pytest.approx(polynomial_sparsity(e["iteration"], 2, 12, 0.6), abs=2e-3)
