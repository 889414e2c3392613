"""The reproduction framework: ``prunelab reproduce NAME`` re-runs a paper's headline claim as a sweep.

A reproduction is a sweep file (``reproductions/<name>.toml``: the same keys as ``prunelab run``,
plus ``[quick]`` and ``[full]`` tables merged over them for those modes) and a report function that
turns the sweep's rows (``results.csv``) into the paper-vs-ours table with a verdict per claim:
*reproduced*, *not reproduced* or *inconclusive*, with the setting, seeds and interval it rests on.

Modes: ``quick`` (a smoke run of minutes on a laptop: checks the pipeline, not the claim),
``default`` (the reduced CPU setting the README's numbers come from) and ``full`` (the paper's
scale, for a GPU or a Ray cluster). ``prunelab reproduce --list`` shows the expected time of each.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.experiments.config import SweepConfig, sweep_from_dict
from prunelab.experiments.sweep import SweepResult, run_sweep
from prunelab.registry import Registry
from prunelab.report.tables import read_csv
from prunelab.utils import atomic_write_json, atomic_write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODES = ("quick", "default", "full")
HERE = Path(__file__).parent
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "smoke run")


@dataclass
class Claim:
    """One row of a reproduction's table: what the paper says, what we measured, and the verdict."""

    claim: str
    paper: str
    ours: str
    verdict: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")


@dataclass
class Report:
    """The paper-vs-ours table of one reproduction run, and any detail table (``rows``)."""

    title: str
    setting: str
    claims: list[Claim]
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"# {self.title}", "", self.setting, "", "| claim | paper | ours | verdict |", "|---|---|---|---|"]
        for c in self.claims:
            lines.append(f"| {c.claim} | {c.paper} | {c.ours} | {c.verdict}{' (' + c.note + ')' if c.note else ''} |")
        if self.rows:
            cols = self.columns or list(self.rows[0])
            lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for r in self.rows:
                lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
        return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


@dataclass(frozen=True)
class Reproduction:
    """A registered reproduction: its sweep file, its report, and what to expect."""

    name: str
    paper: str
    claim: str
    sweep: str  # file name under reproductions/
    report: Callable[[Sequence[Mapping[str, Any]], str], Report]
    data: str  # the dataset it needs ("digits" needs no download)
    time: Mapping[str, str]  # mode -> expected time, e.g. {"quick": "1 min CPU", "default": "20 min CPU", ...}
    #: (rows, mode, folder) -> the paths of the reproduction's own figures, written into folder (the sweep's
    #: accuracy-vs-compression plot is always made); like the report, a function of ``results.csv`` alone
    figures: Callable[[Sequence[Mapping[str, Any]], str, Path], list[Path]] | None = None


REPRODUCTIONS: Registry[Reproduction] = Registry("reproduction")


def register(rep: Reproduction) -> Reproduction:
    REPRODUCTIONS.register(rep.name)(rep)
    return rep


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def sweep_dict(name: str, mode: str = "default") -> dict[str, Any]:
    """The raw sweep of reproduction ``name`` in ``mode`` (the TOML with its mode table merged in)."""
    if mode not in MODES:
        raise PrunelabError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    rep = REPRODUCTIONS.get(name)
    raw = tomllib.loads((HERE / rep.sweep).read_text())
    modes = {m: raw.pop(m, {}) for m in ("quick", "full")}
    return _merge(raw, modes.get(mode, {}))


def load(name: str, mode: str = "default", overrides: Mapping[str, Any] | None = None) -> SweepConfig:
    """The validated sweep of reproduction ``name``; ``overrides`` (e.g. data_root, device) go into the base."""
    raw = sweep_dict(name, mode)
    raw = _merge(raw, {k: v for k, v in (overrides or {}).items() if v is not None})
    return sweep_from_dict(raw)


def run(name: str, mode: str = "default", out: str | Path | None = None, *, overrides: Mapping[str, Any] | None = None,
        **sweep_options: Any) -> tuple[SweepResult, Report]:
    """Run reproduction ``name`` on the engine and write ``report.md`` / ``report.json`` beside the results."""
    rep = REPRODUCTIONS.get(name)
    sweep = load(name, mode, overrides)
    out = Path(out) if out is not None else Path("reproductions") / f"{rep.name}-{mode}"
    result = run_sweep(sweep, out, **sweep_options)
    report = rep.report(result.rows, mode)
    write_report(rep.name, mode, report, out)
    if rep.figures is not None and result.rows:
        rep.figures(result.rows, mode, out)
    return result, report


def write_report(name: str, mode: str, report: Report, folder: str | Path) -> None:
    """``report.md`` and ``report.json`` of a reproduction, written atomically into ``folder``."""
    folder = Path(folder)
    atomic_write_text(folder / "report.md", report.markdown())
    atomic_write_json(folder / "report.json", {"name": name, "mode": mode, "title": report.title,
                                              "setting": report.setting,
                                              "claims": [c.__dict__ for c in report.claims], "rows": report.rows})


def report_from_folder(name: str, folder: str | Path, mode: str = "default", *, write: bool = False) -> Report:
    """Rebuild a reproduction's report from a finished folder's ``results.csv`` (no run is computed);
    ``write=True`` also rewrites the folder's ``report.md`` / ``report.json`` and the reproduction's figures."""
    rep = REPRODUCTIONS.get(name)
    csv = Path(folder) / "results.csv"
    if not csv.is_file():
        raise PrunelabError(f"no results.csv in {str(folder)!r}: give the --out folder of a finished "
                            f"`prunelab reproduce {rep.name}` run")
    rows = read_csv(csv)
    try:
        report = rep.report(rows, mode)
    except KeyError as exc:  # a table of another sweep: name the column instead of a traceback
        raise PrunelabError(f"{csv} is not a results table of `prunelab reproduce {rep.name}`: it has no column "
                            f"{exc.args[0]!r}") from None
    if write:
        write_report(rep.name, mode, report, folder)
        if rep.figures is not None and rows:
            rep.figures(rows, mode, Path(folder))
    return report
