"""Tidy results tables: one row per run, every config field and metric a column.

The CSV keeps every column; the printed tables (:func:`results_table`, :func:`fit_table`) choose the
columns that fit a terminal or log of ``width`` characters (80 by default), fold columns with one
value into the title, and name what they left out in the caption. They are plain text when the
console is not a terminal (rich writes no ANSI codes then) and never wider than ``width``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from prunelab.errors import PrunelabError
from prunelab.utils import atomic_write_text


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; lists and dicts as compact text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            if key in ("prune.allocation", "prune.options", "model_kwargs"):
                out[key] = ";".join(f"{a}={b}" for a, b in sorted(v.items()))
            else:
                out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ";".join(str(x) for x in v)
        elif v is None:
            out[key] = ""
        else:
            out[key] = v
    return out


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows (union of their keys as columns, first-seen order) atomically."""
    rows = list(rows)
    columns: list[str] = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in columns})
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def _parse(v: str) -> Any:
    if v == "":
        return None
    if v in ("True", "False"):
        return v == "True"
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def _text_of(path: Path) -> str:
    """The file's text; a clear error for a missing, empty, binary or undecodable file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PrunelabError(f"results table {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise PrunelabError(f"results table {str(path)!r} is a folder, not a CSV file") from None
    if not data.strip():
        raise PrunelabError(f"results table {str(path)!r} is empty; expected a CSV with a header row "
                            f"and one row per run (as `prunelab run` writes)")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise PrunelabError(f"results table {str(path)!r} is a binary file (NUL byte at offset {nul}); "
                            f"expected a UTF-8 text CSV")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PrunelabError(f"results table {str(path)!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                            f"offset {exc.start}); expected a UTF-8 text CSV") from None


def _read_lines(path: Path) -> tuple[list[int], list[dict[str, Any]]]:
    """(the file line each row starts on, the rows with numbers parsed)."""
    text = _text_of(path)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader)
        raw = []
        start = reader.line_num + 1
        for r in reader:
            if r:
                raw.append((start, r))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise PrunelabError(f"results table {str(path)!r} is not a readable CSV: {exc}") from None
    if not any(h.strip() for h in header):
        raise PrunelabError(f"results table {str(path)!r} has no column names in its first line")
    if not raw:
        raise PrunelabError(f"results table {str(path)!r} has a header but no rows; expected one row per run")
    lines, rows = [], []
    for line, r in raw:
        if len(r) > len(header):
            raise PrunelabError(f"results table {str(path)!r}: line {line} has {len(r)} fields but the header "
                                f"has {len(header)}")
        r = r + [""] * (len(header) - len(r))
        lines.append(line)
        rows.append({k: _parse(v) for k, v in zip(header, r)})
    return lines, rows


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a results table back with numbers parsed (so plots need only the file).

    An empty file, a header without rows, a binary or non-UTF-8 file and a row with more fields than
    the header raise :class:`PrunelabError` (one line naming the file and the problem).
    """
    return _read_lines(Path(path))[1]


# ------------------------------------------------------------------------------ which columns are which
#: Columns a run's config contributes (``flatten(cfg.identity())``); everything else is a result.
CONFIG_PREFIXES = ("train.", "finetune.", "prune.")
CONFIG_NAMES = ("dataset", "model", "model_kwargs", "val_fraction", "finetune", "seed")
#: Columns that name a repetition, not a method: results are aggregated over them.
SEED_COLUMNS = ("seed", "train.seed", "finetune.seed")  # the CSV records the seeds each stage used
#: Columns that set the sparsity (the x of a plot, not a method).
SPARSITY_COLUMNS = ("prune.sparsity",)


def is_config_column(name: str) -> bool:
    return name in CONFIG_NAMES or name.startswith(CONFIG_PREFIXES)


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Union of the rows' keys in first-seen order."""
    out: dict[str, None] = {}
    for r in rows:
        out.update(dict.fromkeys(r))
    return list(out)


def varying(rows: Sequence[dict[str, Any]], columns: Iterable[str]) -> list[str]:
    """The columns that take more than one value over the rows (a missing cell counts as a value)."""
    return [c for c in columns if len({repr(r.get(c)) for r in rows}) > 1]


# ------------------------------------------------------------------------------------- formatting
def format_value(v: Any) -> str:
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        return f"{v:.4g}" if abs(v) >= 1 or v == 0 else f"{v:.3f}"
    return "" if v is None else str(v)


def fixed(digits: int) -> Callable[[Any], str]:
    """A formatter with ``digits`` decimals (``inf``, ``nan`` and empty cells spelled out)."""

    def fmt(v: Any) -> str:
        if v is None or v == "":
            return "-"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return str(v)
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}"

    return fmt


