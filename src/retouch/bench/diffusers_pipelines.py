"""diffusers' own DiffEdit and LEDITS++ pipelines, run with settings matched to retouch's.

The one place that knows how to drive them (ShapesBench, benchmarks/speed.py and the
benchmarks/compare_*.py scripts share it), with the workarounds their current release needs:

* StableDiffusionDiffEditPipeline (deprecated, diffusers 0.42): generate_mask unpacks
  encode_prompt's (prompt, negative) pair as (negative, prompt) — with guidance_scale=1 it crashes,
  with CFG it guides with the texts swapped (harmless there, see benchmarks/compare_diffedit.py).
  `mask_prompts_in_order` swaps the pair back while generate_mask runs. Given the VAE posterior
  MEAN as latents (not pixels) it draws no posterior sample, so the same seed gives it the same n
  mask noises as retouch (its first `torch.randn` of [n, C, h, w]).
* LEditsPPPipelineStableDiffusion (and its SDXL sibling, for an SDXL bundle): with a
  DDIMScheduler its invert() crashes in 0.42.1 (float timesteps reach add_noise), so it runs with
  its default DPM-Solver++ 2M SDE scheduler. It keeps the inversion on the pipeline ("edits the
  last inverted image") and replaces the UNet's attention processors (AttnProcessor while
  inverting, its attention-storing one while editing): `own_attention_processors` restores them
  afterwards, so a UNet shared with retouch is left as it was. Its N total / K edited steps:
  num_inversion_steps = K, skip = their_skip(N, K).

Pipelines are built either from a retouch ModelBundle (sharing its modules: the same weights,
no second copy) or from a diffusers folder.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from retouch.types import ModelBundle


def random_model_folder(folder: Path, size: str = "mini") -> Path:
    """A diffusers folder of untrained weights of `size` ('mini': the shipped architecture),
    written to `folder` once."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        from retouch.shapes.architecture import build_components, save_pipeline

        save_pipeline(folder, build_components(size, tokenizer_dir=folder / "tokenizer", seed=0))
    return folder


def pipeline_on(bundle, pipeline_cls, **overrides):
    """diffusers' `pipeline_cls` on a retouch bundle's own modules (one copy of the weights): each
    component the class takes is the bundle's attribute of that name (None where the bundle has
    none: a safety checker, SD3's absent T5), `overrides` (a scheduler, …) replacing them; quiet."""
    components, options = pipeline_cls._get_signature_keys(pipeline_cls)
    kwargs = {name: getattr(bundle, name, None) for name in components}
    names = set(options)
    if "requires_safety_checker" in names:
        kwargs["requires_safety_checker"] = False
    if "force_zeros_for_empty_prompt" in names:
        kwargs["force_zeros_for_empty_prompt"] = getattr(bundle, "empty_is_zeros", True)
    if "add_watermarker" in names:
        kwargs["add_watermarker"] = False  # an edit's pixels are compared
    kwargs.update(overrides)
    pipe = pipeline_cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _components(source: ModelBundle | Path | str, pipeline_cls, scheduler=None, **extra):
    """The pipeline class on a bundle's modules (with `scheduler`, default the bundle's), or
    loaded (float32) from a folder."""
    if isinstance(source, ModelBundle):
        return pipeline_on(source, pipeline_cls, scheduler=scheduler or source.scheduler, **extra)
    common = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipeline_cls.from_pretrained(source, torch_dtype=torch.float32, use_safetensors=True, **common)


def diffedit_pipeline(source: ModelBundle | Path | str, device=None):
    """diffusers' DiffEdit pipeline with DDIM and DDIM-inverse schedulers of the model's schedule."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline

    pipe = _components(source, StableDiffusionDiffEditPipeline, inverse_scheduler=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device if device is not None else pipe.unet.device)


def ledits_pipeline(source: ModelBundle | Path | str, device=None, final_sigmas_type: str = "zero"):
    """diffusers' LEDITS++ pipeline with its default scheduler, DPM-Solver++ 2M SDE
    (final_sigmas_type "zero" is DPMSolverMultistepScheduler's default; "sigma_min" makes its
    reconstruction exact)."""
    from diffusers import DPMSolverMultistepScheduler, LEditsPPPipelineStableDiffusion

    def dpm(config):
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="sde-dpmsolver++", solver_order=2, final_sigmas_type=final_sigmas_type
        )

    if isinstance(source, ModelBundle) and source.family == "sdxl":
        return _ledits_xl_pipeline(source, dpm(source.scheduler.config), device)
    bundle_scheduler = dpm(source.scheduler.config) if isinstance(source, ModelBundle) else None
    pipe = _components(source, LEditsPPPipelineStableDiffusion, scheduler=bundle_scheduler)
    pipe.scheduler = dpm(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device if device is not None else pipe.unet.device)


def _ledits_xl_pipeline(bundle: ModelBundle, scheduler, device=None):
    """diffusers' LEDITS++ SDXL pipeline on an SDXL bundle's modules (no watermark: an edit's pixels
    are compared)."""
    from diffusers import LEditsPPPipelineStableDiffusionXL

    pipe = pipeline_on(bundle, LEditsPPPipelineStableDiffusionXL, scheduler=scheduler)
    return pipe.to(device if device is not None else pipe.unet.device)


@contextmanager
def mask_prompts_in_order(pipe):
    """While it runs, pipe.encode_prompt returns (negative, prompt): the order generate_mask unpacks."""
    encode = pipe.encode_prompt
    pipe.encode_prompt = lambda *args, **kwargs: tuple(reversed(encode(*args, **kwargs)))
    try:
        yield
    finally:
        del pipe.encode_prompt  # back to the class's method


@contextmanager
def own_attention_processors(unet):
    """Restore the UNet's attention processors on exit (LEDITS++ replaces them)."""
    saved = dict(unet.attn_processors)
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


