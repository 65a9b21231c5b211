"""Small pieces both methods use: checking settings, reading the image, progress, timing."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from PIL import Image

from retouch.latents import Pixels, encode, image_hash, load_image, to_pixels
from retouch.types import ModelBundle


class SettingError(ValueError):
    """A setting out of its range, named, with the range, in one line."""


def check_number(name: str, value, low=None, high=None, low_open=False, integer=False) -> None:
    """Raise SettingError unless value is a finite number in [low, high] ((low, high] if low_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SettingError(f"{name} must be finite, got {value}")
    if integer and int(value) != value:
        raise SettingError(f"{name} must be a whole number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise SettingError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise SettingError(f"{name} must be <= {high}, got {value}")


def with_settings(config, settings: dict):
    """config with the named fields replaced; an unknown name is an error naming the valid ones."""
    names = {f.name for f in fields(config)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise SettingError(f"unknown setting {unknown[0]!r}; valid: {', '.join(sorted(names))}")
    return type(config)(**{**{f.name: getattr(config, f.name) for f in fields(config)}, **settings})


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SettingError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


@dataclass(frozen=True)
class Prepared:
    """An image ready for a model: the checked RGB image, padded pixels, its hash and x0."""

    image: Image.Image
    pixels: Pixels
    hash: str
    x0: torch.Tensor  # [1, C, h, w] scaled latent of the VAE posterior mean


def prepare(bundle: ModelBundle, image, x0: torch.Tensor | None = None) -> Prepared:
    """The checked image, its pixels, hash and x0; x0 given (an encoding's or inversion's, whose
    hash the caller checks against this one): no second VAE encoding."""
    img = load_image(image)
    px = to_pixels(bundle, img)
    return Prepared(img, px, image_hash(img), encode(bundle, px.tensor) if x0 is None else x0)


def generator(bundle: ModelBundle, seed: int) -> torch.Generator:
    return torch.Generator(device=bundle.device).manual_seed(seed)


@contextmanager
def progress_bar(enabled, total: int, desc: str):
    """A step callback: `enabled` True draws a tqdm bar on stderr, a callable is called as
    fn(done, total), False/None does nothing."""
    if callable(enabled):
        yield enabled
        return
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False)
    try:
        yield lambda done, _total: bar.update(done - bar.n)
    finally:
        bar.close()


class Timer:
    """Wall-clock seconds per named phase; synchronises CUDA before reading the clock."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, {}

    @contextmanager
    def __call__(self, name: str):
        self._sync()
        t0 = time.perf_counter()
        yield
        self._sync()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


ProgressArg = bool | Callable[[int, int], None] | None
