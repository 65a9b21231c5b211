"""`retouch bench`: the model alone, and the methods' edits."""

from __future__ import annotations

import click

from retouch.shell import CONTEXT, Group


@click.group(
    cls=Group,
    context_settings=CONTEXT,
    lazy={"model": "retouch.bench.model:model_command", "edits": "retouch.bench.edits:edits_command"},
)
def bench():
    """Benchmarks: the model alone, and the methods' edits."""
