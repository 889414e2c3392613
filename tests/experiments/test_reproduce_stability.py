"""Reproduction ``stability`` (Bartoldson et al. 2020): its sweeps, its report on hand-made rows, and
``prunelab reproduce stability --quick`` end to end.

The end-to-end test needs CIFAR-10, which the shared data holds xz-compressed: unpacking it takes
about 20 s of this machine, so it runs only when ``PRUNELAB_CIFAR`` is set, to a data root holding
``cifar-10-batches-bin/`` (used as is) or to ``1`` (unpacked once per session into a temporary folder
with ``shared/data/unpack.sh``).
"""

import math

import numpy as np
import pytest
from click.testing import CliRunner

from prunelab.experiments.reproductions import load, report_from_folder
from prunelab.experiments.reproductions.stability import correlation_ci, method_of, report

S1, S13, L13 = "Prune_S 1.9%", "Prune_S 12%", "Prune_L 12%"  # default mode: 0.6 / 32 events; 0.6 / 5 events


@pytest.mark.parametrize("mode, runs, seeds", [("quick", 2, 1), ("default", 12, 4), ("full", 50, 10)])
def test_each_mode_loads_and_expands(mode, runs, seeds):
    cfgs = load("stability", mode, {"data_root": "/nowhere"}).expand()
    assert len(cfgs) == runs
    assert len({c.seed for c in cfgs}) == seeds
    assert {c.prune.schedule for c in cfgs} == {"structured"} and {c.dataset for c in cfgs} == {"cifar10"}
    assert all(c.data_root == "/nowhere" for c in cfgs)
    labels = {method_of({"prune.schedule_options.layers": str(c.prune.schedule_options.get("layers", "")),
                         **{f"prune.schedule_options.{k}": v for k, v in c.prune.schedule_options.items()}},
                        mode)[2] for c in cfgs}
    expected = {"quick": {"Prune_S 30%", "Prune_L 30%"}, "default": {S1, S13, L13},
                "full": {"No Pruning", "Prune_S 1.3%", "Prune_S 13%", "Prune_R 13%", "Prune_L 13%"}}[mode]
    assert labels == expected


def test_default_mode_is_the_issue_16_setting():
    cfgs = load("stability", "default").expand()
    c = cfgs[0]
    assert (c.model, c.model_kwargs, c.train_subset) == ("vgg_scaled", {"depth": 11, "width": 0.25}, 10000)
    assert (c.train.optimizer, c.train.lr, c.train.epochs) == ("adam", 1e-3, 40)
    opts = c.prune.schedule_settings()
    assert [(s.layer, s.fraction) for s in opts.layer_schedules()] == [
        ("features.15", 0.3), ("features.18", 0.3), ("features.22", 0.3), ("features.25", 0.6)]
    assert sorted({cfg.prune.schedule_settings().period for cfg in cfgs}) == [1, 7]


def _row(target, period, seed, stability, acc, gap=0.1, events=5):
    return {"prune.schedule_options.layers": "{'layer': ['features.15']}", "prune.schedule_options.target": target,
            "prune.schedule_options.period": period, "seed": seed, "stability.mean_stability": stability,
            "stability.best_test_acc": acc, "stability.generalization_gap": gap, "stability.num_events": events,
            "model_kwargs": "depth=11;width=0.25", "train_subset": 10000, "train.epochs": 40, "train.lr": 0.001}


def _rows(sign=1.0, seeds=(0, 1, 2, 3)):
    """S1: stability 99, acc 0.60 + e; S13: 95, 0.62 + e; L13: 85, 0.60 + 0.05 sign + e; e = 0.01 on odd seeds."""
    rows = []
    for s in seeds:
        e = 0.01 * (s % 2)
        rows += [_row("smallest", 1, s, 99.0, 0.60 + e), _row("smallest", 7, s, 95.0, 0.60 + 0.02 * sign + e),
                 _row("largest", 7, s, 85.0, 0.60 + 0.05 * sign + e)]
    return rows


def test_report_reproduces_a_negative_correlation():
    rows = _rows()
    rep = report(rows, "default")
    st = [r["stability.mean_stability"] for r in rows]
    acc = [r["stability.best_test_acc"] for r in rows]
    r = float(np.corrcoef(st, acc)[0, 1])
    assert r < -0.9
    half = 1.959964 / math.sqrt(12 - 3)
    lo, hi = math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)
    assert correlation_ci(r, 12) == pytest.approx((lo, hi))
    corr, best, premise = rep.claims
    assert corr.verdict == "reproduced" and f"Pearson r = {r:.2f}" in corr.ours and f"{lo:.2f} to {hi:.2f}" in corr.ours
    # L13 - S1 = 0.05 in every seed: the t-interval has zero width
    assert best.verdict == "reproduced" and "+5.00 [+5.00, +5.00] points over 4 seed(s)" in best.ours
    assert L13 in best.claim and S1 in best.claim
    assert premise.verdict == "reproduced" and "+14.00 [+14.00, +14.00]" in premise.ours
    assert [t["method"] for t in rep.rows] == [S1, L13, S13]
    s1 = rep.rows[0]
    assert (s1["runs"], s1["mean stability %"], s1["best test acc % after pruning"]) == (4, "99.00 [99.00, 99.00]",
                                                                                        "60.50 ± 0.58")
    assert "4 seed(s), 12 run(s); mode default" in rep.setting and "width x0.25" in rep.setting


