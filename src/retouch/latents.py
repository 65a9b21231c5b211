"""Images in and out: reading and checking a user's image, pixels <-> VAE latents.

Pixels are [1, 3, H, W] in [-1, 1]; latents [1, C, h, w] scaled by the VAE's scaling factor.
Sides that are not a multiple of the model's size multiple are padded (edge pixels repeated) and
the original size is restored on output.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from retouch.errors import ImageError
from retouch.filters import gaussian_blur
from retouch.types import ModelBundle

MIN_SIDE = 8
MAX_SIDE = 4096


def _check_size(w: int, h: int, name: str) -> None:
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"{name} is {w}x{h}: each side must be at least {MIN_SIDE} pixels")
    if max(w, h) > MAX_SIDE:
        raise ImageError(f"{name} is {w}x{h}: each side must be at most {MAX_SIDE} pixels")


def _check_still(img: Image.Image, name: str) -> None:
    """An animated GIF, WebP or PNG is refused: which frame to edit is the user's choice."""
    frames = getattr(img, "n_frames", 1) if getattr(img, "is_animated", False) else 1
    if frames > 1:
        raise ImageError(
            f"{name} is animated ({frames} frames): retouch edits one still image; save the frame "
            "to edit as a PNG"
        )


def _open(path: Path) -> Image.Image:
    """The decoded image, its file closed whatever happens; the size checked from the header first."""
    if path.is_dir():
        raise ImageError(f"cannot read image {path}: it is a folder, not a file")
    if not path.is_file():
        raise ImageError(f"cannot read image {path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"cannot read image {path}: the file is empty")
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path} is too large: each side must be at most {MAX_SIDE} pixels ({e})") from e
    except Exception as e:  # Pillow raises several types for undecodable files
        raise ImageError(f"cannot read image {path}: not an image Pillow can decode") from e
    with img:
        _check_still(img, str(path))
        _check_size(*img.size, str(path))  # from the header: before decoding a huge image
        try:
            img.load()
        except Exception as e:
            raise ImageError(f"cannot read image {path}: the file is truncated or corrupt ({e})") from e
        return img.copy()  # keeps mode and info (EXIF, transparency); the file closes here


def _drop_opaque_alpha(img: Image.Image, name: str) -> Image.Image:
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            raise ImageError(
                f"{name} has transparent pixels (alpha channel): flatten it onto a background first"
            )
        img = img.convert("RGB")
    return img


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    img = _drop_opaque_alpha(img, name)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16-bit or float grayscale
        img = Image.fromarray(_gray_to_8bit(np.asarray(img, dtype=np.float64), img.mode, name), mode="L")
    return img.convert("RGB")


