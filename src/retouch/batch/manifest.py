"""A batch's manifest: one edit per row, in JSON Lines (or CSV), checked row by row.

    {"image": "cat.png", "method": "diffedit", "query": "a dog", "reference": "a cat", "seed": 3}
    {"image": "cat.png", "method": "ledits", "add": ["glasses"], "remove": ["beard"], "edit_scale": 5}

    {"image": "cat.png", "method": "ledits++", "add": ["glasses"]}
    {"image": "cat.png", "method": "flowedit", "source": "a cat", "target": "a dog", "n_max": 30}

Keys: image (a path relative to the manifest), method ("diffedit", "ledits", "ledits++": ledits
under its "ledits++" preset, or "flowedit": on a flow model), the method's texts
(query, reference; prompt, source, add, remove; source, target), mask (a mask file, or "infer" for
ledits and flowedit), seed, output (a file name under the output folder), preset (a name from the method's
PRESETS), and any setting by its config name. A bad row does not stop the batch: it becomes a Row
with its one-line error, as does a row of a method the batch's model cannot run (when its family is
known before loading: `retouch.models.family_of`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from retouch.errors import InputError
from retouch.files import image_format

TEXTS = {
    "diffedit": ("query", "reference", "preset"),
    "ledits": ("prompt", "source", "add", "remove", "preset"),
    "flowedit": ("source", "target", "preset"),
}
COMMON = ("image", "method", "mask", "seed", "output")
ALIASES = {"ledits++": ("ledits", "ledits++")}  # a method name that is a method under a preset
_ALL_TEXTS = {k for keys in TEXTS.values() for k in keys}


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
    key: str = ""  # a hash of the row's content and output name: what its result is filed under


MAX_NAME = 255  # bytes of one path component (the usual file system's limit)


def read_manifest(path: Path) -> list[dict]:
    """The manifest's rows as dicts (JSON Lines, or CSV by its .csv suffix; UTF-8, a byte-order
    mark read past); InputError when the file itself cannot be read or has no rows. A JSON line
    that is not an object becomes {"_error": why} for its row."""
    path = Path(path)
    try:
        info = path.stat()
    except (OSError, ValueError):
        raise InputError(f"cannot read manifest {path}: no such file") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise InputError(f"cannot read manifest {path}: not a regular file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read manifest {path}: {e}") from e
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _json_rows(text)
    if not rows:
        raise InputError(f"manifest {path} has no rows")
    return rows


def _json_rows(text: str) -> list[dict]:
    """JSON Lines: lines end at "\n" only (U+2028, U+0085 or a form feed are a string's own)."""
    rows = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            rows.append(value if isinstance(value, dict) else {"_error": f"line {n} is not a JSON object"})
        except json.JSONDecodeError as e:
            rows.append({"_error": f"line {n} is not JSON ({e.msg})"})
    return rows


def _csv_rows(path: Path, text: str) -> list[dict]:
    """CSV with a header row; a quoted cell keeps its newlines."""
    try:
        return [_from_csv(r) for r in csv.DictReader(io.StringIO(text, newline=""))]
    except csv.Error as e:
        raise InputError(f"cannot read manifest {path}: not CSV ({e})") from e


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
            out[key] = json.loads(value) if key not in (*_ALL_TEXTS, *COMMON) else value
        except json.JSONDecodeError:
            out[key] = value
        if key == "seed":
            out[key] = int(value) if re.fullmatch(r"-?[0-9]+", value) else value
    return out


OWN = ".retouch-batch"  # the batch's own folder under the output folder (lock, temporary files)
RESULTS = "results.jsonl"


def method_configs() -> dict:
    """The methods a row may name, with their config classes."""
    from retouch.methods.diffedit import DiffEditConfig
    from retouch.methods.flowedit import FlowEditConfig
    from retouch.methods.ledits import LEditsConfig

    return {"diffedit": DiffEditConfig, "ledits": LEditsConfig, "flowedit": FlowEditConfig}


def resolve_rows(
    raw: list[dict], base: Path, out_dir: Path, configs: dict | None = None, family: str | None = None
) -> list[Row]:
    """Every row checked (`resolve`), then against the others, before any model work: a row whose
    output is any row's input (image or mask, however spelled: links and hard links too) or
    another earlier row's output fails. Each row's key is a hash of its content and output.
    family: the batch's model's ("sd", "sdxl", "sd3", "flux"; None: not known before loading), so
    that a row of a method it cannot run fails here."""
    configs = method_configs() if configs is None else configs
    rows = [resolve(i, r, base, out_dir, configs, family) for i, r in enumerate(raw)]
    inputs, root = _inputs(raw, base), out_dir.resolve()
    owners: dict[str, int] = {}
    checked, seen = [], {}
    for row in rows:
        if row.error is None:
            try:
                _check_output(row, inputs, owners, root)
            except InputError as e:
                row = replace(row, error=" ".join(str(e).split()))
        key = row_key(raw[row.index], row.output, root)
        seen[key] = seen.get(key, -1) + 1  # the same row again: its own key
        if seen[key]:
            key = row_key(raw[row.index], row.output, root, seen[key])
        checked.append(replace(row, key=key))
    return checked


def row_key(raw: dict, output: Path | None, out_dir: Path, repeat: int = 0) -> str:
    """sha256 of a row's content and its output's name under out_dir (resolved), and which repeat
    of the same row it is: a changed row is a new row."""
    name = None if output is None else str(output.relative_to(out_dir))
    value = {"row": raw, "output": name, **({"repeat": repeat} if repeat else {})}
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _inputs(raw: list[dict], base: Path) -> dict:
    """{identity: row} of every image and mask the rows name: real paths, and (device, inode)
    of the files that exist."""
    seen: dict = {}
    for index, r in enumerate(raw):
        for key in ("image", "mask"):
            name = r.get(key)
            if not isinstance(name, str) or name in ("", "infer") or _bad_name(name):
                continue
            path = base / name
            seen.setdefault(os.path.realpath(path), index)
            try:
                info = path.stat()
                seen.setdefault((info.st_dev, info.st_ino), index)
            except OSError:
                pass
    return seen


def _check_output(row: Row, inputs: dict, owners: dict, root: Path) -> None:
    """The row's output: no input of the manifest, no earlier row's output, a format Pillow writes."""
    name = str(row.output.relative_to(root))
    real = os.path.realpath(row.output)
    ids = [real]
    try:
        info = os.stat(row.output)
        ids.append((info.st_dev, info.st_ino))
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"output {name} exists and is not a regular file")
    except OSError:
        pass
    for ident in ids:
        if ident in inputs:
            raise InputError(
                f"output {name} is an input of the manifest (row {inputs[ident]}'s): refusing to overwrite it"
            )
    if real in owners:
        raise InputError(f"output {name}: row {owners[real]} writes {name} too")
    image_format(row.output)
    owners[real] = row.index


