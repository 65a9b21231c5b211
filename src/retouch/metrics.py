"""Image metrics: PSNR and SSIM over a region, mask IoU. One copy of each, for the benchmark,
the comparison scripts and the tests.

Images are uint8 (H, W, 3) arrays (or anything numpy reads as such); regions and masks bool (H, W).
A metric over an empty region is None.
"""

from __future__ import annotations

import numpy as np
import torch

from retouch.filters import gaussian_blur

PSNR_CAP_MSE = 1e-12  # identical images give 10·log10(255² / 1e-12) ≈ 168 dB instead of infinity
# SSIM (Wang, Bovik, Sheikh, Simoncelli 2004, IEEE TIP 13(4)): Gaussian window 11 taps, σ = 1.5,
# K1 = 0.01, K2 = 0.03, dynamic range L = 255 — the paper's constants.
SSIM_RADIUS, SSIM_SIGMA, SSIM_K1, SSIM_K2, SSIM_L = 5, 1.5, 0.01, 0.03, 255.0


def psnr(a, b, where: np.ndarray | None = None) -> float | None:
    """PSNR in dB between 8-bit images (or stacks of them) over the pixels `where` (bool (H, W)),
    or all. Identical pixels give the cap (~168 dB); an empty region gives None."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if where is not None:
        if not where.any():
            return None
        a, b = a[where], b[where]
    mse = np.mean((a - b) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, PSNR_CAP_MSE)))


def ssim_map(a, b) -> np.ndarray:
    """Per-pixel, per-channel SSIM (Wang et al. 2004, Eq. 13) of uint8 (H, W, 3): float (H, W, 3).

    Local statistics are Gaussian-weighted (window 11, σ 1.5) with mirrored edges, so every pixel
    has a value; variances are population ones (as the paper, and skimage's default)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    x = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2)  # [2, C, H, W] float64

    def blur(t: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(t, SSIM_SIGMA, SSIM_RADIUS, padding="symmetric")

    mu = blur(x)  # [2, C, H, W]
    mu_a, mu_b = mu[0], mu[1]
    var_a = blur(x[:1] ** 2)[0] - mu_a**2
    var_b = blur(x[1:] ** 2)[0] - mu_b**2
    cov = blur((x[0] * x[1])[None])[0] - mu_a * mu_b
    c1, c2 = (SSIM_K1 * SSIM_L) ** 2, (SSIM_K2 * SSIM_L) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).permute(1, 2, 0).numpy()  # (H, W, C)


def ssim(a, b, where: np.ndarray | None = None) -> float | None:
    """Mean SSIM over the pixels `where` (bool (H, W); window centres there) and channels, or over
    the whole image; None for an empty region. Windows near the region's edge also see pixels
    outside it, as in any masked SSIM."""
    m = ssim_map(a, b)
    if where is None:
        return float(m.mean())
    if not where.any():
        return None
    return float(m[where].mean())


def iou(a, b) -> float:
    """Intersection over union of two bool masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)
