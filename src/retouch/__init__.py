"""retouch: edit real images with text, using diffusion models (DiffEdit, LEDITS, FlowEdit).

    import retouch
    model = retouch.load()
    result = retouch.diffedit(model, "in.png", query="a green circle on a white background",
                              reference="a red circle on a white background")
    result.image.save("out.png")

Importing retouch is light: torch, diffusers and transformers load on first use.
"""

from __future__ import annotations

import importlib

from retouch.version import __version__ as __version__

_LAZY = {
    "load": "retouch.models",
    "ModelBundle": "retouch.types",
    "Mask": "retouch.types",
    "Encoding": "retouch.types",
    "Inversion": "retouch.types",
    "EditResult": "retouch.types",
    "diffedit": "retouch.methods.diffedit",
    "diffedit_many": "retouch.methods.diffedit",
    "diffedit_mask": "retouch.methods.diffedit",
    "ddim_encoding": "retouch.methods.diffedit",
    "DiffEditConfig": "retouch.methods.diffedit",
    "ledits": "retouch.methods.ledits",
    "ledits_many": "retouch.methods.ledits",
    "invert": "retouch.methods.ledits",
    "LEditsConfig": "retouch.methods.ledits",
    "PRESETS": "retouch.methods.ledits",
    "flowedit": "retouch.methods.flowedit",
    "flowedit_many": "retouch.methods.flowedit",
    "FlowEditConfig": "retouch.methods.flowedit",
}

_MODULES = ("presets",)  # submodules a user reaches as attributes: retouch.presets.DIFFEDIT

__all__ = sorted([*_LAZY, *_MODULES])


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"retouch.{name}")
    raise AttributeError(f"module 'retouch' has no attribute {name!r}")
