"""accuracy_vs_compression: seeds aggregated, dense baseline, legend off the data, 12+ series, bad
tables refused. The figure is inspected through matplotlib (what is drawn), not by pixels."""

from __future__ import annotations

import itertools
import math
import os
import stat

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer

from prunelab.errors import PrunelabError
from prunelab.report.plots import (
    accuracy_figure,
    accuracy_vs_compression,
    aggregate,
    plot_accuracy_vs_compression,
)
from prunelab.report.tables import read_csv, write_csv

SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)


def acc(ci: int, sp: float, seed: int) -> float:
    return round(0.1 + 0.82 * (1 - sp) ** (0.05 + 0.02 * ci) + 0.003 * seed, 6)  # in [0.1, 0.93]


def make_csv(path, criteria=("magnitude", "snip", "synflow"), allocations=("global", "erk", "uniform", "layerwise"),
             seeds=(0, 1, 2), sparsities=SPARSITIES, dense: float | None = 0.931, effective=True, extra=None):
    rows = []
    for ci, (c, a) in enumerate(itertools.product(criteria, allocations)):
        for sp in sparsities:
            for seed in seeds:
                row = {"dataset": "cifar10", "model": "vgg16", "train.lr": 0.1, "prune.criterion": c,
                       "prune.allocation": a, "prune.schedule": "oneshot", "prune.sparsity": sp, "seed": seed,
                       "run_hash": f"{ci}-{sp}-{seed}", "test_accuracy": acc(ci, sp, seed),
                       "compression": 1 / (1 - sp) if sp < 1 else math.inf, "seconds": 10.0 + seed}
                if effective:
                    row["effective_compression"] = row["compression"] * (1 + 0.1 * ci * sp)
                if dense is not None:
                    row["dense_test_accuracy"] = dense
                row.update(extra(ci, sp, seed) if extra else {})
                rows.append(row)
    return write_csv(path, rows)


