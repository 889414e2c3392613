"""``prunelab list``: the registered names of every registry."""

from __future__ import annotations

import click

from prunelab.cli.console import console
from prunelab.data import DATASETS
from prunelab.models import MODELS
from prunelab.pruning import ALLOCATIONS, CRITERIA, SCHEDULES, UPDATES
from prunelab.pruning.structured import STRUCTURED

REGISTRIES = (("datasets", DATASETS), ("models", MODELS), ("criteria", CRITERIA),
              ("structured criteria", STRUCTURED), ("allocations", ALLOCATIONS),
              ("schedules", SCHEDULES), ("updates", UPDATES))


@click.command("list")
def command() -> None:
    """List the registered datasets, models, criteria, allocations and schedules."""
    for title, registry in REGISTRIES:
        console.print(f"[bold]{title}[/]: {', '.join(registry.names())}")
