"""`retouch ui`: serve the web app."""

from __future__ import annotations

import click

from retouch.settings import check_number
from retouch.shell import CONTEXT, default_threads, load_model, model_options, set_threads


@click.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--max-pixels",
    type=click.IntRange(min=64),
    default=None,
    help="Uploads over this many pixels are edited resized down [default: the model's native area].",
)
@click.option("--time-limit", type=float, default=120.0, show_default=True, help="Seconds per edit.")
@click.option(
    "--concurrency", type=click.IntRange(1, 64), default=2, show_default=True, help="Edits run at once."
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="torch CPU threads of each edit [default: the idle cores (see `retouch edit diffedit --help`) "
    "shared among the --concurrency edits, at least 1].",
)
@model_options
def ui(host, port, max_pixels, time_limit, concurrency, threads, model, device, dtype):
    """Serve the web app: upload an image, edit it, download the result."""
    try:
        from retouch.ui.app import launch
    except ImportError as e:
        raise click.ClickException(f"the web app needs gradio: pip install 'retouch[ui]' ({e})") from e
    check_number("--time-limit", time_limit, low=0, low_open=True)
    set_threads(threads or max(1, default_threads() // concurrency))
    bundle, _ = load_model(model, device, dtype)
    launch(bundle, host, port, True, max_pixels, time_limit, concurrency)
