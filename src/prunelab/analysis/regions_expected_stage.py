"""The ``regions_expected`` analysis: Cai et al.'s expected bound at the run's per-layer densities.

Cai, Nguyen, Shrestha, Good, Tu, Yu, Zhe & Serra (CPAIOR 2023), Theorem 1: the expected number of
linear regions of a ReLU MLP whose hidden layer l keeps a random fraction ``p_l`` of its weights is
at most a bound that depends only on the widths and the ``p_l``
(:func:`prunelab.analysis.regions.expected_bound`). This analysis reads each hidden layer's density
from the run's masks (1 for a layer that is not masked) and returns that bound: it is what the
``lr_bound`` allocation maximises, so it shows whether an allocation did. Columns (prefixed by the
label, ``regions_expected.``): ``bound_log2``, ``bound_densities`` (one per hidden layer) and the
rest of :meth:`RegionBound.to_row`. Serra et al.'s rank bound of the trained weights themselves is
the ``regions_bound`` analysis.

Registered on import of :mod:`prunelab.analysis` (``from prunelab.analysis import regions_expected_stage``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prunelab.analysis.affine import mlp_layers, widths
from prunelab.analysis.regions import expected_bound
from prunelab.analysis.stages import ANALYSES, Row
from prunelab.errors import PrunelabError


class ExpectedBoundOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: Literal["analytic", "montecarlo"] = Field("analytic", description="rank distribution of sparse layers")


@ANALYSES.register("regions_expected", options=ExpectedBoundOptions)
def regions_expected(model, masks, data, options, run) -> Row:
    """Cai et al. (2023) expected linear-region bound at the densities of the run's masks (MLPs)."""
    layers = mlp_layers(model)
    hidden = [layer for layer in layers if layer.relu]
    if not hidden:
        raise PrunelabError("analysis 'regions_expected' needs an MLP with at least one hidden ReLU layer")
    densities = []
    for layer in hidden:
        mask = None if masks is None else masks.get(f"{layer.name}.weight")
        densities.append(1.0 if mask is None else float(mask.float().mean()))
    ws = widths(layers)
    return expected_bound(ws[0], ws[1:-1], densities, rank=options.rank, seed=run.seed).to_row()
