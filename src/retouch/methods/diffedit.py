"""DiffEdit (Couairon et al., ICLR 2023, arXiv 2210.11427), as docs/diffedit.md states it.

    mask = diffedit_mask(model, image, query, reference)     # §3.2: contrast noise predictions
    enc  = ddim_encoding(model, image)                       # DDIM-encode with ∅ up to ratio r
    out  = diffedit(model, image, query, reference, mask=mask, encoding=enc)   # masked decoding

`diffedit` computes whatever it is not given; the mask and the encoding are values a caller keeps
and reuses for other queries on the same image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial

import torch

from retouch.attention import masked_word_scales, word_scales
from retouch.denoiser import EvalCounter, branch_order, guided_eps, unet_eps
from retouch.errors import SettingError
from retouch.flows import check_carried_over
from retouch.inversion import ddim_encode
from retouch.latents import decode, paste_back, to_image, upsample_mask
from retouch.masks import binarize, difference_map, refined_scores, strongest_regions
from retouch.methods.common import (
    Prepared,
    Progress,
    check_finite,
    check_model,
    generator,
    given_mask,
    prepare,
    stage,
)
from retouch.presets import DIFFEDIT, on_model
from retouch.sampling import ddim_sample
from retouch.schedule import Schedule
from retouch.settings import check_number, check_seed, configured, setting
from retouch.text import check_prompt, encode_text
from retouch.timing import Timer
from retouch.types import EditResult, Encoding, Mask, ModelBundle

MODES = ("diffedit", "no_mask", "no_encoding", "sdedit")
# The named fast setting: half the evaluations of the defaults at their quality on ShapesBench (the
# paper's DDIM at N=20: 68 evaluations; DPM-Solver++ did worse there, BENCHMARKS.md)
FAST = dict(num_inference_steps=20)
PRESETS = DIFFEDIT  # named settings for an edit's aim (retouch.presets)


@dataclass(frozen=True)
class DiffEditConfig:
    """Every DiffEdit default, once. Paper values unless noted."""

    num_inference_steps: int = setting(50, "N, DDIM steps of the full schedule", values="[1, 1000], whole")
    encode_ratio: float = setting(
        0.8,
        "r: encode through the first r·N steps (paper sweeps 0.5–0.9)",
        values="(0, 1], at least one step of N",
    )
    guidance_scale: float = setting(
        7.5, "CFG on the query while decoding (Stable Diffusion's 7.5)", values="≥ 0"
    )
    mask_samples: int = setting(10, "n independent noises for the mask", values="[1, 1000], whole")
    mask_strength: float = setting(
        0.5, "noise level of the mask's samples: halfway through the schedule", values="(0, 1]"
    )
    mask_clamp: float = setting(3.0, "k: clamp D to [0, k·mean D] before rescaling", values="> 0")
    mask_threshold: float = setting(
        0.5, "binarisation threshold (0.25 overshoots, 0.75 too tight)", values="[0, 1]"
    )
    mask_guidance_scale: float | None = setting(
        None,
        "diffusers' CFG on both mask sides; None: the paper's conditional predictions",
        ours=True,
        values="> 0",
    )
    mask_refine_radius: float = setting(
        0.0,
        "fit D to the image's edges before thresholding, a guided filter with the image as"
        " guide, its window this many latent cells each side (an object's mask fills, not spills);"
        " 0: the paper",
        ours=True,
        values="[0, 64]",
    )
    mask_keep_ratio: float = setting(
        0.0,
        "keep only the mask's connected regions whose summed scores reach this share of the"
        " strongest region's (a weaker region is often another object the texts' words touch); 0: all",
        ours=True,
        values="[0, 1]",
    )
    mode: str = setting(
        "diffedit", "the method, or one of the paper's ablations: no_mask, no_encoding, sdedit", MODES
    )
    guide_from_reference: bool = setting(
        False, "decoding's guidance steers from the reference text instead of from ∅", ours=True
    )
    reference_guidance_scale: float = setting(
        0.0,
        "w_R, decoding also steers away from the reference, + w_R·(ε(Q) − ε(R)) (one more"
        " UNet branch); 0: the paper",
        ours=True,
        values="≥ 0",
    )
    changed_word_scale: float = setting(
        1.0,
        "inside the mask, the cross-attention to the query's words the reference lacks is"
        " weighed by this (renormalised over the words); 1: the paper",
        ours=True,
        values="[0, 100]",
    )
    shared_word_scale: float = setting(
        1.0,
        "the same for the query's words the reference also has (the scene kept); 1: the paper",
        ours=True,
        values="[0, 100]",
    )
    paste_back: bool = setting(False, "paste the unmasked input pixels back after decoding", ours=True)
    feather: float = setting(
        1.0, "pixels of Gaussian feather for paste-back and the display mask", ours=True, values="[0, 64]"
    )

    def check(self) -> None:
        check_number("num_inference_steps", self.num_inference_steps, 1, 1000, integer=True)
        check_number("encode_ratio", self.encode_ratio, 0, 1, low_open=True)
        if int(round(self.encode_ratio * self.num_inference_steps)) < 1:
            raise SettingError("encode_ratio × num_inference_steps must be at least 1 step")
        check_number("guidance_scale", self.guidance_scale, 0)
        check_number("reference_guidance_scale", self.reference_guidance_scale, 0)
        check_number("changed_word_scale", self.changed_word_scale, 0, 100)
        check_number("shared_word_scale", self.shared_word_scale, 0, 100)
        check_number("mask_samples", self.mask_samples, 1, 1000, integer=True)
        check_number("mask_strength", self.mask_strength, 0, 1, low_open=True)
        check_number("mask_clamp", self.mask_clamp, 0, low_open=True)
        check_number("mask_threshold", self.mask_threshold, 0, 1)
        check_number("mask_refine_radius", self.mask_refine_radius, 0, 64)
        check_number("mask_keep_ratio", self.mask_keep_ratio, 0, 1)
        if self.mask_guidance_scale is not None:
            check_number("mask_guidance_scale", self.mask_guidance_scale, 0, low_open=True)
        check_number("feather", self.feather, 0, 64)
        if self.mode not in MODES:
            raise SettingError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @property
    def encode_steps(self) -> int:
        return int(round(self.encode_ratio * self.num_inference_steps))

    @property
    def weighs_words(self) -> bool:
        return (self.changed_word_scale, self.shared_word_scale) != (1.0, 1.0)

    @property
    def uses_mask(self) -> bool:
        return self.mode in ("diffedit", "no_encoding")

    @property
    def uses_encoding(self) -> bool:
        return self.mode in ("diffedit", "no_mask")


def _config(model, config: DiffEditConfig | None, preset: str | None, settings: dict) -> DiffEditConfig:
    """The config, then a preset's settings (PRESETS; on a flow model less the word weights, which
    weigh a UNet's cross-attention), then the explicit settings, checked."""
    cfg = configured(config or DiffEditConfig(), on_model("diffedit", model.family), preset, settings)
    # the check accepts whole-number floats (10.0); store them as ints, which size and index tensors
    return replace(cfg, num_inference_steps=int(cfg.num_inference_steps), mask_samples=int(cfg.mask_samples))