def errorbars(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def dashed_horizontal_lines(ax) -> list[float]:
    return [line.get_ydata()[0] for line in ax.get_lines()
            if line.get_linestyle() == "--" and len(set(np.asarray(line.get_ydata(), float))) == 1]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_twelve_series_with_seeds_baseline_and_legend_outside(tmp_path):
    fig, summary = accuracy_figure(make_csv(tmp_path / "results.csv"), title="vgg16 on cifar10")
    assert len(summary.series) == 12 and set(summary.points.values()) == {5}
    assert summary.method_columns == ["prune.criterion", "prune.allocation"]
    assert summary.constant == {"prune.schedule": "oneshot"}  # in the title, not in every label
    assert summary.error_bars and summary.seeds["snip / erk"] == [3] * 5
    assert summary.baseline == [0.931] and summary.baseline_source == "dense_test_accuracy"
    assert summary.panels == ["compression", "effective_compression"]

    axes = fig.axes
    assert len(axes) == 2
    for ax in axes:
        bars = errorbars(ax)
        assert len(bars) == 12 and all(b.has_yerr for b in bars)
        assert ax.get_xscale() == "log"
        assert dashed_horizontal_lines(ax) == [pytest.approx(0.931)]
    styles = {(tuple(b.lines[0].get_color()), b.lines[0].get_marker()) for b in errorbars(axes[0])}
    assert len(styles) == 12  # every series has its own colour + marker pair
    assert len({s[0] for s in styles}) == 12  # and its own colour

    # the legend: one entry per series plus the baseline, n said once, outside every axes
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[0] == "dense (0.931)" and "magnitude / global" in labels and len(labels) == 13
    assert legend.get_title().get_text() == "criterion / allocation (n=3 seeds)"
    fig.canvas.draw()
    box = legend.get_window_extent()
    for ax in axes:
        assert not box.overlaps(ax.get_window_extent())
    assert "vgg16 on cifar10" in fig._suptitle.get_text() and "schedule=oneshot" in fig._suptitle.get_text()


def test_points_are_mean_and_sample_std_over_seeds(tmp_path):
    rows = read_csv(make_csv(tmp_path / "results.csv", criteria=("snip",), allocations=("global",)))
    rows[0]["compression"] = 2.2  # one seed's compression differs a little: x is the mean
    (series,), by, constant, skipped = aggregate(rows)
    assert series.label == "snip" and by == [] and skipped == 0 and constant["prune.criterion"] == "snip"
    assert series.x[0] == pytest.approx((2.2 + 2 + 2) / 3) and series.x[1:] == pytest.approx([5, 10, 20, 50])
    for k, sp in enumerate(SPARSITIES):
        ys = [acc(0, sp, s) for s in (0, 1, 2)]
        assert series.y[k] == pytest.approx(np.mean(ys))
        assert series.yerr[k] == pytest.approx(np.std(ys, ddof=1))
    assert series.n == [3] * 5


def test_drawn_points_match_the_aggregate(tmp_path):
    fig, _ = accuracy_figure(make_csv(tmp_path / "results.csv", criteria=("snip",), allocations=("global",)))
    (bar,) = errorbars(fig.axes[0])
    line = bar.lines[0]
    assert list(line.get_xdata()) == pytest.approx([2, 5, 10, 20, 50])
    assert list(line.get_ydata()) == pytest.approx([np.mean([acc(0, sp, s) for s in (0, 1, 2)]) for sp in SPARSITIES])


def test_one_seed_has_no_error_bars_and_says_n1(tmp_path):
    fig, summary = accuracy_figure(make_csv(tmp_path / "results.csv", seeds=(0,), effective=False))
    assert not summary.error_bars and summary.panels == ["compression"] and len(fig.axes) == 1
    assert not any(b.has_yerr for b in errorbars(fig.axes[0]))
    assert fig.legends[0].get_title().get_text() == "criterion / allocation (n=1 seed)"
    assert "mean" not in fig.axes[0].get_ylabel()


def test_uneven_seed_counts_are_in_each_label(tmp_path):
    p = make_csv(tmp_path / "results.csv", criteria=("snip", "synflow"), allocations=("global",))
    rows = [r for r in read_csv(p) if not (r["prune.criterion"] == "synflow" and r["seed"] > 0)]
    fig, summary = accuracy_figure(write_csv(tmp_path / "uneven.csv", rows))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "snip (n=3)" in labels and "synflow (n=1)" in labels
    assert summary.error_bars


def test_baseline_falls_back_to_sparsity_zero_rows_else_no_line(tmp_path):
    p = make_csv(tmp_path / "r.csv", criteria=("snip",), allocations=("global",), sparsities=(0.0, 0.9), dense=None)
    fig, summary = accuracy_figure(p)
    dense = np.mean([acc(0, 0.0, s) for s in (0, 1, 2)])
    assert summary.baseline == [pytest.approx(dense)] and summary.baseline_source == "sparsity 0 rows"
    assert dashed_horizontal_lines(fig.axes[0]) == [pytest.approx(dense)]

    p = make_csv(tmp_path / "none.csv", criteria=("snip",), allocations=("global",), dense=None)
    fig, summary = accuracy_figure(p)
    assert summary.baseline == [] and summary.baseline_source is None
    assert dashed_horizontal_lines(fig.axes[0]) == []  # no invented line
    assert not any(t.get_text().startswith("dense") for t in fig.legends[0].get_texts())


def test_every_varying_config_column_separates_series(tmp_path):
    # two learning rates in one table must not be averaged together
    p = make_csv(tmp_path / "r.csv", criteria=("snip",), allocations=("global",),
                 extra=lambda ci, sp, seed: {"train.lr": 0.1 if seed < 2 else 0.05})
    _, summary = accuracy_figure(p)
    assert summary.series == ["lr=0.1", "lr=0.05"] and summary.method_columns == ["train.lr"]
    assert summary.seeds == {"lr=0.1": [2] * 5, "lr=0.05": [1] * 5}
    assert summary.constant == {"prune.criterion": "snip", "prune.allocation": "global", "prune.schedule": "oneshot"}


def test_infinite_compression_is_left_out_and_said(tmp_path):
    p = make_csv(tmp_path / "r.csv", criteria=("snip",), allocations=("global",), sparsities=(0.5, 0.9, 1.0),
                 effective=False)
    assert read_csv(p)[-1]["compression"] == math.inf
    fig, summary = accuracy_figure(p)
    assert summary.points == {"snip": 2} and summary.skipped == 1
    assert "1 point(s) with infinite compression" in fig._supxlabel.get_text()


def test_twenty_series_get_two_legend_columns_and_distinct_styles(tmp_path):
    p = make_csv(tmp_path / "r.csv", criteria=("a", "b", "c", "d", "e"), seeds=(0,), effective=False)
    fig, summary = accuracy_figure(p)
    assert len(summary.series) == 20
    styles = {(tuple(b.lines[0].get_color()), b.lines[0].get_marker()) for b in errorbars(fig.axes[0])}
    assert len(styles) == 20
    legend = fig.legends[0]
    assert legend._ncols == 2
    fig.canvas.draw()
    assert not legend.get_window_extent().overlaps(fig.axes[0].get_window_extent())


def test_saved_file_is_a_png_with_the_umask_mode(tmp_path):
    csv_path = make_csv(tmp_path / "results.csv")
    old = os.umask(0o022)
    try:
        out = accuracy_vs_compression(csv_path, tmp_path / "plots" / "acc.png", title="t")
    finally:
        os.umask(old)
    assert out == tmp_path / "plots" / "acc.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    if os.name == "posix":
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
    summary = plot_accuracy_vs_compression(csv_path, tmp_path / "acc.pdf")
    assert summary.path.read_bytes()[:4] == b"%PDF" and summary.figure is None and len(summary.series) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.pdf", "plots", "results.csv"]  # no temporaries


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty; expected a CSV with a header row and one row per run (as `prunelab run` writes)"),
    (b"prune.criterion,test_accuracy,compression\n", "has a header but no rows; expected one row per run"),
    (b"prune.criterion,acc\nsnip,0.9\n",
     ("lacks column(s) 'test_accuracy', 'compression'; required: test_accuracy, compression "
      "(as `prunelab run` writes); it has: prune.criterion, acc")),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00", "is a binary file (NUL byte at offset 8); expected a UTF-8 text CSV"),
    (b"\x1f\x8b\x08\x08\xe4\x93\xf5", "is not UTF-8 text (byte 0x8b at offset 1); expected a UTF-8 text CSV"),
    (b"test_accuracy,compression\n0.91,2\nn/a,5\n", "line 3 has test_accuracy='n/a'; expected a number between 0 and 1"),
    (b"test_accuracy,compression\n0.91,inf\n",
     "no run has a finite compression to plot (compression=inf in every row: no weight kept)"),
])
def test_report_refuses_a_table_it_cannot_plot(tmp_path, content, message):
    p = tmp_path / "results.csv"
    p.write_bytes(content)
    out = tmp_path / "plot.png"
    with pytest.raises(PrunelabError) as err:
        accuracy_vs_compression(p, out)
    sep = ": " if message.startswith(("line", "no run")) else " "
    assert str(err.value) == f"results table {str(p)!r}{sep}{message}"
    assert not out.exists()  # no blank plot left behind


