"""Reproduction ``recall`` (Good et al. 2022, recall distortion / undecayed pruning): its sweeps, the
``imp_rounds`` schedule and ``recall_rounds`` analysis it runs on, the OpenLTH counting convention,
its report on hand-made rows, and ``prunelab reproduce recall --quick`` end to end on the shared MNIST."""

import math
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from prunelab import models
from prunelab.experiments.config import RunConfig
from prunelab.experiments.reproductions import load
from prunelab.experiments.reproductions.recall import observations, report
from prunelab.experiments.runner import run_one
from prunelab.masks import Masks
from prunelab.pruning import prune
from prunelab.pruning.imp_rounds import imp_levels, openlth_prune_counts, weight_counts
from prunelab.pruning.schedules import imp_sparsities
from prunelab.report.tables import read_csv


# --- the sweeps ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, seeds, rounds, epochs", [("quick", 1, 3, 1), ("default", 30, 20, 2),
                                                         ("full", 5, 20, 40)])
def test_each_mode_loads_and_expands(mode, seeds, rounds, epochs):
    cfgs = load("recall", mode, {"data_root": "/nowhere"}).expand()
    assert len(cfgs) == 2 * seeds  # one run per (criterion, seed): the rounds are inside it
    assert {c.prune.criterion for c in cfgs} == {"magnitude", "upa"} and len({c.seed for c in cfgs}) == seeds
    for c in cfgs:
        assert (c.dataset, c.model, c.prune.schedule, c.prune.allocation) == ("mnist", "lenet300", "imp_rounds",
                                                                              "global")
        assert c.prune.exclude == ["5.weight"] and [a.name for a in c.analyses] == ["recall_rounds"]
        # the authors' framework's counting: the never-pruned output layer (1,000 weights) counts too
        assert c.prune.schedule_settings().counting == "openlth"
        assert len(imp_levels(c.prune.sparsity, 0.2, "openlth", prunable=265_200, ignored=1_000)) == rounds
        assert c.train.epochs == c.finetune_config().epochs == epochs
        assert (c.train.lr, c.train.momentum, c.train.weight_decay, c.train.batch_size) == (0.1, 0.0, 5e-4, 128)
        assert c.data_root == "/nowhere"


# --- the OpenLTH counting convention -----------------------------------------------------------------
def test_openlth_counting_pins_53241_on_lenet300():
    """open_lth's sparse_global counts the never-pruned output layer in 'the remaining weights' and prunes
    the weight at the threshold too: ceil(0.2 * 266,200) + 1 = 53,241 in round 1; ours 0.2 * 265,200."""
    torch.manual_seed(0)
    model = models.create("lenet300", num_classes=10, input_shape=(1, 28, 28))
    prunable, ignored = weight_counts(model, ("5.weight",))
    assert (prunable, ignored) == (235_200 + 30_000, 1_000)
    assert openlth_prune_counts(prunable, ignored, 0.2, 2) == [53_241, 53_241 + 42_593]  # ceil(0.2*212,959)+1
    ours = prune(model, imp_levels(0.2, 0.2)[0], "magnitude", "global", exclude=("5.weight",))
    assert ours.num_total() - ours.num_kept() == 53_040
    levels = imp_levels(0.99, 0.2, "openlth", prunable=prunable, ignored=ignored)
    masks = prune(model, levels[0], "magnitude", "global", exclude=("5.weight",))
    assert masks.num_total() - masks.num_kept() == 53_241  # the level converts back to the exact count
    masks = prune(model, levels[1], "magnitude", "global", masks=masks)
    assert masks.num_total() - masks.num_kept() == 95_834


def test_openlth_levels_drift_and_end_at_everything_pruned():
    counts = openlth_prune_counts(265_200, 1_000, 0.2, 26)
    assert counts[19] == 263_138  # 20 rounds: 99.22% of the hidden weights, ours 98.85%
    assert counts[24] == counts[25] == 265_200  # round 25 prunes the last hidden weight
    levels = imp_levels(0.99, 0.2, "openlth", prunable=265_200, ignored=1_000)
    assert len(levels) == 20 and levels[-1] == 0.99 and levels[-2] == pytest.approx(262_371 / 265_200)
    assert imp_levels(0.5, 0.2, "prunable") == imp_sparsities(0.5, 0.2)
    assert imp_levels(0.0, 0.2, "openlth", prunable=10) == []
    with pytest.raises(Exception, match="counting"):
        imp_levels(0.5, 0.2, "lth")
    with pytest.raises(Exception, match="prunable"):
        imp_levels(0.5, 0.2, "openlth")


