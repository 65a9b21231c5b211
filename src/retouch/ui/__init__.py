"""The web app: `retouch ui`, or `retouch.ui.launch(retouch.load())`.

The only place retouch imports the web framework (Gradio, the `ui` extra); the per-visitor logic
it serves lives in retouch.ui.session, free of it.
"""

from retouch.ui.app import build_app, launch, run_edit

__all__ = ["build_app", "launch", "run_edit"]
