"""The ``ticket`` analysis: the ticket a channel-pruning schedule drew, as columns of ``results.csv``.

The ``slimming`` schedule (:mod:`prunelab.pruning.slimming`) records one history row with
``stage = "ticket"``: the epoch the ticket was drawn at, whether and when the early-bird rules fired
(``eb_found``, ``eb_partition_epoch``, ``eb_mask_epoch``), the test accuracy of the dense network it
came from (``dense_test_acc``) and of the pruned one before retraining (``pruned_test_acc``), the
fraction of channels kept, the dense and retraining epochs and the partition change of pruning. This
analysis returns that row (``ticket.epoch``, ``ticket.eb_partition_epoch``, ...).

Registered on import of :mod:`prunelab.analysis` (``from prunelab.analysis import ticket_stage``).
"""

from __future__ import annotations

from prunelab.analysis.stages import ANALYSES, Row
from prunelab.errors import PrunelabError


@ANALYSES.register("ticket")
def ticket(model, masks, data, options, run) -> Row:
    """The ``stage = "ticket"`` row of the run's history (the ``slimming`` schedule writes it)."""
    rows = [r for r in run.history if r.get("stage") == "ticket"]
    if not rows:
        raise PrunelabError("analysis 'ticket' needs a schedule that records its ticket (schedule 'slimming')")
    return {k: v for k, v in rows[-1].items() if k != "stage"}