# --- Step 1: the mask (§3.2) -------------------------------------------------------------------


def diffedit_mask(
    model: ModelBundle,
    image,
    query: str,
    reference: str = "",
    config: DiffEditConfig | None = None,
    preset: str | None = None,
    seed: int = 0,
    x0: torch.Tensor | None = None,
    **settings,
) -> Mask:
    """DiffEdit's mask alone (the paper's §3.2; docs/diffedit.md, step 1): where the noise
    predicted under the query and under the reference differ.

    Args:
        model (`ModelBundle`): a model from `retouch.load`.
        image (path, `PIL.Image.Image` or array): the image to edit.
        query (`str`): the text the edited image should fit.
        reference (`str`, defaults to ""): the text of what to change; the image's caption works best.
        config (`DiffEditConfig`, *optional*): every setting at once; the defaults are the paper's.
        preset (`str`, *optional*): one of `PRESETS` (e.g. "tight-mask"), under the explicit settings.
        seed (`int`, defaults to 0): the seed of the mask's noises.
        x0 (`torch.Tensor` [1, C, h, w], *optional*): the image's latent when the caller holds it.
        **settings: any `DiffEditConfig` field, e.g. `mask_threshold=0.8`.

    Returns:
        `Mask`: binary [h, w] at latent resolution, soft [H, W] for display and compositing, the
        scores [h, w], its area and the UNet evaluations it cost (2n).
    """
    check_model(model)
    cfg = _config(model, config, preset, settings)
    check_carried_over(model, "diffedit", cfg)
    query, reference = check_prompt(model, query, "query"), check_prompt(model, reference, "reference", True)
    return _infer_mask(model, prepare(model, image, x0=x0), query, reference, cfg, check_seed(seed))


