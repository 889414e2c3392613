"""prunelab: prune any PyTorch model, then understand what pruning did.

Subpackages: ``data`` (datasets and a fast tensor loader), ``models`` (model zoo), ``train`` (training
loop with callbacks), ``pruning`` (masks, criteria, allocations, schedules), ``analysis`` (effective
sparsity, linear regions, exact compression, ...), ``experiments`` (the config-hashed runner) and
``report`` (tables and plots).
"""

from __future__ import annotations

from prunelab.errors import PrunelabError
from prunelab.version import __version__

__all__ = ["PrunelabError", "__version__", "prune"]


def __getattr__(name: str):
    # Lazy so that ``import prunelab`` stays cheap and submodules import in any order.
    if name == "prune":
        from prunelab.pruning.api import prune

        return prune
    raise AttributeError(f"module 'prunelab' has no attribute {name!r}")
