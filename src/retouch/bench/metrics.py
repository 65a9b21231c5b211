"""ShapesBench metrics: PSNR and SSIM over a region, mask IoU, and the judge's verdicts.

Images are uint8 (H, W, 3); regions and masks bool (H, W). A metric over an empty region is None.
"""

from __future__ import annotations

import numpy as np

from retouch.bench.cases import Case
from retouch.bench.model import psnr as _psnr

# SSIM (Wang, Bovik, Sheikh, Simoncelli 2004, IEEE TIP 13(4)): Gaussian window 11 taps, σ = 1.5,
# K1 = 0.01, K2 = 0.03, dynamic range L = 255 — the paper's constants.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2, SSIM_L = 11, 1.5, 0.01, 0.03, 255.0


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float | None:
    """PSNR in dB between uint8 images (H, W, 3) over the pixels `where` (bool (H, W)), or all.
    Identical pixels give the cap of bench.model.psnr (~168 dB); an empty region gives None."""
    a, b = np.asarray(a), np.asarray(b)
    if where is None:
        return _psnr(a, b)
    if not where.any():
        return None
    return _psnr(a[where], b[where])


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()  # (size,)


def _blur(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter of (H, W, C) float64, same size, mirrored edges (scipy 'reflect')."""
    r = len(g) // 2
    p = np.pad(x, ((r, r), (r, r), (0, 0)), mode="symmetric")
    h, w = x.shape[:2]
    rows = sum(g[k] * p[k : k + h] for k in range(len(g)))  # (H, W + 2r, C)
    return sum(g[k] * rows[:, k : k + w] for k in range(len(g)))  # (H, W, C)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel, per-channel SSIM (Wang et al. 2004, Eq. 13) of uint8 (H, W, 3): float (H, W, 3).

    Local statistics are Gaussian-weighted (window 11, σ 1.5) with mirrored edges, so every pixel
    has a value; variances are population ones (as the paper, and skimage's default)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    g = _gaussian_window()
    c1, c2 = (SSIM_K1 * SSIM_L) ** 2, (SSIM_K2 * SSIM_L) ** 2
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    var_a = _blur(a * a, g) - mu_a**2
    var_b = _blur(b * b, g) - mu_b**2
    cov = _blur(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return num / den


def ssim(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float | None:
    """Mean SSIM over the pixels `where` (bool (H, W); window centres there) and channels, or over
    the whole image; None for an empty region. Windows near the region's edge also see pixels
    outside it, as in any masked SSIM."""
    m = ssim_map(a, b)
    if where is None:
        return float(m.mean())
    if not where.any():
        return None
    return float(m[where].mean())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def pixel_mask(latent: np.ndarray, factor: int, height: int, width: int) -> np.ndarray:
    """A latent-resolution mask {0,1} (h, w) at pixel resolution, binarised: bool (height, width).

    Bilinear upsampling (retouch's own display mask without feather) then ≥ 0.5, the same for
    every method, so that masks of different methods compare on equal terms."""
    import torch

    from retouch.latents import upsample_mask

    soft = upsample_mask(torch.as_tensor(np.asarray(latent, np.float32)), factor, height, width, 0.0)
    return soft.numpy() >= 0.5


def judge_case(judge, image: np.ndarray, case: Case) -> dict:
    """The judge's verdicts on an edited image: did the edit happen, was the rest kept.

    success: the judge reads the target in the changed region (the new object; nothing for a
    removal; the new background for a background edit) and no longer the source there;
    read: what it read; preserved: every untouched object is read as itself inside its
    ground-truth mask (None when the edit leaves no object untouched); preserved_fraction: how many.
    """
    from retouch.shapes.judge import read_background, read_regions

    untouched = case.untouched()
    images, regions = [image] * len(untouched), [m for _, m in untouched]
    if case.kind == "background":
        read = read_background(judge, image)
        expected, source = case.edit.target.background, case.edit.source.background
    else:
        region, expected, source = case.judged_region()
        images, regions = [image, *images], [region, *regions]
    reads = read_regions(judge, images, regions)  # one batched judge call
    if case.kind != "background":
        read, reads = reads[0], reads[1:]
    kept = [r == (o.shape, o.color) for r, (o, _) in zip(reads, untouched)]
    return dict(
        success=bool(read == expected and read != source),
        source_gone=bool(read != source),
        read=list(read) if isinstance(read, tuple) else read,
        preserved=bool(all(kept)) if kept else None,
        preserved_fraction=float(np.mean(kept)) if kept else None,
    )


def image_metrics(image: np.ndarray, case: Case) -> dict:
    """Pixel metrics of an edited image against the input (outside the changed region) and the
    ground truth (inside it)."""
    keep = ~case.region
    return dict(
        psnr_bg=psnr(image, case.source_image, keep),
        ssim_bg=ssim(image, case.source_image, keep),
        psnr_target=psnr(image, case.target_image, case.region),
    )


def mask_metrics(mask: np.ndarray | None, case: Case) -> dict:
    """IoU of a method's pixel mask (bool (H, W), None if it has none) with the changed region."""
    if mask is None:
        return dict(mask_iou=None, mask_area=None)
    return dict(mask_iou=iou(mask, case.region), mask_area=float(mask.mean()))