def test_recorded_stage_seeds_are_repetitions_not_methods(tmp_path):
    """The CSV records the seed each stage used (train.seed = seed, finetune.seed = seed + 1): a sweep
    over seeds is still one series per method, averaged over the seeds."""
    rows = read_csv(make_csv(tmp_path / "results.csv", criteria=("snip",), allocations=("global",)))
    for r in rows:
        r["train.seed"], r["finetune.seed"] = r["seed"], int(r["seed"]) + 1
    (series,), by, _, _ = aggregate(rows)
    assert by == [] and series.n == [3] * 5


def test_scatter_figure_points_groups_and_least_squares_line():
    """Points (0, 1), (1, 3) in one group and (2, 5) plus a NaN point in another: the line through
    all three finite points is y = 2x + 1; the NaN is dropped from the drawing and from the count."""
    from prunelab.report.plots import scatter_figure

    fig = scatter_figure({"a": ([0, 1], [1, 3]), "b": ([2, float("nan")], [5, 4])}, xlabel="x", ylabel="y",
                         title="t")
    ax = fig.axes[0]
    offsets = [c.get_offsets().tolist() for c in ax.collections]
    assert offsets == [[[0.0, 1.0], [1.0, 3.0]], [[2.0, 5.0]]]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["a (n=2)", "b (n=1)", "least squares (slope +2)"]
    (line,) = ax.lines
    xs, ys = line.get_data()
    assert np.allclose(ys, 2 * np.asarray(xs) + 1) and (xs[0], xs[-1]) == (0.0, 2.0)
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("x", "y", "t")
    plt.close(fig)
    one = scatter_figure({"a": ([1.0], [1.0])}, xlabel="x", ylabel="y")  # one point: no line to fit
    assert len(one.axes[0].lines) == 0
    plt.close(one)
    with pytest.raises(PrunelabError, match="no group has a point with finite x and y"):
        scatter_figure({"a": ([float("nan")], [1.0])}, xlabel="x", ylabel="y")


