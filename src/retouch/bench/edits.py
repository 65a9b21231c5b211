"""`retouch bench edits`: ShapesBench, every method on the same ShapesWorld edits, judged.

    retouch bench edits --seed 10000000 --cases 20 --methods all --out runs/bench
    retouch bench edits --cases 10 --methods diffedit,diffusers_diffedit --steps 20 --sweep --out runs/s
    retouch bench edits --cases 500 --steps 20 --workers 2 --out runs/bench500   # BENCHMARKS.md

Case i is the ShapesWorld edit of kind EDIT_KINDS[i mod 5] on scene seed S + i (default S: the
first held-out seed). Every method runs on the same model, with the same steps and seeds. Per case
and method a JSON line goes to OUT/cases.jsonl (the judge's verdicts, PSNR/SSIM to the input outside
the changed region, PSNR to the ground truth inside it, mask IoU, UNet evaluations and wall time of
a first and of a second edit); at the end OUT/summary.md, OUT/grid_<kind>.png and, with --sweep,
OUT/tradeoff_<family>.png. A run resumes: rows already in cases.jsonl are not run again; a sweep
run on the first cases of a folder adds its rows beside the default ones. --workers K shares the
cases among K processes, one model each (on a CPU one process per core beats threads).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import click
import numpy as np

from retouch.bench.cases import Case, check_kinds, make_cases
from retouch.bench.methods import (
    COUNTERPARTS,
    METHODS,
    Context,
    Method,
    Output,
    Settings,
    Timed,
    parse_methods,
    run_method,
)
from retouch.bench.metrics import image_metrics, judge_case, mask_metrics, pixel_mask
from retouch.files import append_jsonl, read_jsonl
from retouch.shapes.judge import at_judge_size
from retouch.shapes.world import EDIT_KINDS, HELD_OUT_SEED
from retouch.shell import (
    CONTEXT,
    ModelLoader,
    SettingsCommand,
    given_settings,
    on_terminal,
    quiet_libraries,
    setting_options,
)

DEFAULT_RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9)  # DiffEdit's encoding ratio (the paper sweeps 0.5–0.9)
DEFAULT_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)  # × LEDITS's target and concept guidance scales
SWEEP_NAMES = {"diffedit": "encode_ratio", "ledits": "guidance_factor"}
SWEEP_LABELS = {"diffedit": "encoding ratio r", "ledits": "guidance scales x factor"}  # plot text: ASCII


def sweep_points(method: Method, settings: Settings, ratios, factors) -> list[dict | None]:
    """The settings a method runs at: None (the defaults), then each sweep value that differs."""
    if method.family == "diffedit":
        values, default = ratios, settings.diffedit.encode_ratio
    elif method.family == "ledits":
        values, default = factors, 1.0
    else:
        return [None]
    name = SWEEP_NAMES[method.family]
    return [None, *({name: float(v)} for v in values if abs(float(v) - default) > 1e-9)]


def _settings_at(settings: Settings, method: Method, point: dict | None) -> Settings:
    return settings.with_sweep(method.family, None if point is None else next(iter(point.values())))


def row_key(case_id: str, method: str, point: dict | None) -> tuple[str, str, str]:
    return case_id, method, json.dumps(point or None, sort_keys=True)


def read_rows(path: Path) -> list[dict]:
    """The rows of a cases.jsonl; a line cut short by an interrupted run is cut off (files.read_jsonl)."""
    return read_jsonl(path)


def evaluate(
    case: Case,
    method: Method,
    point: dict | None,
    out: Output,
    prep: Timed | None,
    edit: Timed,
    judge,
    vae_scale_factor: int,
) -> tuple[dict, np.ndarray | None]:
    """The row of one edit, and its pixel mask bool (64, 64) (None if the method has no mask).

    The edited image and the mask are read at the judge's size, as the case's ground truth is."""
    h, w = case.input_image.shape[:2]
    mask = None if out.mask is None else at_judge_size(pixel_mask(out.mask, vae_scale_factor, h, w))
    image = at_judge_size(out.image)  # uint8 (64, 64, 3)
    verdicts = (
        judge_case(judge, image, case)
        if judge is not None
        else dict.fromkeys(
            ("success", "failure", "source_gone", "read", "preserved", "preserved_fraction", "added_anywhere")
        )
    )
    first_evals = (prep.evals if prep else 0) + edit.evals
    row = dict(
        case=case.id,
        seed=case.seed,
        kind=case.kind,
        method=method.name,
        library=method.library,
        sweep=point,
        **verdicts,
        **image_metrics(image, case),
        **mask_metrics(mask, case),
        unet_evals=first_evals,
        seconds=(prep.seconds if prep else 0.0) + edit.seconds,
        unet_evals_second=edit.evals if prep else None,
        seconds_second=edit.seconds if prep else None,
        seconds_prepare=prep.seconds if prep else None,
        unet_evals_edit=edit.evals,
        unet_evals_reported=out.reported_evals,
        source_caption=case.source_caption,
        target_caption=case.target_caption,
        add=list(case.add),
        remove=list(case.remove),
    )
    return row, mask


def _save_images(images_dir: Path, case: Case, method: str, out: Output, mask: np.ndarray | None) -> None:
    from PIL import Image

    folder = images_dir / case.id
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out.image).save(folder / f"{method}.png")
    if mask is not None:
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{method}.mask.png")


def warm_up(ctx: Context, methods: Sequence[str]) -> None:
    """First calls (kernels, allocator, lazily built pipelines) happen before any clock runs."""
    import torch

    from retouch.latents import decode, encode
    from retouch.text import encode_text

    m = ctx.model
    side = m.native_size
    x = torch.zeros(1, 3, side, side, device=m.device)
    with torch.no_grad():
        z = encode(m, x)
        decode(m, z)
        from retouch.denoiser import EvalCounter, unet_eps
        from retouch.schedule import Schedule

        schedule = Schedule.from_scheduler(m.scheduler)
        t = schedule.timesteps(2)[1]
        unet_eps(m, schedule, EvalCounter())(z, t, encode_text(m, [""]))
    for name in methods:
        if METHODS[name].library == "diffusers":
            ctx.pipe(name.split("_", 1)[1].rstrip("+"))  # diffusers_ledits++: the LEDITS++ pipeline


@dataclass(frozen=True)
class Loader(ModelLoader):
    """A ModelLoader that also checks the worker loaded the parent's model (by fingerprint) and
    loads the judge. Called, it returns the worker's (Context, judge)."""

    fingerprint: str = ""
    judge: str | None = None

    def __call__(self):
        bundle = super().__call__()
        if bundle.fingerprint != self.fingerprint:
            raise RuntimeError(f"worker loaded another model ({bundle.fingerprint} != {self.fingerprint})")
        judge = None
        if self.judge is not None:
            from retouch.shapes.judge import load_judge

            judge = load_judge(Path(self.judge))
        return Context(bundle), judge