def _gray_to_8bit(arr: np.ndarray, mode: str, name: str) -> np.ndarray:
    """16-bit, 32-bit integer or float grayscale as uint8: integers over 0–65535 (0–255 when no
    value is above it), floats over [0, 1] (as float images are kept) or, failing that, 0–255."""
    if not np.isfinite(arr).all():
        raise ImageError(f"{name} has NaN or infinite pixel values")
    if mode == "F" and arr.min() >= 0 and arr.max() <= 1:
        top = 1.0
    elif arr.min() < 0 or arr.max() > 65535 or (mode == "F" and arr.max() > 255):
        raise ImageError(f"{name} has pixel values outside [0, 1], [0, 255] or [0, 65535]")
    else:
        top = 65535.0 if arr.max() > 255 else 255.0
    return np.clip(arr / top * 255 + 0.5, 0, 255).astype(np.uint8)


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ImageError(f"{name} array must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float64) / 257).round().astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageError(f"{name} array has NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise ImageError(f"{name} float array must be in [0, 1]")
        arr = (arr * 255).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageError(f"{name} array has dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    if arr.shape[-1] == 4:
        if arr[..., 3].min() < 255:
            raise ImageError(f"{name} has transparent pixels (alpha channel): flatten it first")
        arr = arr[..., :3]
    return Image.fromarray(np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr)


def load_image(image, name: str = "image") -> Image.Image:
    """A user's image (path, PIL image or array) as a checked 8-bit RGB PIL image."""
    if isinstance(image, (str, Path)):
        img = _to_rgb(_open(Path(image)), str(image))
    elif isinstance(image, Image.Image):
        _check_still(image, name)
        img = _to_rgb(image, name)
    elif isinstance(image, np.ndarray):
        img = _from_array(image, name)
    elif isinstance(image, torch.Tensor):
        img = _from_array(image.detach().cpu().numpy(), name)
    else:
        raise ImageError(f"{name} must be a path, a PIL image or an array, got {type(image).__name__}")
    _check_size(*img.size, name)
    return img


def fitted_size(width: int, height: int, budget: int) -> tuple[int, int]:
    """(width, height) of an image resized, aspect kept, to hold at most `budget` pixels (the size
    itself when it fits). A strip too thin for that keeps its short side at MIN_SIDE."""
    if width * height <= budget:
        return width, height
    scale = math.sqrt(budget / (width * height))
    w, h = math.floor(width * scale), math.floor(height * scale)
    if h < MIN_SIDE:
        w, h = min(width, budget // MIN_SIDE), MIN_SIDE
    elif w < MIN_SIDE:
        w, h = MIN_SIDE, min(height, budget // MIN_SIDE)
    return w, h


def fit_budget(
    img: Image.Image, budget: int, resize: bool = True, name: str = "image"
) -> tuple[Image.Image, str]:
    """(the image within `budget` pixels, a note saying it was resized or ""). resize=False: an
    image over the budget is an ImageError instead."""
    w, h = img.size
    size = fitted_size(w, h, budget)
    if size == (w, h):
        return img, ""
    if not resize:
        raise ImageError(
            f"{name} is {w}x{h} ({w * h} pixels), over this model's budget of {budget} pixels: "
            "resize it, or raise the budget (max_pixels, --max-pixels)"
        )
    note = f"{name} is {w}x{h}, over this model's budget of {budget} pixels: edited at {size[0]}x{size[1]}"
    return img.resize(size, Image.LANCZOS), note


def fitted(bundle: ModelBundle, image) -> tuple[Image.Image, str]:
    """(the checked image within the model's pixel budget, a note if it was resized)."""
    return fit_budget(load_image(image), bundle.pixel_budget, bundle.resize)


def image_hash(img: Image.Image) -> str:
    """sha256 of the RGB pixels and size: identifies an image independent of its file format."""
    h = hashlib.sha256(f"{img.size}".encode())
    h.update(np.asarray(img.convert("RGB")).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Pixels:
    """An image as model input: [1, 3, H', W'] in [-1, 1], padded; (H, W) its original size."""

    tensor: torch.Tensor
    height: int
    width: int


def to_pixels(bundle: ModelBundle, img: Image.Image) -> Pixels:
    """Pad to the model's size multiple (repeating edge pixels); [1, 3, H', W'] in [-1, 1]."""
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1  # (H, W, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]  # [1, 3, H, W]
    m = bundle.size_multiple
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return Pixels(x.to(bundle.device), h, w)


def to_image(pixels: torch.Tensor, height: int, width: int) -> Image.Image:
    """[1, 3, H', W'] in [-1, 1] → RGB PIL image cropped to (height, width)."""
    x = pixels[0, :, :height, :width].float().clamp(-1, 1)
    arr = ((x + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


@torch.inference_mode()
def encode(bundle: ModelBundle, pixels: torch.Tensor) -> torch.Tensor:
    """x0 = (VAE posterior MEAN − shift factor) × scaling factor (not a sample; the shift is SD3's and
    FLUX's, none for SD): [1, 3, H, W] → [1, C, H/f, W/f]."""
    post = bundle.vae.encode(pixels.to(bundle.vae.dtype)).latent_dist  # the VAE's own (upcast) dtype
    return (post.mean.float() - _shift(bundle)) * bundle.vae.config.scaling_factor


def _shift(bundle: ModelBundle) -> float:
    """The VAE config's shift_factor (SD3, FLUX: latents are (z − shift)·scale); 0 for SD's."""
    return getattr(bundle.vae.config, "shift_factor", None) or 0.0


@torch.inference_mode()
def decode(bundle: ModelBundle, latents: torch.Tensor) -> torch.Tensor:
    """[1, C, h, w] scaled latents → pixels [1, 3, h·f, w·f] in [-1, 1]."""
    z = latents.to(bundle.vae.dtype) / bundle.vae.config.scaling_factor + _shift(bundle)
    return bundle.vae.decode(z).sample.float()


def upsample_mask(mask: torch.Tensor, factor: int, height: int, width: int, feather: float = 0.0):
    """A latent mask [h, w] (of the padded image) as a soft pixel mask [height, width] in [0, 1]:
    bilinear upsampling by `factor`, cropped to the original size, feathered by a Gaussian of
    `feather` pixels (0: none)."""
    m = mask[None, None].float()  # [1, 1, h, w]
    m = F.interpolate(m, scale_factor=factor, mode="bilinear", align_corners=False)[..., :height, :width]
    if feather > 0:
        m = gaussian_blur(m, feather, radius=max(1, int(round(2 * feather))))
    return m[0, 0].clamp(0, 1)  # [height, width]


def paste_back(out: torch.Tensor, original: Pixels, mask: torch.Tensor, factor: int, feather: float):
    """Decoded pixels out [1, 3, H', W'] inside the latent mask [h, w] (upsampled, feathered by
    `feather` pixels), the original's outside: the VAE round trip no longer touches the rest."""
    soft = upsample_mask(mask, factor, original.height, original.width, feather)  # [H, W]
    soft = F.pad(soft, (0, out.shape[-1] - original.width, 0, out.shape[-2] - original.height))
    return soft * out + (1 - soft) * original.tensor