def test_paper_comparison_figure_draws_ours_paper_and_extras_in_method_order():
    """Two methods: ours with error bars, the paper's values hollow and dashed, one extra star point
    in its method's colour; legend ours-then-paper per method; x through x_of on a log axis with the
    given tick labels."""
    from prunelab.report.plots import paper_comparison_figure

    fig = paper_comparison_figure(
        {"A": ([0.5, 0.9], [90.0, 80.0], [1.0, 2.0]), "B": ([0.5, 0.9], [91.0, 70.0], [0.5, 0.5])},
        {"A": ([0.5, 0.9], [89.0, 81.0])}, extra={"B at x (ours)": ([0.8], [75.0], [1.0])},
        x_of=lambda s: 1 / (1 - s), tick_labels={0.5: "0.5", 0.9: "0.9"}, xlabel="s", ylabel="acc", title="t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A (ours)", "A (paper)", "B (ours)",
                                                                    "B at x (ours)"]
    (paper_line,) = [ln for ln in ax.lines if ln.get_label() == "A (paper)"]
    assert paper_line.get_linestyle() == "--" and paper_line.get_markerfacecolor() == "none"
    assert np.allclose(paper_line.get_xdata(), [2.0, 10.0]) and list(paper_line.get_ydata()) == [89.0, 81.0]
    a_ours, b_ours, star = (c for c in ax.containers if isinstance(c, ErrorbarContainer))
    assert np.allclose(a_ours.lines[0].get_xdata(), [2.0, 10.0])
    assert star.lines[0].get_marker() == "*" and star.lines[0].get_color() == b_ours.lines[0].get_color()
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "0.9"]
    plt.close(fig)
    with pytest.raises(PrunelabError, match="nothing to plot"):
        paper_comparison_figure({}, {}, xlabel="x", ylabel="y")


def test_options_a_method_does_not_set_stay_out_of_its_label(tmp_path):
    """synflow sets iterations=100 and a schedule option; magnitude and snip set neither (blank cells,
    as in a results.csv): their labels are just the criterion (one allocation: in the title), synflow's
    carries its values,
    and the legend title names the option columns once as "options"."""
    def extra(ci, sp, seed):
        synflow = ci == 2
        return {"prune.iterations": 100 if synflow else None,
                "prune.schedule_options": "rate=0.5" if synflow else "{}"}

    fig, summary = accuracy_figure(make_csv(tmp_path / "r.csv", allocations=("global",), extra=extra))
    assert summary.series == ["magnitude", "snip", "synflow / iterations=100 / schedule_options=rate=0.5"]
    assert fig.legends[0].get_title().get_text() == "criterion / options (n=3 seeds)"
