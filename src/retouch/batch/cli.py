"""`retouch batch MANIFEST --out DIR`: edit a whole dataset, resumable, locally or on Ray.

    retouch batch edits.jsonl --out out/                 # a local pool, one worker per device
    retouch batch edits.jsonl --out out/ --workers 2     # two processes, one model each
    retouch batch edits.jsonl --out out/ --ray local     # Ray on this machine (or --ray ADDRESS)

Each row's PNG is written atomically under DIR; DIR/results.jsonl gets one line per row
(status, output, UNet evaluations, seconds, or the failed row's one-line reason), filed under a
hash of the row. Run it again after any interruption: only the rows not yet done run (a changed
row and a failed one run again). One run at a time holds DIR. Exit code 0 when every row
succeeded, 1 when some failed, 2 when the manifest, DIR or the arguments cannot be used
(docs/batch.md).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from retouch.batch.manifest import COMMON, TEXTS
from retouch.shell import CONTEXT, budget_options, model_options, on_terminal

MANIFEST_HELP = (
    "A manifest holds one edit per row: JSON Lines, or CSV with a header row (add and remove split "
    "on ';'). For example:\n\n\b\n"
    '  {"image": "photo.png", "method": "diffedit", "query": "...", "reference": "..."}\n'
    '  {"image": "photo.png", "method": "flowedit", "source": "...", "target": "...", "seed": 1}\n\n'
    f"Keys of every row: {', '.join(COMMON)} (image and mask relative to the manifest, output a "
    "file name under --out, mask 'infer' for ledits and flowedit; method diffedit, ledits, ledits++ or "
    "flowedit, "
    "the last on a flow model: --model shapes-sd3, an SD3 or FLUX folder); "
    + "; ".join(f"of {method} rows: {', '.join(keys)}" for method, keys in TEXTS.items())
    + "; and any setting of the method by its config name (`retouch edit METHOD --help-all`)."
)


def _default_workers(device: str | None) -> int:
    import torch

    if (device or "cuda").startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


@click.command(context_settings=CONTEXT, epilog=MANIFEST_HELP)
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the edited images and results.jsonl (a run there resumes).",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="Local worker processes, one model each [default: one per GPU, else 1].",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="ADDRESS|local",
    help="Run on a Ray cluster (`local`: start one on this machine) instead of the local pool.",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="torch CPU threads of each worker.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Rows of one image (same method and steps) run as one UNet batch per step.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@model_options
@budget_options
def batch(
    manifest,
    out_dir,
    workers,
    ray_address,
    threads,
    batch_size,
    as_json,
    no_progress,
    model,
    device,
    dtype,
    max_pixels,
    resize,
):
    """Run every edit of MANIFEST (JSON Lines or CSV), writing into OUT."""
    from tqdm.auto import tqdm

    from retouch.batch.engine import run_batch
    from retouch.batch.manifest import read_manifest, resolve_rows
    from retouch.models import family_of
    from retouch.shell import ModelLoader

    if ray_address is not None:
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise click.UsageError("--ray needs Ray: pip install 'retouch[cluster]'") from e
    raw = read_manifest(manifest)
    rows = resolve_rows(raw, manifest.resolve().parent, out_dir, family=family_of(model))
    t0 = time.perf_counter()
    counts = {"failed": 0, "run_now": 0}
    with tqdm(
        total=len(rows),
        desc="batch",
        disable=no_progress or not on_terminal(),
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:

        def on_result(result: dict) -> None:
            counts["failed"] += result["status"] != "ok"
            counts["run_now"] += 1
            bar.update(1)
            bar.set_postfix(failed=counts["failed"], refresh=False)

        loader = ModelLoader(model, device, dtype, threads, max_pixels, resize)
        results = run_batch(
            rows,
            out_dir,
            loader,
            workers or _default_workers(device),
            ray_address,
            on_result,
            batch_size,
            on_start=bar.update,
        )
    summary = {
        "rows": len(rows),
        "ok": sum(r["status"] == "ok" for r in results),
        "failed": sum(r["status"] != "ok" for r in results),
        "run_now": counts["run_now"],
        "seconds": round(time.perf_counter() - t0, 2),
        "results": str(out_dir / "results.jsonl"),
    }
    click.echo(
        json.dumps(summary)
        if as_json
        else f"{summary['ok']} of {summary['rows']} rows done, {summary['failed']} failed "
        f"({summary['run_now']} run now, {summary['seconds']:.1f} s): {summary['results']}"
    )
    sys.exit(0 if summary["failed"] == 0 else 1)
