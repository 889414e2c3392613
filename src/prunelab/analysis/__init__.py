"""Analyses: pure functions of (model, masks, data). Importing the package registers the analyses a
run can execute as a stage (``prunelab.analysis.stages.ANALYSES``) that live in their own modules."""

from prunelab.analysis import recall_rounds_stage  # noqa: F401  (recall_rounds)
from prunelab.analysis import regions_expected_stage  # noqa: F401  (regions_expected)
from prunelab.analysis import ticket_stage  # noqa: F401  (ticket)