# --- DiffEdit --------------------------------------------------------------------------------------


@torch.no_grad()
def vae_mean_latents(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """x0 = the VAE posterior mean × scaling factor of pixels [1, 3, H, W] in [-1, 1]: [1, C, h, w]."""
    post = pipe.vae.encode(pixels.to(pipe.vae.dtype)).latent_dist
    return post.mean * pipe.vae.config.scaling_factor


@torch.no_grad()
def diffedit_encode(pipe, image, cfg, seed: int) -> torch.Tensor:
    """diffusers' DDIM inversion with ∅ and no CFG (the paper's choice) through r·N steps.
    image: x0 latents [1, C, h, w] (or a PIL image: then a posterior sample); cfg: DiffEditConfig.
    Returns the encoded latents [1, r·N, C, h, w], noisiest first."""
    return pipe.invert(
        prompt="",
        image=image,
        num_inference_steps=cfg.num_inference_steps,
        inpaint_strength=cfg.encode_ratio,
        guidance_scale=1.0,
        generator=torch.Generator(pipe.device).manual_seed(seed),
    ).latents


@torch.no_grad()
def diffedit_mask(pipe, image, query: str, reference: str, cfg, seed: int) -> np.ndarray:
    """diffusers' generate_mask with retouch's mask settings: float {0,1} [1, h, w].
    Its threshold is fixed at 0.5 (cfg.mask_threshold must be 0.5 to match); mask_refine_radius and
    mask_keep_ratio (ours) have no counterpart here."""
    with mask_prompts_in_order(pipe):
        return pipe.generate_mask(
            image=image,
            target_prompt=query,
            source_prompt=reference,
            num_maps_per_mask=cfg.mask_samples,
            mask_encode_strength=cfg.mask_strength,
            mask_thresholding_ratio=cfg.mask_clamp,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.mask_guidance_scale or 1.0,
            generator=torch.Generator(pipe.device).manual_seed(seed),
            output_type="np",
        ).astype(np.float32)


@torch.no_grad()
def diffedit_decode(
    pipe, query: str, reference: str, mask: np.ndarray, encoded: torch.Tensor, cfg
) -> torch.Tensor:
    """diffusers' masked decoding from the encoded latents: the final latents [1, C, h, w]. Its
    negative prompt is the reference when retouch's decoding would steer from it (guide_from_reference).
    reference_guidance_scale and the word scales (ours) have no counterpart here: with them, the pair
    is not matched."""
    return pipe(
        prompt=query,
        negative_prompt=reference if cfg.guide_from_reference and reference else None,
        mask_image=mask,
        image_latents=encoded,
        inpaint_strength=cfg.encode_ratio,
        num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale,
        output_type="latent",
    ).images


@torch.no_grad()
def decode_latents(pipe, z: torch.Tensor) -> torch.Tensor:
    """Latents [1, C, h, w] → pixels [1, 3, H, W] in [-1, 1]."""
    return pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample.float()


# --- LEDITS++ --------------------------------------------------------------------------------------


def their_skip(n: int, k: int) -> float:
    """diffusers' skip fraction for N total and K edited steps: it runs int(K·(1 + skip)) = N."""
    return (n - k) / k + 1e-9


@torch.no_grad()
def ledits_invert(pipe, image, source: str, source_guidance_scale: float, n: int, k: int, seed: int):
    """LEDITS++'s inversion of a PIL image over N total steps, K of them edited (kept on `pipe`).
    The SDXL pipeline keeps every noise map (its default zeroes the last three: not an exact
    inversion). Returns its output (resized images and the VAE round trip)."""
    xl = {"num_zero_noise_steps": 0} if hasattr(pipe, "text_encoder_2") else {}
    with own_attention_processors(pipe.unet):
        out = pipe.invert(
            image=image,
            source_prompt=source,
            source_guidance_scale=source_guidance_scale,
            num_inversion_steps=k,
            skip=their_skip(n, k),
            generator=torch.Generator(pipe.device).manual_seed(seed),
            **xl,
        )
    if len(pipe.scheduler.timesteps) != n or len(pipe.inversion_steps) != k:
        raise RuntimeError(
            f"LEDITS++ ran {len(pipe.scheduler.timesteps)}/{len(pipe.inversion_steps)} "
            f"steps, asked for {n}/{k}"
        )
    return out


@torch.no_grad()
def ledits_edit(pipe, add, remove, scale, warmup, threshold, masks: bool = True, seed: int | None = None):
    """One LEDITS++ edit of the last inverted image with SEGA concepts (add, then remove).
    masks: its implicit masks (use_intersect_mask, its default) on or off. Returns a PIL image."""
    texts = [*add, *remove]
    with own_attention_processors(pipe.unet):
        out = pipe(
            editing_prompt=texts or None,
            reverse_editing_direction=[False] * len(add) + [True] * len(remove),
            edit_guidance_scale=scale,
            edit_warmup_steps=warmup,
            edit_threshold=threshold,
            use_intersect_mask=masks,
            use_cross_attn_mask=False,
            generator=None if seed is None else torch.Generator(pipe.device).manual_seed(seed),
        )
    return out.images[0]