def _todo(cases, methods, settings, sweep, path: Path) -> list[tuple[Case, Method, dict | None]]:
    """Every (case, method, sweep point) not yet in cases.jsonl, case by case."""
    done = {row_key(r["case"], r["method"], r.get("sweep")) for r in read_rows(path)}
    jobs = [
        (case, METHODS[m], point)
        for case in cases
        for m in methods
        for point in (sweep_points(METHODS[m], settings, *sweep) if sweep else [None])
    ]
    return [j for j in jobs if row_key(j[0].id, j[1].name, j[2]) not in done]


def _run_jobs(ctx: Context, jobs, settings: Settings, judge, out_dir: Path, emit, status=None) -> None:
    """Run jobs in order, calling emit(row) as each finishes; preparations are shared within a case."""
    from retouch.denoiser import UNetCalls

    warm_up(ctx, list(dict.fromkeys(m.name for _, m, _ in jobs)))
    calls = UNetCalls(ctx.model.unet)
    preps: dict = {}
    current = None
    try:
        for case, method, point in jobs:
            if case.id != current:
                preps, current = {}, case.id
            if status is not None:
                status(f"{case.id} {method.name}")
            s = _settings_at(settings, method, point)
            out, prep, edit = run_method(ctx, calls, method, case, s, preps)
            row, mask = evaluate(case, method, point, out, prep, edit, judge, ctx.model.vae_scale_factor)
            if point is None:
                _save_images(out_dir / "images", case, method.name, out, mask)
            emit(row)
    finally:
        calls.unwrap()


@dataclass(frozen=True)
class _CaseJobs:
    """One worker task: every job of one case (preparations are shared within a case)."""

    jobs: tuple  # ((case, method name, sweep point), ...)
    settings: Settings
    out_dir: str