def test_report_rejects_a_positive_correlation():
    corr, best, premise = report(_rows(sign=-1.0), "default").claims
    assert corr.verdict == "not reproduced"
    assert best.verdict == "not reproduced" and "-5.00 [-5.00, -5.00]" in best.ours
    assert premise.verdict == "reproduced"


def test_report_is_inconclusive_without_intervals_and_a_smoke_run_in_quick_mode():
    corr, best, premise = report(_rows(seeds=(0,)), "default").claims  # 3 runs: no r interval, 1 seed: no t
    assert corr.verdict == best.verdict == premise.verdict == "inconclusive"
    assert "(no interval)" in best.ours
    # noisy differences whose interval covers 0
    rows = _rows()
    rows[2]["stability.best_test_acc"] = 0.50  # seed 0: L13 far below S1
    assert report(rows, "default").claims[1].verdict == "inconclusive"
    assert {c.verdict for c in report(_rows(), "quick").claims} == {"smoke run"}


def test_no_pruning_runs_are_labelled_and_kept_out_of_the_correlation():
    rows = _rows() + [{**_row("smallest", 1, s, 100.0, 0.9), "prune.schedule_options.layers": ""} for s in range(4)]
    rep = report(rows, "default")
    assert rep.rows[0]["method"] == "No Pruning"
    assert rep.claims[0].verdict == "reproduced" and "over 12 runs" in rep.claims[0].ours


def test_fig2_scatter_draws_every_pruned_run_and_the_correlation_it_tests(tmp_path, monkeypatch):
    """The figure of _rows() plus 4 unpruned runs: 12 points in 3 groups, ordered by rate (the unpruned
    runs are not drawn), accuracy in %, and in the title the correlation claim's r and Fisher-z interval
    over the Prune_S / Prune_L runs (all 12 here)."""
    from prunelab.experiments.reproductions import stability

    drawn = {}
    real = stability.scatter_figure

    def spy(groups, **kw):
        drawn.update(groups=groups, **kw)
        return real(groups, **kw)

    monkeypatch.setattr(stability, "scatter_figure", spy)
    rows = _rows() + [{**_row("smallest", 1, s, 100.0, 0.9), "prune.schedule_options.layers": ""} for s in range(4)]
    (path,) = stability.figures(rows, "default", tmp_path)
    assert path == tmp_path / "stability_vs_accuracy.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(drawn["groups"]) == [S1, L13, S13]
    assert drawn["groups"][S1] == ([99.0] * 4, pytest.approx([60.0, 61.0, 60.0, 61.0]))
    st = [r["stability.mean_stability"] for r in _rows()]
    r = float(np.corrcoef(st, [r["stability.best_test_acc"] for r in _rows()])[0, 1])
    lo, hi = correlation_ci(r, 12)
    assert f"Pearson r = {r:.2f} [{lo:.2f}, {hi:.2f}] over the 12 Prune_S / Prune_L runs" in drawn["title"]
    assert stability.figures(rows[-4:], "default", tmp_path / "none") == []  # only unpruned runs: no figure


def test_report_only_rebuilds_the_figure(tmp_path):
    import csv

    from prunelab.cli import main

    rows = _rows()
    with open(tmp_path / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, sorted(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = CliRunner().invoke(main, ["reproduce", "stability", "--report-only", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "stability_vs_accuracy.png").is_file() and (tmp_path / "report.md").is_file()


def test_quick_runs_end_to_end_through_the_cli(cifar_root, tmp_path):
    from prunelab.cli import main

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["reproduce", "stability", "--quick", "--quiet", "--data-root", str(cifar_root),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "smoke run" in res.output and (out / "report.md").is_file()
    rep = report_from_folder("stability", out, "quick")
    assert {c.verdict for c in rep.claims} == {"smoke run"}
    assert sorted(r["method"] for r in rep.rows) == ["Prune_L 30%", "Prune_S 30%"]
    assert all(r["events"] == "1.0" for r in rep.rows)
    assert (out / "stability_vs_accuracy.png").is_file()
