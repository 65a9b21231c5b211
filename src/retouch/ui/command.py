"""`retouch ui`: serve the web app."""

from __future__ import annotations

import click

from retouch.shell import CONTEXT, load_model, model_options


@click.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@model_options
def ui(host, port, model, device, dtype):
    """Serve the web app: upload an image, edit it, download the result."""
    try:
        from retouch.ui.app import launch
    except ImportError as e:
        raise click.ClickException(f"the web app needs gradio: pip install 'retouch[ui]' ({e})") from e
    bundle, _ = load_model(model, device, dtype)
    launch(bundle, host=host, port=port)
