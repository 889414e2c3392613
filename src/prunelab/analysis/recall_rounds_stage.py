"""Analysis ``recall_rounds``: recall distortion after every IMP round, against the run's dense model.

Reads the per-round rows the ``imp_rounds`` schedule writes into the run's history
(``round_sparsity``, ``round_test_accuracy``, ``round_per_class_recall``; see
:mod:`prunelab.pruning.imp_rounds`) and the dense model's test evaluation, and returns for every round
``k`` (two digits) the columns ``r<k>.sparsity``, ``r<k>.test_accuracy``, ``r<k>.per_class_recall``
(';'-joined), ``r<k>.intensification_ratio`` (alpha), ``r<k>.distortion_slope`` (beta) and
``r<k>.classes_counted`` -- the measures of :func:`prunelab.analysis.recall.distortion` -- plus
``rounds``. With the label ``recall_rounds`` they read ``recall_rounds.r03.intensification_ratio``.

Registered on import of this module (``from prunelab.analysis import recall_rounds_stage``).
"""

from __future__ import annotations

import math

from prunelab.analysis.recall import distortion
from prunelab.analysis.stages import ANALYSES
from prunelab.errors import PrunelabError


def round_rows(history: list[dict]) -> list[dict]:
    """The per-round records of an ``imp_rounds`` history, in round order."""
    rows = [r for r in history if "round_per_class_recall" in r]
    return sorted(rows, key=lambda r: int(r["round"]))


@ANALYSES.register("recall_rounds")
def recall_rounds(model, masks, data, options, run) -> dict:
    """Recall distortion (Good et al. 2022) of every IMP round against the dense model of the run."""
    if run.dense is None:
        raise PrunelabError("analysis 'recall_rounds' needs the dense model's evaluation; use schedule imp_rounds")
    rounds = round_rows(run.history)
    if not rounds:
        raise PrunelabError("analysis 'recall_rounds' found no per-round records in the history; use schedule "
                            "imp_rounds (it evaluates the test split after every round)")
    out: dict = {"rounds": len(rounds)}
    for r in rounds:
        key = f"r{int(r['round']):02d}"
        out[f"{key}.sparsity"] = float(r["round_sparsity"])
        out[f"{key}.test_accuracy"] = float(r["round_test_accuracy"])
        out[f"{key}.per_class_recall"] = ";".join(f"{v:.6f}" for v in r["round_per_class_recall"])
        if float(r["round_test_accuracy"]) > 0:  # relative recall is undefined at accuracy 0
            row = distortion(run.dense.per_class_recall, run.dense.accuracy, r["round_per_class_recall"],
                             r["round_test_accuracy"]).to_row()
        else:
            row = {"intensification_ratio": math.nan, "distortion_slope": math.nan, "classes_counted": 0}
        for name in ("intensification_ratio", "distortion_slope", "classes_counted"):
            out[f"{key}.{name}"] = row[name]
    return out
