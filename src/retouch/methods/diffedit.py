"""DiffEdit (Couairon et al., ICLR 2023, arXiv 2210.11427), as METHODS §1 states it.

    mask = diffedit_mask(model, image, query, reference)     # §3.2: contrast noise predictions
    enc  = ddim_encoding(model, image)                       # DDIM-encode with ∅ up to ratio r
    out  = diffedit(model, image, query, reference, mask=mask, encoding=enc)   # masked decoding

`diffedit` computes whatever it is not given; the mask and the encoding are values a caller keeps
and reuses for other queries on the same image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from retouch.denoiser import EvalCounter, guided_eps, unet_eps
from retouch.inversion import ddim_encode
from retouch.latents import decode, paste_back, to_image, upsample_mask
from retouch.masks import binarize, difference_map, user_mask
from retouch.methods.common import (
    ProgressArg,
    SettingError,
    Timer,
    check_number,
    check_seed,
    generator,
    prepare,
    progress_bar,
    with_settings,
)
from retouch.schedule import Schedule, pairs
from retouch.text import check_prompt, encode_text
from retouch.types import EditResult, Encoding, Mask, ModelBundle

MODES = ("diffedit", "no_mask", "no_encoding", "sdedit")


@dataclass(frozen=True)
class DiffEditConfig:
    """Every DiffEdit default, once. Paper values unless noted."""

    num_inference_steps: int = 50  # N, DDIM steps of the full schedule
    encode_ratio: float = 0.8  # r: encode through the first r·N steps (paper sweeps 0.5–0.9)
    guidance_scale: float = 7.5  # CFG on the query while decoding (Stable Diffusion's 7.5)
    mask_samples: int = 10  # n independent noises for the mask
    mask_strength: float = 0.5  # noise level of the mask's samples: halfway through the schedule
    mask_clamp: float = 3.0  # k: clamp D to [0, k·mean D] before rescaling
    mask_threshold: float = 0.5  # binarisation threshold (0.25 overshoots, 0.75 too tight)
    mask_guidance_scale: float | None = None  # diffusers' CFG on both mask sides; None: paper
    mode: str = "diffedit"  # or the paper's ablations: "no_mask", "no_encoding", "sdedit"
    paste_back: bool = False  # ours: paste the unmasked input pixels back after decoding
    feather: float = 1.0  # pixels of Gaussian feather for paste-back and the display mask

    def check(self) -> None:
        check_number("num_inference_steps", self.num_inference_steps, 1, 1000, integer=True)
        check_number("encode_ratio", self.encode_ratio, 0, 1, low_open=True)
        if int(round(self.encode_ratio * self.num_inference_steps)) < 1:
            raise SettingError("encode_ratio × num_inference_steps must be at least 1 step")
        check_number("guidance_scale", self.guidance_scale, 0)
        check_number("mask_samples", self.mask_samples, 1, 1000, integer=True)
        check_number("mask_strength", self.mask_strength, 0, 1, low_open=True)
        check_number("mask_clamp", self.mask_clamp, 0, low_open=True)
        check_number("mask_threshold", self.mask_threshold, 0, 1)
        if self.mask_guidance_scale is not None:
            check_number("mask_guidance_scale", self.mask_guidance_scale, 0)
        check_number("feather", self.feather, 0, 64)
        if self.mode not in MODES:
            raise SettingError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @property
    def encode_steps(self) -> int:
        return int(round(self.encode_ratio * self.num_inference_steps))


def _config(config: DiffEditConfig | None, settings: dict) -> DiffEditConfig:
    cfg = with_settings(config or DiffEditConfig(), settings)
    cfg.check()
    # the check accepts whole-number floats (10.0); store them as ints, which size and index tensors
    return replace(cfg, num_inference_steps=int(cfg.num_inference_steps), mask_samples=int(cfg.mask_samples))


def diffedit_mask(
    model: ModelBundle, image, query: str, reference: str = "", seed: int = 0,
    config: DiffEditConfig | None = None, x0: torch.Tensor | None = None, **settings,
) -> Mask:
    """The DiffEdit mask alone (§3.2). Returns a Mask: binary [h, w], soft [H, W], scores [h, w].
    x0 [1, C, h, w]: the image's latent when the caller holds it (an inversion's), else encoded here."""
    cfg = _config(config, settings)
    query, reference = check_prompt(model, query, "query"), check_prompt(model, reference, "reference", True)
    prep = prepare(model, image, x0=x0)
    return _infer_mask(model, prep, query, reference, cfg, check_seed(seed))


def _infer_mask(model, prep, query, reference, cfg, seed) -> Mask:
    schedule, counter = Schedule.from_scheduler(model.scheduler), EvalCounter()
    timesteps = schedule.timesteps(cfg.num_inference_steps)
    n = cfg.num_inference_steps
    t = timesteps[min(n - 1, n - int(n * cfg.mask_strength))]  # diffusers' get_timesteps(strength)
    x0 = prep.x0
    gen = generator(model, seed)
    noises = torch.randn((cfg.mask_samples, *x0.shape[1:]), generator=gen, device=x0.device)  # [n, C, h, w]
    cond_q, cond_r, uncond = encode_text(model, [query, reference, ""]).split(1)
    d = difference_map(
        unet_eps(model, schedule, counter), schedule, x0, t, cond_q, cond_r, noises,
        uncond=uncond if cfg.mask_guidance_scale is not None else None,
        guidance_scale=cfg.mask_guidance_scale,
    )
    latent, scores = binarize(d, cfg.mask_clamp, cfg.mask_threshold)
    soft = upsample_mask(latent, model.vae_scale_factor, prep.pixels.height, prep.pixels.width, cfg.feather)
    return Mask(latent, soft, scores, counter.n)


def ddim_encoding(
    model: ModelBundle, image, config: DiffEditConfig | None = None, progress: ProgressArg = True,
    **settings,
) -> Encoding:
    """DDIM-encode the image with the unconditional model (∅, no CFG: the paper's choice)
    through the first r·N steps, keeping every intermediate latent (§1.2)."""
    cfg = _config(config, settings)
    return _encode(model, prepare(model, image), cfg, progress)


def _encode(model, prep, cfg, progress) -> Encoding:
    schedule, counter = Schedule.from_scheduler(model.scheduler), EvalCounter()
    ts = schedule.timesteps(cfg.num_inference_steps)[-cfg.encode_steps :][::-1]  # ascending
    eps = guided_eps(unet_eps(model, schedule, counter), encode_text(model, [""]), None, 1.0)
    with progress_bar(progress, len(ts), "encode") as cb:
        latents = ddim_encode(eps, schedule, prep.x0, ts, cb)
    return Encoding(tuple(latents), (-1, *ts), cfg.num_inference_steps, cfg.encode_ratio, counter.n,
                    prep.hash, model.fingerprint)


def masked_ddim_decode(eps_fn, schedule, x, timesteps, background, mask, progress=None):
    """DDIM decoding from x at timesteps[0]; after each step to level s the latent is blended
    with the background latent at the SAME level s: y ← M·y + (1−M)·x_s (§1.3). The last level
    is -1, whose background is the clean x0. background: {level: [1, C, h, w]}; mask [h, w]."""
    for i, (t, t_next) in enumerate(pairs(timesteps)):
        x = schedule.ddim_step(x, eps_fn(x, t), t, t_next)
        if mask is not None:
            x = mask * x + (1 - mask) * background[t_next]
        if progress:
            progress(i + 1, len(timesteps))
    return x


def _check_encoding(enc: Encoding, prep, model, cfg) -> None:
    if enc.fingerprint != model.fingerprint:
        raise SettingError("encoding was made with another model")
    if enc.image_hash != prep.hash:
        raise SettingError("encoding was made from another image")
    if (enc.num_inference_steps, enc.encode_ratio) != (cfg.num_inference_steps, cfg.encode_ratio):
        raise SettingError(
            f"encoding has num_inference_steps={enc.num_inference_steps}, encode_ratio="
            f"{enc.encode_ratio}; the edit asks for {cfg.num_inference_steps}, {cfg.encode_ratio}"
        )


def diffedit(
    model: ModelBundle,
    image,
    query: str,
    reference: str = "",
    config: DiffEditConfig | None = None,
    seed: int = 0,
    mask=None,
    encoding: Encoding | None = None,
    progress: ProgressArg = True,
    **settings,
) -> EditResult:
    """Edit `image` so that it fits `query`, changing only where query and reference disagree.

    model: a loaded ModelBundle; image: path, PIL image or array; mask: a Mask from
    diffedit_mask, or a user mask (image/array of the image's size, nonzero = edit), or None to
    infer it; encoding: an Encoding of the same image to reuse. Settings: DiffEditConfig fields.
    """
    cfg = _config(config, settings)
    seed = check_seed(seed)
    query = check_prompt(model, query, "query")
    reference = check_prompt(model, reference, "reference", allow_empty=True)
    timer = Timer(model.device)
    with timer("prepare"):  # an encoding holds x0: no second VAE encoding (checked just below)
        prep = prepare(model, image, x0=None if encoding is None else encoding.latents[0])
    h, w = prep.x0.shape[-2:]
    px = prep.pixels
    if encoding is not None:
        _check_encoding(encoding, prep, model, cfg)
    use_mask = cfg.mode in ("diffedit", "no_encoding")
    if use_mask and mask is None:
        with timer("mask"):
            mask = _infer_mask(model, prep, query, reference, cfg, seed)
    elif use_mask and not isinstance(mask, Mask):
        latent = user_mask(mask, px.height, px.width, (h, w), model.vae_scale_factor)
        mask = Mask(latent, upsample_mask(latent, model.vae_scale_factor, px.height, px.width, cfg.feather))
    elif not use_mask:
        mask = None
    if mask is not None and tuple(mask.latent.shape) != (h, w):
        raise SettingError(f"mask is {tuple(mask.latent.shape)} at latent resolution, the image {(h, w)}")
    schedule = Schedule.from_scheduler(model.scheduler)
    counter = EvalCounter()
    all_ts = schedule.timesteps(cfg.num_inference_steps)
    ts = all_ts[-cfg.encode_steps :]  # descending, the decoding steps
    if cfg.mode in ("diffedit", "no_mask"):
        if encoding is None:
            with timer("encode"):
                encoding = _encode(model, prep, cfg, progress)
        background = dict(zip(encoding.timesteps, encoding.latents))
        start = encoding.latents[-1]
    else:  # SDEdit-style noising of x0 to level r (and the same noise along the way)
        noise = torch.randn(prep.x0.shape, generator=generator(model, seed + 1), device=prep.x0.device)
        background = {t: schedule.add_noise(prep.x0, noise, t) for t in ts}
        background[-1] = prep.x0
        start = background[ts[0]]
    uncond, cond = encode_text(model, ["", query]).split(1)
    eps = guided_eps(unet_eps(model, schedule, counter), cond, uncond, cfg.guidance_scale)
    m = None if mask is None else mask.latent.to(start)
    with timer("decode"), progress_bar(progress, len(ts), "decode") as cb:
        z = masked_ddim_decode(eps, schedule, start, ts, background, m, cb)
        out = decode(model, z)
    if cfg.paste_back and mask is not None:
        out = paste_back(out, px, mask.latent, model.vae_scale_factor, cfg.feather)
    evals = counter.n  # what this call spent: reused masks and encodings cost nothing
    evals += mask.unet_evals if "mask" in timer.times else 0
    evals += encoding.unet_evals if "encode" in timer.times else 0
    settings_out = {"method": "diffedit", "query": query, "reference": reference, **asdict(cfg),
                    "model": model.model_id}
    return EditResult(to_image(out, px.height, px.width), mask, evals, settings_out, seed,
                      dict(timer.times), z)
