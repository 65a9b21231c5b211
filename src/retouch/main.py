"""`retouch`: the root command, which only assembles the shells' commands.

This is the one module above the apps: the editing commands (`retouch.cli`), the benchmarks
(`retouch.bench.cli`), ShapesWorld training (`retouch.shapes.cli`), batch editing
(`retouch.batch.cli`) and the web app (`retouch.ui.command`) each own their commands, and none
imports another. Subcommands load on first use, so `retouch --help` stays light.
"""

from __future__ import annotations

import click

from retouch import __version__
from retouch.shell import CONTEXT, Group

COMMANDS = {
    "edit": "retouch.cli:edit",
    "mask": "retouch.cli:mask",
    "invert": "retouch.cli:invert",
    "train": "retouch.shapes.cli:train",
    "bench": "retouch.bench.cli:bench",
    "batch": "retouch.batch.cli:batch",
    "ui": "retouch.ui.command:ui",
}


@click.group(cls=Group, context_settings=CONTEXT, lazy=COMMANDS)
@click.version_option(__version__, prog_name="retouch")
def main():
    """Edit images with text using diffusion models: DiffEdit, LEDITS (and LEDITS++), FlowEdit."""


if __name__ == "__main__":
    main()