def _run_case(state, task: _CaseJobs) -> list[dict]:
    """A worker's run of one case's jobs: their rows."""
    ctx, judge = state
    rows: list[dict] = []
    jobs = [(case, METHODS[name], point) for case, name, point in task.jobs]
    _run_jobs(ctx, jobs, task.settings, judge, Path(task.out_dir), rows.append)
    return rows


def _run_parallel(
    loader: Loader,
    todo,
    settings: Settings,
    out_dir: Path,
    workers: int,
    emit,
    ray_address: str | None = None,
) -> None:
    """The jobs case by case on retouch.pool's workers (local processes, one model each, or Ray
    actors), each row emitted as its case finishes. A worker's error stops the run."""
    from retouch.pool import map_unordered

    by_case: dict[str, list] = {}
    for case, m, p in todo:
        by_case.setdefault(case.id, []).append((case, m.name, p))
    tasks = [_CaseJobs(tuple(jobs), settings, str(out_dir)) for jobs in by_case.values()]
    try:
        for rows in map_unordered(_run_case, tasks, loader, workers, ray_address):
            for row in rows:
                emit(row)
    except Exception as e:
        raise RuntimeError(f"a bench worker failed: {type(e).__name__}: {e}") from e


def run_bench(
    ctx: Context,
    cases: list[Case],
    methods: Sequence[str],
    settings: Settings,
    out_dir: Path,
    judge=None,
    sweep: tuple[Sequence[float], Sequence[float]] | None = None,
    progress: bool = True,
    workers: int = 1,
    loader: Loader | None = None,
    ray_address: str | None = None,
) -> list[dict]:
    """Run every (case, method, sweep point) not yet in out_dir/cases.jsonl, appending a row for
    each as it finishes (and its images, at the default settings). Returns all rows of the file.
    workers > 1 or a Ray address: retouch.pool's workers, each loading `loader`'s model, share
    the cases."""
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "cases.jsonl"
    todo = _todo(cases, methods, settings, sweep, path)
    with (
        open(path, "a") as f,
        tqdm(
            total=len(todo),
            desc="bench",
            disable=not (progress and on_terminal()),
            file=sys.stderr,
            dynamic_ncols=True,
        ) as bar,
    ):

        def emit(row: dict) -> None:
            append_jsonl(f, row)
            bar.update(1)

        if todo and (ray_address or (workers > 1 and len({case.id for case, _, _ in todo}) > 1)):
            if loader is None:
                raise ValueError("workers > 1 or Ray needs a Loader")
            _run_parallel(loader, todo, settings, out_dir, workers, emit, ray_address)
        elif todo:
            _run_jobs(
                ctx, todo, settings, judge, out_dir, emit, lambda s: bar.set_postfix_str(s, refresh=False)
            )
    return read_rows(path)


def write_reports(
    out_dir: Path,
    rows: list[dict],
    cases: list[Case],
    methods: Sequence[str],
    settings: Settings,
    run: dict,
    grid_cases: int = 4,
) -> list[Path]:
    """summary.md, a grid per kind and, where sweep rows exist, a trade-off plot per family."""
    from retouch.bench import report

    written = []
    path = out_dir / "summary.md"
    path.write_text(report.summary_markdown(rows, run, methods, EDIT_KINDS, COUNTERPARTS))
    written.append(path)
    have = {(r["case"], r["method"]) for r in report.default_rows(rows)}
    for kind in EDIT_KINDS:
        mine = [c for c in cases if c.kind == kind and any((c.id, m) in have for m in methods)][:grid_cases]
        if mine:
            written.append(out_dir / f"grid_{kind}.png")
            report.grid(mine, methods, out_dir / "images", written[-1])
    judged = any(r.get("success") is not None for r in rows)
    y_key, y_label = ("success", "edit success (judge)") if judged else ("psnr_target", "PSNR to target (dB)")
    for family, default in (("diffedit", settings.diffedit.encode_ratio), ("ledits", 1.0)):
        names = [m for m in METHODS if METHODS[m].family == family]
        series = report.tradeoff_points(rows, names, SWEEP_NAMES[family], default, y_key)
        if series:
            written.append(out_dir / f"tradeoff_{family}.png")
            report.tradeoff_plot(
                series, written[-1], f"{family}: edit vs background", SWEEP_LABELS[family], y_label
            )
    return written


