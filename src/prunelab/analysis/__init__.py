"""Analyses: pure functions of (model, masks, data). The ones a run can execute as a stage are
registered in :mod:`prunelab.analysis.stages` (``ANALYSES``); importing this package loads nothing."""
