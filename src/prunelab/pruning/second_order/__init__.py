"""Second-order pruning: empirical Fisher, WoodFisher/OBS, and the Combinatorial Brain Surgeon.

Importing this package registers criteria ``woodfisher`` and ``cbs`` (in ``CRITERIA``) and updates
``obs`` and ``cbs`` (in ``UPDATES``). All of them read their settings from ``ctx.options``: the Fisher
keys of :class:`FisherOptions` (``fisher_samples``, ``fisher_batch``, ``damping``, ``block_size``,
``full``), the CBS-S keys of :class:`CBSOptions` (``cbs_epsilon``, ``cbs_window``, ``cbs_misses``,
``cbs_passes``, ``cbs_inits``, ``cbs_selection``) and, for criterion ``cbs`` only, ``sparsity``. See
docs/second_order.md.
"""

from prunelab.pruning.second_order.cbs import (
    CBSOptions,
    SelectionProblem,
    SelectionResult,
    cbs_delta,
    cbs_delta_full,
    cbs_select,
    chunked_magnitude_selection,
    full_selection_bytes,
    magnitude_selection,
    selection_blocks,
)
from prunelab.pruning.second_order.fisher import (
    BlockInverse,
    FisherOptions,
    FisherState,
    LowRankInverse,
    block_inverse,
    build_fisher,
    enable_shared_fisher,
    fisher_for,
    full_inverse,
    quadratic_loss,
    recursive_inverse,
    release_shared_fisher,
    shared_fisher,
)
from prunelab.pruning.second_order.gradients import gradient_matrix
from prunelab.pruning.second_order.layout import Layout, make_layout
from prunelab.pruning.second_order.woodfisher import obs_delta, woodfisher_saliency

__all__ = [
    "BlockInverse",
    "CBSOptions",
    "FisherOptions",
    "FisherState",
    "Layout",
    "LowRankInverse",
    "SelectionProblem",
    "SelectionResult",
    "block_inverse",
    "build_fisher",
    "cbs_delta",
    "cbs_delta_full",
    "cbs_select",
    "chunked_magnitude_selection",
    "enable_shared_fisher",
    "fisher_for",
    "full_inverse",
    "full_selection_bytes",
    "gradient_matrix",
    "magnitude_selection",
    "make_layout",
    "obs_delta",
    "quadratic_loss",
    "recursive_inverse",
    "release_shared_fisher",
    "selection_blocks",
    "shared_fisher",
    "woodfisher_saliency",
]
