"""The judge: a small CNN, independent of any diffusion model, that reads ShapesWorld images.

Given an image and a region it reads the shape and colour of the object in that region ("none"
when there is none); it also reads the background colour of the whole image. A benchmark uses it
to decide whether an edit did what its text said (as DiffEdit used a classifier): read the
changed region, or check a whole image against its caption with `faithful`.

It is trained only on ShapesWorld renders of seeds below HELD_OUT_SEED, with regions that are
jittered object masks (dilated, eroded, boxes, unions and differences with another shape at the
same place, as changed regions of edits are) or empty blobs, and with light degradations (noise,
blur, colour jitter, softening) so that it also reads imperfect, generated images.

It reads at the size it was trained at, world.SIZE pixels a side: an image (and its region) of
another size, from a model of another native size, is box-resized to it first (`at_judge_size`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from retouch.filters import connected_regions, gaussian_blur
from retouch.shapes import world
from retouch.shapes.grammar import parse_caption
from retouch.shapes.world import HELD_OUT_SEED

log = logging.getLogger(__name__)

SHAPE_LABELS: tuple[str, ...] = (*world.SHAPES, "none")
COLOR_LABELS: tuple[str, ...] = (*world.COLORS, "none")
BACKGROUND_LABELS: tuple[str, ...] = tuple(world.BACKGROUNDS)
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "judge.safetensors"
EDIT_REGION_KINDS: tuple[str, ...] = ("recolor", "reshape", "remove", "add")


# --- model -------------------------------------------------------------------------------------


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class Judge(nn.Module):
    """Reads [B, 4, 64, 64] (RGB in [-1, 1] plus a {0, 1} region channel).

    Returns logits (shape over SHAPE_LABELS, colour over COLOR_LABELS) for the object in the
    region, and background logits over BACKGROUND_LABELS for the whole image.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv(4, w, 2),  # 32 x 32
            _conv(w, w),
            _conv(w, 2 * w, 2),  # 16 x 16
            _conv(2 * w, 2 * w),
            _conv(2 * w, 4 * w, 2),  # 8 x 8
            _conv(4 * w, 4 * w),
        )
        c = 4 * w
        self.region_mlp = nn.Sequential(nn.Linear(3 * c + 3, 2 * c), nn.ReLU(inplace=True))
        self.shape_head = nn.Linear(2 * c, len(SHAPE_LABELS))
        self.color_head = nn.Linear(2 * c, len(COLOR_LABELS))
        self.background_head = nn.Linear(c, len(BACKGROUND_LABELS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        region = x[:, 3:4]  # [B, 1, 64, 64]
        f = self.body(x)  # [B, C, 8, 8]
        w = F.adaptive_avg_pool2d(region, f.shape[-1])  # [B, 1, 8, 8] region fraction per cell
        r_mean = (f * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1e-4)  # [B, C]
        r_max = (f * (w > 0)).amax((2, 3))  # [B, C] (f >= 0 after ReLU)
        g_mean = f.mean((2, 3))  # [B, C]
        rgb = (x[:, :3] * region).sum((2, 3)) / region.sum((2, 3)).clamp_min(1.0)  # [B, 3]
        h = self.region_mlp(torch.cat([r_mean, r_max, g_mean, rgb], 1))  # [B, 2C]
        return self.shape_head(h), self.color_head(h), self.background_head(g_mean)


# --- images and regions ------------------------------------------------------------------------


def _as_uint8(image) -> np.ndarray:
    """A PIL image or HWC array as uint8 (64, 64, 3), at the judge's size (`at_judge_size`)."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError("expected a uint8 image or values in [0, 255]")
        arr = np.round(arr).astype(np.uint8)
    return at_judge_size(arr)


def at_judge_size(image: np.ndarray) -> np.ndarray:
    """A uint8 image (H, W, 3), or a bool region (H, W), at world.SIZE pixels a side: box-resized
    (a region keeps the pixels at least half covered), or itself if already that size."""
    from PIL import Image

    side = world.SIZE
    if image.shape[:2] == (side, side):
        return image
    if image.dtype == bool:
        cover = Image.fromarray(image.astype(np.float32)).resize((side, side), Image.BOX)
        return np.asarray(cover) >= 0.5
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BOX))


def _inputs(images: list, regions: list) -> torch.Tensor:
    """Images and regions as the judge's input [B, 4, 64, 64]."""
    imgs = np.stack([_as_uint8(im) for im in images])  # (B, 64, 64, 3)
    regs = np.stack([at_judge_size(np.asarray(r, dtype=bool)) for r in regions])  # (B, 64, 64)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1  # [B, 3, 64, 64]
    m = torch.from_numpy(regs).float()[:, None]  # [B, 1, 64, 64]
    return torch.cat([x, m], 1)  # [B, 4, 64, 64]


@torch.no_grad()
def _predict(judge: Judge, x: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, ...]:
    """Argmax labels (shape, colour, background), each [B]."""
    judge.eval()
    outs = [judge(x[i : i + batch]) for i in range(0, len(x), batch)]
    return tuple(torch.cat([o[k] for o in outs]).argmax(1) for k in range(3))


def read_regions(judge: Judge, images: list, regions: list) -> list[tuple[str | None, str | None]]:
    """(shape or None, colour or None) of the object in each region of each image, batched."""
    if not images:
        return []
    s, c, _ = _predict(judge, _inputs(images, regions))
    labels = [(SHAPE_LABELS[i], COLOR_LABELS[j]) for i, j in zip(s.tolist(), c.tolist())]
    return [(None if a == "none" else a, None if b == "none" else b) for a, b in labels]


def read_region(judge: Judge, image, region) -> tuple[str | None, str | None]:
    """(shape or None, colour or None) of the object in `region` (bool (H, W)) of `image`."""
    return read_regions(judge, [image], [region])[0]


def read_backgrounds(judge: Judge, images: list) -> list[str]:
    """The background colour name of each image, batched."""
    if not images:
        return []
    regions = [np.zeros(_as_uint8(im).shape[:2], bool) for im in images]
    _, _, b = _predict(judge, _inputs(images, regions))
    return [BACKGROUND_LABELS[i] for i in b.tolist()]


def read_background(judge: Judge, image) -> str:
    """The background colour name of `image`."""
    return read_backgrounds(judge, [image])[0]


def _background_rgb(img: np.ndarray, background) -> np.ndarray:
    """The reference background colour: a name, an RGB triple, or (None) the border's median."""
    if background is None:
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # (4 * 64, 3)
        return np.median(border.astype(np.float32), axis=0)
    if isinstance(background, str):
        return np.asarray(world.BACKGROUNDS[background], np.float32)
    return np.asarray(background, np.float32)


def _half_coverage(img: np.ndarray, comp: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """The pixels of a component at least half covered by its object (bool (H, W)), taking the
    object's colour as the median of its pixels farthest from the background."""
    d = img[comp] - bg  # (n, 3)
    dist = np.linalg.norm(d, axis=1)  # (n,)
    axis = np.median(d[dist >= 0.8 * dist.max()], axis=0)  # object colour - background
    frac = d @ axis / max(float(axis @ axis), 1e-6)  # (n,) estimated coverage
    out = np.zeros_like(comp)
    out[comp] = frac >= 0.45  # a little under 0.5: rendering rounds half-covered pixels
    return out


def _split_touching(comp: np.ndarray, erode: int = 2, min_core: int = 4) -> list[np.ndarray]:
    """A component (bool (H, W)) split into touching objects: the parts left after an erosion
    by `erode` px (objects are convex, so one object stays whole), each pixel going to the
    nearest part."""
    m = torch.from_numpy(comp).float()[None, None]  # [1, 1, H, W]
    core = 1 - F.max_pool2d(1 - m, 2 * erode + 1, 1, erode)  # [1, 1, H, W]
    ids = connected_regions(core[0, 0] > 0.5).numpy()
    cores = [np.argwhere(ids == i) for i in np.unique(ids[ids > 0])]
    cores = [c for c in cores if len(c) >= min_core]
    if len(cores) <= 1:
        return [comp]
    pix = np.argwhere(comp)  # (n, 2)
    dist = np.stack([((pix[:, None] - c[None]) ** 2).sum(-1).min(1) for c in cores])  # (k, n)
    owner = dist.argmin(0)  # (n,)
    parts = [np.zeros_like(comp) for _ in cores]
    for k, part in enumerate(parts):
        part[tuple(pix[owner == k].T)] = True
    return parts


def find_objects(image, background=None, threshold: float = 40.0, min_pixels: int = 12) -> list[np.ndarray]:
    """Masks (bool (64, 64), at the judge's size) of the objects of `image`, left to right.

    Objects are the connected components of the pixels whose colour differs from the background
    colour (a name, an RGB triple, or None to take the median of the image border) by more than
    `threshold` in some channel, split where objects touch, each cut down to its pixels at least
    half covered by the object (as the ground-truth masks are); specks under `min_pixels` pixels
    are dropped.
    """
    img = _as_uint8(image).astype(np.float32)
    bg = _background_rgb(img, background)
    fg = np.abs(img - bg).max(-1) > threshold  # (H, W)
    ids = connected_regions(torch.from_numpy(fg)).numpy()
    parts = [p for i in np.unique(ids[ids > 0]) for p in _split_touching(ids == i)]
    comps = [_half_coverage(img, p, bg) for p in parts]
    comps = [c for c in comps if c.sum() >= min_pixels]
    centres = [tuple(np.argwhere(c).mean(0)[::-1]) for c in comps]  # (x, y)
    return [c for _, c in sorted(zip(centres, comps), key=lambda t: t[0])]


@dataclass(frozen=True)
class Reading:
    """What the judge read in an image, against what a caption says."""

    background: str
    objects: tuple[tuple[str, str], ...]  # (colour, shape), left to right; none-reads left out
    expected_background: str | None
    expected_objects: tuple[tuple[str, str], ...]

    @property
    def faithful(self) -> bool:
        bg_ok = self.expected_background is None or self.background == self.expected_background
        return bg_ok and Counter(self.objects) == Counter(self.expected_objects)


def read_images(judge: Judge, images: list) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """(background, ((colour, shape), ...)) of each image: its objects found and read, batched.

    A component read as neither shape nor colour is not an object and is left out; a component
    read with only one of them counts with the missing one as 'none'.
    """
    backgrounds = read_backgrounds(judge, images)
    found = [find_objects(im) for im in images]
    flat_imgs = [im for im, comps in zip(images, found) for _ in comps]
    reads = iter(read_regions(judge, flat_imgs, [c for comps in found for c in comps]))
    out = []
    for bg, comps in zip(backgrounds, found):
        objs = [next(reads) for _ in comps]
        objs = tuple((c or "none", s or "none") for s, c in objs if (s, c) != (None, None))
        out.append((bg, objs))
    return out


def faithful_details(judge: Judge, image, caption: str) -> Reading:
    """What the judge reads in `image`, against `caption` (see `Reading.faithful`)."""
    return faithful_batch(judge, [image], [caption])[0]


def faithful_batch(judge: Judge, images: list, captions: list[str]) -> list[Reading]:
    """`faithful_details` for many images at once."""
    parsed = [parse_caption(c) for c in captions]
    reads = read_images(judge, images)
    return [
        Reading(bg, objs, exp_bg, tuple(exp_objs)) for (bg, objs), (exp_bg, exp_objs) in zip(reads, parsed)
    ]


def faithful(judge: Judge, image, caption: str) -> bool:
    """Whether `image` shows what `caption` says: its background and the multiset of its objects."""
    return faithful_details(judge, image, caption).faithful


# --- loading and saving ------------------------------------------------------------------------


def load_judge(path: str | Path | None = None) -> Judge:
    """The judge with weights from `path` (default: the shipped retouch/weights/judge.safetensors)."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    judge = Judge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()


def save_judge(judge: Judge, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in judge.state_dict().items()}, str(path))


# --- training data -----------------------------------------------------------------------------


def _alt_coverage(obj: world.Obj, rng: np.random.Generator) -> np.ndarray:
    """Coverage of a different shape at the object's place, as a reshape edit would draw."""
    shape = str(rng.choice([s for s in world.SHAPES if s != obj.shape]))
    return world.object_coverage(replace(obj, shape=shape))


def _bbox(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    box = np.zeros_like(mask)
    if len(ys):
        box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return box


def _region_of(obj: world.Obj, rng: np.random.Generator) -> np.ndarray:
    """A region around `obj`, bool (64, 64): its mask, footprint, box, or union / difference
    with another shape at the same place (the changed region of a reshape edit)."""
    cov = world.object_coverage(obj)
    kind = rng.choice(5, p=[0.45, 0.15, 0.1, 0.15, 0.15])
    if kind == 0:
        return cov >= 0.5
    if kind == 1:
        return cov > 0
    if kind == 2:
        return _bbox(cov >= 0.5)
    alt = _alt_coverage(obj, rng)
    if kind == 3:
        return (cov >= 0.5) | (alt >= 0.5)
    diff = np.abs(cov - alt) * 255 > 0.5
    return diff if diff.sum() >= 4 else cov >= 0.5


def _training_sample(seed: int, rng: np.random.Generator, p_empty: float = 0.25):
    """(image uint8 (64, 64, 3), region bool (64, 64), shape id, colour id, background id)."""
    scene = world.sample_scene(seed)
    img = world.render(scene)
    phantom = world.sample_object(rng, scene.objects, tries=50) if rng.random() < p_empty else None
    obj = phantom or scene.objects[rng.integers(len(scene.objects))]
    labels = ("none", "none") if phantom else (obj.shape, obj.color)
    s, c = SHAPE_LABELS.index(labels[0]), COLOR_LABELS.index(labels[1])
    return img, _region_of(obj, rng), s, c, BACKGROUND_LABELS.index(scene.background)


def _morph(region: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Dilate (radius > 0) or erode (radius < 0) each region [B, 1, H, W] by |radius| <= 2 px;
    an erosion that would empty a region leaves it as it was."""
    out = region.clone()
    for r in (1, 2):
        k = 2 * r + 1
        dil = F.max_pool2d(region, k, 1, r)  # [B, 1, H, W]
        ero = 1 - F.max_pool2d(1 - region, k, 1, r)  # [B, 1, H, W]
        ero = torch.where(ero.sum((1, 2, 3), keepdim=True) >= 4, ero, region)
        out = torch.where((radius == r).view(-1, 1, 1, 1), dil, out)
        out = torch.where((radius == -r).view(-1, 1, 1, 1), ero, out)
    return out


def _soften(x: torch.Tensor) -> torch.Tensor:
    """JPEG-like softening: halve the resolution and bring it back [B, C, H, W]."""
    return F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)


def augment(rgb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light degradations of images [B, 3, H, W] in [0, 1]: colour jitter (a few %), sometimes
    blur or JPEG-like softening, gaussian noise."""
    b = rgb.shape[0]

    def u(*shape) -> torch.Tensor:
        return torch.rand(*shape, generator=gen)

    gain = 1 + (u(b, 3, 1, 1) - 0.5) * 0.08  # [B, 3, 1, 1] +-4 %
    x = rgb * gain + (u(b, 3, 1, 1) - 0.5) * 0.06  # [B, 3, H, W] +-3 % offset
    blur = (u(b) < 0.35).float() * (0.3 + 0.7 * u(b))  # [B] sigma, 0 for most
    x = torch.where((blur > 0).view(-1, 1, 1, 1), gaussian_blur(x, blur, radius=2), x)
    x = torch.where((u(b) < 0.15).view(-1, 1, 1, 1), _soften(x), x)
    noise = (u(b) < 0.7).float() * u(b) * 0.035  # [B] noise sigma
    x = x + torch.randn(x.shape, generator=gen) * noise.view(-1, 1, 1, 1)
    return x.clamp(0, 1)


def training_batch(step_seed: int, batch: int, gen: torch.Generator, augmented: bool = True):
    """A batch from scenes below HELD_OUT_SEED: inputs [B, 4, 64, 64] and label tensors [B]."""
    rng = np.random.default_rng([step_seed, 0x7D6E])
    seeds = rng.integers(0, HELD_OUT_SEED, batch)
    samples = [_training_sample(int(s), rng) for s in seeds]
    imgs, regs, s, c, bg = zip(*samples)
    rgb = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255  # [B, 3, 64, 64]
    region = torch.from_numpy(np.stack(regs)).float()[:, None]  # [B, 1, 64, 64]
    radius = torch.multinomial(torch.tensor([0.1, 0.15, 0.5, 0.15, 0.1]), batch, True, generator=gen) - 2
    region = _morph(region, radius)
    if augmented:
        rgb = augment(rgb, gen)
    x = torch.cat([rgb * 2 - 1, region], 1)  # [B, 4, 64, 64]
    return x, torch.tensor(s), torch.tensor(c), torch.tensor(bg)


# --- training ----------------------------------------------------------------------------------


def _lr(step: int, steps: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p)))


def train_judge(
    out_path: str | Path, steps: int = 800, seed: int = 0, batch: int = 64, lr: float = 3e-3
) -> Judge:
    """Train a judge on renders of seeds below HELD_OUT_SEED and save it (safetensors) to `out_path`.
    Progress goes to the `retouch.shapes.judge` logger."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    start, cpu_start = time.time(), time.process_time()
    judge.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr)
        x, s, c, bg = training_batch(seed * 1_000_003 + step, batch, gen)
        ls, lc, lb = judge(x)
        loss = F.cross_entropy(ls, s) + F.cross_entropy(lc, c) + F.cross_entropy(lb, bg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            acc = ((ls.argmax(1) == s) & (lc.argmax(1) == c)).float().mean().item()
            log.info(
                "step %5d  loss %.4f  region acc %.3f  %6.1fs wall  %6.1fs cpu",
                step,
                loss.item(),
                acc,
                time.time() - start,
                time.process_time() - cpu_start,
            )
    save_judge(judge, out_path)
    return judge.eval()


# --- held-out accuracy -------------------------------------------------------------------------


def _held_out_regions(n: int, start: int):
    """Held-out images, regions and expected (shape, colour): each object's mask, and one
    empty blob per scene where there is room."""
    images, regions, expected = [], [], []
    for seed in range(start, start + n):
        scene = world.sample_scene(seed)
        img, ms = world.render(scene), world.masks(scene)
        for obj, m in zip(scene.objects, ms):
            images.append(img), regions.append(m), expected.append((obj.shape, obj.color))
        phantom = world.sample_object(np.random.default_rng([seed, 0xE7]), scene.objects)
        if phantom is not None:
            images.append(img), regions.append(world.masks(world.Scene("white", (phantom,)))[0])
            expected.append((None, None))
    return images, regions, expected


def _edit_region(e: world.Edit) -> tuple[np.ndarray, tuple[str | None, str | None]]:
    """The region a benchmark reads after an edit (the union of the edited object's old and new
    masks; the old mask for a removal; the new mask for an addition) and the expected read."""
    if e.kind == "remove":
        return world.masks(e.source)[e.index], (None, None)
    i = next(i for i, o in enumerate(e.target.objects) if o not in e.source.objects)
    new, region = e.target.objects[i], world.masks(e.target)[i]
    if e.index is not None:
        region = region | world.masks(e.source)[e.index]
    return region, (new.shape, new.color)


def _held_out_edits(n: int, start: int, diff: bool = False):
    """Edited held-out images, their edit regions (the ground-truth pixel difference if `diff`)
    and the expected reads."""
    images, regions, expected = [], [], []
    for seed in range(start, start + n):
        e = world.sample_edit(seed, EDIT_REGION_KINDS[seed % len(EDIT_REGION_KINDS)])
        region, exp = _edit_region(e)
        images.append(world.render(e.target)), expected.append(exp)
        regions.append(e.changed_region() if diff else region)
    return images, regions, expected


def _region_accuracy(judge: Judge, images, regions, expected, gen: torch.Generator | None = None) -> float:
    x = _inputs(images, regions)  # [B, 4, 64, 64]
    if gen is not None:
        x[:, :3] = augment((x[:, :3] + 1) / 2, gen) * 2 - 1
    s, c, _ = _predict(judge, x)
    got = [(SHAPE_LABELS[i], COLOR_LABELS[j]) for i, j in zip(s.tolist(), c.tolist())]
    want = [(a or "none", b or "none") for a, b in expected]
    return float(np.mean([g == w for g, w in zip(got, want)]))


def _degrade(images: list[np.ndarray], gen: torch.Generator) -> list[np.ndarray]:
    """Uint8 images (H, W, 3) with the training degradations applied."""
    rgb = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # [B, 3, H, W]
    out = (augment(rgb, gen) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    return list(out)


def held_out_accuracy(judge: Judge, n: int = 500, start: int = HELD_OUT_SEED) -> dict[str, float]:
    """Accuracies on held-out scenes (seeds from `start` >= HELD_OUT_SEED, `n` of each kind).

    region: shape and colour right on object masks and empty blobs of clean renders;
    region_augmented: the same on degraded renders; edit_region: on the edit region of recolor /
    reshape / remove / add edits (see `_edit_region`), edit_region_diff: on their ground-truth
    pixel difference instead; background: on clean renders;
    faithful: `faithful` true for clean renders against their own captions;
    faithful_augmented: the same on degraded renders (as uint8).
    """
    if start < HELD_OUT_SEED:
        raise ValueError(f"held-out seeds start at {HELD_OUT_SEED}, got {start}")
    regions = _held_out_regions(n, start)
    scenes = [world.sample_scene(s) for s in range(start, start + n)]
    images = [world.render(s) for s in scenes]
    captions = [world.caption(s) for s in scenes]
    readings = faithful_batch(judge, images, captions)
    degraded = faithful_batch(judge, _degrade(images, torch.Generator().manual_seed(start)), captions)
    return {
        "region": _region_accuracy(judge, *regions),
        "region_augmented": _region_accuracy(judge, *regions, gen=torch.Generator().manual_seed(start)),
        "edit_region": _region_accuracy(judge, *_held_out_edits(n, start)),
        "edit_region_diff": _region_accuracy(judge, *_held_out_edits(n, start, diff=True)),
        "background": float(np.mean([r.background == s.background for r, s in zip(readings, scenes)])),
        "faithful": float(np.mean([r.faithful for r in readings])),
        "faithful_augmented": float(np.mean([r.faithful for r in degraded])),
    }


def train_and_export(
    out_path: str | Path = DEFAULT_WEIGHTS, steps: int = 800, seed: int = 0, n_eval: int = 1000
) -> dict:
    """Train the judge, save its weights and a JSON of metadata and held-out accuracies beside them."""
    start, cpu_start = time.time(), time.process_time()
    judge = train_judge(out_path, steps, seed)
    meta = {"steps": steps, "seed": seed, "threads": 1}
    meta["train_wall_seconds"] = round(time.time() - start, 1)
    meta["train_cpu_seconds"] = round(time.process_time() - cpu_start, 1)
    meta["params"] = sum(p.numel() for p in judge.parameters())
    meta["held_out"] = {"n": n_eval, "start": HELD_OUT_SEED, **held_out_accuracy(judge, n_eval)}
    Path(out_path).with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
