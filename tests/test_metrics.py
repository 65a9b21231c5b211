"""retouch.metrics and retouch.filters: PSNR, SSIM (against scikit-image's where it is installed),
IoU, and the one Gaussian blur."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retouch.filters import gaussian_blur
from retouch.metrics import iou, psnr, ssim, ssim_map


def _noise_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 40, 3), dtype=np.uint8)


def test_psnr_known_values():
    a = _noise_image(0)
    assert psnr(a, a) > 150  # identical: the cap
    b = a.astype(np.int16)
    b = np.clip(b + np.where(b < 255, 1, -1), 0, 255).astype(np.uint8)  # every value off by exactly 1
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2), abs=1e-9)  # MSE 1: 48.13 dB
    where = np.zeros(a.shape[:2], bool)
    where[:5] = True
    c = a.copy()
    c[~where] = 0  # differences only outside `where`
    assert psnr(a, c, where) > 150
    assert psnr(a, c, np.zeros_like(where)) is None


def test_ssim_identity_and_bounds():
    a, b = _noise_image(1), _noise_image(2)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert -1 <= ssim(a, b) < 0.1  # independent noise: near 0
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)
    flat = np.full_like(a, 100)
    assert ssim(flat, flat) == pytest.approx(1.0)
    where = np.zeros(a.shape[:2], bool)
    assert ssim(a, b, where) is None


def test_ssim_matches_a_direct_window_computation():
    """At an interior pixel the map equals the SSIM formula with the Gaussian-weighted window
    written out (11x11, σ 1.5, C1 = (0.01·255)², C2 = (0.03·255)²)."""
    a = _noise_image(3).astype(np.float64)
    b = np.clip(a * 0.7 + 40 + _noise_image(4) * 0.2, 0, 255)
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    i, j, ch = 15, 20, 1
    pa, pb = a[i - 5 : i + 6, j - 5 : j + 6, ch], b[i - 5 : i + 6, j - 5 : j + 6, ch]
    mu_a, mu_b = (w * pa).sum(), (w * pb).sum()
    va, vb = (w * (pa - mu_a) ** 2).sum(), (w * (pb - mu_b) ** 2).sum()
    cov = (w * (pa - mu_a) * (pb - mu_b)).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    want = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    assert ssim_map(a, b)[i, j, ch] == pytest.approx(want, rel=1e-9)


def test_ssim_over_a_region_sees_only_that_region():
    a = _noise_image(5)
    b = a.copy()
    b[:, 30:] = 255 - b[:, 30:]  # changed on the right only
    left = np.zeros(a.shape[:2], bool)
    left[:, :20] = True  # window radius 5: no window centred here reaches column 30
    assert ssim(a, b, left) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b) < 0.9


def test_iou_known_values():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert iou(a, b) == 1.0  # both empty
    a[:2] = True  # 8 cells
    b[1:3] = True  # 8 cells, 4 shared
    assert iou(a, b) == pytest.approx(4 / 12)
    assert iou(a, a) == 1.0 and iou(a, ~a) == 0.0


def test_ssim_matches_scikit_image():
    """Parity with skimage's structural_similarity with the paper's settings (Gaussian σ 1.5,
    population covariance, data range 255): the whole map, and the mean over its interior."""
    metrics = pytest.importorskip("skimage.metrics")
    a = _noise_image(6)
    b = np.clip(a.astype(np.float64) * 0.6 + 50 + _noise_image(7) * 0.3, 0, 255).astype(np.uint8)
    kw = dict(channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    mean, full = metrics.structural_similarity(a, b, full=True, **kw)
    ours = ssim_map(a, b)
    assert np.abs(ours - full).max() < 1e-9
    assert float(ours[5:-5, 5:-5].mean()) == pytest.approx(mean, abs=1e-9)  # skimage crops the border


def test_gaussian_blur_keeps_flat_images_and_mass_and_is_per_image():
    flat = torch.full((2, 3, 9, 9), 0.25)
    assert torch.allclose(gaussian_blur(flat, 1.0), flat)
    spike = torch.zeros(1, 1, 15, 15)
    spike[0, 0, 7, 7] = 1
    out = gaussian_blur(spike, 1.5, radius=5)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)  # interior: nothing lost at the edges
    assert (
        out[0, 0, 7, 7] < 0.1
        and torch.allclose(out, out.flip(-1))
        and torch.allclose(out, out.transpose(-1, -2))
    )
    two = gaussian_blur(spike.repeat(2, 1, 1, 1), torch.tensor([0.5, 2.0]), radius=5)
    assert two[0, 0, 7, 7] > two[1, 0, 7, 7]  # each image its own σ
    assert torch.allclose(two[1:], gaussian_blur(spike, 2.0, radius=5))
