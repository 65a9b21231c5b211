"""The public API reads alike: the two methods take their arguments in one order, and every public
function documents each argument and what it returns (`Args:` / `Returns:`, as diffusers does)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import retouch

SHARED = ("config", "preset", "seed", "mask", "progress")  # after the model, the image and the texts


def _params(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]


@pytest.mark.parametrize("pair", [("diffedit", "ledits"), ("diffedit_many", "ledits_many")])
def test_the_two_methods_take_their_arguments_in_one_order(pair):
    a, b = (_params(getattr(retouch, name)) for name in pair)
    assert a[0] == b[0] == "model" and "image" in a[1] and "image" in b[1]
    shared = [n for n in a if n in SHARED]
    assert shared == [n for n in b if n in SHARED] and len(shared) >= 3
    for params in (a, b):  # the texts come before the settings
        assert max(params.index(t) for t in params[2:] if t in ("query", "reference", "edits", "add",
                   "remove", "prompt", "source") and t in params) < params.index("config")  # fmt: skip


def test_diffedit_keeps_its_keywords():
    assert _params(retouch.diffedit)[:4] == ["model", "image", "query", "reference"]
    for name in ("config", "preset", "seed", "mask", "encoding", "progress"):
        assert name in _params(retouch.diffedit)


PUBLIC = [n for n in retouch.__all__ if inspect.isfunction(getattr(retouch, n, None))]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_function_documents_its_arguments_and_what_it_returns(name):
    fn = getattr(retouch, name)
    doc = inspect.getdoc(fn)
    assert "\nArgs:\n" in doc and "\nReturns:\n" in doc, name
    args = doc.split("\nArgs:\n")[1].split("\nReturns:\n")[0]
    for param in _params(fn):
        assert f"    {param} (" in args, (name, param)
    if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
        assert "    **settings:" in args, name


def test_the_public_functions_are_all_there():
    assert {"load", "diffedit", "diffedit_many", "diffedit_mask", "ddim_encoding", "ledits", "ledits_many",
            "invert"} <= set(PUBLIC)  # fmt: skip


def test_the_version_is_one_everywhere():
    """`retouch.__version__`, what an output PNG records and pyproject.toml's version agree."""
    import tomllib

    from retouch.files import edit_params

    stated = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    model = type("M", (), dict(model_id="m", family="sd", fingerprint="f"))()
    assert retouch.__version__ == stated == edit_params(model, "ledits", {}, 0)["retouch"]
