"""docs/settings.md is generated from the config dataclasses and stays so; the values each setting
is documented to take are the values its config accepts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from retouch.errors import SettingError
from retouch.settings import settings_fields

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(-?[\d.]+(?:e-?\d+)?)"
INTERVAL = re.compile(rf"^(?:([\[(]){NUMBER}, {NUMBER}\]|(≥|>) {NUMBER})(, whole)?")


def test_settings_page_is_generated_from_the_configs():
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "make_settings.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_settings_page_lists_every_setting_with_its_origin_and_presets():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import make_settings
    finally:
        sys.path.remove(str(ROOT / "docs"))
    from retouch.methods.diffedit import DiffEditConfig
    from retouch.methods.ledits import LEditsConfig

    tables = {
        m: make_settings.table(c, m).splitlines()
        for m, c in (("diffedit", DiffEditConfig), ("ledits", LEditsConfig))
    }
    for method, cls in (("diffedit", DiffEditConfig), ("ledits", LEditsConfig)):
        for s in settings_fields(cls):
            row = next(line for line in tables[method] if line.startswith(f"| `{s.name}` | `{s.flag}`"))
            assert ("**ours**" in row) == s.ours, s.name
            assert all(t in make_settings.render() for t in tables.values() for t in t)
    row = next(line for line in tables["diffedit"] if line.startswith("| `changed_word_scale`"))
    assert "`recolor` 3" in row and "[0, 100]" in row and "**ours**" in row
    row = next(line for line in tables["diffedit"] if line.startswith("| `num_inference_steps`"))
    assert "| 50 |" in row and "`--fast` 20" in row and "the paper's" in row
    row = next(line for line in tables["ledits"] if line.startswith("| `edit_threshold`"))
    assert "`style` 0.92" in row and "`background` 0.3" in row


def test_flowedit_settings_are_the_papers():
    """FlowEdit's settings are all Kulikov et al.'s: the page says so, with the values each takes."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import make_settings
    finally:
        sys.path.remove(str(ROOT / "docs"))
    from retouch.methods.flowedit import FlowEditConfig

    rows = make_settings.table(FlowEditConfig, "flowedit").splitlines()[2:]
    assert len(rows) == len(settings_fields(FlowEditConfig)) == 6
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4] == "the paper's", row
        assert cells[3] != "any, or none", row
    assert all(row in make_settings.render() for row in rows)


def _valid(cls, base: dict, name: str, value) -> bool:
    try:
        cfg = cls(**{**base, name: value})
        getattr(cfg, "check", lambda: None)()
    except SettingError:
        return False
    return True


@pytest.mark.parametrize("config", ["diffedit", "ledits", "flowedit", "train"])
def test_each_settings_documented_values_are_what_its_config_accepts(config):
    """For every number whose values read as an interval: the bounds pass or fail as written, a
    value past them fails, and a fraction fails where it must be whole."""
    from retouch.methods.diffedit import DiffEditConfig
    from retouch.methods.flowedit import FlowEditConfig
    from retouch.methods.ledits import LEditsConfig
    from retouch.shapes.train import TrainConfig

    cls, base = {
        "flowedit": (FlowEditConfig, {}),
        "diffedit": (DiffEditConfig, {"encode_ratio": 1.0}),  # one step of N = 1 is still a step
        "ledits": (LEditsConfig, {"skip": 0}),
        "train": (TrainConfig, {}),
    }[config]
    checked = 0
    for s in settings_fields(cls):
        m = INTERVAL.match(s.values)
        if s.kind not in ("int", "float") or m is None:
            continue
        low_bracket, low, high, sign, bound, whole = m.groups()
        low = float(low if low is not None else bound)
        open_low = low_bracket == "(" or sign == ">"
        assert _valid(cls, base, s.name, low) != open_low, (s.name, low)
        assert not _valid(cls, base, s.name, low - 1), s.name
        if high is not None:
            assert _valid(cls, base, s.name, float(high)) and not _valid(
                cls, base, s.name, float(high) + 1
            ), s.name
        if whole:
            assert not _valid(cls, base, s.name, low + 1.5), s.name
        checked += 1
    assert checked >= {"diffedit": 12, "ledits": 6, "flowedit": 6, "train": 15}[config]