def _infer_mask(model, prep: Prepared, query: str, reference: str, cfg: DiffEditConfig, seed: int) -> Mask:
    """D = mean over n noises and channels of |ε(x_t, Q) − ε(x_t, R)| at strength 0.5, clamped,
    rescaled and binarised. Its cost (2n evaluations) is in the Mask."""
    schedule, counter = Schedule.from_scheduler(model.scheduler), EvalCounter()
    timesteps = schedule.timesteps(cfg.num_inference_steps)
    n = cfg.num_inference_steps
    t = timesteps[min(n - 1, n - int(n * cfg.mask_strength))]  # diffusers' get_timesteps(strength)
    x0 = prep.x0
    noises = torch.randn(
        (cfg.mask_samples, *x0.shape[1:]), generator=generator(model, seed), device=x0.device
    )  # [n, C, h, w]
    cond_q, cond_r, uncond = encode_text(model, [query, reference, ""]).split(1)
    d = difference_map(
        unet_eps(model, schedule, counter, _size(prep)),
        schedule,
        x0,
        t,
        cond_q,
        cond_r,
        noises,
        uncond=uncond if cfg.mask_guidance_scale is not None else None,
        guidance_scale=cfg.mask_guidance_scale,
    )
    fit = None  # ours, with mask_refine_radius: the scores fitted to the image's edges, then thresholded
    if cfg.mask_refine_radius > 0:
        px, factor = prep.pixels.tensor, model.vae_scale_factor
        fit = partial(refined_scores, pixels=px, factor=factor, radius=cfg.mask_refine_radius)
    latent, scores = binarize(d, cfg.mask_clamp, cfg.mask_threshold, fit)
    latent = strongest_regions(latent, scores, cfg.mask_keep_ratio)
    soft = upsample_mask(latent, model.vae_scale_factor, prep.pixels.height, prep.pixels.width, cfg.feather)
    return Mask(latent, soft, scores, counter.n)


def _resolve_mask(model, prep: Prepared, mask, query, reference, cfg, seed) -> tuple[Mask | None, int]:
    """The edit's mask and the evaluations spent on it here: none for the unmasked modes; a Mask
    given (paid for before: 0); a user mask (image/array, nonzero = edit: 0); else inferred."""
    if not cfg.uses_mask:
        return None, 0
    if mask is None:
        m = _infer_mask(model, prep, query, reference, cfg, seed)
        return m, m.unet_evals
    return given_mask(model, mask, prep, cfg.feather), 0


# --- Step 2: the encoding (§3.1) ---------------------------------------------------------------


def ddim_encoding(
    model: ModelBundle,
    image,
    config: DiffEditConfig | None = None,
    preset: str | None = None,
    progress: Progress | None = None,
    **settings,
) -> Encoding:
    """DDIM-encode the image with the unconditional model (∅, no CFG: the paper's choice)
    through the first r·N steps, keeping every intermediate latent (docs/diffedit.md, step 2).

    Args:
        model (`ModelBundle`): a model from `retouch.load`.
        image (path, `PIL.Image.Image` or array): the image to encode.
        config (`DiffEditConfig`, *optional*): every setting at once; the defaults are the paper's.
        preset (`str`, *optional*): one of `PRESETS`, under the explicit settings.
        progress (`Callable[[str, int, int], None]`, *optional*): called as progress("encode", done,
            total) after each step.
        **settings: any `DiffEditConfig` field; the encoding reads num_inference_steps and
            encode_ratio.

    Returns:
        `Encoding`: the latents [1, C, h, w] at every level of the encoding, to pass to `diffedit`
        (encoding=) for any number of edits of the same image.
    """
    check_model(model)
    cfg = _config(model, config, preset, settings)
    check_carried_over(model, "diffedit", cfg)
    return _encode(model, prepare(model, image), cfg, progress)