def compact_count(v: Any) -> str:
    """``1234`` -> ``1.23k``, ``2359808`` -> ``2.36M`` (3 significant digits; exact counts stay in the CSV)."""
    if v is None or v == "":
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return str(v)
    rounded = float(f"{v:.3g}")  # round first, so that 999,950 is 1M, not 1e+03k
    for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(rounded) >= size:
            return f"{rounded / size:.3g}{suffix}"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def general(v: Any) -> str:
    """Up to 4 significant digits (``0.1``, ``0.05``, ``1e-05``) for config values; a list
    (``a=0.5;b=0.9``) gets a space after each ``;`` so that a narrow column wraps it between items."""
    if isinstance(v, float) and not isinstance(v, bool):
        return format_value(v) if not math.isfinite(v) else f"{v:.4g}"
    return "-" if v is None else str(v).replace(";", "; ")


def ratio(v: Any) -> str:
    """Compression-like ratios: 2 decimals below 100, 1 below 1000, then compact."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) >= 100:
        return f"{v:.1f}" if abs(v) < 1000 else compact_count(v)
    return fixed(2)(v)


# ----------------------------------------------------------------------------- tables that fit a width
@dataclass(frozen=True)
class Col:
    """One printed column. ``priority`` 0 is never dropped; when the table is too wide, the highest
    priority goes first (the rightmost of equal ones). A header may have two lines (``"eff.\\ncompr."``)."""

    key: str
    header: str
    fmt: Callable[[Any], str] = format_value
    priority: int = 0
    justify: str = "right"
    max_width: int | None = None  # longer cells fold onto more lines


def _new_table(title: str | None, caption: str | None) -> Table:
    # booktabs-like: rules under the header and above the totals, no vertical lines, 2-space gaps
    return Table(title=title, caption=caption, box=box.HORIZONTALS, show_edge=False, pad_edge=False,
                 collapse_padding=True, title_justify="left", caption_justify="left")


def _width(table: Table) -> int:
    console = Console(width=10_000, file=io.StringIO(), color_system=None)
    return Measurement.get(console, console.options, table).maximum


def fit_table(rows: Sequence[dict[str, Any]], cols: Sequence[Col], *, width: int | None = 80,
              title: str | None = None, caption: str | None = None,
              sections: Sequence[int] = ()) -> Table:
    """A table of ``rows`` with the columns of ``cols`` that fit in ``width`` characters.

    Columns are dropped by ``priority`` (highest first) until the table fits; the caption names the
    dropped columns. Text cells that are still too long fold onto a second line (never cut off).
    ``sections``: row indices after which a rule is drawn (e.g. before a totals row).
    """
    cols = list(cols)
    dropped: list[Col] = []

    def build(cs: list[Col], gone: list[Col]) -> Table:
        parts = [caption] if caption else []
        if gone:
            parts.insert(0, "not shown: " + ", ".join(c.header.replace("\n", " ") for c in gone))
        t = _new_table(title, "; ".join(parts) or None)
        for c in cs:
            t.add_column(c.header, justify=c.justify, overflow="fold", max_width=c.max_width)
        for i, r in enumerate(rows):
            t.add_row(*(c.fmt(r.get(c.key)) for c in cs), end_section=i in sections)
        return t

    table = build(cols, dropped)
    while width is not None and _width(table) > width:
        droppable = [c for c in cols if c.priority > 0]
        if not droppable:
            break
        worst = max(droppable, key=lambda c: (c.priority, cols.index(c)))
        cols.remove(worst)
        dropped.append(worst)
        table = build(cols, dropped)
    if width is not None and _width(table) > width:
        table.width = width  # only priority-0 columns left: rich folds their cells
    return table


def rich_table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None,
               headers: list[str] | None = None, width: int | None = 80) -> Table:
    """All of ``columns`` (none dropped) in the same plain layout as :func:`fit_table`."""
    numeric = {c: bool(rows) and isinstance(rows[0].get(c), (int, float)) for c in columns}
    cols = [Col(c, h, format_value, 0, "right" if numeric[c] else "left")
            for c, h in zip(columns, headers or columns)]
    return fit_table(rows, cols, width=width, title=title)


#: Columns of the printed results table: key -> (header, formatter, priority). Constant ones go into
#: the title; varying config columns not listed here are shown after the method columns.
RESULT_COLUMNS: dict[str, tuple[str, Callable[[Any], str], int]] = {
    "prune.criterion": ("criterion", general, 0),
    "prune.allocation": ("allocation", general, 0),
    "prune.schedule": ("schedule", general, 0),
    "prune.sparsity": ("sparsity", fixed(3), 0),
    "seed": ("seed", general, 0),
    "test_accuracy": ("test acc", fixed(4), 0),
    "dense_test_accuracy": ("dense\nacc", fixed(4), 4),
    "compression": ("compr.", ratio, 1),
    "effective_compression": ("eff.\ncompr.", ratio, 2),
    "flops_sparse": ("sparse\nMACs", compact_count, 3),
    "seconds": ("sec", fixed(1), 5),
}
_ALWAYS_SHOWN = ("prune.criterion", "prune.sparsity", "test_accuracy")
_TITLE_NAMES = {"prune.criterion": "criterion", "prune.allocation": "allocation", "prune.schedule": "schedule",
                "prune.sparsity": "sparsity", "dense_test_accuracy": "dense acc", "compression": "compression",
                "effective_compression": "eff. compression", "flops_sparse": "sparse MACs"}


_TEXT_WIDTH = 22  # a longer method name (e.g. a per-layer allocation) folds onto more lines


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def results_table(rows: Sequence[dict[str, Any]], title: str | None = None, *, width: int | None = 80,
                  detail: str | None = None) -> Table:
    """The key columns of a results table (one row per run), fitted to ``width`` characters.

    Columns with one value in every row (other than criterion, sparsity and accuracy) go into the
    title; config columns outside :data:`RESULT_COLUMNS` that vary (e.g. ``train.lr`` in a table
    joined from two sweeps) are shown after the method columns. ``detail`` goes into the caption
    (e.g. ``"all columns: out/results.csv"``).
    """
    rows = list(rows)
    present = columns_of(rows)
    extra = [c for c in varying(rows, present) if is_config_column(c) and c not in RESULT_COLUMNS
             and c not in SEED_COLUMNS]
    keys = [c for c in RESULT_COLUMNS if c in present]
    keys = keys[:3] + extra + keys[3:] if "prune.schedule" in keys else extra + keys
    constant = {c: rows[0].get(c) for c in keys
                if len(rows) > 1 and c not in _ALWAYS_SHOWN and len({repr(r.get(c)) for r in rows}) == 1}
    if constant:
        fixed_part = ", ".join(f"{_TITLE_NAMES.get(c, c)}={RESULT_COLUMNS[c][1](v) if c in RESULT_COLUMNS else v}"
                               for c, v in constant.items())
        title = f"{title} ({fixed_part})" if title else fixed_part
    cols = []
    for c in keys:
        if c in constant:
            continue
        if c in RESULT_COLUMNS:
            header, fmt, priority = RESULT_COLUMNS[c]
        else:
            header, fmt, priority = _short(c), general, 0
        numeric = any(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) for r in rows)
        cols.append(Col(c, header, fmt, priority, "right" if numeric else "left",
                        None if numeric else _TEXT_WIDTH))
    return fit_table(rows, cols, width=width, title=title, caption=detail)


# ------------------------------------------------------------------------------------ checked reading
#: Columns a results table must have for the accuracy-vs-compression plot.
REQUIRED_RESULT_COLUMNS = ("test_accuracy", "compression")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def read_results(path: str | Path, required: Sequence[str] = REQUIRED_RESULT_COLUMNS) -> list[dict[str, Any]]:
    """:func:`read_csv`, then check what a plot of the table relies on: the ``required`` columns exist,
    every accuracy (``test_accuracy``, and ``dense_test_accuracy`` where filled in) is a number in
    [0, 1], every ``compression`` is a number >= 1 or ``inf``. Each problem is one
    :class:`PrunelabError` line naming the file, the line and the value.
    """
    lines, rows = _read_lines(Path(path))
    present = columns_of(rows)
    missing = [c for c in required if c not in present]
    if missing:
        shown = ", ".join(present[:8]) + (f", ... ({len(present)} in all)" if len(present) > 8 else "")
        raise PrunelabError(
            f"results table {str(path)!r} lacks column(s) {', '.join(repr(c) for c in missing)}; "
            f"required: {', '.join(required)} (as `prunelab run` writes); it has: {shown}")
    for line, r in zip(lines, rows):
        for col in ("test_accuracy", "dense_test_accuracy"):
            v = r.get(col)
            if col not in present or (col == "dense_test_accuracy" and v is None):
                continue  # the dense baseline is optional
            if not _is_number(v) or not 0 <= v <= 1:
                raise PrunelabError(f"results table {str(path)!r}: line {line} has {col}={_shown(v)}; "
                                    f"expected a number between 0 and 1")
        v = r.get("compression")
        if "compression" in present and (not _is_number(v) or v < 1):
            raise PrunelabError(f"results table {str(path)!r}: line {line} has compression={_shown(v)}; "
                                f"expected a number >= 1 or inf (all parameters / non-zero parameters)")
    return rows


def _shown(v: Any) -> str:
    """A cell for an error message: quoted if text, cut to 40 characters, on one line."""
    if v is None:
        return "(empty)"
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= 40 else text[:37] + "..."
