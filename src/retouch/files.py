"""Output files: written atomically, never over an input, PNGs carrying their parameters.

Every shell (the command line, the web app, the benchmark) and `Inversion.save` write through
`write_atomic`: a temporary file beside the target, renamed over it, so a reader or a crash never
sees half a file. A PNG carries the edit's parameters as JSON in its "retouch" text chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from retouch.errors import OutputError
from retouch.version import __version__

PNG_KEY = "retouch"  # the PNG text chunk holding an output's parameters, as JSON


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_output(out, inputs: Sequence[Path | str | None] = (), image: bool = True) -> Path:
    """Refuse an output path that is one of the inputs, a folder or another non-regular file, in a
    missing or unwritable folder, or (for images) of a format Pillow cannot write."""
    out = Path(out)
    for src in inputs:
        if src is not None and _same_file(out, Path(src)):
            raise OutputError(f"output {out} is the input file {src}: refusing to overwrite it")
    if out.is_dir():
        raise OutputError(f"output {out} is a folder: give a file name")
    if out.exists() and not out.is_file():
        raise OutputError(f"output {out} exists and is not a regular file: refusing to replace it")
    folder = out.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out}: folder {folder} is not writable")
    if image:
        image_format(out)
    return out


def image_format(path) -> str:
    """Pillow's format name for the file's extension; OutputError if Pillow cannot write it."""
    from PIL import Image

    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise OutputError(f"cannot write {path}: unknown image format {Path(path).suffix!r} (use .png)")
    return fmt


def write_atomic(path, save: Callable[[Path], None], tmp=None) -> None:
    """save(tmp) into a temporary file beside `path` (or at `tmp`, on the same file system), then
    rename it over `path`: a reader (or a crash) never sees a half-written file, and a failure
    leaves neither file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp") if tmp is None else Path(tmp)
    try:
        save(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)


def write_all_atomic(saves: dict) -> None:
    """Several files, all or none: each save(tmp) into a temporary file beside its path; only
    when every one is written are they renamed into place. saves: {path: save(tmp)}."""
    tmps = {Path(p): Path(p).with_name(f".{Path(p).name}.{os.getpid()}.tmp") for p in saves}
    try:
        for path, save in saves.items():
            try:
                save(tmps[Path(path)])
            except OSError as e:
                raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def image_saver(img, path, params: dict | None = None) -> Callable[[Path], None]:
    """save(tmp) for an image at `path`: its format from the path, params in a PNG's text chunk."""
    from PIL.PngImagePlugin import PngInfo

    fmt = image_format(path)
    kwargs = {}
    if fmt == "PNG" and params is not None:
        info = PngInfo()
        info.add_text(PNG_KEY, json.dumps(params, default=str))
        kwargs["pnginfo"] = info
    return lambda tmp: img.save(tmp, format=fmt, **kwargs)


def save_image(img, path, params: dict | None = None, tmp=None) -> None:
    """Write an image atomically (through `tmp`, if given); a PNG carries `params` as JSON in its
    "retouch" text chunk."""
    write_atomic(path, image_saver(img, path, params), tmp)


def edit_params(model, method: str, settings: dict, seed) -> dict:
    """What an output PNG records of the edit that made it: the model (its id, family and weights'
    fingerprint), the method, its settings and seed, and retouch's version."""
    return {
        "model": model.model_id,
        "family": model.family,
        "fingerprint": model.fingerprint,
        "method": method,
        "settings": settings,
        "seed": seed,
        "retouch": __version__,
    }


def read_params(path) -> dict:
    """The parameters retouch wrote into a PNG's text chunk."""
    from PIL import Image

    with Image.open(path) as img:
        return json.loads(img.text[PNG_KEY])


def read_jsonl(path) -> list[dict]:
    """The rows of a JSON Lines file written by `append_jsonl`, repairing an interrupted writer's
    work: a last line cut short (no newline at its end) is cut off the file, so that the next row
    appended starts on a line of its own. A missing file has no rows."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(whole))
    return [json.loads(line) for line in whole.decode().splitlines() if line.strip()]


def append_jsonl(f, row: dict) -> None:
    """Append one row to an open JSON Lines file as one whole line, on disk before returning."""
    f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())
