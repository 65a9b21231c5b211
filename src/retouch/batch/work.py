"""The per-image work of a batch, the same on a local worker and in a Ray actor: every row that
edits one image, sharing one DDIM encoding (DiffEdit) or one inversion (LEDITS) per setting; FlowEdit
rows of one source text, seed and settings run as one `flowedit_many`."""

from __future__ import annotations

import os
import time
from dataclasses import astuple
from pathlib import Path

from retouch.batch.manifest import Row
from retouch.errors import InputError
from retouch.files import edit_params, save_image
from retouch.latents import fitted, load_image
from retouch.methods.diffedit import GRID as DIFFEDIT_GRID
from retouch.methods.diffedit import ddim_encoding, diffedit_many
from retouch.methods.diffedit import edit_job as diffedit_job
from retouch.methods.flowedit import checked_config, flowedit_many
from retouch.methods.ledits import GRID as LEDITS_GRID
from retouch.methods.ledits import INVERSION_FIELDS, invert, ledits_many
from retouch.methods.ledits import edit_job as ledits_job
from retouch.text import check_prompt
from retouch.types import ModelBundle


def edit_image(
    model: ModelBundle,
    rows: list[Row],
    batch_size: int = 1,
    shared: dict | None = None,
    tmp_dir: Path | None = None,
) -> list[dict]:
    """Run the rows (all of one image); a result dict per row (in their order), its PNG written
    atomically before the result is returned. Up to `batch_size` rows of one method and step grid
    go through the UNet as one batch per step (`diffedit_many`, `ledits_many`, `flowedit_many`). A
    row's bad input fails that row only (a batch that fails is run again row by row). shared: the
    image's values (encodings, inversions) made so far. tmp_dir: where the PNGs are written before
    they are renamed into place (the batch's own folder; None: beside each output)."""
    shared = {} if shared is None else shared
    done: dict[int, dict] = {}
    for group in _groups(model, rows, batch_size):
        t0 = time.perf_counter()
        try:
            done.update(_run(model, group, shared, tmp_dir))
        except Exception as e:  # noqa: BLE001 - one row's failure is recorded, the batch goes on
            if len(group) > 1:  # which row? each alone
                alone = [r for row in group for r in edit_image(model, [row], 1, shared, tmp_dir)]
                done.update({r["row"]: r for r in alone})
                continue
            reason = " ".join(str(e).split()) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
            seconds = round(time.perf_counter() - t0, 4)
            done[group[0].index] = dict(
                row=group[0].index, status="failed", error=reason, unet_evals=0, seconds=seconds
            )
    return [done[row.index] for row in rows]


def _edit(row: Row, image=None) -> dict:
    """The row as the *_many functions take an edit (without the encoding its image shares)."""
    t = row.texts  # the row's settings over its preset
    own = dict(seed=row.seed, mask=row.mask, preset=t.get("preset"), **row.settings)
    if row.method == "diffedit":
        return dict(query=t.get("query", ""), reference=t.get("reference", ""), **own)
    texts = dict(add=t.get("add", ()), remove=t.get("remove", ()), prompt=t.get("prompt", ""))
    return dict(**texts, image=image, **own)


def _job(model: ModelBundle, row: Row):
    """The row checked as its method checks an edit: texts, seed, settings (InputError if bad)."""
    return (diffedit_job if row.method == "diffedit" else ledits_job)(model, _edit(row), None, None, {})


def _flowedit(model, row: Row) -> tuple[str, str, object]:
    """A FlowEdit row checked on the model: (source, target, its resolved FlowEditConfig)."""
    cfg = checked_config(model, preset=row.texts.get("preset"), settings=row.settings)
    source = check_prompt(model, row.texts.get("source", ""), "source", allow_empty=True)
    return source, check_prompt(model, row.texts.get("target", ""), "target"), cfg


