"""One call per way of counting regions on a data set, returning a flat row (for the CLI and tables).

``regions_summary(model, inputs, masks, mode)`` picks inputs with a seeded generator and runs:

- ``"line"``: :func:`count_line` on ``samples`` random pairs of inputs (mean / min / max regions);
- ``"plane"``: :func:`count_plane` (exact polygon splitting) on ``samples`` planes through random
  triples of inputs, each over the triangle they span;
- ``"exact"``: :func:`count_regions_milp` over the bounding box of ``inputs`` (per coordinate), only
  sensible for small input dimensions; a time limit gives a flagged lower bound;
- ``"patterns"``: :func:`count_patterns` over all inputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from prunelab.analysis.regions.count_line import count_line
from prunelab.analysis.regions.count_milp import count_regions_milp
from prunelab.analysis.regions.count_plane import count_plane
from prunelab.analysis.regions.patterns import as_points, count_patterns, hidden_affines
from prunelab.errors import PrunelabError
from prunelab.progress import track

MODES = ("line", "plane", "exact", "patterns")


def regions_summary(
    model: nn.Module,
    inputs: torch.Tensor | np.ndarray,
    masks: Mapping[str, torch.Tensor] | None = None,
    mode: str = "line",
    *,
    samples: int = 10,
    seed: int = 0,
    time_limit: float = 60.0,
    progress: bool = False,
) -> dict:
    """Count regions of ``model`` on ``inputs`` (N, ...) in one of :data:`MODES`; a flat result row.

    ``line``/``plane``: ``samples`` random segments / triangles through the inputs; one drawn twice is
    counted once (the count is exact, so it is the same). ``progress`` reports on stderr.
    """
    if mode not in MODES:
        raise PrunelabError(f"unknown region counting mode {mode!r}; valid: {', '.join(MODES)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise PrunelabError(f"samples must be a positive integer, got {samples!r}")
    n0 = hidden_affines(model, masks)[0].weight.shape[1]
    x = as_points(inputs, n0)
    need = {"line": 2, "plane": 3}.get(mode, 1)
    if len(x) < need:
        raise PrunelabError(f"mode {mode!r} needs at least {need} inputs, got {len(x)}")
    rng = np.random.default_rng(seed)
    row: dict = {"regions_mode": mode, "regions_inputs": len(x)}
    if mode in ("line", "plane"):
        counts, lower = [], False
        draws = [tuple(int(i) for i in rng.choice(len(x), size=need, replace=False)) for _ in range(samples)]
        # a segment / triangle drawn twice is counted once (with few inputs most draws repeat):
        # the counts are exact, so a repeat adds the same number, not new work
        done: dict[tuple[int, ...], tuple[int, bool]] = {}
        distinct = list(dict.fromkeys(tuple(sorted(d)) for d in draws))
        for key in track(distinct, len(distinct), f"regions ({mode}s)", enabled=progress):
            if mode == "line":
                done[key] = (count_line(model, x[key[0]], x[key[1]], masks).num_regions, False)
            else:
                res = count_plane(model, x[key[0]], x[key[1]], x[key[2]], masks)
                done[key] = (res.num_regions, res.is_lower_bound)
        for d in draws:
            n, low = done[tuple(sorted(d))]
            counts.append(n)
            lower |= low
        row.update(
            regions_samples=samples,
            regions_mean=float(np.mean(counts)),
            regions_min=int(np.min(counts)),
            regions_max=int(np.max(counts)),
            regions_is_lower_bound=lower,
        )
    elif mode == "exact":
        lo, hi = x.min(axis=0), x.max(axis=0)
        hi = np.where(hi > lo, hi, lo + 1e-6)  # a constant coordinate still gets a (tiny) box
        res = count_regions_milp(model, masks, lower=lo, upper=hi, time_limit=time_limit)
        row.update(res.to_row(), regions_is_lower_bound=not res.complete)
    else:
        row.update(count_patterns(model, x, masks).to_row(), regions_is_lower_bound=True)
    return row


def format_summary(row: Mapping) -> str:
    """``key: value`` lines, for printing a :func:`regions_summary` row."""
    return "\n".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items())
