"""Running a batch: rows grouped by image, each group on one worker that holds the model, results
appended by this process alone, one whole line per row, so that a run killed at any moment and
run again does exactly the rows not yet done.

What a run owns in its output folder (docs/batch.md): the folder OUT/.retouch-batch/ (its lock,
held with flock while the run lasts, and its temporary files, the only files it ever deletes),
OUT/results.jsonl, and the rows' outputs. A result is filed under its row's key (a hash of the
row's content and output name): a row done before is not run again; a changed row, a row that
failed and a row whose image is gone are.

Engines (retouch.pool): a local pool of spawned processes or Ray actors (`ray_address`: "local"
starts Ray on this machine), each loading the model once and running the same `edit_image`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

from retouch.batch.manifest import OWN, RESULTS, Row
from retouch.batch.work import edit_image
from retouch.errors import OutputError
from retouch.files import write_atomic
from retouch.pool import map_unordered
from retouch.shell import ModelLoader

TMP = re.compile(r"[0-9a-f]{1,64}\.[0-9]+\.tmp")  # a worker's temporary image: <row key>.<pid>.tmp


def groups(rows: list[Row]) -> list[list[Row]]:
    """The rows that can run, by image (in manifest order): one task each."""
    by_image: dict[Path, list[Row]] = {}
    for row in rows:
        if row.error is None:
            by_image.setdefault(row.image, []).append(row)
    return list(by_image.values())


# --- the output folder ------------------------------------------------------------------------------------


class OutputFolder:
    """The output folder held by one run: `with OutputFolder(out) as folder:` makes it, takes its
    lock (OutputError "in use" when another run holds it) and removes the temporary files a killed
    run left in OUT/.retouch-batch/tmp. The lock goes with the process, however it ends."""

    def __init__(self, out_dir: Path):
        self.root = Path(out_dir)
        self.own = self.root / OWN
        self.tmp = self.own / "tmp"
        self.results = self.root / RESULTS
        self._fd: int | None = None

    def __enter__(self) -> OutputFolder:
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.own / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot use output folder {self.root}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(
                f"output folder {self.root} is in use by another retouch batch (pid {holder}): "
                "wait for it to end, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        for stale in self.tmp.iterdir():  # a killed run's half-written image (our names only)
            if TMP.fullmatch(stale.name):
                stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def read_results(self) -> list[dict]:
        """The results written so far (a last line cut short by a kill is left out); OutputError
        when the file is not a batch's results."""
        path = self.results
        if not path.exists():
            return []
        where = f"{path} is not a batch's results file"
        try:
            data = path.read_bytes()
            text = data[: data.rfind(b"\n") + 1].decode()
        except IsADirectoryError:
            raise OutputError(f"{where} (a folder): move it away") from None
        except OSError as e:
            raise OutputError(f"cannot read {path}: {e.strerror or e}") from e
        except UnicodeDecodeError:
            raise OutputError(f"{where} (not UTF-8): move it away to start afresh") from None
        out = []
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                r = None
            if not (
                isinstance(r, dict) and isinstance(r.get("row"), int) and isinstance(r.get("status"), str)
            ):
                raise OutputError(f"{where} (line {n}): move it away to start afresh")
            out.append(r)
        return out


def done_results(folder: OutputFolder, rows: list[Row]) -> dict[str, dict]:
    """{key: result} of the rows done before whose image is still there, renumbered as the
    manifest now orders them (a failed row, a changed row, a row whose image is gone: not done)."""
    index = {row.key: row.index for row in rows}
    done = {}
    for r in folder.read_results():
        key = r.get("key")
        if key in index and r["status"] == "ok" and Path(str(r.get("output"))).is_file():
            done[key] = {**r, "row": index[key]}
    return done


class Results:
    """results.jsonl, rewritten once to the results still valid, then appended to: whole lines,
    on disk (one sync) at every `sync()`."""

    def __init__(self, folder: OutputFolder, kept: list[dict]):
        text = "".join(json.dumps(r) + "\n" for r in kept)
        tmp = folder.tmp / f"0.{os.getpid()}.tmp"
        write_atomic(folder.results, lambda p: Path(p).write_text(text), tmp=tmp)
        self.file = open(folder.results, "a")  # noqa: SIM115 - closed by close()
        self.pending = 0

    def add(self, result: dict) -> None:
        self.file.write(json.dumps(result) + "\n")
        self.pending += 1

    def sync(self) -> None:
        if self.pending:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.pending = 0

    def close(self) -> None:
        self.sync()
        self.file.close()


# --- the run ----------------------------------------------------------------------------------------------


def run_batch(
    rows: list[Row],
    out_dir: Path,
    loader: ModelLoader,
    workers: int = 1,
    ray_address: str | None = None,
    on_result: Callable[[dict], None] | None = None,
    batch_size: int = 1,
    on_start: Callable[[int], None] | None = None,
) -> list[dict]:
    """Run every row not done yet in out_dir and record its result (bad rows: their error, without
    running); up to batch_size rows of one image as one UNet batch per step. on_start(rows done
    before) once the folder is held. Returns the results of every row, in manifest order."""
    with OutputFolder(out_dir) as folder:
        done = done_results(folder, rows)
        if on_start:
            on_start(len(done))
        results = Results(folder, sorted(done.values(), key=lambda r: r["row"]))
        try:
            _run(rows, folder, loader, workers, ray_address, on_result, batch_size, done, results)
        finally:
            results.close()
    return [done[r.key] for r in rows if r.key in done]


def _run(rows, folder, loader, workers, ray_address, on_result, batch_size, done, results) -> None:
    keys = {row.index: row.key for row in rows}

    def record(result: dict) -> None:
        result = {**result, "key": keys[result["row"]]}
        results.add(result)
        done[result["key"]] = result
        if on_result:
            on_result(result)

    todo = [r for r in rows if r.key not in done]
    for row in todo:
        if row.error is not None:
            record(dict(row=row.index, status="failed", error=row.error, unet_evals=0, seconds=0.0))
    results.sync()  # the manifest's bad rows: one sync for all
    tasks = groups(todo)
    if tasks:
        work = partial(edit_image, batch_size=batch_size, tmp_dir=folder.tmp)
        for batch in map_unordered(work, tasks, loader, workers, ray_address):
            for result in batch:
                record(result)
            results.sync()