def _encode(model, prep: Prepared, cfg: DiffEditConfig, progress) -> Encoding:
    schedule, counter = Schedule.from_scheduler(model.scheduler), EvalCounter()
    ts = schedule.timesteps(cfg.num_inference_steps)[-cfg.encode_steps :][::-1]  # ascending
    eps = guided_eps(unet_eps(model, schedule, counter, _size(prep)), encode_text(model, [""]), None, 1.0)
    latents = ddim_encode(eps, schedule, prep.x0, ts, stage(progress, "encode"))
    return Encoding(
        tuple(latents),
        (-1, *ts),
        cfg.num_inference_steps,
        cfg.encode_ratio,
        counter.n,
        prep.hash,
        model.fingerprint,
        model.family,
    )


def _check_encoding(enc: Encoding, prep: Prepared, model, cfg: DiffEditConfig) -> None:
    """An Encoding against the edit (SettingError, one line): made on this model's family (first,
    so that a value of another family is named as such), with its weights, from this image, on the
    edit's steps and this scheduler's timesteps, with finite latents of the image's shape."""
    if enc.family != model.family:
        raise SettingError(f"encoding was made with an {enc.family} model, this is {model.family}")
    if enc.fingerprint != model.fingerprint:
        raise SettingError("encoding was made with another model")
    if enc.image_hash != prep.hash:
        raise SettingError("encoding was made from another image")
    if (enc.num_inference_steps, enc.encode_ratio) != (cfg.num_inference_steps, cfg.encode_ratio):
        raise SettingError(
            f"encoding has num_inference_steps={enc.num_inference_steps}, encode_ratio="
            f"{enc.encode_ratio}; the edit asks for {cfg.num_inference_steps}, {cfg.encode_ratio}"
        )
    ts = Schedule.from_scheduler(model.scheduler).timesteps(cfg.num_inference_steps)[-cfg.encode_steps :]
    if tuple(enc.timesteps) != (-1, *ts[::-1]) or len(enc.latents) != len(enc.timesteps):
        raise SettingError(
            f"encoding has {len(enc.latents)} latents at timesteps {list(enc.timesteps)[:6]}…; this "
            f"model's scheduler makes {len(ts) + 1} at (-1, {ts[-1]}, …, {ts[0]}) for these steps"
        )
    bad = [list(x.shape) for x in enc.latents if tuple(x.shape) != tuple(prep.x0.shape)]
    if bad or not all(bool(torch.isfinite(x).all()) for x in enc.latents):
        raise SettingError(
            f"encoding latents must be finite and shaped like the image's {list(prep.x0.shape)}"
            + (f", got {bad[0]}" if bad else "")
        )


def _resolve_start(model, prep: Prepared, encoding, cfg: DiffEditConfig, seed: int, progress):
    """(x at level t_r [1, C, h, w], background {level: latent}, evaluations spent here).

    The encoding given (0) or computed (r·N); without encoding (the ablations): x0 noised to each
    level with one seeded noise, SDEdit's way (0)."""
    if cfg.uses_encoding:
        spent = 0
        if encoding is None:
            encoding = _encode(model, prep, cfg, progress)
            spent = encoding.unet_evals
        return encoding.latents[-1], dict(zip(encoding.timesteps, encoding.latents)), spent
    schedule = Schedule.from_scheduler(model.scheduler)
    ts = schedule.timesteps(cfg.num_inference_steps)[-cfg.encode_steps :]
    noise = torch.randn(prep.x0.shape, generator=generator(model, seed + 1), device=prep.x0.device)
    background = {t: schedule.add_noise(prep.x0, noise, t) for t in ts}
    background[-1] = prep.x0
    return background[ts[0]], background, 0


# --- Step 3: masked decoding (§3.3) ------------------------------------------------------------


