from prunelab.analysis import ticket_stage  # noqa: F401  (registers the ticket analysis)
