"""The one Gaussian blur (the mask's feather, SSIM's local statistics, the judge's augmentation),
the guided filter that fits a mask's scores to an image's edges, and connected regions (a mask's,
the judge's objects)."""

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


def box_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean of x [..., H, W] over the (2r+1)×(2r+1) window around each pixel, the window clipped
    at the borders. From summed-area tables: the same cost at any radius."""
    for dim in (-2, -1):
        n = x.shape[dim]
        c = F.pad(x.cumsum(dim), (1, 0) if dim == -1 else (0, 0, 1, 0))  # [..., n + 1] along dim
        idx = torch.arange(n, device=x.device)
        hi, lo = (idx + r + 1).clamp(max=n), (idx - r).clamp(min=0)
        count = (hi - lo).to(x.dtype)
        shape = [1] * x.dim()
        shape[dim] = n
        x = (c.index_select(dim, hi) - c.index_select(dim, lo)) / count.view(shape)
    return x


def guided_filter(guide: torch.Tensor, p: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He, Sun & Tang's guided filter (ECCV 2010) of p [H, W] by a colour guide [3, H, W] in [0, 1].

    In each window p is fitted as a linear function of the guide's colour, q = a·I + b (a [3], with
    eps regularising the 3×3 colour covariance); q averages the fits of the windows over each pixel.
    Where the guide is flat q is p's local mean; across the guide's edges q follows the edge.
    Returns q [H, W]."""
    h, w = p.shape
    mean_i, mean_p = box_mean(guide, radius), box_mean(p, radius)  # [3, H, W], [H, W]
    cov_ip = box_mean(guide * p, radius) - mean_i * mean_p  # [3, H, W]
    outer = (guide[:, None] * guide[None]).reshape(9, h, w)  # [9, H, W]
    cov_ii = box_mean(outer, radius).reshape(3, 3, h, w) - mean_i[:, None] * mean_i[None]  # [3, 3, H, W]
    sigma = cov_ii.permute(2, 3, 0, 1) + eps * torch.eye(3, dtype=p.dtype, device=p.device)  # [H, W, 3, 3]
    a = torch.linalg.solve(sigma, cov_ip.permute(1, 2, 0)[..., None])[..., 0].permute(2, 0, 1)  # [3, H, W]
    b = mean_p - (a * mean_i).sum(0)  # [H, W]
    return (box_mean(a, radius) * guide).sum(0) + box_mean(b, radius)


def connected_regions(mask: torch.Tensor) -> torch.Tensor:
    """The connected regions of a mask [H, W] (nonzero: in it; cells touching by a side or a
    corner): labels long [H, W], 0 outside the mask, each region one positive label (its largest
    cell index + 1), spread through the region by repeated 3×3 max-pooling."""
    on = mask > 0
    index = torch.arange(1, mask.numel() + 1, device=mask.device).view(mask.shape)
    labels = torch.where(on, index, 0).float()
    while True:
        spread = F.max_pool2d(labels[None, None], 3, 1, 1)[0, 0] * on
        if torch.equal(spread, labels):
            return labels.long()
        labels = spread