def _grid(model: ModelBundle, row: Row):
    """What the rows of one UNet batch must share: method and step grid (FlowEdit: source text,
    seed and settings); None for a row whose settings or texts are bad (it runs alone, and fails
    alone, before any shared work)."""
    try:
        if row.method == "flowedit":
            source, _, cfg = _flowedit(model, row)
            return ("flowedit", source, row.seed, *astuple(cfg))
        cfg = _job(model, row).cfg
    except InputError:
        return None
    return (
        row.method,
        *(getattr(cfg, f) for f in (DIFFEDIT_GRID if row.method == "diffedit" else LEDITS_GRID)),
    )


def _groups(model: ModelBundle, rows: list[Row], batch_size: int) -> list[list[Row]]:
    """The rows in batches of at most batch_size that share a step grid, in manifest order."""
    by_grid: dict = {}
    for row in rows:
        key = _grid(model, row) if batch_size > 1 else None
        by_grid.setdefault(key if key is not None else ("alone", row.index), []).append(row)
    return [g[i : i + batch_size] for g in by_grid.values() for i in range(0, len(g), max(1, batch_size))]


def _run(model: ModelBundle, rows: list[Row], shared: dict, tmp_dir: Path | None) -> dict[int, dict]:
    """The rows as one batched call; their PNGs written; {row index: result dict}."""
    t0 = time.perf_counter()
    image, note = fitted(model, load_image(rows[0].image))
    if rows[0].method == "flowedit":
        results, made = _flowedit_many(model, rows, image), [0] * len(rows)
    else:
        items, edits, made = zip(*[_inputs(model, row, image, shared) for row in rows])
        many = diffedit_many if rows[0].method == "diffedit" else ledits_many
        results = many(model, list(items), list(edits))
    seconds = round((time.perf_counter() - t0) / len(rows), 4)
    out = {}
    for row, result, spent in zip(rows, results, made):
        params = edit_params(model, row.method, result.settings, result.seed)
        row.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = None if tmp_dir is None else tmp_dir / f"{row.key or row.index}.{os.getpid()}.tmp"
        save_image(result.image, row.output, params, tmp)
        out[row.index] = dict(
            row=row.index,
            status="ok",
            output=str(row.output),
            unet_evals=spent + result.unet_evals,
            seconds=seconds,
            **({"note": note} if note else {}),
        )
    return out


def _flowedit_many(model, rows: list[Row], image) -> list:
    """FlowEdit rows of one image, source, seed and settings (`_grid`): one `flowedit_many`."""
    checked = [_flowedit(model, row) for row in rows]
    source, _, cfg = checked[0]
    targets, masks = [t for _, t, _ in checked], [row.mask for row in rows]  # a path, "infer" or None
    results = flowedit_many(model, image, source, targets, cfg, seed=rows[0].seed, mask=masks)
    for row, r in zip(rows, results):
        r.settings["preset"] = row.texts.get("preset")  # each row's own (their settings are one)
    return results


def _inputs(model: ModelBundle, row: Row, image, shared: dict):
    """(what the row edits: the image or its inversion, its edit as the *_many functions take it,
    evaluations spent here making a value its image's other rows share: an encoding, an inversion)."""
    cfg, made = _job(model, row).cfg, 0
    if row.method == "diffedit":
        key = ("encoding", cfg.num_inference_steps, cfg.encode_ratio)
        if cfg.uses_encoding and key not in shared:
            shared[key] = ddim_encoding(model, image, cfg)
            made = shared[key].unet_evals
        return image, dict(_edit(row), encoding=shared.get(key) if cfg.uses_encoding else None), made
    source = (row.texts.get("source") or "").strip()
    key = ("inversion", source, row.seed, *(getattr(cfg, f) for f in INVERSION_FIELDS), cfg.skip_steps)
    if key not in shared:
        shared[key] = invert(model, image, source, cfg, row.seed)
        made = shared[key].unet_evals
    return shared[key], _edit(row, image), made
