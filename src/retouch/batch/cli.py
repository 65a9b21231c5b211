"""`retouch batch MANIFEST --out DIR`: edit a whole dataset, resumable, locally or on Ray.

    retouch batch edits.jsonl --out out/                 # a local pool, one worker per device
    retouch batch edits.jsonl --out out/ --workers 2     # two processes, one model each
    retouch batch edits.jsonl --out out/ --ray local     # Ray on this machine (or --ray ADDRESS)

Each row's PNG is written atomically under DIR; DIR/results.jsonl gets exactly one line per row
(status, output, UNet evaluations, seconds, or the failed row's one-line reason). Run it again with
the same arguments after any interruption: only the rows not yet done run. Exit code 0 when every
row succeeded, 1 when some failed, 2 when the manifest or the arguments cannot be used.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from retouch.shell import CONTEXT, budget_options, model_options


def _default_workers(device: str | None) -> int:
    import torch

    if (device or "cuda").startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


@click.command(context_settings=CONTEXT)
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

    from retouch.batch.engine import done_rows, run_batch
    from retouch.batch.manifest import read_manifest, resolve
    from retouch.methods.diffedit import DiffEditConfig
    from retouch.methods.ledits import LEditsConfig
    from retouch.shell import ModelLoader

    if ray_address is not None:
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise click.UsageError("--ray needs Ray: pip install 'retouch[cluster]'") from e
    configs = {"diffedit": DiffEditConfig, "ledits": LEditsConfig}
    raw = read_manifest(manifest)
    rows = [resolve(i, r, manifest.resolve().parent, out_dir, configs) for i, r in enumerate(raw)]
    already = len(done_rows(out_dir)) if out_dir.is_dir() else 0
    t0 = time.perf_counter()
    failed = 0
    with tqdm(
        total=len(rows),
        initial=already,
        desc="batch",
        disable=no_progress,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:

        def on_result(result: dict) -> None:
            nonlocal failed
            failed += result["status"] != "ok"
            bar.update(1)
            bar.set_postfix(failed=failed, refresh=False)

        loader = ModelLoader(model, device, dtype, threads, max_pixels, resize)
        results = run_batch(
            rows, out_dir, loader, workers or _default_workers(device), ray_address, on_result, batch_size
        )
    summary = {
        "rows": len(rows),
        "ok": sum(r["status"] == "ok" for r in results),
        "failed": sum(r["status"] != "ok" for r in results),
        "run_now": len(results) - already,
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