def resolve(
    index: int, raw: dict, base: Path, out_dir: Path, configs: dict, family: str | None = None
) -> Row:
    """Check one row against the manifest's folder, the output folder, the method's config and, when
    the model's family is known, the methods that family runs."""
    try:
        return _resolve(index, raw, base, out_dir, configs, family)
    except InputError as e:
        return Row(index, error=" ".join(str(e).split()))
    except (OSError, ValueError) as e:  # a name the system refuses
        return Row(index, error=" ".join(f"{type(e).__name__}: {e}".split()))


def _bad_name(name: str) -> str:
    """Why a file name cannot name a file ("" when it can)."""
    if "\x00" in name:
        return "holds a NUL byte"
    if any(len(os.fsencode(part)) > MAX_NAME for part in Path(name).parts):
        return f"is too long ({len(name)} characters)"
    return ""


def _file_name(raw: dict, key: str) -> str:
    """The row's `key` as a usable file name, or InputError."""
    name = raw.get(key)
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{key} must name a file")
    why = _bad_name(name)
    if why:
        raise InputError(f"{key} {name[:40]!r}… {why}" if len(name) > 40 else f"{key} {name!r} {why}")
    return name


def _resolve(index: int, raw: dict, base: Path, out_dir: Path, configs: dict, family: str | None) -> Row:
    if "_error" in raw:
        raise InputError(raw["_error"])
    method = raw.get("method")
    if method in ALIASES:
        method, preset = ALIASES[method]
        if raw.get("preset", preset) != preset:
            raise InputError(
                f"method {raw['method']} is {method} under preset {preset}, got preset {raw['preset']!r}"
            )
        raw = {**raw, "preset": preset}
    if method not in configs:
        names = [*configs, *ALIASES]
        raise InputError(f"method must be one of {', '.join(names)}, got {method!r}")
    names = {f.name for f in fields(configs[method])}
    unknown = sorted(set(raw) - names - set(COMMON) - set(TEXTS[method]))
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} for {method}")
    if method == "flowedit":
        _check_flowedit(raw, {k: raw[k] for k in names if k in raw}, family)
    elif family is not None:
        _check_family(method, family)
    image = (base / _file_name(raw, "image")).resolve()
    if not image.is_file():
        raise InputError(f"cannot read image {raw['image']}: no such file")
    mask = raw.get("mask")
    if mask is not None and mask != "infer":
        if not (base / _file_name(raw, "mask")).is_file():
            raise InputError(f"cannot read mask {mask}: no such file")
        mask = str((base / mask).resolve())
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise InputError(f"seed must be a whole number in [0, 2^64), got {seed!r}")
    output = _output(index, raw, image, method, out_dir)
    texts = {k: raw[k] for k in TEXTS[method] if k in raw}
    settings = {k: v for k, v in raw.items() if k in names}
    return Row(index, image, method, texts, settings, seed, mask, output)


