"""Small pieces both methods use: the image made ready for a model, a seeded generator, stages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from retouch.errors import InputError, SettingError
from retouch.latents import Pixels, encode, fitted, image_hash, to_pixels, upsample_mask
from retouch.masks import user_mask
from retouch.types import Mask, ModelBundle

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called after each step of a stage ("mask", "encode", "decode",
"invert", "edit"). The library draws nothing; a shell turns this into bars."""


@dataclass(frozen=True)
class Prepared:
    """An image ready for a model: the checked RGB image (within the model's pixel budget), padded
    pixels, its hash and x0; note says if the image was resized to fit the budget."""

    image: Image.Image
    pixels: Pixels
    hash: str
    x0: torch.Tensor  # [1, C, h, w] scaled latent of the VAE posterior mean
    note: str = ""


def check_model(model) -> None:
    """A method's first argument must be a loaded model (InputError otherwise, not a crash)."""
    from retouch.flows import FlowBundle

    if not isinstance(model, (ModelBundle, FlowBundle)):
        raise InputError(f"model must be a ModelBundle from retouch.load(...), got {type(model).__name__}")


def prepare(bundle: ModelBundle, image, x0: torch.Tensor | None = None) -> Prepared:
    """The checked image, its pixels, hash and x0; x0 given (an encoding's or inversion's, whose
    hash the caller checks against this one): no second VAE encoding. An image over the model's
    pixel budget is resized down to it (hashed as resized) or refused (bundle.resize False)."""
    img, note = fitted(bundle, image)
    px = to_pixels(bundle, img)
    return Prepared(img, px, image_hash(img), encode(bundle, px.tensor) if x0 is None else x0, note)


def generator(bundle: ModelBundle, seed: int) -> torch.Generator:
    return torch.Generator(device=bundle.device).manual_seed(seed)


def stage(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    """A loop's step callback (done, total) for one named stage of `progress`, or None."""
    if not progress:
        return None
    return lambda done, total: progress(name, done, total)


def check_finite(latents: torch.Tensor, scales: str) -> torch.Tensor:
    """The sampler's result if every value is finite; else a SettingError naming the scales that
    overflowed it (a black image must never pass for an edit)."""
    if not torch.isfinite(latents).all():
        raise SettingError(f"the edit overflowed (non-finite latents): lower {scales}")
    return latents


def given_mask(bundle: ModelBundle, mask, prep: Prepared, feather: float) -> Mask:
    """A mask the caller gives: a Mask (kept), or a mask of the image's size (path, image or array;
    nonzero = edit) at latent resolution; one of another latent size is a one-line error."""
    px = prep.pixels
    return mask_for(bundle, mask, px.height, px.width, tuple(prep.x0.shape[-2:]), feather)


def mask_for(bundle: ModelBundle, mask, height: int, width: int, latent_hw: tuple, feather: float) -> Mask:
    """`given_mask` for an image of (height, width) pixels whose latent is `latent_hw` (h, w)."""
    if not isinstance(mask, Mask):
        latent = user_mask(mask, height, width, latent_hw, bundle.vae_scale_factor, bundle.pixel_budget)
        mask = Mask(latent, upsample_mask(latent, bundle.vae_scale_factor, height, width, feather))
    shape, hw = tuple(mask.latent.shape), tuple(latent_hw)
    if shape != hw:
        raise SettingError(f"mask is {shape} at latent resolution, the image {hw}")
    return mask