def _decode(model, start, background, masks, jobs: list[_Job], cfg, size, progress):
    """DDIM decoding under CFG on each edit's query from level t_r, the background following its
    own trajectory outside the mask, all edits as ONE batch per step: start [B, C, h, w],
    background {level: [B, C, h, w]}, masks [B, 1, h, w] or None. (final latents, evaluations).
    Guidance steers from ∅ (the paper), or from an edit's reference when it asks so; an edit with
    reference_guidance_scale w_R > 0 (and a reference) also steers away from its reference; an edit
    with word scales has the query branch's cross-attention weighed inside its mask (the whole
    image without one: retouch.attention)."""
    schedule, counter = Schedule.from_scheduler(model.scheduler), EvalCounter()
    ts = schedule.timesteps(cfg.num_inference_steps)[-cfg.encode_steps :]  # descending
    scales = [j.cfg.guidance_scale for j in jobs]
    negatives = [j.reference if j.cfg.guide_from_reference else "" for j in jobs]
    if len(set(negatives)) == 1:
        negatives = negatives[:1]
    embs = encode_text(model, [*negatives, *(j.query for j in jobs)])
    uncond, cond = embs[: len(negatives)], embs[len(negatives) :]  # [1 or B, L, D], [B, L, D]
    scale = (
        scales[0] if len(set(scales)) == 1 else torch.tensor(scales, device=start.device).view(-1, 1, 1, 1)
    )
    away, away_scale = None, 0.0
    w_r = [j.cfg.reference_guidance_scale if j.reference else 0.0 for j in jobs]
    if any(w_r):
        away = encode_text(model, [j.reference for j in jobs])  # [B, L, D]
        away_scale = torch.tensor(w_r, device=start.device).view(-1, 1, 1, 1)
    eps = guided_eps(unet_eps(model, schedule, counter, size), cond, uncond, scale, away, away_scale)
    with _word_scales(model, jobs, masks, branch_order(uncond, scale, away), start):
        z = ddim_sample(eps, schedule, start, ts, background, masks, stage(progress, "decode"))
    return check_finite(z, "guidance_scale"), counter.n


def _word_scales(model, jobs: list[_Job], masks, order: tuple[str, ...], start: torch.Tensor):
    """The decoding's word weights (retouch.attention) when an edit asks for them, else nothing:
    on the query rows each edit's scales, 1 on the others; masks [B, 1, h, w] (None: everywhere)."""
    if not any(j.cfg.weighs_words for j in jobs):
        return contextlib.nullcontext()
    query_rows = torch.stack(
        [
            word_scales(model, j.query, j.reference, j.cfg.changed_word_scale, j.cfg.shared_word_scale)
            for j in jobs
        ]
    )  # [B, L]
    rows = torch.cat([query_rows if o == "cond" else torch.ones_like(query_rows) for o in order])  # [R, L]
    m = masks if masks is not None else torch.ones_like(start[:, :1])  # [B, 1, h, w]
    return masked_word_scales(model.unet, rows, m.repeat(len(order), 1, 1, 1))


EDIT_KEYS = ("query", "reference", "seed", "mask", "encoding", "preset")  # an edit's own; the rest: settings
GRID = ("num_inference_steps", "encode_ratio", "mode")  # what the edits of a batch share


@dataclass(frozen=True)
class _Job:
    query: str
    reference: str
    seed: int
    mask: object
    encoding: Encoding | None
    preset: str | None
    cfg: DiffEditConfig


def edit_job(model, edit: dict, config, preset, settings: dict) -> _Job:
    """One edit of a batch, checked: its texts, seed and settings (its preset or the batch's, then
    the batch's settings, then its own). From an encoding, with no config given, the edit runs on
    the encoding's steps where its preset and settings name none."""
    if not isinstance(edit, dict) or "query" not in edit:
        raise SettingError("each edit is a dict with at least a query, e.g. dict(query='a green circle')")
    own = {k: v for k, v in edit.items() if k not in EDIT_KEYS}
    preset = edit.get("preset", preset)
    steps = {} if config is not None else encoding_steps(edit.get("encoding"), PRESETS.get(preset) or {})
    return _Job(
        check_prompt(model, edit["query"], "query"),
        check_prompt(model, edit.get("reference", ""), "reference", allow_empty=True),
        check_seed(edit.get("seed", 0)),
        edit.get("mask"),
        edit.get("encoding"),
        preset,
        _config(model, config, preset, {**steps, **settings, **own}),
    )


def encoding_steps(encoding: Encoding | None, preset: dict) -> dict:
    """The steps an Encoding was made on (num_inference_steps, encode_ratio), as the
    settings an edit from it runs on, less those its preset sets (None: {})."""
    if encoding is None:
        return {}
    steps = dict(num_inference_steps=encoding.num_inference_steps, encode_ratio=encoding.encode_ratio)
    return {k: v for k, v in steps.items() if k not in preset}


