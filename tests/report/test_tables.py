"""Results tables round-trip through CSV; plots are rebuilt from the file alone; printed tables fit
80 columns as plain text."""

import io
import itertools

import pytest
from rich.console import Console

from prunelab.errors import PrunelabError
from prunelab.report.plots import accuracy_vs_compression
from prunelab.report.tables import (
    Col,
    compact_count,
    fit_table,
    flatten,
    read_csv,
    read_results,
    results_table,
    rich_table,
    write_csv,
)


def test_flatten_nested_config():
    row = flatten({"train": {"lr": 0.1, "milestones": [5, 8]}, "prune": {"allocation": {"fc.weight": 0.5}},
                   "seed": 0, "finetune": None})
    assert row == {"train.lr": 0.1, "train.milestones": "5;8", "prune.allocation": "fc.weight=0.5",
                   "seed": 0, "finetune": ""}


def test_csv_round_trip_and_union_of_columns(tmp_path):
    rows = [{"a": 1, "b": 0.5}, {"a": 2, "c": "x", "d": True}]
    p = write_csv(tmp_path / "r.csv", rows)
    back = read_csv(p)
    assert back == [{"a": 1, "b": 0.5, "c": None, "d": None}, {"a": 2, "b": None, "c": "x", "d": True}]
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary behind


def test_plot_from_csv(tmp_path):
    rows = []
    for crit in ("random", "magnitude"):
        for s in (0.5, 0.9):
            for seed in (0, 1):
                rows.append({"prune.criterion": crit, "prune.allocation": "global", "prune.schedule": "at_init",
                             "compression": 1 / (1 - s), "effective_compression": 1.2 / (1 - s),
                             "test_accuracy": 0.9 - s / 10 + seed / 100})
    p = write_csv(tmp_path / "results.csv", rows)
    out = accuracy_vs_compression(p, tmp_path / "plot.png")
    assert out.exists() and out.stat().st_size > 5000


# ----------------------------------------------------------------------------------- printed tables
def render(renderable, width=80) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def runner_rows(extra=None):
    """Rows like the runner's (a full flattened config per run), 4 criteria x 5 sparsities x 2 seeds."""
    rows = []
    for i, (crit, sp, seed) in enumerate(itertools.product(("random", "magnitude", "snip", "synflow"),
                                                           (0.5, 0.8, 0.9, 0.95, 0.98), (0, 1))):
        row = {"dataset": "cifar10", "model": "vgg16", "model_kwargs": "", "train.lr": 0.1, "train.epochs": 160,
               "train.seed": 0, "prune.criterion": crit, "prune.allocation": "global", "prune.schedule": "oneshot",
               "prune.sparsity": sp, "prune.update": "auto", "seed": seed, "run_hash": f"{i:016x}",
               "test_accuracy": 0.9 - sp / 5 + seed / 1000, "test_loss": 0.3, "per_class_recall": "0.9;0.8",
               "params": 14_728_266, "nonzero": int(14_728_266 * (1 - sp)), "compression": 1 / (1 - sp),
               "flops_sparse": int(313_000_000 * (1 - sp)), "effective_compression": 1.1 / (1 - sp),
               "seconds": 1234.56 + i, "device": "cuda", "dense_test_accuracy": 0.9312}
        row.update(extra(i) if extra else {})
        rows.append(row)
    return rows


def test_results_table_fits_80_columns_with_constants_in_the_title():
    table = results_table(runner_rows(), "vgg16 on cifar10", detail="all columns: out/results.csv")
    text = render(table)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "\x1b" not in text and "…" not in text  # plain text, nothing cut off with an ellipsis
    header = next(line for line in lines if "criterion" in line)
    assert "sparsity" in header and "seed" in header and "test acc" in header and "compr." in header
    # one value in every row: in the title, not a column
    flat = " ".join(text.split())  # the title may wrap
    assert "(allocation=global, schedule=oneshot, dense acc=0.9312)" in flat
    assert "allocation" not in header and "schedule" not in header
    # key values, formatted for reading
    assert any(line.split()[:2] == ["magnitude", "0.980"] and "0.7050" in line and "50.00" in line
               for line in lines)
    assert "all columns: out/results.csv" in text


def test_results_table_drops_the_least_essential_columns_first_and_names_them():
    # a config column that varies (a table joined from two sweeps) must be shown: rows differ by it
    table = results_table(runner_rows(lambda i: {"train.lr": 0.1 if i % 3 else 0.05,
                                                 "prune.allocation": "global" if i % 2 else "erk"}))
    text = render(table)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "criterion" in line)
    for kept in ("criterion", "allocation", "lr", "sparsity", "seed", "test acc"):
        assert kept in header
    assert "not shown: sec" in text  # the first to go
    assert any("erk" in line and "0.05" in line for line in lines)


