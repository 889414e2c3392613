"""Reproduction ``earlybird`` (You et al. 2020, 2022): its sweeps, its report on hand-made rows, and
``prunelab reproduce earlybird --quick`` end to end.

The end-to-end test needs CIFAR-10, which the shared data holds xz-compressed: unpacking it takes
about 20 s of this machine, so it runs only when ``PRUNELAB_CIFAR`` is set, to a data root holding
``cifar-10-batches-bin/`` (used as is) or to ``1`` (unpacked once per session into a temporary folder
with ``shared/data/unpack.sh``).
"""


import pytest
from click.testing import CliRunner

from prunelab.experiments.reproductions import load, report_from_folder
from prunelab.experiments.reproductions.earlybird import report, ticket_of


@pytest.mark.parametrize("mode, runs, tickets, ratios", [
    ("quick", 2, {"partition", "trained"}, {0.5}),
    ("default", 3, {"partition", "mask", "trained"}, {0.5}),
    ("full", 27, {"partition", "mask", "trained"}, {0.3, 0.5, 0.7}),
])
def test_each_mode_loads_and_expands(mode, runs, tickets, ratios):
    cfgs = load("earlybird", mode, {"data_root": "/nowhere"}).expand()
    assert len(cfgs) == runs
    assert {c.prune.schedule_settings().ticket for c in cfgs} == tickets
    assert {c.prune.sparsity for c in cfgs} == ratios
    assert {c.prune.schedule for c in cfgs} == {"slimming"} and all(c.data_root == "/nowhere" for c in cfgs)


def test_default_mode_is_the_script_s_reduced_setting():
    c = load("earlybird", "default").expand()[0]
    assert (c.model, c.model_kwargs, c.train_subset, c.seed) == ("vgg_scaled", {"depth": 16, "width": 0.125}, 5000, 0)
    t, f = c.train, c.finetune
    assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.epochs, t.milestones, t.augment, t.batch_size) == (
        "sgd", 0.1, 0.9, 1e-4, 24, [12, 18], True, 128)
    assert (f.lr, f.epochs, f.lr_schedule) == (0.01, 8, "constant")
    o = c.prune.schedule_settings()
    assert (o.score, o.scope, o.bn_l1, o.canvas, o.canvas_resolution) == ("bn_scale", "global", 1e-4, "plane", 32)


def _row(ticket, seed, acc, *, epoch, found=None, part=None, mask=None, p=0.5):
    row = {"prune.schedule_options.ticket": ticket, "seed": seed, "prune.sparsity": p, "test_accuracy": acc,
           "train.epochs": 24, "train.milestones": "12;18", "train_subset": 5000,
           "model_kwargs": "depth=16;width=0.125", "ticket.epoch": epoch, "ticket.eb_found": found,
           "ticket.eb_partition_epoch": part, "ticket.eb_mask_epoch": mask, "ticket.dense_epochs": epoch,
           "ticket.retrain_epochs": 24 - epoch if ticket != "trained" else 8, "ticket.channels_kept": 0.5,
           "ticket.dense_test_acc": 0.45, "ticket.pruned_test_acc": 0.1}
    if ticket == "trained":
        row["prune.schedule_options.ticket"] = ""  # the default ticket is not stored in the config
    return row


def _rows(seeds=(0, 1)):
    """Per seed: partition EB at 5, mask EB at 8 of 24; EB-partition beats trained by 2 points, EB-mask loses 3."""
    rows = []
    for s in seeds:
        e = 0.01 * s
        rows += [_row("partition", s, 0.42 + e, epoch=5, found=True, part=5, mask=None),
                 _row("mask", s, 0.37 + e, epoch=8, found=True, part=5, mask=8),
                 _row("trained", s, 0.40 + e, epoch=24, part=5, mask=8)]
    return rows


def test_report_on_hand_made_rows():
    rows = _rows()
    assert [ticket_of(r) for r in rows[:3]] == ["partition", "mask", "trained"]
    part, mask, match_p, match_m, order = report(rows, "default").claims
    # 5 / 24 = 21 % in both seeds: within the first quarter
    assert part.verdict == "reproduced" and part.ours.startswith("epochs 5, 5 of 24 (21 %, 95% CI 21-21 %)")
    # 8 / 24 = 33 %: later than a quarter, before the first drop at 12
    assert mask.verdict == "inconclusive" and "epochs 8, 8 of 24 (33 %" in mask.ours
    assert match_p.verdict == "reproduced" and "+2.00 points (95% CI +2.00 to +2.00) over 2 (seed, p)" in match_p.ours
    assert match_m.verdict == "not reproduced" and "-3.00 points" in match_m.ours
    assert order.verdict == "reproduced" and "in 2 of 2 (seed, p): 5 vs 8, 5 vs 8" in order.ours


def test_report_table_and_setting():
    rep = report(_rows(), "default")
    assert [(t["ticket"], t["p"]) for t in rep.rows] == [("partition", 0.5), ("mask", 0.5), ("trained", 0.5)]
    first = rep.rows[0]
    assert (first["EB found"], first["epochs dense + retrain"], first["final acc %"]) == ("2/2", "5 + 19", "42.50 ± 0.71")
    assert rep.rows[2]["EB found"] == "-" and rep.rows[2]["epochs dense + retrain"] == "24 + 8"
    assert "VGG-16-BN at width x0.125 on 5000" in rep.setting and "2 seed(s); mode default" in rep.setting


def test_report_without_early_birds_and_with_one_seed():
    rows = _rows(seeds=(0,))
    _, _, match_p, _, _ = report(rows, "default").claims
    assert match_p.verdict == "inconclusive" and "one pair: no interval" in match_p.ours
    none = [_row("partition", 0, 0.3, epoch=24, found=False), _row("trained", 0, 0.4, epoch=24)]
    part, mask, match_p, order = report(none, "default").claims
    assert part.verdict == mask.verdict == "not reproduced" and part.ours == "never; not found in 1 of 1"
    assert match_p.verdict == "not reproduced" and "no early bird found in 1 run(s)" in match_p.ours
    assert order.verdict == "inconclusive"
    assert {c.verdict for c in report(_rows(), "quick").claims} == {"smoke run"}


def test_a_run_stopped_at_the_other_rule_does_not_hide_an_early_bird():
    rows = [_row("partition", 0, 0.42, epoch=5, found=True, part=5, mask=None),
            _row("trained", 0, 0.40, epoch=24, part=5, mask=8)]
    mask = report(rows, "default").claims[1]
    assert mask.ours == "epoch 8 of 24 (33 %)"


def test_quick_runs_end_to_end_through_the_cli(cifar_root, tmp_path):
    from prunelab.cli import main

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["reproduce", "earlybird", "--quick", "--quiet", "--data-root", str(cifar_root),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "smoke run" in res.output and (out / "report.md").is_file()
    rep = report_from_folder("earlybird", out, "quick")
    assert {c.verdict for c in rep.claims} == {"smoke run"}
    assert [r["ticket"] for r in rep.rows] == ["partition", "trained"]
    assert all(r["channels kept"] == "0.500" for r in rep.rows)
