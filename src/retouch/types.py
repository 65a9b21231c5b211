"""The values retouch passes around: a loaded model, a mask, an inversion, an edit's result.

All are frozen: a step returns a value, the caller keeps it and passes it on; nothing is stashed
between calls, so one loaded model can serve any number of users at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image


@dataclass(frozen=True)
class ModelBundle:
    """A Stable Diffusion 1.x/2.x or SDXL model loaded once and reused for every edit. The methods
    never ask which: text.encode_text and denoiser.unet_eps carry the family's conditioning."""

    vae: Any  # diffusers AutoencoderKL (float32 when its config asks to upcast a float16 model)
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    unet: Any  # diffusers UNet2DConditionModel
    scheduler: Any  # diffusers DDIMScheduler, used for its config and timesteps only
    model_id: str
    device: torch.device
    dtype: torch.dtype
    fingerprint: str = ""  # identifies the weights: inversions record it and refuse another model
    max_pixels: int | None = None  # the pixel budget of an input image; None: pixel_budget's default
    resize: bool = True  # an image over the budget is resized down to it (False: refused)
    text_cache: dict = field(default_factory=dict, repr=False, compare=False)  # text → [1, L, D]
    text_encoder_2: Any = None  # SDXL: CLIPTextModelWithProjection (OpenCLIP bigG); None for SD 1/2
    tokenizer_2: Any = None
    empty_is_zeros: bool = False  # SDXL's force_zeros_for_empty_prompt: ∅ is all-zero embeddings

    @property
    def family(self) -> str:
        """ "sdxl" (two text encoders, added time ids) or "sd" (Stable Diffusion 1.x/2.x)."""
        return "sdxl" if self.text_encoder_2 is not None else "sd"

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for Stable Diffusion)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: VAE downsampling times UNet downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """The image side the model was trained at (512 for SD 1.5, 64 for the shipped model)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def pixel_budget(self) -> int:
        """Most pixels an input image may hold (larger ones are resized down or refused): work is
        bounded by the input. Default four times the native area (1024² for SD 1.5, 128² for the
        shipped model)."""
        return self.max_pixels if self.max_pixels is not None else 4 * self.native_size**2


@dataclass(frozen=True)
class Mask:
    """An edit mask: 1 where the image may change.

    latent: float {0,1} [h, w] at latent resolution (what the sampler uses);
    soft:   float [0,1] [H, W] at the original image's resolution (display, compositing);
    scores: float [0,1] [h, w] the DiffEdit difference map before binarising (None if given).
    """

    latent: torch.Tensor
    soft: torch.Tensor
    scores: torch.Tensor | None = None
    unet_evals: int = 0

    def image(self) -> Image.Image:
        """The soft mask as an 8-bit grayscale image of the original size."""
        arr = (self.soft.clamp(0, 1) * 255).round().byte().cpu().numpy()
        return Image.fromarray(arr, mode="L")

    def overlay(self, image: Image.Image, color=(255, 0, 80), opacity: float = 0.55) -> Image.Image:
        """`image` with the mask tinted over it, for display."""
        tint = self.image().resize(image.size).point(lambda v: round(v * opacity))
        return Image.composite(Image.new("RGB", image.size, color), image.convert("RGB"), tint)

    @property
    def area(self) -> float:
        """Fraction of latent cells inside the mask."""
        return float(self.latent.float().mean())


@dataclass(frozen=True)
class Encoding:
    """DiffEdit's DDIM encoding of one image: every intermediate latent, reusable across queries.

    latents[i] is x at timesteps[i] (levels from clean to noisy): latents[0] is the clean latent
    x0 at level "0"; timesteps[0] is -1 for it. Each latent is [1, C, h, w].
    """

    latents: tuple[torch.Tensor, ...]
    timesteps: tuple[int, ...]
    num_inference_steps: int
    encode_ratio: float
    unet_evals: int
    image_hash: str
    fingerprint: str
    family: str = "sd"  # the model family it was made with: "sd", "sdxl" or "sd3" (a flow model)


@dataclass(frozen=True)
class EditResult:
    """What every edit returns."""

    image: Image.Image
    mask: Mask | None
    unet_evals: int
    settings: dict
    seed: int
    timings: dict = field(default_factory=dict)
    latents: torch.Tensor | None = None  # final latent [1, C, h, w] before decoding
    message: str = ""
    concept_masks: tuple[Mask, ...] = ()  # LEDITS++: each concept's implicit mask (added, then removed)


@dataclass(frozen=True)
class Inversion:
    """An edit-friendly DDPM inversion of one image (docs/ledits.md, step 1): a value to keep, save, reuse.

    timesteps: the K steps editing runs, noisiest first; trajectory [K+1, C, h, w]: x at each of
    them and finally x0; zs [K, C, h, w]: the noise maps; x0 [1, C, h, w] the image's latent.
    """

    x0: torch.Tensor
    trajectory: torch.Tensor
    zs: torch.Tensor
    timesteps: tuple[int, ...]
    num_inference_steps: int
    skip: int
    source: str
    source_guidance_scale: float
    fingerprint: str
    model_id: str
    image_hash: str
    height: int
    width: int
    seed: int
    unet_evals: int
    solver: str = "ddpm"  # "ddpm" or "dpmsolver++" (2M SDE; docs/ledits.md): the sampler must match
    family: str = "sd"  # the model family it was made with: "sd", "sdxl" or "sd3" (a flow model)

    _META = (
        "timesteps",
        "num_inference_steps",
        "skip",
        "source",
        "source_guidance_scale",
        "fingerprint",
        "model_id",
        "image_hash",
        "height",
        "width",
        "seed",
        "unet_evals",
        "solver",
        "family",
    )

    def save(self, path) -> None:
        """Write to a safetensors file (tensors + settings as metadata), atomically."""
        import json

        from safetensors.torch import save_file

        from retouch.files import write_atomic

        meta = {k: getattr(self, k) for k in self._META}
        meta["timesteps"] = list(meta["timesteps"])
        tensors = {"x0": self.x0, "trajectory": self.trajectory, "zs": self.zs}
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        meta["content_hash"] = content_hash(meta, tensors)
        write_atomic(
            path, lambda tmp: save_file(tensors, tmp, metadata={"retouch_inversion": json.dumps(meta)})
        )

    @classmethod
    def load(cls, path, model: ModelBundle | None = None, device=None) -> Inversion:
        """Read an inversion file, checked (`_check_inversion_file`): its checksum, every field
        against its tensors; with `model`, against the model (its family, weights, latent shape,
        pixel budget and the scheduler's timesteps for the recorded steps and skip)."""
        import json
        import os
        import stat

        from safetensors import safe_open

        from retouch.errors import InversionError

        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            raise InversionError(f"cannot read inversion {path}: no such file") from None
        if not stat.S_ISREG(mode):  # a FIFO would block open() forever
            raise InversionError(f"cannot read inversion {path}: not a regular file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["retouch_inversion"])
                tensors = {k: f.get_tensor(k) for k in ("x0", "trajectory", "zs")}
        except FileNotFoundError:
            raise InversionError(f"cannot read inversion {path}: no such file") from None
        except Exception as e:
            raise InversionError(f"cannot read inversion {path}: not a retouch inversion file") from e
        _check_inversion_file(path, meta, tensors, cls._META)
        meta.pop("content_hash")
        meta["timesteps"] = tuple(meta["timesteps"])
        dev = device if device is not None else (model.device if model is not None else "cpu")
        inv = cls(**{k: v.to(dev) for k, v in tensors.items()}, **meta)
        if model is not None:
            from retouch.inversion import check_inversion

            try:
                check_inversion(model, inv)
            except InversionError:
                raise
            except ValueError as e:
                raise InversionError(f"inversion {path}: {e}") from e
        return inv


def content_hash(meta: dict, tensors: dict) -> str:
    """sha256 of an inversion's metadata (all but this hash) and its tensors' dtypes, shapes and
    bytes: written by `Inversion.save`, checked by `Inversion.load`."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


MAX_SCALE = 64  # most image pixels per latent cell along a side (Stable Diffusion's VAE: 8)


def _check_inversion_file(path, meta, tensors: dict, keys: tuple[str, ...]) -> None:
    """An inversion file's metadata and tensors as `Inversion.save` writes them, or InversionError:
    the same keys with the right types, float32 tensors, one z map per timestep, as many timesteps
    as the steps and skip say, distinct and in the schedule's range, an image size its latents can
    hold (bounded before anything is resized to it), finite values, and the checksum of it all."""
    import math

    from retouch.errors import InversionError

    def bad(why: str) -> InversionError:
        return InversionError(f"inversion {path} is damaged or not retouch's: {why}")

    if isinstance(meta, dict):
        meta.setdefault("solver", "ddpm")  # files written before the solver setting
        meta.setdefault("family", "sd")  # and before SDXL
    keys = (*keys, "content_hash")
    if not isinstance(meta, dict) or set(meta) != set(keys):
        extra, missing = sorted(set(meta) - set(keys)), sorted(set(keys) - set(meta))
        raise bad(f"metadata keys differ (extra {extra}, missing {missing})")
    ints = ("num_inference_steps", "skip", "height", "width", "seed", "unet_evals")
    if any(isinstance(meta[k], bool) or not isinstance(meta[k], int) or meta[k] < 0 for k in ints):
        raise bad(f"{', '.join(ints)} must be non-negative whole numbers")
    if not all(isinstance(meta[k], str) for k in ("source", "fingerprint", "model_id", "image_hash")):
        raise bad("source, fingerprint, model_id and image_hash must be text")
    if meta["family"] not in ("sd", "sdxl", "sd3"):
        raise bad(f"family must be sd, sdxl or sd3, got {meta['family']!r}")
    if meta["solver"] not in ("ddpm", "dpmsolver++"):
        raise bad(f"solver must be ddpm or dpmsolver++, got {meta['solver']!r}")
    scale = meta["source_guidance_scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise bad("source_guidance_scale must be a finite number")
    ts = meta["timesteps"]
    flow = meta["family"] == "sd3"  # a flow model's levels are the path's t in (0, 1]
    level_type, level_words = ((int, float), "levels in (0, 1]") if flow else (int, "whole numbers")
    if flow and isinstance(ts, list) and any(not isinstance(t, (int, float)) or not 0 < t <= 1 for t in ts):
        raise bad("a flow model's timesteps must be levels in (0, 1]")
    if (
        not isinstance(ts, list)
        or not ts
        or not all(isinstance(t, level_type) and not isinstance(t, bool) for t in ts)
    ):
        raise bad(f"timesteps must be a list of {level_words}")
    if any(a <= b for a, b in zip(ts, ts[1:])) or ts[-1] < 0:
        raise bad("timesteps must be descending and not negative")
    if not 1 <= meta["num_inference_steps"] or len(ts) != meta["num_inference_steps"] - meta["skip"]:
        raise bad(
            f"{len(ts)} timesteps, but num_inference_steps={meta['num_inference_steps']} "
            f"and skip={meta['skip']} make {meta['num_inference_steps'] - meta['skip']}"
        )
    if not isinstance(meta["content_hash"], str):
        raise bad("content_hash must be text")
    if any(t.dtype != torch.float32 for t in tensors.values()):
        raise bad("its tensors must be float32, as retouch writes them")
    x0, traj, zs = tensors["x0"], tensors["trajectory"], tensors["zs"]
    if x0.dim() != 4 or x0.shape[0] != 1:
        raise bad(f"x0 must be [1, C, h, w], got {list(x0.shape)}")
    if tuple(traj.shape) != (len(ts) + 1, *x0.shape[1:]) or tuple(zs.shape) != (len(ts), *x0.shape[1:]):
        raise bad(
            f"{len(ts)} timesteps need {len(ts)} z maps and {len(ts) + 1} trajectory latents "
            f"shaped like x0; got {list(zs.shape)} and {list(traj.shape)}"
        )
    h, w = x0.shape[-2:]
    if not (1 <= meta["height"] <= MAX_SCALE * h and 1 <= meta["width"] <= MAX_SCALE * w):
        raise bad(
            f"height {meta['height']} and width {meta['width']} cannot be an image of its "
            f"{h}x{w} latents (at most {MAX_SCALE} pixels a cell)"
        )
    if not all(bool(torch.isfinite(t).all()) for t in (x0, traj, zs)):
        raise bad("it holds NaN or infinite values")
    if content_hash({k: v for k, v in meta.items() if k != "content_hash"}, tensors) != meta["content_hash"]:
        raise bad(
            "its contents do not match the checksum written with them (the file is damaged or was edited)"
        )
