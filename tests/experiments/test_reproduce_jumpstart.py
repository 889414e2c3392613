"""Reproduction ``jumpstart`` (Riera et al. 2022): its sweep per mode, its report on hand-made rows,
and ``prunelab reproduce jumpstart --quick`` end to end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunelab.experiments.reproductions import REPRODUCTIONS, load
from prunelab.experiments.reproductions.jumpstart import arch_of, report


@pytest.mark.parametrize("mode, runs", [("quick", 2), ("default", 12), ("full", 120)])
def test_sweep_of_each_mode_expands(mode: str, runs: int) -> None:
    cfgs = load("jumpstart", mode).expand()
    assert len(cfgs) == runs
    assert {c.train.jumpstart for c in cfgs} == {0.0, 0.1}
    assert all(c.prune.schedule == "none" and c.train.optimizer == "adam" for c in cfgs)
    assert all(c.analyses[0].name == "units" for c in cfgs)
    archs = {(len(c.model_kwargs["widths"]), c.model_kwargs["widths"][0]) for c in cfgs}
    if mode == "default":
        assert archs == {(20, 8), (10, 16)} and {c.train.epochs for c in cfgs} == {10}
    if mode == "full":
        assert archs == {(d, w) for d in (5, 10, 20, 30, 50) for w in (4, 8, 16, 32)}
        assert {c.train.epochs for c in cfgs} == {20}
    # plain and jumpstart runs of one architecture and seed start from the same weights (same dense seed)
    assert len({(c.seed, str(c.model_kwargs)) for c in cfgs}) == runs // 2


def _row(depth: int, width: int, strength: float, seed: int, acc: float, dead: int) -> dict:
    widths = ", ".join([str(width)] * depth)
    return {"dataset": "mnist", "model_kwargs": f"widths=[{widths}]", "train.jumpstart": strength, "seed": seed,
            "test_accuracy": acc, "units.dead_units": dead, "units.units": depth * width, "units.linear_units": 1,
            "units.dead_layers": 1 if dead > 30 else 0, "params": 1000, "train.epochs": 10}


def hand_rows() -> list[dict]:
    rows = []
    for seed in range(3):
        rows.append(_row(20, 8, 0.0, seed, [0.50, 0.60, 0.70][seed], [40, 46, 52][seed]))
        rows.append(_row(20, 8, 0.1, seed, [0.80, 0.81, 0.82][seed], 0))
        rows.append(_row(10, 16, 0.0, seed, [0.93, 0.94, 0.95][seed], 14))
        rows.append(_row(10, 16, 0.1, seed, [0.95, 0.96, 0.97][seed], 0))
    return rows


def test_report_on_hand_made_rows() -> None:
    rep = report(hand_rows(), "default")
    by = {c.claim: c for c in rep.claims}
    dead = by["jumpstart removes the dead units of plain training"]
    # reductions in % of 160 units: 20 x 8: 25, 28.75, 32.5; 10 x 16: 8.75 x 3 -> mean 18.75, sd 11.208,
    # t(0.975, 5) = 2.5706 -> half 11.76: [6.99, 30.51] > 0
    assert dead.verdict == "reproduced"
    assert dead.ours == ("dead units (mean, plain -> jumpstart) 20 x 8: 46.0 -> 0.0 of 160; 10 x 16: 14.0 -> 0.0 "
                         "of 160; reduction +18.75% of the units, 95% CI [+6.99, +30.51] (n=6 network-seed pairs)")
    # 20 x 8 gains 30, 21, 12: mean 21, sd 9, t(0.975, 2) = 4.303 -> [-1.36, +43.36]
    thin = by["20 x 8: jumpstart trains better (test accuracy)"]
    assert thin.verdict == "inconclusive" and thin.ours == "+21.00 points, 95% CI [-1.36, +43.36] (n=3)"
    assert by["10 x 16: jumpstart trains better (test accuracy)"].verdict == "reproduced"  # +2 in every seed
    # 20 x 8 jumpstart vs 10 x 16 plain: -13 points in every seed
    deep = by["20 x 8 with jumpstart reaches 10 x 16 plain (within 1 point)"]
    assert deep.verdict == "not reproduced" and deep.ours.startswith("-13.00 points")
    assert [(r["depth x width"], r["method"]) for r in rep.rows] == [
        ("20 x 8", "plain"), ("20 x 8", "jumpstart"), ("10 x 16", "plain"), ("10 x 16", "jumpstart")]
    assert rep.rows[0]["test acc %"] == "60.00 ± 10.00" and rep.rows[0]["dead units"] == "46.0 / 160"


def test_report_when_jumpstart_leaves_more_dead_units_and_in_quick_mode() -> None:
    rows = hand_rows()
    for r in rows:
        if r["train.jumpstart"]:
            r["units.dead_units"] = 100
    by = {c.claim: c for c in report(rows, "default").claims}
    assert by["jumpstart removes the dead units of plain training"].verdict == "not reproduced"
    assert {c.verdict for c in report(hand_rows(), "quick").claims} == {"smoke run"}
    assert arch_of({"model_kwargs": "widths=[8, 8, 8]"}) == (3, 8)


def test_reproduce_quick_through_the_cli(tmp_path: Path, shared_data: Path) -> None:
    data = shared_data
    if not (data / "mnist").is_dir():
        pytest.skip(f"shared data folder {data} is missing")
    from prunelab.cli import main

    assert "jumpstart" in REPRODUCTIONS
    out = tmp_path / "out"
    started = time.time()
    result = CliRunner().invoke(main, ["reproduce", "jumpstart", "--quick", "--data-root", str(data),
                                       "--out", str(out), "--quiet"])
    elapsed = time.time() - started
    assert result.exit_code == 0, result.output
    assert "smoke run" in result.output
    assert "Jumpstart" in (out / "report.md").read_text()
    assert elapsed < 120  # ~10 s on one core
