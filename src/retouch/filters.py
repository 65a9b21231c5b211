"""The one Gaussian blur: the mask's feather, SSIM's local statistics and the judge's augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: torch.Tensor, radius: int, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian taps: sigma [B] → [B, 2·radius + 1]."""
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=sigma.device)  # [K]
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.to(dtype)[:, None].clamp_min(1e-3) ** 2))  # [B, K]
    return k / k.sum(1, keepdim=True)


def _pad(x: torch.Tensor, r: int, dim: int, mode: str) -> torch.Tensor:
    if mode == "symmetric":  # edge sample repeated (scipy's 'reflect', numpy's 'symmetric')
        head, tail = x.narrow(dim, 0, r).flip(dim), x.narrow(dim, x.shape[dim] - r, r).flip(dim)
        return torch.cat([head, x, tail], dim)
    pad = (r, r, 0, 0) if dim == -1 else (0, 0, r, r)
    return F.pad(x, pad, mode=mode)


def gaussian_blur(
    x: torch.Tensor, sigma, radius: int | None = None, padding: str = "replicate"
) -> torch.Tensor:
    """Separable Gaussian blur of x [B, C, H, W], same size.

    sigma: one value, or one per image [B]; radius: taps each side (default ⌈2σ⌉ of the largest σ);
    padding: "replicate" or "symmetric". Computed in x's dtype."""
    b, c, h, w = x.shape
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(b)  # [B]
    r = radius if radius is not None else max(1, int(torch.ceil(2 * sigma.max())))
    k = gaussian_kernel(sigma, r, x.dtype).repeat_interleave(c, 0)  # [B·C, K]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(_pad(y, r, -1, padding), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(_pad(y, r, -2, padding), k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)
