"""DiffEdit's inferred mask (docs/diffedit.md, step 1) and masks a user gives."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from retouch.denoiser import EpsFn, cfg
from retouch.errors import ImageError
from retouch.filters import connected_regions, guided_filter
from retouch.latents import fitted_size
from retouch.schedule import Schedule


def difference_map(
    eps_fn: EpsFn,
    schedule: Schedule,
    x0: torch.Tensor,
    t: int,
    cond_query: torch.Tensor,
    cond_ref: torch.Tensor,
    noises: torch.Tensor,
    uncond: torch.Tensor | None = None,
    guidance_scale: float | None = None,
    chunk: int = 16,
) -> torch.Tensor:
    """D = mean over noises and channels of |ε(x_t,t,Q) − ε(x_t,t,R)|   (DiffEdit, §3.2).

    x0 [1, C, h, w]; noises [n, C, h, w], one independent noise per sample; cond_* [1, L, D].
    With guidance_scale (diffusers' variant) both sides get CFG; ε(∅) cancels in the difference,
    so this only costs evaluations. Query and reference of one noise share one batched call.
    Returns D [h, w].
    """
    total = torch.zeros(x0.shape[-2:], device=x0.device)
    for nz in noises.split(chunk):
        x_t = schedule.add_noise(x0.expand_as(nz), nz, t)  # [b, C, h, w]
        b = x_t.shape[0]
        conds = [cond_query, cond_ref] + ([uncond] if guidance_scale is not None else [])
        c = torch.cat([cc.expand(b, -1, -1) for cc in conds])  # [k·b, L, D]
        eps = eps_fn(x_t.repeat(len(conds), 1, 1, 1), t, c).split(b)
        e_q, e_r = eps[0], eps[1]
        if guidance_scale is not None:
            e_q, e_r = cfg(eps[2], e_q, guidance_scale), cfg(eps[2], e_r, guidance_scale)
        total += (e_q - e_r).abs().mean(dim=1).sum(dim=0)
    if torch.equal(cond_query, cond_ref):  # the same text: D is 0, whatever rounding a batch adds
        total.zero_()
    return total / noises.shape[0]


def binarize(
    d: torch.Tensor, clamp: float = 3.0, threshold: float = 0.5, refine: Callable | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove extreme values and binarise (DiffEdit §3.2): clamp D to [0, k·mean D], rescale to
    [0, 1], threshold. D [h, w] → (mask {0,1} [h, w], scores [h, w]). Identical texts give D = 0:
    an empty mask, not 0/0. refine(scores) → scores [h, w], if given, comes before the threshold
    (ours: `refined_scores`)."""
    top = clamp * d.mean()
    if not torch.isfinite(top) or top <= 1e-12:
        scores = torch.zeros_like(d)
    else:
        scores = d.clamp(0, top) / top
    if refine is not None:
        scores = refine(scores)
    return (scores > threshold).float(), scores


# The guided filter's regulariser, for colours in [0, 1]: a colour edge of contrast well above
# √eps ≈ 0.03 is followed, noise below it is smoothed over
GUIDED_EPS = 1e-3


def refined_scores(scores: torch.Tensor, pixels: torch.Tensor, factor: int, radius: float) -> torch.Tensor:
    """DiffEdit's scores fitted to the image's edges (ours, beyond the paper): scores [h, w] upsampled
    to the padded pixels [1, 3, h·factor, w·factor] in [-1, 1], guided-filtered with them as the
    guide in a window of `radius` latent cells each side, and averaged back over each cell. Inside
    a region of one colour the scores are smoothed (a mask ringing an object fills in); across the
    region's edge they follow the edge (it does not spill). Returns [h, w] in [0, 1]."""
    h, w = scores.shape
    p = F.interpolate(
        scores[None, None].float(), size=(h * factor, w * factor), mode="bilinear", align_corners=False
    )[0, 0]
    guide = ((pixels[0].float() + 1) / 2).clamp(0, 1).to(p.device)  # [3, H', W']
    q = guided_filter(guide, p, max(1, round(radius * factor)), GUIDED_EPS)  # [H', W']
    return F.avg_pool2d(q[None, None], factor)[0, 0].clamp(0, 1)


def strongest_regions(mask: torch.Tensor, scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """The regions of a mask {0,1} [h, w] whose summed scores [h, w] reach `ratio` of the strongest
    region's (ours: an edit is where the difference gathers; a weaker region is another object the
    texts' words also touch). ratio 0 keeps every region. Returns {0,1} [h, w]."""
    if ratio <= 0:
        return mask
    labels = connected_regions(mask).flatten()  # [h·w], 0 off the mask
    mass = torch.zeros(labels.numel() + 1, device=mask.device).index_add_(0, labels, scores.flatten().float())
    mass[0] = 0  # off the mask
    kept = (mass >= ratio * mass.max()) & (mass > 0)  # [h·w + 1], by label
    return (kept[labels] & (labels > 0)).view(mask.shape).to(mask.dtype)


def user_mask(
    mask, height: int, width: int, latent_hw: tuple[int, int], factor: int, budget: int | None = None
) -> torch.Tensor:
    """A mask a user gives (path, PIL image, array or tensor; nonzero = edit), of the image's size
    (height, width), at latent resolution: {0,1} [h, w]. A latent cell is in the mask if any of
    its pixels is. With `budget`, a mask of the image's size before it was fitted to that pixel
    budget is resized with it (a pixel is in the mask if any pixel it covers was)."""
    if isinstance(mask, (str, bytes)) or hasattr(mask, "__fspath__"):
        try:
            with Image.open(mask) as img:
                img.load()
                mask = img.copy()
        except Exception as e:
            raise ImageError(f"cannot read mask {mask}: {e}") from e
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    m = torch.as_tensor(np.array(mask)).float()
    if m.dim() == 3:
        m = m.amax(dim=-1) if m.shape[-1] in (1, 3, 4) else m.amax(dim=0)
    if m.dim() == 2 and budget is not None and fitted_size(m.shape[1], m.shape[0], budget) == (width, height):
        m = F.adaptive_max_pool2d((m > 0).float()[None, None], (height, width))[0, 0]
    if tuple(m.shape) != (height, width):
        raise ImageError(f"mask is {m.shape[1]}x{m.shape[0]}, the image is {width}x{height}")
    if not torch.isfinite(m).all():
        raise ImageError("mask has NaN or infinite values")
    h, w = latent_hw
    padded = F.pad((m > 0).float()[None, None], (0, w * factor - width, 0, h * factor - height))
    return (F.max_pool2d(padded, factor)[0, 0] > 0).float()  # [h, w]
