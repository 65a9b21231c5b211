"""Running a batch: rows grouped by image, each group on one worker that holds the model, results
appended by this process alone, one whole line per row, so that a run killed at any moment and
run again does exactly the rows not yet done.

Engines (retouch.pool): a local pool of spawned processes or Ray actors (`ray_address`: "local"
starts Ray on this machine), each loading the model once and running the same `edit_image`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from retouch.batch.manifest import Row
from retouch.batch.work import edit_image
from retouch.files import append_jsonl, read_jsonl
from retouch.pool import map_unordered
from retouch.shell import ModelLoader

RESULTS = "results.jsonl"


def groups(rows: list[Row]) -> list[list[Row]]:
    """The rows that can run, by image (in manifest order): one task each."""
    by_image: dict[Path, list[Row]] = {}
    for row in rows:
        if row.error is None:
            by_image.setdefault(row.image, []).append(row)
    return list(by_image.values())


def done_rows(out_dir: Path) -> dict[int, dict]:
    """The results already written (a torn last line repaired), by row index."""
    return {r["row"]: r for r in read_jsonl(out_dir / RESULTS)}


# --- the run ----------------------------------------------------------------------------------------------


def run_batch(
    rows: list[Row],
    out_dir: Path,
    loader: ModelLoader,
    workers: int = 1,
    ray_address: str | None = None,
    on_result: Callable[[dict], None] | None = None,
    batch_size: int = 1,
) -> list[dict]:
    """Run every row not yet in out_dir/results.jsonl and append its result (bad rows: their error,
    without running); up to batch_size rows of one image as one UNet batch per step. Returns the
    results of every row, in manifest order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.rglob(".*.tmp"):  # a killed run's half-written image: never left behind
        stale.unlink(missing_ok=True)
    done = done_rows(out_dir)
    todo = [r for r in rows if r.index not in done]
    with open(out_dir / RESULTS, "a") as f:

        def record(result: dict) -> None:
            append_jsonl(f, result)
            done[result["row"]] = result
            if on_result:
                on_result(result)

        for row in todo:
            if row.error is not None:
                record(dict(row=row.index, status="failed", error=row.error, unet_evals=0, seconds=0.0))
        tasks = groups(todo)
        if tasks:
            work = partial(edit_image, batch_size=batch_size)
            for batch in map_unordered(work, tasks, loader, workers, ray_address):
                for result in batch:
                    record(result)
    return [done[r.index] for r in rows if r.index in done]
