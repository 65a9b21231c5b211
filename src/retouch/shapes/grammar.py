"""Parsing the ShapesWorld caption grammar back into a background and a list of objects.

Captions come from `world.caption`: "a red circle, a blue square and a green triangle on a white
background", "a red circle on a gray background" or, with no objects, "a white background".
Edit concepts are short phrases of the same grammar: "green circle", "white background".
"""

from __future__ import annotations

import re

from retouch.shapes.world import BACKGROUNDS, COLORS, SHAPES

_BACKGROUND = re.compile(r"^(?:(?P<objects>.+?)\s+on\s+)?(?:an?\s+)?(?P<bg>\S+)\s+background$")
_SEPARATOR = re.compile(r"\s*,\s*|\s+and\s+")


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


def _parse_object(phrase: str, text: str) -> tuple[str, str]:
    """'a red circle' or 'red circle' -> ('red', 'circle')."""
    words = phrase.split()
    if words[:1] in (["a"], ["an"]):
        words = words[1:]
    if len(words) != 2:
        raise ValueError(f"cannot parse {text!r}: expected 'a <colour> <shape>', got {phrase!r}")
    color, shape = words
    if color not in COLORS:
        raise ValueError(f"cannot parse {text!r}: unknown colour {color!r}; expected one of {tuple(COLORS)}")
    if shape not in SHAPES:
        raise ValueError(f"cannot parse {text!r}: unknown shape {shape!r}; expected one of {SHAPES}")
    return color, shape


def _parse_objects(part: str, text: str) -> list[tuple[str, str]]:
    phrases = _SEPARATOR.split(part)
    if any(not p for p in phrases):
        raise ValueError(f"cannot parse {text!r}: empty object phrase in {part!r}")
    return [_parse_object(p, text) for p in phrases]


def parse_caption(text: str) -> tuple[str | None, list[tuple[str, str]]]:
    """A caption or concept phrase as (background or None, [(colour, shape), ...]).

    "a red circle and a blue square on a white background" -> ("white", [("red", "circle"),
    ("blue", "square")]); "green circle" -> (None, [("green", "circle")]); "white background" ->
    ("white", []). Raises ValueError on text outside the grammar.
    """
    norm = _normalise(text)
    if not norm:
        raise ValueError(f"cannot parse {text!r}: empty text")
    m = _BACKGROUND.match(norm)
    if m is None:
        return None, _parse_objects(norm, text)
    background = m.group("bg")
    if background not in BACKGROUNDS:
        raise ValueError(
            f"cannot parse {text!r}: unknown background {background!r}; expected one of {tuple(BACKGROUNDS)}"
        )
    part = m.group("objects")
    return background, ([] if part is None else _parse_objects(part, text))
