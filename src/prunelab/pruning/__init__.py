"""Pruning: masks, criteria (what to keep), allocations (how much per layer), ``prune``, schedules.

Layer: above :mod:`prunelab.analysis` (which it may use), below :mod:`prunelab.train` (which it never
imports: schedules train through the ``fit`` their context is given, and pruning during training
enters the loop as :class:`prunelab.callbacks.Callback` objects defined here).

Importing this package registers the built-in criteria (``random``, ``magnitude``, ``lamp``,
``snip``, ``grasp``, ``synflow``, ``woodfisher``, ``cbs``, ``upa``), allocations (``global``, ``uniform``,
``uniform_plus``, ``erk``, ``igq``, ``lr_bound``), weight updates (``obs``, ``cbs``) and schedules
(``at_init``, ``oneshot``, ``imp``, ``gradual``, ``earlybird``) and structured unit scores (``l1``, ``l2``,
``ebn``, ``spline``, ``bn_scale``). See ``docs/pruning.md`` and
``docs/adding_a_criterion.md``.
"""

from __future__ import annotations

from prunelab.analysis.sparsity import LayerSparsity, SparsityReport, count_flops, sparsity_report
from prunelab.masks import (
    DEFAULT_PRUNABLE,
    Masks,
    from_torch_prune,
    make_permanent,
    prunable_modules,
    prunable_parameters,
    to_torch_prune,
)

# Importing these registers the methods each one defines.
from prunelab.pruning import earlybird as _earlybird  # noqa: F401  (earlybird schedule, bn_scale)
from prunelab.pruning import imp_rounds as _imp_rounds  # noqa: F401  (imp_rounds schedule)
from prunelab.pruning import lr_bound as _lr_bound  # noqa: F401  (lr_bound allocation)
from prunelab.pruning import lr_bound_hidden as _lr_bound_hidden  # noqa: F401  (lr_bound_hidden allocation)
from prunelab.pruning import nm as _nm  # noqa: F401  (N:M allocation)
from prunelab.pruning import second_order as _second_order  # noqa: F401  (woodfisher, cbs, obs)
from prunelab.pruning import slimming as _slimming  # noqa: F401  (slimming schedule)
from prunelab.pruning import spline as _spline  # noqa: F401  (spline structured criterion)
from prunelab.pruning import structured_schedule as _structured_schedule  # noqa: F401  (structured schedule)
from prunelab.pruning import upa as _upa  # noqa: F401  (undecayed pruning criterion)
from prunelab.pruning.allocation import ExplicitAllocation, keep_top, layer_densities
from prunelab.pruning.api import prune
from prunelab.pruning.compact import compact, remove_pruned_units
from prunelab.pruning.context import ALLOCATIONS, CRITERIA, UPDATES, ScoreContext, as_batches
from prunelab.pruning.enforce import MaskEnforcer
from prunelab.pruning.schedules import SCHEDULES
from prunelab.pruning.sparse_export import model_bytes, to_sparse

__all__ = [
    "ALLOCATIONS",
    "CRITERIA",
    "DEFAULT_PRUNABLE",
    "SCHEDULES",
    "UPDATES",
    "ExplicitAllocation",
    "LayerSparsity",
    "MaskEnforcer",
    "Masks",
    "ScoreContext",
    "SparsityReport",
    "as_batches",
    "compact",
    "count_flops",
    "from_torch_prune",
    "keep_top",
    "layer_densities",
    "make_permanent",
    "model_bytes",
    "prunable_modules",
    "prunable_parameters",
    "prune",
    "remove_pruned_units",
    "sparsity_report",
    "to_sparse",
    "to_torch_prune",
]