def diffedit_many(
    model: ModelBundle,
    images,
    edits: Sequence[dict],
    config: DiffEditConfig | None = None,
    preset: str | None = None,
    progress: Progress | None = None,
    **settings,
) -> list[EditResult]:
    """Several DiffEdit edits, their decodings as ONE UNet batch per step.

    Each distinct image is prepared and encoded once (its encoding shared by its edits, its cost
    counted on the first); masks are inferred per edit. The results are those of one `diffedit`
    call per edit, to the float rounding of batched arithmetic.

    Args:
        model (`ModelBundle`): a model from `retouch.load`.
        images (an image, or a list of one per edit): paths, PIL images or arrays, all of one size.
        edits (`Sequence[dict]`): one dict per edit: query, and optionally reference, seed, mask,
            encoding, preset and any `DiffEditConfig` field of its own (e.g. guidance_scale).
        config (`DiffEditConfig`, *optional*): every setting at once; the defaults are the paper's.
        preset (`str`, *optional*): one of `PRESETS`, for every edit that names none.
        progress (`Callable[[str, int, int], None]`, *optional*): called as progress(stage, done,
            total) after each step.
        **settings: any `DiffEditConfig` field, for every edit. The edits share
            num_inference_steps, encode_ratio and mode.

    Returns:
        `list[EditResult]`: one per edit, in order (as `diffedit` returns).
    """
    check_model(model)
    jobs = [edit_job(model, e, config, preset, settings) for e in edits]
    for j in jobs:
        check_carried_over(model, "diffedit", j.cfg)
    if not jobs:
        return []
    images = list(images) if isinstance(images, (list, tuple)) else [images] * len(jobs)
    if len(images) != len(jobs):
        raise SettingError(f"{len(images)} images for {len(jobs)} edits: give one image, or one per edit")
    grid = {tuple(getattr(j.cfg, f) for f in GRID) for j in jobs}
    if len(grid) > 1:
        raise SettingError(f"the edits of one batch must share {', '.join(GRID)}")
    cfg, timer = jobs[0].cfg, Timer(model.device)
    with timer("prepare"):  # an encoding holds x0: no second VAE encoding (its hash checked below)
        preps = _prepare_all(model, images, jobs)
    for job, prep in zip(jobs, preps):
        if job.encoding is not None:
            _check_encoding(job.encoding, prep, model, job.cfg)
    masks, evals = [], []
    with timer("mask", when=cfg.uses_mask and any(j.mask is None for j in jobs)):
        for job, prep in zip(jobs, preps):
            m, spent = _resolve_mask(model, prep, job.mask, job.query, job.reference, job.cfg, job.seed)
            masks.append(m)
            evals.append(spent)
    with timer("encode", when=any(j.encoding is None for j in jobs)):
        starts, backgrounds, spent = _encode_all(model, jobs, preps, progress)
        evals = [e + s for e, s in zip(evals, spent)]
    with timer("decode"):
        m = None if not cfg.uses_mask else torch.stack([mk.latent for mk in masks])[:, None].to(starts[0])
        background = {t: torch.cat([b[t] for b in backgrounds]) for t in backgrounds[0]}
        z, spent = _decode(
            model,
            torch.cat(starts),
            background,
            m,
            jobs,
            cfg,
            _size(preps[0]),
            progress,
        )
        out = decode(model, z)
    results = []
    for i, (job, prep, mask) in enumerate(zip(jobs, preps, masks)):
        pixels = out[i : i + 1]
        if job.cfg.paste_back and mask is not None:
            pixels = paste_back(pixels, prep.pixels, mask.latent, model.vae_scale_factor, job.cfg.feather)
        record = {"method": "diffedit", "query": job.query, "reference": job.reference, **asdict(job.cfg)}
        record.update(preset=job.preset, model=model.model_id)
        image = to_image(pixels, prep.pixels.height, prep.pixels.width)
        evals_i = evals[i] + spent // len(jobs)
        message = "; ".join(filter(None, [prep.note, *_unused(job)]))
        results.append(
            EditResult(image, mask, evals_i, record, job.seed, dict(timer.times), z[i : i + 1], message)
        )
    return results


