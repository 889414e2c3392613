"""Reproduction ``linear-regions`` (Cai et al. 2023): its sweep per mode, its report on hand-made rows,
and ``prunelab reproduce linear-regions --quick`` end to end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunelab.experiments.reproductions import REPRODUCTIONS, load
from prunelab.experiments.reproductions.linear_regions import report, width_of


@pytest.mark.parametrize("mode, runs", [("quick", 4), ("default", 42), ("full", 126)])
def test_sweep_of_each_mode_expands(mode: str, runs: int) -> None:
    cfgs = load("linear-regions", mode).expand()
    assert len(cfgs) == runs
    allocs = {c.prune.allocation for c in cfgs}
    assert allocs == {"uniform", "lr_bound_hidden"}
    assert all(c.prune.exclude == ["5"] and c.prune.schedule == "oneshot" for c in cfgs)
    assert {c.dataset for c in cfgs} == ({"digits"} if mode == "quick" else {"mnist"})
    if mode == "full":
        assert {tuple(c.model_kwargs["widths"]) for c in cfgs} == {(100, 100), (200, 200), (400, 400)}
    if mode == "default":
        assert {c.train.epochs for c in cfgs} == {15} and {c.finetune.epochs for c in cfgs} == {15}
        assert {c.seed for c in cfgs} == {0, 1, 2}


def _row(alloc: str, density: float, seed: int, acc: float, bound: float) -> dict:
    return {"dataset": "mnist", "model_kwargs": "widths=[100, 100]", "prune.allocation": alloc,
            "prune.sparsity": 1.0 - density, "seed": seed, "test_accuracy": acc, "dense_test_accuracy": 0.96,
            "regions_expected.bound_log2": bound, "line.regions_mean": 10.0, "plane.regions_mean": 50,
            "train.epochs": 15, "finetune.epochs": 15}


def hand_rows() -> list[dict]:
    # gains of lr_bound over uniform (points) per seed 0, 1, 2: density 0.01: 2, 3, 4; 0.001: -1, 0, 1; 0.0001: 0, 0, 0
    gains = {0.01: (2, 3, 4), 0.001: (-1, 0, 1), 0.0001: (0, 0, 0)}
    bounds = {0.01: (100.0, 110.0), 0.001: (80.0, 90.0), 0.0001: (50.0, 50.0)}
    rows = []
    for d, gs in gains.items():
        for seed, g in enumerate(gs):
            rows.append(_row("uniform", d, seed, 0.5, bounds[d][0]))
            rows.append(_row("lr_bound_hidden", d, seed, 0.5 + g / 100, bounds[d][1]))
    return rows


def test_report_on_hand_made_rows() -> None:
    rep = report(hand_rows(), "default")
    by = {c.claim: c for c in rep.claims}
    # per-seed mean gains 1/3, 1, 5/3: mean 1, sd 2/3, t(0.975, 2) = 4.303 -> half 1.656: [-0.66, 2.66]
    mean = by["2 x 100: lr_bound more accurate than uniform (mean over 3 densities)"]
    assert mean.verdict == "inconclusive"
    assert "+1.00 points, 95% CI [-0.66, +2.66] (n=3)" == mean.ours
    assert mean.paper == "+7.3 points (mean of the paper's gains)"
    # density 0.01: gains 2, 3, 4 -> mean 3, half 2.484: [0.52, 5.48] -> reproduced (paper +0.2 outside)
    d01 = by["2 x 100, density 0.01: lr_bound more accurate than uniform"]
    assert (d01.verdict, d01.paper) == ("reproduced", "+0.2 points")
    assert d01.ours == "+3.00 points, 95% CI [+0.52, +5.48] (n=3)"
    assert d01.note == "paper's gain outside our interval"
    assert by["2 x 100, density 0.001: lr_bound more accurate than uniform"].verdict == "inconclusive"
    # density 0.0001: identical accuracies -> interval [0, 0] -> not better
    assert by["2 x 100, density 0.0001: lr_bound more accurate than uniform"].verdict == "not reproduced"
    bound = by["2 x 100: lr_bound's densities raise the expected region bound"]
    assert bound.verdict == "reproduced"
    assert bound.ours == "higher at 2, equal at 1, lower at 0 of 3 densities"
    first = rep.rows[0]
    assert first["density"] == "1 (dense)" and first["uniform acc %"] == "96.00 ± 0.00"
    d01_row = next(r for r in rep.rows if r["density"] == "0.01")
    assert d01_row["gain (points)"] == "+3.00" and d01_row["paper gain"] == "+0.2"
    assert d01_row["uniform acc %"] == "50.00 ± 0.00" and d01_row["lr_bound acc %"] == "53.00 ± 1.00"
    assert "| claim | paper | ours | verdict |" in rep.markdown()


def test_report_quick_mode_is_a_smoke_run_and_lower_bound_is_not_reproduced() -> None:
    rows = hand_rows()
    assert {c.verdict for c in report(rows, "quick").claims} == {"smoke run"}
    for r in rows:  # lr_bound's bound below uniform's: the allocation did not do its job
        if r["prune.allocation"] == "lr_bound_hidden":
            r["regions_expected.bound_log2"] -= 20
    claims = {c.claim: c for c in report(rows, "default").claims}
    assert claims["2 x 100: lr_bound's densities raise the expected region bound"].verdict == "not reproduced"


def test_width_of_reads_the_flattened_model_kwargs() -> None:
    assert width_of({"model_kwargs": "widths=[400, 400]"}) == 400
    assert width_of({"model_kwargs": {"widths": [200, 200]}}) == 200


def test_reproduce_quick_through_the_cli(tmp_path: Path, shared_data: Path) -> None:
    data = shared_data
    if not (data / "mnist").is_dir():
        pytest.skip(f"shared data folder {data} is missing")
    from prunelab.cli import main

    assert "linear-regions" in REPRODUCTIONS
    out = tmp_path / "out"
    started = time.time()
    result = CliRunner().invoke(main, ["reproduce", "linear-regions", "--quick", "--data-root", str(data),
                                       "--out", str(out), "--quiet"])
    elapsed = time.time() - started
    assert result.exit_code == 0, result.output
    assert "smoke run" in result.output
    assert (out / "report.md").is_file() and (out / "results.csv").is_file()
    assert "Linear regions" in (out / "report.md").read_text()
    assert elapsed < 120  # ~10 s on one core


def test_lr_bound_hidden_is_lr_bound_on_the_hidden_layers() -> None:
    import torch

    from prunelab import models
    from prunelab.analysis.regions import expected_bound
    from prunelab.analysis.stages import run_analysis
    from prunelab.errors import PrunelabError
    from prunelab.pruning import prune
    from prunelab.pruning.lr_bound import lr_bound_search

    torch.manual_seed(0)
    net = models.create("mlp", num_classes=10, input_shape=(1, 28, 28), widths=[100, 100])
    masks = prune(net, 0.999, "magnitude", "lr_bound_hidden", exclude=("5",))
    assert list(masks) == ["1.weight", "3.weight"]  # the output layer stays dense
    kept = [int(m.sum()) for m in masks.values()]
    sizes = [784 * 100, 100 * 100]
    search = lr_bound_search([784, 100, 100, 10], sum(kept) / sum(sizes), [0, 1])
    assert search.how != "uniform" and search.log2_bound > search.log2_uniform
    for k, size, d in zip(kept, sizes, search.densities):
        assert abs(k - d * size) <= 1.0
    # the analysis reads the same densities back from the masks
    row = run_analysis("regions_expected", net, masks, None)
    dens = [k / s for k, s in zip(kept, sizes)]
    assert row["regions_expected.bound_log2"] == pytest.approx(expected_bound(784, [100, 100], dens).log2)
    dense = run_analysis("regions_expected", net, None, None)
    assert dense["regions_expected.bound_densities"] == "1,1"
    narrow = models.create("mlp", num_classes=10, input_shape=(1, 28, 28), widths=[100, 50])
    with pytest.raises(PrunelabError, match="do not chain"):  # a hidden layer left out: 784->100, then 50->10
        prune(narrow, 0.99, "magnitude", "lr_bound_hidden", exclude=("3",))
