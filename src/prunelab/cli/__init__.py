"""The ``prunelab`` command line: one module per command, each a thin layer over the Python API.

A command module defines ``command`` (a :class:`click.Command`) whose body parses its options, calls
one library function (mostly :mod:`prunelab.experiments.commands`) and prints the result. Adding a
command is one module here plus one line in :data:`COMMANDS`.

Errors in the input (unknown names, bad values, missing or corrupt files) print one line on stderr
and exit with code 2, never a traceback.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any

import click

from prunelab.cli.console import err_console
from prunelab.errors import PrunelabError

COMMANDS = (  # modules of prunelab.cli, each defining `command`
    "bound",
    "demo",
    "exact",
    "list_cmd",
    "prune",
    "regions",
    "report",
    "run",
    "train",
)


class _Group(click.Group):
    """Turns PrunelabError (and a few friendly cases) into one line on stderr, exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PrunelabError as e:
            err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            err_console.print("interrupted: finished runs are on disk; run the same command again to resume")
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="prunelab")
def main() -> None:
    """prunelab: prune any PyTorch model, then understand what pruning did."""


for _name in COMMANDS:
    main.add_command(import_module(f"{__name__}.{_name}").command)
del _name

__all__ = ["COMMANDS", "main"]
