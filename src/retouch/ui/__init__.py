"""The web app: `retouch ui`, or `retouch.ui.launch(retouch.load())`.

The only place retouch imports the web framework (Gradio, the `ui` extra), and only when the app
is built (`retouch.ui.app`); the per-visitor logic it serves lives in retouch.ui.session, free of it.
"""

from __future__ import annotations

import importlib

__all__ = ["build_app", "launch", "run_edit"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("retouch.ui.app"), name)
    raise AttributeError(f"module 'retouch.ui' has no attribute {name!r}")