def settings_line(s: Settings) -> str:
    d, c = s.diffedit, s.ledits
    return (
        f"DiffEdit N={d.num_inference_steps} r={d.encode_ratio} n={d.mask_samples} w={d.guidance_scale}; "
        f"LEDITS N={c.num_inference_steps} skip={c.skip_steps} w_src={c.source_guidance_scale} "
        f"w_tar={c.target_guidance_scale} s={c.edit_scale} δ={c.edit_warmup} λ={c.edit_threshold} "
        f"momentum={c.momentum_scale}; source={s.source}" + _flowedit_line(s.flowedit)
    )


def _flowedit_line(f) -> str:
    """FlowEdit's settings given to the run ('' when every one is the family's published value)."""
    given = {k: v for k, v in vars(f).items() if v is not None}
    return "; FlowEdit " + " ".join(f"{k}={v}" for k, v in given.items()) if given else ""


def make_settings(given: dict, steps: int | None, source: str) -> Settings:
    """Settings from the flags given: fields of DiffEditConfig, LEditsConfig and FlowEditConfig (a
    field several have applies to each), --steps for DiffEdit's and LEDITS' num_inference_steps
    (FlowEdit's T and n_max stay the family's published pair)."""
    from retouch.settings import with_settings

    base = Settings(source=source)
    if steps is not None:
        given = {**given, "num_inference_steps": steps}
    configs = {}
    for name in ("diffedit", "ledits", "flowedit"):
        cfg = getattr(base, name)
        names = {f.name for f in fields(cfg)} - ({"num_inference_steps"} if name == "flowedit" else set())
        configs[name] = with_settings(cfg, {k: v for k, v in given.items() if k in names})
        configs[name].check()
    return replace(base, **configs, given=tuple(sorted(given)))


def _run_record(model, settings: Settings, judge_path) -> dict:
    return dict(
        model=str(model.model_id),
        fingerprint=model.fingerprint,
        settings=_settings_json(settings),
        judge=None if judge_path is None else _judge_name(Path(judge_path)),
        settings_line=settings_line(settings),
    )


def _judge_name(path: Path) -> str:
    """What a report says of the judge: its file's name and digest, never where it is installed."""
    import hashlib

    return f"{path.name} (blake2b {hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest()})"


def _settings_json(settings: Settings) -> dict:
    """Settings as run.json holds them (tuples as lists)."""
    return json.loads(json.dumps(asdict(settings)))


def _with_new_fields(old, default):
    """Settings written before a field existed, with that field at its default (its behaviour then)."""
    if isinstance(old, dict) and isinstance(default, dict):
        return {**default, **{k: _with_new_fields(v, default.get(k)) for k, v in old.items()}}
    return old


