"""``prunelab list``: every registry's names, and each method's typed options with their defaults."""

from __future__ import annotations

import inspect

import click

from prunelab.analysis.stages import ANALYSES
from prunelab.cli.console import console
from prunelab.data import DATASETS
from prunelab.models import MODELS
from prunelab.pruning import ALLOCATIONS, CRITERIA, SCHEDULES, UPDATES
from prunelab.pruning.structured import STRUCTURED

REGISTRIES = (("datasets", DATASETS), ("models", MODELS), ("criteria", CRITERIA),
              ("structured criteria", STRUCTURED), ("allocations", ALLOCATIONS),
              ("schedules", SCHEDULES), ("updates", UPDATES), ("analyses", ANALYSES))
#: Registries whose methods take typed options (shown as name(option=default, ...)).
WITH_OPTIONS = ("criteria", "allocations", "schedules", "analyses")


@click.command("list")
@click.option("--options/--names", "show_options", default=True, show_default=True,
              help="show each method's options with their defaults, or only the names")
def command(show_options: bool) -> None:
    """List the registered datasets, models, criteria, allocations, schedules, updates and analyses.

    Options are set in a TOML sweep (``[prune] options = {...}``, ``schedule_options``,
    ``analyses = [{name = ..., options = {...}}]``); an unknown option is an error naming these.
    """
    for title, registry in REGISTRIES:
        if show_options and title == "models":
            console.print("[bold]models[/] (config: model_kwargs; every model also takes init='he' | 'torch'):")
            for name in registry.names():
                params = inspect.signature(registry.get(name)).parameters.values()
                opts = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                        for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
                console.print(f"  {name}({', '.join(opts)})", highlight=False, soft_wrap=False)
        elif show_options and title in WITH_OPTIONS:
            console.print(f"[bold]{title}[/]:")
            for name in registry.names():
                console.print(f"  {registry.describe(name)}", highlight=False, soft_wrap=False)
        else:
            console.print(f"[bold]{title}[/]: {', '.join(registry.names())}", highlight=False)