def _check_family(method: str, family: str) -> None:
    """A method the family runs (DiffEdit and LEDITS: not on FLUX), else the method's own one-line
    refusal (InputError)."""
    from types import SimpleNamespace

    from retouch.flows import refuse_flux

    if family == "flux":
        refuse_flux(SimpleNamespace(family=family), method)


def _check_flowedit(raw: dict, settings: dict, family: str | None) -> None:
    """A FlowEdit row: a target text, settings in range and, with the family known, a flow model and
    settings that fit the family's published ones (n_max at most its steps)."""
    from types import SimpleNamespace

    from retouch.flows import check_flow_model
    from retouch.methods.flowedit import FlowEditConfig, checked_config
    from retouch.presets import FLOWEDIT
    from retouch.settings import with_preset

    for key in ("source", "target"):
        if key in raw and not isinstance(raw[key], str):
            raise InputError(f"{key} must be text, got {raw[key]!r}")
    if not str(raw.get("target", "")).strip():
        raise InputError("a flowedit row needs a target text")
    config = FlowEditConfig(**settings)
    config.check()
    preset = raw.get("preset")
    if family is not None:
        model = SimpleNamespace(family=family)
        check_flow_model(model, "flowedit")
        checked_config(model, None, preset, settings)  # the family's preset, then the row's settings
    elif preset is not None:
        with_preset(config, FLOWEDIT, preset)


def _output(index: int, raw: dict, image: Path, method: str, out_dir: Path) -> Path:
    """The row's output file under out_dir: its own name, or '<row>-<image>-<method>.png'."""
    name = _file_name({"output": f"{index:05d}-{image.stem}-{method}.png", **raw}, "output")
    root = out_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise InputError(f"output {name!r} would be written outside the output folder")
    if path.name == RESULTS or path.relative_to(root).parts[0] == OWN:
        raise InputError(f"output {name} is the batch's own file ({RESULTS}, {OWN}/)")
    return path
