"""Settings: each method's config dataclass, checked, and described for every shell.

A config field is declared once, with its default and its help (`setting(7.5, "CFG on the query")`);
`settings_fields` turns a config class into `Setting`s, from which the command line derives its
flags (`guidance_scale` → `--guidance-scale`), the web app its form fields ("Guidance scale") and
the benchmark its grids. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from retouch.errors import SettingError


def setting(
    default,
    help: str,  # noqa: A002 - the word users read
    choices: tuple = (),
    *,
    values: str = "",
    ours: bool = False,
    advanced: bool = False,
    shown: str = "",
):
    """A config field with its default, the help shown by every shell and, for text, its choices.

    values: the numbers it takes, as the docs write them ("(0, 1]", "≥ 0, whole"), which its
    config's check() enforces; ours: an addition of retouch's, not the paper's (its default leaves
    the paper's method as it is); advanced: a setting of the paper's rarely changed. The command
    line lists both under --help-all. shown: the default as help states it, where the field's
    value alone would mislead (a default that depends on other settings).
    """
    meta = {"help": help, "choices": tuple(choices), "values": values, "ours": ours, "shown": shown}
    meta["advanced"] = advanced or ours
    return field(default=default, metadata=meta)


def check_number(name: str, value, low=None, high=None, low_open=False, integer=False) -> None:
    """Raise SettingError unless value is a finite number in [low, high] ((low, high] if low_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SettingError(f"{name} must be finite, got {value}")
    if integer and int(value) != value:
        raise SettingError(f"{name} must be a whole number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise SettingError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise SettingError(f"{name} must be <= {high}, got {value}")


def with_settings(config, settings: dict):
    """config with the named fields replaced; an unknown name is an error naming the valid ones."""
    names = {f.name for f in fields(config)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise SettingError(f"unknown setting {unknown[0]!r}; valid: {', '.join(sorted(names))}")
    return dataclasses.replace(config, **settings)


def with_preset(config, presets: dict, preset: str | None):
    """config with a named preset's settings (one of `presets`), or an error naming the valid ones."""
    if preset is None:
        return config
    if preset not in presets:
        raise SettingError(f"preset must be one of {', '.join(presets)}, got {preset!r}")
    return with_settings(config, presets[preset])


def configured(config, presets: dict, preset: str | None, settings: dict):
    """config, then a named preset's settings (one of `presets`), then the explicit settings: checked."""
    cfg = with_settings(with_preset(config, presets, preset), settings)
    cfg.check()
    return cfg


def check_seed(seed) -> int:
    """The seed, if it is a whole number in [0, 2^64); else a SettingError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise SettingError(f"seed must be a whole number in [0, 2^64), got {seed!r}")
    return seed


@dataclass(frozen=True)
class Setting:
    """One field of a method's config dataclass, described for a flag or a form field.

    kind: "int", "float", "bool", "str" or "per_concept" (one number, or one per concept);
    optional: None is a valid value; help: the field's metadata["help"]; ours: retouch's addition,
    not the paper's; advanced: listed apart from the paper's main settings (every one of ours is).
    """

    name: str
    kind: str
    optional: bool
    default: Any
    help: str
    choices: tuple = ()  # the values a text setting takes (a menu), if fixed
    values: str = ""  # the numbers it takes, as the docs write them: "(0, 1]", "≥ 0, whole"
    ours: bool = False
    advanced: bool = False
    shown: str = ""  # the default as help states it, if not the value itself

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def description(self) -> str:
        """The help as every shell shows it: a setting of ours says so first."""
        return f"ours: {self.help}" if self.ours else self.help

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").capitalize()


def _kind(hint) -> tuple[str, bool]:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if union else (hint,)
    optional = type(None) in args
    args = tuple(a for a in args if a is not type(None))
    if any(typing.get_origin(a) is Sequence or a in (list, tuple) for a in args):
        return "per_concept", optional
    for t in (bool, int, float, str):
        if t in args:
            return t.__name__, optional
    raise TypeError(f"no setting kind for {hint!r}")


def settings_fields(config_cls) -> list[Setting]:
    """The fields of a config dataclass, in order, as Settings (name, kind, default, help)."""
    hints = typing.get_type_hints(config_cls)
    return [
        Setting(
            f.name,
            *_kind(hints[f.name]),
            f.default,
            f.metadata.get("help", ""),
            f.metadata.get("choices", ()),
            f.metadata.get("values", ""),
            f.metadata.get("ours", False),
            f.metadata.get("advanced", False),
            f.metadata.get("shown", ""),
        )
        for f in fields(config_cls)
    ]


def parse_numbers(text: str, optional: bool = False):
    """A per-concept setting as typed: "7" → 7, "7,5" → [7, 5], "none" → None (if optional).
    ValueError if a part is not a number."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if optional and part.lower() == "none":
            values.append(None)
            continue
        try:
            values.append(int(part))
        except ValueError:
            values.append(float(part))
    return values[0] if len(values) == 1 else values
