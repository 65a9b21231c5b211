"""docs/settings.md, generated from the config dataclasses: `python docs/make_settings.py` writes it,
`python docs/make_settings.py --check` exits 1 when it is stale (tests/test_docs_settings.py runs it).

Every field of every config: its flag, default, the values it takes, whether it is the paper's or
ours, what it does (the field's help) and which presets set it. A new config is one line of CONFIGS.
"""

from __future__ import annotations

import sys
from pathlib import Path

from retouch import presets
from retouch.settings import Setting, settings_fields

OUT = Path(__file__).resolve().parent / "settings.md"

HEADER = """# Settings

Every setting of every method, generated from the config dataclasses (`python docs/make_settings.py`;
a test fails when this page is stale). In Python a setting is a keyword (`retouch.diffedit(...,
encode_ratio=1.0)`) or a field of the config (`retouch.DiffEditConfig(encode_ratio=1.0)`); on the
command line it is a flag (`--encode-ratio 1.0`); in a batch manifest, a key (`"encode_ratio": 1.0`);
in the web app, a form field. Explicit settings override a preset's, which override the defaults.

The defaults are the papers'. **ours** marks an addition of retouch's, off (or at the paper's value)
by default; each is used by a preset or measured where it helps ([experiments.md](experiments.md)).
`retouch edit METHOD --help` lists the paper's main settings; `--help-all` lists the others
(ours, and the paper's rarely changed ones, marked *advanced* here).
"""


def _method(name: str):
    from retouch.methods import diffedit, flowedit, ledits

    return {"diffedit": diffedit, "ledits": ledits, "flowedit": flowedit}[name]


def _configs() -> list[tuple[str, str, type, str | None]]:
    """(title, a line on where its defaults come from, config class, its method or None: not a paper's)."""
    from retouch.methods.diffedit import DiffEditConfig
    from retouch.methods.flowedit import FlowEditConfig
    from retouch.methods.ledits import LEditsConfig
    from retouch.shapes.train import TrainConfig

    diffedit = "The paper: Couairon et al., ICLR 2023 ([diffedit.md](diffedit.md))."
    ledits = (
        "The papers: LEDITS (Tsaban & Passos 2023) with SEGA and edit-friendly DDPM inversion, at the "
        "values of its authors' demo ([ledits.md](ledits.md))."
    )
    flowedit = (
        "The paper: Kulikov et al., ICCV 2025; unset (none) takes the model family's published value"
        " ([flow.md](flow.md))."
    )
    train = "How the shipped model was trained (its model card); not a paper's method."
    return [
        ("DiffEdit: `retouch.DiffEditConfig`", diffedit, DiffEditConfig, "diffedit"),
        ("LEDITS: `retouch.LEditsConfig`", ledits, LEditsConfig, "ledits"),
        ("FlowEdit (flow models): `retouch.FlowEditConfig`", flowedit, FlowEditConfig, "flowedit"),
        (
            "ShapesWorld training: `retouch.shapes.train.TrainConfig` (`retouch train`)",
            train,
            TrainConfig,
            None,
        ),
    ]


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _values(s: Setting) -> str:
    if s.choices:
        return ", ".join(s.choices)
    if s.kind == "bool":
        return "on, off"
    text = s.values or "any"
    if s.kind == "per_concept":
        text += ", or one per concept"
    return text + (", or none" if s.optional else "")


def _origin(s: Setting, method: str | None) -> str:
    if method is None:
        return "–"
    return "**ours**" if s.ours else "the paper's, *advanced*" if s.advanced else "the paper's"


def _presets(s: Setting, method: str | None) -> str:
    """The presets that set it, with their values (and the method's --fast)."""
    if method is None:
        return ""
    fast = getattr(_method(method), "FAST", None)
    named = list(presets.BY_METHOD.get(method, {}).items()) + ([("--fast", fast)] if fast else [])
    return ", ".join(f"`{n}` {_shown(p[s.name])}" for n, p in named if s.name in p)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(config_cls, method: str | None) -> str:
    """One config's settings as a Markdown table."""
    rows = ["| setting | flag | default | values | origin | what it does | set by |", "|---" * 7 + "|"]
    for s in settings_fields(config_cls):
        default = s.shown or _shown(s.default)
        cells = [f"`{s.name}`", f"`{s.flag}`", default, _values(s), _origin(s, method), s.help]
        cells.append(_presets(s, method))
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows)


def render() -> str:
    """The whole page."""
    parts = [HEADER]
    for title, source, cls, method in _configs():
        parts.append(f"## {title}\n\n{source}\n\n{table(cls, method)}\n")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT.name} is stale: run python docs/make_settings.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