def _check_resume(out_dir: Path, record: dict) -> None:
    """A folder holds one configuration: refuse to mix rows of other settings or another model."""
    path = out_dir / "run.json"
    if path.is_file():
        old = json.loads(path.read_text())
        old["settings"] = _with_new_fields(old.get("settings"), _settings_json(Settings()))
        for key in ("fingerprint", "settings"):
            if old.get(key) != record[key]:
                raise click.ClickException(
                    f"{out_dir} holds a run with other {key} ({old.get('settings_line', '?')} on "
                    f"{old.get('model')}): use another --out, or the same settings to resume"
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def _float_list(text: str | None, default: Sequence[float]) -> tuple[float, ...]:
    if text is None:
        return tuple(default)
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma list of numbers") from None


def _settings_options():
    from retouch.methods.diffedit import DiffEditConfig
    from retouch.methods.flowedit import FlowEditConfig
    from retouch.methods.ledits import LEditsConfig

    return setting_options(
        {"diffedit": DiffEditConfig, "ledits": LEditsConfig, "flowedit": FlowEditConfig},
        keep=lambda n: n not in ("mode", "num_inference_steps"),
        shown={"skip": "0.36·N, 36 of LEDITS' 100 steps"},
    )


def _load_judge(judge: str | None):
    """(judge or None, its path or None): --judge PATH, 'none', or the shipped one if present."""
    from retouch.shapes.judge import DEFAULT_WEIGHTS, load_judge

    if judge == "none":
        return None, None
    path = Path(judge) if judge is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        if judge is not None:
            raise click.BadParameter(f"no judge weights at {path}", param_hint="--judge")
        click.echo(f"note: no judge at {path}: judge metrics are left out", err=True)
        return None, None
    return load_judge(path), path


@click.command("edits", cls=SettingsCommand, settings=_settings_options, context_settings=CONTEXT)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for cases.jsonl, summary.md, grids and plots (a run there resumes).",
)
@click.option(
    "--seed",
    type=click.IntRange(0),
    default=HELD_OUT_SEED,
    show_default=True,
    help="Scene seed of the first case (case i: seed + i).",
)
@click.option(
    "--cases", "n_cases", type=click.IntRange(1), default=10, show_default=True, help="Number of cases."
)
@click.option(
    "--kinds", default=",".join(EDIT_KINDS), show_default=True, help="Edit kinds, cycled over cases."
)
@click.option(
    "--methods", default="all", show_default=True, help=f"'all' or a comma list of: {', '.join(METHODS)}."
)
@click.option(
    "--steps",
    type=click.IntRange(1, 1000),
    default=None,
    help="num_inference_steps of every method [default: each method's own: 50 DiffEdit, 100 LEDITS]; "
    "LEDITS's skip stays 0.36·N unless --skip is given.",
)
@click.option(
    "--source",
    type=click.Choice(["caption", "empty"]),
    default="caption",
    show_default=True,
    help="Source text of LEDITS inversions (retouch and diffusers).",
)
@click.option(
    "--sweep", is_flag=True, help="Also run the trade-off sweeps (encoding ratio, guidance factor)."
)
@click.option(
    "--ratios",
    default=None,
    help=f"DiffEdit encoding ratios of the sweep [default: {','.join(map(str, DEFAULT_RATIOS))}].",
)
@click.option(
    "--factors",
    default=None,
    help=f"LEDITS guidance factors of the sweep [default: {','.join(map(str, DEFAULT_FACTORS))}].",
)
@click.option("--model", default=None, metavar="FOLDER", help="Model folder [default: the shipped model].")
@click.option(
    "--judge", default=None, metavar="PATH|none", help="Judge weights [default: the shipped judge]."
)
@click.option("--device", default=None, help="cpu, cuda... [default: cuda if available].")
@click.option("--dtype", default=None, help="float32, float16... [default: float16 on GPU, float32 on CPU].")
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="torch CPU threads (of each worker; 1 with --workers).",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Processes sharing the cases, one model each (on a CPU: one per core).",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="ADDRESS|local",
    help="Share the cases among Ray actors (`local`: start Ray on this machine) instead of --workers.",
)
@click.option("--grid-cases", type=click.IntRange(0), default=4, show_default=True, help="Cases per grid.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def edits_command(
    out_dir,
    seed,
    n_cases,
    kinds,
    methods,
    steps,
    source,
    sweep,
    ratios,
    factors,
    model,
    judge,
    device,
    dtype,
    threads,
    workers,
    ray_address,
    grid_cases,
    no_progress,
    **settings,
):
    """ShapesBench: run editing methods on ShapesWorld edits, judge them, write a report."""
    import torch

    import retouch

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        names = parse_methods(methods)
        kind_list = [k.strip() for k in kinds.split(",") if k.strip()]
        check_kinds(kind_list)  # before the model loads
        bench_settings = make_settings(given_settings(settings), steps, source)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if "autoencoder" not in names:
        names = ["autoencoder", *names]  # the ceiling of preservation: always a row
    sweep_values = (
        (_float_list(ratios, DEFAULT_RATIOS), _float_list(factors, DEFAULT_FACTORS)) if sweep else None
    )
    if seed < HELD_OUT_SEED:
        click.echo(f"note: seeds below {HELD_OUT_SEED} are training scenes", err=True)
    quiet_libraries()
    bundle = retouch.load(model, device=device, dtype=dtype)
    cases = make_cases(seed, n_cases, kind_list, size=bundle.native_size)  # inputs at the model's size
    judge_model, judge_path = _load_judge(judge)
    record = _run_record(bundle, bench_settings, judge_path)
    _check_resume(out_dir, record)
    rows = run_bench(
        Context(bundle),
        cases,
        names,
        bench_settings,
        out_dir,
        judge_model,
        sweep_values,
        progress=not no_progress,
        workers=workers,
        ray_address=ray_address,
        loader=Loader(
            model=model,
            fingerprint=bundle.fingerprint,
            device=device,
            dtype=dtype,
            judge=None if judge_path is None else str(judge_path),
            threads=threads or 1,
        ),
    )
    for path in write_reports(out_dir, rows, cases, names, bench_settings, record, grid_cases):
        click.echo(f"wrote {path}")
