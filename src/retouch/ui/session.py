"""What the web app does for one visitor, without the web framework: edit, reusing what it can.

Invert once, edit many: a visitor's inversions (LEDITS), encodings and masks (DiffEdit) are kept
in their own Cache (the app holds one per browser session, never shared), keyed by the image's
hash and the settings that produced them, so a second edit of the same image skips that work.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image

from retouch.errors import InputError, SettingError
from retouch.files import edit_params
from retouch.flows import network_name
from retouch.latents import fitted, image_hash
from retouch.methods.diffedit import DiffEditConfig, ddim_encoding, diffedit, diffedit_mask
from retouch.methods.flowedit import flowedit
from retouch.methods.ledits import LEditsConfig, invert, ledits
from retouch.presets import LEDITS, on_model, reads_mask
from retouch.settings import check_seed, configured
from retouch.types import EditResult, ModelBundle

Progress = Callable[[str, int, int], None]  # progress(stage, done, total), as the library calls it


@dataclass
class Cache:
    """A visitor's reusable values (inversions, encodings, masks), the most recent `size` kept."""

    size: int = 4
    entries: OrderedDict = field(default_factory=OrderedDict)

    def get(self, key: Hashable):
        if key in self.entries:
            self.entries.move_to_end(key)
        return self.entries.get(key)

    def put(self, key: Hashable, value) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


@dataclass(frozen=True)
class EditRequest:
    """One edit as the form describes it. settings: the method's config fields, over the preset's
    (one of the method's PRESETS, or None), which the edit's record names."""

    image: Image.Image
    method: str  # "diffedit", "ledits" or "flowedit"
    settings: dict
    seed: int = 0
    query: str = ""
    reference: str = ""
    prompt: str = ""
    source: str = ""  # LEDITS' caption, or FlowEdit's source text
    target: str = ""  # FlowEdit's target text
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    mask: str = "none"  # ledits and flowedit: "none" or "infer"
    preset: str | None = None


@dataclass(frozen=True)
class Outcome:
    """An edit's result, the mask over the input (or the input when there is no mask), and how
    long each step took (None: skipped, its value reused)."""

    result: EditResult
    overlay: Image.Image
    steps: tuple[tuple[str, float | None], ...]
    unet_evals: int  # this request's, reused values cost nothing
    params: dict[str, Any]
    note: str = ""  # the upload was resized to the app's pixel budget
    network: str = "UNet"  # the model's denoising network: "UNet", or "transformer" on SD3 and FLUX

    @property
    def status(self) -> str:
        lines = [self.note] if self.note else []
        lines += [
            f"{name}: skipped (reused)" if t is None else f"{name}: {t:.1f} s" for name, t in self.steps
        ]
        lines.append(f"{self.network} evaluations: {self.unet_evals}")
        if self.result.mask is not None:
            lines.append(f"mask area: {self.result.mask.area:.0%}")
        if self.result.message:
            lines.append(self.result.message)
        return "\n".join(lines)


def _timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def _reused(cache: Cache, key, make) -> tuple[Any, float | None]:
    """The cached value for key (and None for its time), or make() it, time it and keep it."""
    value = cache.get(key)
    if value is not None:
        return value, None
    value, seconds = _timed(make)
    cache.put(key, value)
    return value, seconds


class Stopped(InputError):
    """An edit stopped by its visitor or by the server's time limit."""


def guarded(
    progress: Progress | None, deadline: float, limit: float, stopped: Callable[[], bool]
) -> Progress:
    """`progress` that also ends the edit (Stopped) at the next step once the visitor asked to
    stop or time.monotonic() passed `deadline` (`limit` seconds after the start)."""

    def step(stage: str, done: int, total: int) -> None:
        if stopped():
            raise Stopped("stopped")
        if time.monotonic() > deadline:
            raise Stopped(
                f"the edit ran past this server's time limit of {limit:g} s: "
                "use fewer steps or a smaller image"
            )
        if progress is not None:
            progress(stage, done, total)

    return step


