"""The ``prunelab`` command line: one module per command, each a thin layer over the Python API.

A command module defines ``command`` (a :class:`click.Command`) whose body parses its options, calls
one library function (mostly :mod:`prunelab.experiments.commands`) and prints the result. Adding a
command is one module here plus one line in :data:`COMMANDS`; a command's module is imported when
the command is used (or listed by ``--help``).

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

COMMANDS: dict[str, str] = {  # command name -> module of prunelab.cli that defines it as `command`
    "bound": "bound",
    "demo": "demo",
    "exact": "exact",
    "list": "list_cmd",
    "prune": "prune",
    "regions": "regions",
    "report": "report",
    "reproduce": "reproduce",
    "run": "run",
    "train": "train",
}


class _Group(click.Group):
    """Loads a command's module when the command is used (``prunelab list`` imports no training
    code, and a command's imports cannot break another command); turns PrunelabError (and a few
    friendly cases) into one line on stderr, exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            command = import_module(f"{__name__}.{COMMANDS[name]}").command
            if command.name != name:
                raise RuntimeError(f"prunelab.cli.{COMMANDS[name]} defines command {command.name!r}, not {name!r}")
            self.add_command(command)
        return super().get_command(ctx, name)

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


__all__ = ["COMMANDS", "main"]
