"""ShapesBench metrics: the judge's verdicts and each row's figures (PSNR, SSIM, IoU from retouch.metrics).

Images are uint8 (H, W, 3); regions and masks bool (H, W). A metric over an empty region is None.
"""

from __future__ import annotations

import numpy as np

from retouch.bench.cases import Case
from retouch.metrics import iou, psnr, ssim


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
    ground-truth mask (None when the edit leaves no object untouched); preserved_fraction: how many;
    failure: why it failed (FAILURES; None when it succeeded); added_anywhere (additions only, else
    None): the new object is read in some object found outside the untouched ones (new_places),
    wherever it was drawn: the caption names no place, so `success`, read where the ground truth
    drew it, undercounts additions.
    """
    from retouch.shapes.judge import read_background, read_regions

    untouched = case.untouched()
    kept_masks = [m for _, m in untouched]
    images, regions = [image] * len(untouched), kept_masks
    if case.kind == "background":
        read = read_background(judge, image)
        expected = case.edit.target.background
    else:
        region, expected, _ = case.judged_region()
        images, regions = [image, *images], [region, *regions]
    places = new_places(image, kept_masks) if case.kind == "add" else []
    reads = read_regions(judge, images + [image] * len(places), regions + places)  # one batched call
    reads, found = reads[: len(regions)], reads[len(regions) :]
    if case.kind != "background":
        read, reads = reads[0], reads[1:]
    kept = [r == (o.shape, o.color) for r, (o, _) in zip(reads, untouched)]
    success = bool(read == expected and read != case.read_before)
    return dict(
        success=success,
        failure=None if success else why_failed(read, case.read_before, case.others),
        source_gone=bool(read != case.read_before),
        read=list(read) if isinstance(read, tuple) else read,
        preserved=bool(all(kept)) if kept else None,
        preserved_fraction=float(np.mean(kept)) if kept else None,
        added_anywhere=bool(success or expected in found) if case.kind == "add" else None,
    )


def new_places(image: np.ndarray, kept_masks: list[np.ndarray]) -> list[np.ndarray]:
    """The objects found in `image` (retouch.shapes.judge.find_objects) that are not where an
    untouched object is: bool (64, 64) masks, each less than half inside `kept_masks` (the
    untouched objects' ground-truth masks, bool (64, 64))."""
    from retouch.shapes.judge import find_objects

    kept = np.zeros(image.shape[:2], bool)
    for m in kept_masks:
        kept |= m
    return [c for c in find_objects(image) if not half_inside(c, kept)]


# Why an edit failed, from what the judge read where the edit should be (the first that applies)
FAILURES = {
    "unchanged": "the source is still read there (for an addition: nothing was drawn)",
    "copy": "one of the scene's other objects is read there: drawn again",
    "nothing": "no object is read where the edit should have drawn one",
    "other": "another object, colour or background is read there",
}


def why_failed(read, source, others: set) -> str:
    """The FAILURES key of a failed edit: `read` what the judge read in the judged region (a (shape,
    colour) pair, or a background's name), `source` what was there before, `others` the (shape,
    colour) pairs of the scene's untouched objects."""
    if read == source:
        return "unchanged"
    if read in others:
        return "copy"
    if read == (None, None):
        return "nothing"
    return "other"


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
    """A method's pixel mask (bool (H, W), None if it has none): its IoU with the changed region,
    its area, and mask_others: how many of the objects the edit keeps lie at least half inside it
    (the decoding may redraw them)."""
    if mask is None:
        return dict(mask_iou=None, mask_area=None, mask_others=None)
    return dict(
        mask_iou=iou(mask, case.region), mask_area=float(mask.mean()), mask_others=masked_others(mask, case)
    )


def masked_others(mask: np.ndarray, case: Case) -> int:
    """How many of the objects the edit keeps lie at least half inside a pixel mask bool (H, W)."""
    return sum(half_inside(m, mask) for _, m in case.untouched())


def half_inside(part: np.ndarray, mask: np.ndarray) -> bool:
    """Whether at least half of `part` (bool (H, W)) lies inside `mask` (bool (H, W))."""
    return bool(2 * (part & mask).sum() >= part.sum())