def _unused(job: _Job) -> list[str]:
    """What an edit asked for that its texts or its mode give nothing to (said in its result's
    message): a reference setting without a reference; a mask or an encoding the mode does not use
    (e.g. the background preset's no_mask)."""
    c = job.cfg
    asked = (
        []
        if job.reference
        else [
            ("reference_guidance_scale", c.reference_guidance_scale != 0),
            ("guide_from_reference", c.guide_from_reference),
            ("shared_word_scale", c.shared_word_scale != 1),
        ]
    )
    out = [f"{name} needs a reference text: not applied" for name, on in asked if on]
    for given, used in (("mask", c.uses_mask), ("encoding", c.uses_encoding)):
        if getattr(job, given) is not None and not used:
            out.append(f"{given} given, but mode={c.mode} uses none: not applied")
    return out


def _encode_all(model, jobs: list[_Job], preps: list[Prepared], progress):
    """Each edit's start latent and background trajectory, and the evaluations spent on it here:
    each image is encoded once (paid by its first edit); a given encoding costs nothing."""
    starts, backgrounds, spent, encodings = [], [], [], {}
    for job, prep in zip(jobs, preps):
        enc, cost = job.encoding or encodings.get(prep.hash), 0
        if job.cfg.uses_encoding and enc is None:
            enc = encodings[prep.hash] = _encode(model, prep, job.cfg, progress)
            cost = enc.unet_evals
        start, background, _ = _resolve_start(model, prep, enc, job.cfg, job.seed, progress)
        starts.append(start)
        backgrounds.append(background)
        spent.append(cost)
    return starts, backgrounds, spent


def _size(prep: Prepared) -> tuple[int, int]:
    """The image's own (height, width): SDXL's size conditioning."""
    return prep.pixels.height, prep.pixels.width


def _prepare_all(model, images: list, jobs: list[_Job]) -> list[Prepared]:
    """Each distinct image (by object) prepared once; all of one size."""
    seen: dict[int, Prepared] = {}
    preps = []
    for image, job in zip(images, jobs):
        key = id(image) if job.encoding is None else (id(image), id(job.encoding))
        if key not in seen:
            seen[key] = prepare(model, image, x0=None if job.encoding is None else job.encoding.latents[0])
        preps.append(seen[key])
    if len({tuple(p.x0.shape) for p in preps}) > 1:
        raise SettingError("the images of one batch must be of one size")
    return preps


def diffedit(
    model: ModelBundle,
    image,
    query: str,
    reference: str = "",
    config: DiffEditConfig | None = None,
    preset: str | None = None,
    seed: int = 0,
    mask=None,
    encoding: Encoding | None = None,
    progress: Progress | None = None,
    **settings,
) -> EditResult:
    """Edit `image` so that it fits `query`, changing only where query and reference disagree
    (DiffEdit: the mask, the encoding and the masked decoding of docs/diffedit.md).

    Args:
        model (`ModelBundle`): a model from `retouch.load`.
        image (path, `PIL.Image.Image` or array): the image to edit; one over the model's pixel
            budget is edited resized down (the result's message says so).
        query (`str`): the text the edited image should fit.
        reference (`str`, defaults to ""): the text of what to change; the image's caption works best.
        config (`DiffEditConfig`, *optional*): every setting at once; the defaults are the paper's.
        preset (`str`, *optional*): one of `PRESETS` ("tight-mask", "remove", "recolor",
            "background", "add"), under the explicit settings.
        seed (`int`, defaults to 0): the same seed, settings and model give the same image.
        mask (`Mask`, image or array, *optional*): a Mask from `diffedit_mask`, or a mask of the
            image's size (nonzero = edit); inferred when not given.
        encoding (`Encoding`, *optional*): an encoding of the same image from `ddim_encoding`.
        progress (`Callable[[str, int, int], None]`, *optional*): called as progress(stage, done,
            total) after each step ("mask", "encode", "decode").
        **settings: any `DiffEditConfig` field, e.g. `encode_ratio=1.0`.

    Returns:
        `EditResult`: the edited image, the mask used, the UNet evaluations this call spent, every
        setting, the seed, timings by stage, the final latent and a message (or "").
    """
    check_model(model)
    edit = dict(query=query, reference=reference, seed=seed, mask=mask, encoding=encoding)
    return diffedit_many(model, image, [edit], config, preset, progress, **settings)[0]