MASK_CHOICES = ("none", "infer")  # the form's mask choice (LEDITS, FlowEdit)


def _mask_choice(choice: str) -> str | None:
    """The form's mask ("none" or "infer") as the methods take it; anything else (a path would name
    a file on the server) is refused in one line."""
    if choice not in MASK_CHOICES:
        raise SettingError(f"mask must be none or infer, got {choice!r}")
    return None if choice == "none" else choice


def run(model: ModelBundle, cache: Cache, req: EditRequest, progress: Progress | None = None) -> Outcome:
    """Run one edit, reusing the visitor's cached inversion/encoding/mask when they fit. An image
    over the model's pixel budget is resized to it (Outcome.note says so) or refused."""
    image, note = fitted(model, req.image)
    seed = check_seed(req.seed)
    key = (image_hash(image), model.fingerprint)
    if req.method == "diffedit":
        result, steps, made = _diffedit(model, cache, req, image, seed, key, progress)
    elif req.method == "ledits":
        result, steps, made = _ledits(model, cache, req, image, seed, key, progress)
    elif req.method == "flowedit":  # no inversion, nothing to reuse
        result, t = _timed(
            lambda: flowedit(
                model,
                image,
                req.source,
                req.target,
                preset=req.preset,
                seed=seed,
                progress=progress,
                mask=_mask_choice(req.mask),
                **req.settings,
            )
        )
        steps, made = [("edit", t)], []
    else:
        raise SettingError(f"method must be diffedit, ledits or flowedit, got {req.method!r}")
    overlay = image if result.mask is None else result.mask.overlay(image)
    params = edit_params(model, req.method, result.settings, result.seed)
    evals = result.unet_evals + sum(v.unet_evals for v in made)
    return Outcome(result, overlay, tuple(steps), evals, params, note, network_name(model))


def _diffedit(model, cache, req, image, seed, key, progress):
    cfg = configured(DiffEditConfig(), on_model("diffedit", model.family), req.preset, req.settings)
    steps, made, mask, encoding = [], [], None, None
    if cfg.uses_mask:
        mask_settings = tuple((k, v) for k, v in asdict(cfg).items() if reads_mask(k))
        mask, t = _reused(
            cache,
            ("mask", *key, req.query, req.reference, seed, mask_settings),
            lambda: diffedit_mask(model, image, req.query, req.reference, config=cfg, seed=seed),
        )
        steps.append(("mask", t))
        made += [mask] if t is not None else []
    if cfg.uses_encoding:
        encoding, t = _reused(
            cache,
            ("encoding", *key, cfg.num_inference_steps, cfg.encode_ratio),
            lambda: ddim_encoding(model, image, config=cfg, progress=progress),
        )
        steps.append(("encoding", t))
        made += [encoding] if t is not None else []
    result, t = _timed(
        lambda: diffedit(
            model,
            image,
            req.query,
            req.reference,
            seed=seed,
            mask=mask,
            encoding=encoding,
            progress=progress,
            preset=req.preset,
            **req.settings,
        )
    )
    steps.append(("edit", t))
    return result, steps, made


def _ledits(model, cache, req, image, seed, key, progress):
    cfg = configured(LEditsConfig(), LEDITS, req.preset, req.settings)
    inv_key = (
        "inversion",
        *key,
        req.source.strip(),
        cfg.num_inference_steps,
        cfg.skip_steps,
        cfg.source_guidance_scale,
        cfg.solver,
        seed,
    )
    inv, t = _reused(cache, inv_key, lambda: invert(model, image, req.source, cfg, seed, progress))
    result, t_edit = _timed(
        lambda: ledits(
            model,
            inv,
            add=req.add,
            remove=req.remove,
            prompt=req.prompt,
            preset=req.preset,
            seed=seed,
            mask=_mask_choice(req.mask),
            image=image,
            progress=progress,
            **req.settings,
        )
    )
    return result, [("inversion", t), ("edit", t_edit)], [inv] if t is not None else []
