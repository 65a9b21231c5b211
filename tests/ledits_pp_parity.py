"""retouch's LEDITS++ edit beside diffusers' (`LEditsPPPipelineStableDiffusion` or its SDXL sibling)
from diffusers' own inversion, for the SD and SDXL parity tests."""

from __future__ import annotations

import dataclasses

import torch
from PIL import Image

import retouch
from retouch.bench import diffusers_pipelines as dp
from retouch.methods.ledits import LEditsConfig
from retouch.schedule import Schedule

# Parity with diffusers' pipeline: float32 rounding only. The same operations in another order (torch's
# threads, the CPU's vector width) move a 28-step edit's latents by up to ~1e-4; a difference of method
# is 1e-2 or more (the paper's rule against diffusers' above t = 800: 2.4).
PARITY = 5e-4
MASK_FLAGS = dict(intersect=(True, False), attention=(False, True), noise=(False, False))  # diffusers'


def theirs_inverted(model, image, n: int, k: int, seed: int = 3):
    """diffusers' LEDITS++ pipeline on the bundle's modules, its inversion of `image` (no source
    text) over N steps, K of them edited, kept on the pipeline."""
    pipe = dp.ledits_pipeline(model)
    dp.ledits_invert(pipe, Image.fromarray(image), "", 3.5, n, k, seed)
    return pipe


def ours_from_theirs(model, image, pipe, n: int, k: int):
    """Our Inversion carrying diffusers' start latent, noise maps and timesteps."""
    inv = retouch.invert(model, image, num_inference_steps=n, skip=n - k, solver="dpmsolver++")
    x = pipe.init_latents.float()  # [1, C, h, w]
    return dataclasses.replace(
        inv,
        trajectory=torch.cat([x, torch.zeros(k, *x.shape[1:])]),
        zs=pipe.zs[:, 0].float(),  # [K, C, h, w]
        timesteps=tuple(int(t) for t in pipe.inversion_steps),
    )


def max_difference(model, image, pipe, n: int, k: int, mode: str, monkeypatch, **ours) -> float:
    """Both edits of the inverted image, one concept added and one removed, under the implicit mask
    `mode` (and our settings `ours`): the max absolute difference of their final latents."""
    # the model's scheduler as diffusers' DPM-Solver spaces it (retouch checks an inversion's steps)
    theirs_steps = [int(t) for t in pipe.scheduler.timesteps]
    monkeypatch.setattr(Schedule, "timesteps", lambda self, num: theirs_steps)
    add, remove, scale, q, warm = ["green circle"], ["red square"], 8.0, 0.8, 1
    intersect, attention = MASK_FLAGS[mode]
    with dp.own_attention_processors(pipe.unet):
        theirs = pipe(
            editing_prompt=[*add, *remove],
            reverse_editing_direction=[False, True],
            edit_guidance_scale=[scale] * 2,
            edit_threshold=[q] * 2,
            edit_warmup_steps=[warm] * 2,
            use_intersect_mask=intersect,
            use_cross_attn_mask=attention,
            output_type="latent",
        ).images
    cfg = LEditsConfig(
        num_inference_steps=n,
        skip=n - k,
        solver="dpmsolver++",
        implicit_mask=mode,
        edit_scale=scale,
        edit_threshold=q,
        edit_warmup=warm,
        momentum_scale=0.0,
        **ours,
    )
    ours = retouch.ledits(
        model, ours_from_theirs(model, image, pipe, n, k), add=add, remove=remove, config=cfg
    )
    return float((ours.latents - theirs.float()).abs().max())