# --- imp_rounds + recall_rounds on a tiny run ---------------------------------------------------------
def _tiny(schedule: str, **prune) -> RunConfig:
    return RunConfig.model_validate({
        "dataset": "digits", "model": "mlp", "model_kwargs": {"widths": [16]}, "device": "cpu",
        "train": {"epochs": 1, "lr": 0.05, "eval_every": 0}, "finetune": {"epochs": 1, "lr": 0.05, "eval_every": 0},
        "prune": {"schedule": schedule, "sparsity": 0.488, "criterion": "magnitude", **prune},
        "analyses": ["recall_rounds"] if schedule == "imp_rounds" else ["recall"]})


def test_imp_rounds_is_imp_plus_a_record_per_round(tmp_path):
    ours, _ = run_one(_tiny("imp_rounds"), tmp_path / "a", progress=False)
    ref, _ = run_one(_tiny("imp"), tmp_path / "b", progress=False)
    assert ours["test_accuracy"] == ref["test_accuracy"] and ours["dense_test_accuracy"] == ref["dense_test_accuracy"]
    masks = [Masks.load(tmp_path / d / "runs" / r["run_hash"] / "masks.safetensors") for d, r in
             (("a", ours), ("b", ref))]
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[1])
    assert ours["recall_rounds.rounds"] == 3
    assert [round(ours[f"recall_rounds.r{k:02d}.sparsity"], 3) for k in (1, 2, 3)] == [0.2, 0.36, 0.488]
    assert ours["recall_rounds.r03.test_accuracy"] == ours["test_accuracy"]  # the last round is the final model
    assert ours["recall_rounds.r03.intensification_ratio"] == pytest.approx(ref["recall.intensification_ratio"],
                                                                            nan_ok=True)
    assert ours["recall_rounds.r03.distortion_slope"] == pytest.approx(ref["recall.distortion_slope"], nan_ok=True)


def test_imp_rounds_with_an_excluded_output_layer(tmp_path):
    """The runner's prune_fn passes the run's exclude together with the masks of round 2 on, which prune
    refuses; imp_rounds then prunes from scratch and checks the result is nested (same selection)."""
    row, _ = run_one(_tiny("imp_rounds", exclude=["3.weight"]), tmp_path, progress=False)
    masks = Masks.load(tmp_path / "runs" / row["run_hash"] / "masks.safetensors")
    assert set(masks) == {"1.weight"} and masks.num_total() - masks.num_kept() == round(0.488 * 64 * 16)
    assert row["recall_rounds.rounds"] == 3


# --- the report ------------------------------------------------------------------------------------
RATIOS = (0.2, 0.36, 0.96, 0.98)
BASE = (0.2, 0.2, 0.7, 0.7)  # magnitude seed 0; seed 1 = +0.1, seed 2 = -0.1 at every ratio
UPA_SHIFT = (0.1, 0.12, 0.08)  # upa = magnitude + this, per seed


def _row(crit: str, seed: int, alphas) -> dict:
    r = {"prune.criterion": crit, "seed": seed, "dense_test_accuracy": 0.98, "finetune.epochs": 2,
         "recall_rounds.rounds": len(alphas)}
    for k, (s, a) in enumerate(zip(RATIOS, alphas), start=1):
        p = f"recall_rounds.r{k:02d}."
        r.update({p + "sparsity": s, p + "test_accuracy": 0.97, p + "intensification_ratio": a,
                  p + "distortion_slope": a - 0.5, p + "per_class_recall": "0.9;1.0", p + "classes_counted": 10})
    return r


def hand_rows() -> list[dict]:
    rows = []
    for seed, shift in enumerate((0.0, 0.1, -0.1)):
        mag = [a + shift for a in BASE]
        rows += [_row("magnitude", seed, mag), _row("upa", seed, [a + UPA_SHIFT[seed] for a in mag])]
    return rows


