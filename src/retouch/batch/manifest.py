"""A batch's manifest: one edit per row, in JSON Lines (or CSV), checked row by row.

    {"image": "cat.png", "method": "diffedit", "query": "a dog", "reference": "a cat", "seed": 3}
    {"image": "cat.png", "method": "ledits", "add": ["glasses"], "remove": ["beard"], "edit_scale": 5}

Keys: image (a path relative to the manifest), method ("diffedit" or "ledits"), the method's texts
(query, reference; prompt, source, add, remove), mask (a mask file, or "infer" for ledits), seed,
output (a file name under the output folder), preset (a name from the method's PRESETS), and any
setting by its config name. A bad row does not stop the batch: it becomes a Row with its one-line error.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from retouch.errors import InputError

TEXTS = {
    "diffedit": ("query", "reference", "preset"),
    "ledits": ("prompt", "source", "add", "remove", "preset"),
}
COMMON = ("image", "method", "mask", "seed", "output")


@dataclass(frozen=True)
class Row:
    """One manifest row, resolved: `error` says why it cannot run (None: it can)."""

    index: int
    image: Path | None = None
    method: str = ""
    texts: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    seed: int = 0
    mask: str | None = None  # a path, or "infer"
    output: Path | None = None
    error: str | None = None


def read_manifest(path: Path) -> list[dict]:
    """The manifest's rows as dicts (JSON Lines, or CSV by its .csv suffix); InputError when the
    file itself cannot be read. A line that is not JSON becomes {"_error": why} for its row."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read manifest {path}: no such file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read manifest {path}: {e}") from e
    if path.suffix.lower() == ".csv":
        return [_from_csv(r) for r in csv.DictReader(text.splitlines())]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            rows.append(value if isinstance(value, dict) else {"_error": f"line {n} is not a JSON object"})
        except json.JSONDecodeError as e:
            rows.append({"_error": f"line {n} is not JSON ({e.msg})"})
    if not rows:
        raise InputError(f"manifest {path} has no rows")
    return rows


def _from_csv(record: dict) -> dict:
    """A CSV record: empty cells dropped, add/remove split on ';', numbers parsed."""
    out = {}
    for key, value in record.items():
        if key is None or value is None or value.strip() == "":
            continue
        value = value.strip()
        if key in ("add", "remove"):
            out[key] = [v.strip() for v in value.split(";") if v.strip()]
            continue
        try:
            out[key] = json.loads(value) if key not in TEXTS["diffedit"] + TEXTS["ledits"] + COMMON else value
        except json.JSONDecodeError:
            out[key] = value
        if key == "seed":
            out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def resolve(index: int, raw: dict, base: Path, out_dir: Path, configs: dict) -> Row:
    """Check one row against the manifest's folder, the output folder and the method's config."""
    try:
        return _resolve(index, raw, base, out_dir, configs)
    except InputError as e:
        return Row(index, error=" ".join(str(e).split()))


def _resolve(index: int, raw: dict, base: Path, out_dir: Path, configs: dict) -> Row:
    if "_error" in raw:
        raise InputError(raw["_error"])
    method = raw.get("method")
    if method not in configs:
        raise InputError(f"method must be one of {', '.join(configs)}, got {method!r}")
    names = {f.name for f in fields(configs[method])}
    unknown = sorted(set(raw) - names - set(COMMON) - set(TEXTS[method]))
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} for {method}")
    if not isinstance(raw.get("image"), str) or not raw["image"].strip():
        raise InputError("image must name a file")
    image = (base / raw["image"]).resolve()
    if not image.is_file():
        raise InputError(f"cannot read image {raw['image']}: no such file")
    mask = raw.get("mask")
    if mask is not None and mask != "infer":
        if not isinstance(mask, str) or not (base / mask).is_file():
            raise InputError(f"cannot read mask {mask}: no such file")
        mask = str((base / mask).resolve())
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise InputError(f"seed must be a whole number in [0, 2^64), got {seed!r}")
    output = _output(index, raw, image, method, out_dir)
    texts = {k: raw[k] for k in TEXTS[method] if k in raw}
    settings = {k: v for k, v in raw.items() if k in names}
    return Row(index, image, method, texts, settings, seed, mask, output)


def _output(index: int, raw: dict, image: Path, method: str, out_dir: Path) -> Path:
    """The row's output file under out_dir: its own name, or '<row>-<image>-<method>.png'."""
    name = raw.get("output", f"{index:05d}-{image.stem}-{method}.png")
    if not isinstance(name, str) or not name.strip():
        raise InputError("output must be a file name")
    root = out_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise InputError(f"output {name!r} would be written outside the output folder")
    if path.name == "results.jsonl":
        raise InputError("output results.jsonl is the batch's own results file")
    return path
