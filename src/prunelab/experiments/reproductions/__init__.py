"""Reproductions: each paper's headline claim as a sweep file (``<name>.toml``) plus a report module.

``prunelab reproduce NAME [--quick | --full]`` (or :func:`run`) runs one on the experiment engine;
:data:`REPRODUCTIONS` lists them (``prunelab reproduce --list``). The framework (modes, reports,
verdicts) is :mod:`prunelab.experiments.reproductions.base`.
"""

from prunelab.experiments.reproductions import (
    cbs,  # noqa: F401  (registers)
    earlybird,  # noqa: F401  (registers)
    effective_sparsity,  # noqa: F401  (registers)
    exact_compression,  # noqa: F401  (registers)
    jumpstart,  # noqa: F401  (registers)
    linear_regions,  # noqa: F401  (registers)
    recall,  # noqa: F401  (registers)
    stability,  # noqa: F401  (registers)
)
from prunelab.experiments.reproductions.base import (
    MODES,
    REPRODUCTIONS,
    Claim,
    Report,
    Reproduction,
    load,
    report_from_folder,
    run,
    sweep_dict,
)

__all__ = ["MODES", "REPRODUCTIONS", "Claim", "Report", "Reproduction", "load", "report_from_folder", "run",
           "sweep_dict"]