def test_results_table_is_plain_text_in_a_log(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    buf = io.StringIO()
    console = Console(file=buf)  # not a terminal: what `prunelab run > log` gets
    assert not console.is_terminal
    console.print(results_table(runner_rows(), "vgg16 on cifar10"))
    text = buf.getvalue()
    assert "\x1b[" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert text.count("synflow") == 10  # every run is one line (no wrapped rows)


def test_a_wide_table_shows_all_columns_when_there_is_room():
    text = render(results_table(runner_rows(), width=None), width=200)
    assert "sec" in text and "sparse" in text and "not shown" not in text


def test_fit_table_drops_by_priority_and_folds_long_text():
    rows = [{"name": "a-very-long-layer-name-" * 3, "x": 1.0, "y": 2.0, "z": 3.0}]
    cols = [Col("name", "name", str, 0, "left"), Col("x", "x", str, 0), Col("y", "y", str, 2), Col("z", "z", str, 1)]
    text = render(fit_table(rows, cols, width=40), width=80)
    assert max(len(line) for line in text.splitlines()) <= 40
    assert "not shown: y, z" in text  # priority 2 first, then 1; priority 0 never
    assert "".join(text.replace("1.0", "").split()).count("a-very-long-layer-name-") == 3  # folded, not cut


def test_rich_table_keeps_every_column():
    rows = [{"layer": "fc1", "width": 300, "stably_active": 12}]
    text = render(rich_table(rows, ["layer", "width", "stably_active"], headers=["layer", "width", "active"]))
    assert text.split("\n")[0].split() == ["layer", "width", "active"] and "300" in text


def test_compact_count():
    assert [compact_count(v) for v in (0, 999, 1234, 999_950, 2_359_808, 313_000_000, None)] == \
        ["0", "999", "1.23k", "1M", "2.36M", "313M", "-"]


# ------------------------------------------------------------------------------- refusing bad tables
def bad(tmp_path, content: bytes, name="results.csv"):
    p = tmp_path / name
    p.write_bytes(content)
    return p


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty; expected a CSV with a header row and one row per run (as `prunelab run` writes)"),
    (b"\n \n", "is empty; expected a CSV with a header row and one row per run (as `prunelab run` writes)"),
    (b"test_accuracy,compression\n", "has a header but no rows; expected one row per run"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a binary file (NUL byte at offset 8); expected a UTF-8 text CSV"),
    (b"test_accuracy,compression\n\xff\xfe,2\n",
     "is not UTF-8 text (byte 0xff at offset 26); expected a UTF-8 text CSV"),
    (b"test_accuracy,compression\n0.9,2,7\n", ": line 2 has 3 fields but the header has 2"),
])
def test_read_csv_refuses_empty_binary_and_ragged_files(tmp_path, content, message):
    p = bad(tmp_path, content)
    with pytest.raises(PrunelabError) as err:
        read_csv(p)
    assert str(err.value) == f"results table {str(p)!r} {message}".replace("' :", "':")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("content", "message"), [
    (b"prune.criterion,acc\nsnip,0.9\n",
     (" lacks column(s) 'test_accuracy', 'compression'; required: test_accuracy, compression "
      "(as `prunelab run` writes); it has: prune.criterion, acc")),
    (b"test_accuracy,compression\n0.9,2\nabc,3\n",
     ": line 3 has test_accuracy='abc'; expected a number between 0 and 1"),
    (b"test_accuracy,compression\n0.9,2\n,3\n", ": line 3 has test_accuracy=(empty); expected a number between 0 and 1"),
    (b"test_accuracy,compression\nnan,2\n", ": line 2 has test_accuracy=nan; expected a number between 0 and 1"),
    (b"test_accuracy,compression\n93.1,2\n", ": line 2 has test_accuracy=93.1; expected a number between 0 and 1"),
    (b"test_accuracy,compression\n0.9,two\n",
     ": line 2 has compression='two'; expected a number >= 1 or inf (all parameters / non-zero parameters)"),
    (b"test_accuracy,compression,dense_test_accuracy\n0.9,2,\n0.8,3,high\n",
     ": line 3 has dense_test_accuracy='high'; expected a number between 0 and 1"),
])
def test_read_results_refuses_what_a_plot_cannot_use(tmp_path, content, message):
    p = bad(tmp_path, content)
    with pytest.raises(PrunelabError) as err:
        read_results(p)
    assert str(err.value) == f"results table {str(p)!r}{message}"


def test_read_results_accepts_a_runner_table(tmp_path):
    rows = runner_rows()
    rows[0]["compression"] = float("inf")  # nothing kept: a valid (unplottable) point
    p = write_csv(tmp_path / "results.csv", rows)
    back = read_results(p)
    assert len(back) == 40 and back[1]["test_accuracy"] == rows[1]["test_accuracy"]
