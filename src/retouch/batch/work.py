"""The per-image work of a batch, the same on a local worker and in a Ray actor: every row that
edits one image, sharing one DDIM encoding (DiffEdit) or one inversion (LEDITS) per setting."""

from __future__ import annotations

import time

from retouch import __version__
from retouch.batch.manifest import Row
from retouch.errors import InputError
from retouch.files import save_image
from retouch.latents import fitted, load_image
from retouch.methods.diffedit import DiffEditConfig, ddim_encoding, diffedit
from retouch.methods.ledits import INVERSION_FIELDS, LEditsConfig, invert, ledits
from retouch.settings import with_settings
from retouch.types import ModelBundle


def edit_image(model: ModelBundle, rows: list[Row]) -> list[dict]:
    """Run the rows (all of one image) in order; a result dict per row, its PNG written
    atomically before the result is returned. A row's bad input fails that row only."""
    shared: dict = {}
    results = []
    for row in rows:
        t0 = time.perf_counter()
        try:
            image, note = fitted(model, load_image(row.image))
            evals = _edit_row(model, row, image, shared)
            results.append(
                dict(
                    row=row.index,
                    status="ok",
                    output=str(row.output),
                    unet_evals=evals,
                    seconds=round(time.perf_counter() - t0, 4),
                    **({"note": note} if note else {}),
                )
            )
        except Exception as e:  # noqa: BLE001 - one row's failure is recorded, the batch goes on
            reason = " ".join(str(e).split()) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
            results.append(
                dict(
                    row=row.index,
                    status="failed",
                    error=reason,
                    unet_evals=0,
                    seconds=round(time.perf_counter() - t0, 4),
                )
            )
    return results


def _edit_row(model: ModelBundle, row: Row, image, shared: dict) -> int:
    """One row's edit, reusing (or making and keeping) its image's encoding or inversion; returns
    the UNet evaluations this row spent."""
    t = row.texts
    if row.method == "diffedit":
        cfg = with_settings(DiffEditConfig(), row.settings)
        cfg.check()
        key = ("encoding", cfg.num_inference_steps, cfg.encode_ratio, cfg.solver)
        made = 0
        encoding = None
        if cfg.uses_encoding:
            if key not in shared:
                shared[key] = ddim_encoding(model, image, cfg)
                made = shared[key].unet_evals
            encoding = shared[key]
        result = diffedit(
            model,
            image,
            t.get("query", ""),
            t.get("reference", ""),
            cfg,
            row.seed,
            mask=row.mask,
            encoding=encoding,
        )
    else:
        cfg = with_settings(LEditsConfig(), row.settings)
        cfg.check()
        source = (t.get("source") or "").strip()
        key = ("inversion", source, row.seed, *(getattr(cfg, f) for f in INVERSION_FIELDS), cfg.skip_steps)
        made = 0
        if key not in shared:
            shared[key] = invert(model, image, source, cfg, row.seed)
            made = shared[key].unet_evals
        result = ledits(
            model,
            shared[key],
            add=t.get("add", ()),
            remove=t.get("remove", ()),
            prompt=t.get("prompt", ""),
            preset=t.get("preset"),
            seed=row.seed,
            mask=row.mask,
            image=image,
            **row.settings,
        )  # the row's settings over a preset
    params = {
        "model": model.model_id,
        "fingerprint": model.fingerprint,
        "method": row.method,
        "settings": result.settings,
        "seed": result.seed,
        "retouch": __version__,
    }
    row.output.parent.mkdir(parents=True, exist_ok=True)
    save_image(result.image, row.output, params)
    return made + result.unet_evals