def test_report_on_hand_made_rows():
    """Per-seed summaries, t(0.975, 2) = 4.303, intervals m -+ 4.303 sd / sqrt(3):
    magnitude low (ratios 0.2, 0.36): 0.2, 0.3, 0.1 -> 0.2 [-0.048, 0.448] < 1/2: reproduced;
    magnitude high (0.96, 0.98): 0.7, 0.8, 0.6 -> 0.7 [0.452, 0.948]: inconclusive;
    upa low 0.3, 0.42, 0.18 -> 0.3 [0.002, 0.598]: inconclusive; upa high 0.8 [0.502, 1.098]: reproduced;
    slopes: one per seed, all equal to S_xy / S_xx = 0.345 / 0.4891 (a zero-width interval above 0);
    upa - magnitude over all ratios: 0.1, 0.12, 0.08 -> 0.1 [0.050, 0.150] > 0: not reproduced."""
    rep = report(hand_rows(), "default")
    got = {c.claim: c.verdict for c in rep.claims}
    assert got == {
        "de-intensification at low ratios (magnitude)": "reproduced",
        "de-intensification at low ratios (upa)": "inconclusive",
        "intensification at high ratios (magnitude)": "inconclusive",
        "intensification at high ratios (upa)": "reproduced",
        "intensification grows with the ratio (magnitude)": "reproduced",
        "intensification grows with the ratio (upa)": "reproduced",
        "upa intensifies less than magnitude": "not reproduced",
    }
    ours = {c.claim: c.ours for c in rep.claims}
    assert ours["de-intensification at low ratios (magnitude)"] == "mean alpha over ratios <= 0.5: 0.200 [-0.048, 0.448], 3 seeds"
    assert "0.700 [0.452, 0.948]" in ours["intensification at high ratios (magnitude)"]
    assert "0.300 [0.002, 0.598]" in ours["de-intensification at low ratios (upa)"]
    assert "0.800 [0.502, 1.098]" in ours["intensification at high ratios (upa)"]
    assert f"{0.345 / 0.4891:.3f} [{0.345 / 0.4891:.3f}, {0.345 / 0.4891:.3f}]" in ours[
        "intensification grows with the ratio (magnitude)"]
    assert "0.100 [0.050, 0.150]" in ours["upa intensifies less than magnitude"]
    table = {(r["criterion"], r["sparsity"]): r for r in rep.rows}
    assert len(table) == 8 and table[("magnitude", "0.2000")]["alpha [95% CI]"] == "0.200 [-0.048, 0.448]"
    assert table[("upa", "0.9800")]["n"] == 3 and table[("upa", "0.9800")]["accuracy %"] == "97.00"
    assert "3 seed(s), 4 round(s)" in rep.setting and "dense accuracy 98.00%" in rep.setting


def test_report_modes_and_the_imp_row_form():
    assert {c.verdict for c in report(hand_rows(), "quick").claims} == {"smoke run"}
    one = [r for r in hand_rows() if r["seed"] == 0]
    assert {c.verdict for c in report(one, "default").claims} == {"inconclusive"}
    # rows of plain imp runs with the `recall` analysis give the same observations
    flat = []
    for r in hand_rows():
        for k, s in enumerate(RATIOS, start=1):
            p = f"recall_rounds.r{k:02d}."
            flat.append({"prune.criterion": r["prune.criterion"], "seed": r["seed"], "prune.sparsity": s,
                         "test_accuracy": r[p + "test_accuracy"], "per_class_recall": "0.9;1.0",
                         "recall.intensification_ratio": r[p + "intensification_ratio"],
                         "recall.distortion_slope": r[p + "distortion_slope"]})
    assert sorted(observations(flat), key=repr) == sorted(observations(hand_rows()), key=repr)
    assert [c.verdict for c in report(flat, "default").claims] == [c.verdict for c in report(hand_rows(), "default").claims]


def test_report_bands_fall_back_to_the_extreme_ratios():
    rows = [r for r in hand_rows()]
    for r in rows:  # keep the first two ratios only: no ratio >= 0.95
        r["recall_rounds.rounds"] = 2
    rep = report(rows, "default")
    assert any("highest ratio 0.36" in c.ours for c in rep.claims)


def test_quick_end_to_end_through_the_cli(tmp_path, shared_data: Path):
    data = shared_data
    if not (data / "mnist").is_dir():
        pytest.skip(f"shared data folder {data} has no mnist/ (set PRUNELAB_SHARED_DATA)")
    from prunelab.cli import main

    t, cpu = time.perf_counter(), time.process_time()
    res = CliRunner().invoke(main, ["reproduce", "recall", "--quick", "--data-root", str(data), "--out",
                                    str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    assert res.exit_code == 0, res.output
    assert "smoke run" in res.output and "2 run(s) computed" in res.output
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert len(rows) == 2 and {r["recall_rounds.rounds"] for r in rows} == {3}
    assert all(not math.isnan(r["recall_rounds.r01.intensification_ratio"]) for r in rows)
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Recall distortion")
    # < 30 s of this process' CPU time (about 6 s on one core); the wall clock only loosely (shared cores)
    assert cpu < 30 and elapsed < 90, f"quick mode took {cpu:.1f} s CPU, {elapsed:.1f} s wall"
