"""Reproduction ``exact-compression`` (Serra, Kumar & Ramalingam 2020): its sweep per mode, its
report on hand-made rows, and ``prunelab reproduce exact-compression --quick`` end to end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunelab.experiments.reproductions import REPRODUCTIONS, load
from prunelab.experiments.reproductions.exact_compression import arch_of, equivalence, per_layer, report


@pytest.mark.parametrize("mode, runs", [("quick", 2), ("default", 32), ("full", 10)])
def test_sweep_of_each_mode_expands(mode: str, runs: int) -> None:
    cfgs = load("exact-compression", mode).expand()
    assert len(cfgs) == runs
    assert all(c.prune.schedule == "none" and not c.normalize for c in cfgs)
    assert all([a.name for a in c.analyses] == ["exact"] for c in cfgs)
    assert all(c.analyses[0].options["method"] == "per_unit" for c in cfgs)
    if mode == "default":
        assert {c.train.l1 for c in cfgs} == {0.0, 1e-4, 2e-4, 5e-4}
        assert len({tuple(c.model_kwargs["widths"]) for c in cfgs}) == 4
        assert {c.train.epochs for c in cfgs} == {25} and {c.train.lr_schedule for c in cfgs} == {"constant"}
    if mode == "full":  # the released CPAIOR 2020 recipe
        t = cfgs[0].train
        assert all(c.train == t for c in cfgs)
        assert (t.epochs, t.lr_schedule, t.milestones, t.gamma, t.l1, t.momentum, t.weight_decay) == \
            (121, "step", [49, 99], 0.1, 5e-4, 0.9, 0.0)
        assert {c.seed for c in cfgs} == set(range(10))
        assert {tuple(c.model_kwargs["widths"]) for c in cfgs} == {(100, 100)}


def _row(widths: str, l1: float, seed: int, acc: float, units: float, verified=True) -> dict:
    return {"dataset": "mnist", "model_kwargs": f"widths=[{widths}]", "train.l1": l1, "seed": seed,
            "test_accuracy": acc, "exact.neurons_removed_fraction": units, "exact.connections_removed_fraction": 0.3,
            "exact.neurons_removed_per_layer": "30,22", "exact.verified": verified, "exact.stably_active": 90,
            "exact.stably_inactive": 52, "exact.unresolved": 0, "train.epochs": 121, "train.lr_schedule": "step",
            "train.milestones": "49;99"}


def hand_rows() -> list[dict]:
    rows = []
    for seed, (acc, units) in enumerate([(0.970, 0.25), (0.971, 0.26), (0.972, 0.27)]):
        rows.append(_row("100, 100", 5e-4, seed, acc, units))
        rows.append(_row("100, 100", 0.0, seed, 0.978, 0.0))
    return rows


def test_report_on_hand_made_rows() -> None:
    rep = report(hand_rows(), "full")
    by = {c.claim: c for c in rep.claims}
    assert by["the compressed network computes the same function"].verdict == "reproduced"
    # accuracy 97.0, 97.1, 97.2: mean 97.1, sd 0.1, t(0.975, 2) = 4.303 -> [96.85, 97.35] inside 97.14 +- 0.5
    acc = by["2 x 100, L1 5e-4: test accuracy (within 0.5 points)"]
    assert (acc.verdict, acc.paper) == ("reproduced", "97.14%")
    assert acc.ours == "97.10%, 95% CI [96.85, 97.35] (n=3)"
    # units 25, 26, 27 %: [23.52, 28.48], wholly below 30.8 - 2 = 28.8
    units = by["2 x 100, L1 5e-4: network compression = hidden units removed (within 2 points)"]
    assert units.verdict == "not reproduced"
    assert units.ours == "26.00%, 95% CI [23.52, 28.48] (n=3) (30.0 + 22.0 of 200 units)"
    assert units.note == "connections removed 30.0%"
    assert by["stronger L1, more hidden units removed"].verdict == "reproduced"
    assert [r["L1"] for r in rep.rows] == ["0", "0.0005"]
    assert rep.rows[1]["hidden units removed %"] == "26.00 ± 1.00" and rep.rows[1]["units removed per layer"] == "30.0 + 22.0"


def test_report_flags_a_failed_verification_and_a_broken_trend() -> None:
    rows = hand_rows()
    rows[0]["exact.verified"] = "False"  # as read back from results.csv
    rows.append(_row("200, 200", 0.0, 0, 0.98, 0.10))
    rows.append(_row("200, 200", 5e-4, 0, 0.96, 0.05))  # less compression with more L1
    by = {c.claim: c for c in report(rows, "default").claims}
    assert by["the compressed network computes the same function"].verdict == "not reproduced"
    trend = by["stronger L1, more hidden units removed"]
    assert trend.verdict == "not reproduced" and "not for 2 x 200" in trend.ours
    assert {c.verdict for c in report(rows, "quick").claims} == {"smoke run"}


def test_equivalence_rule_and_helpers() -> None:
    assert equivalence([0.30], 0.308, 0.02)[0] == "inconclusive"  # one seed: no interval
    assert equivalence([0.30, 0.31, 0.32], 0.308, 0.02)[0] == "inconclusive"  # [0.285, 0.335] straddles 0.328
    assert equivalence([0.300, 0.305, 0.310], 0.308, 0.02)[0] == "reproduced"  # [0.293, 0.317]
    assert equivalence([0.10, 0.11, 0.12], 0.308, 0.02)[0] == "not reproduced"
    assert arch_of({"model_kwargs": "widths=[100, 100, 100]"}) == "3 x 100"
    assert per_layer({"exact.neurons_removed_per_layer": 46}) == [46]
    assert per_layer({"exact.neurons_removed_per_layer": "31,15"}) == [31, 15]


def test_reproduce_quick_through_the_cli(tmp_path: Path, shared_data: Path) -> None:
    data = shared_data
    if not (data / "mnist").is_dir():
        pytest.skip(f"shared data folder {data} is missing")
    from prunelab.cli import main

    assert "exact-compression" in REPRODUCTIONS
    out = tmp_path / "out"
    started = time.time()
    result = CliRunner().invoke(main, ["reproduce", "exact-compression", "--quick", "--data-root", str(data),
                                       "--out", str(out), "--quiet"])
    elapsed = time.time() - started
    assert result.exit_code == 0, result.output
    assert "smoke run" in result.output
    text = (out / "report.md").read_text()
    assert "Exact compression" in text and "verified on the test set" in text
    assert elapsed < 120  # ~10 s on one core
