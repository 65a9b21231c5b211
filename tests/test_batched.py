"""Batched edits: several edits of one image (many queries on one encoding or inversion) or of
several images of one size run as ONE UNet batch per step, and give the images of one call per
edit (same seeds) to the float rounding of batched arithmetic: latents within LATENT_TOL, pixels
within one level of 255."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import retouch
from retouch.denoiser import unet_calls
from retouch.errors import SettingError

torch.set_num_threads(1)

LATENT_TOL = 5e-4  # latents of magnitude ~1: batched matrix products round differently (×15 by CFG)
QUERIES = [
    "a green circle on a white background",
    "a blue square on a white background",
    "a yellow triangle on a white background",
]
REFERENCE = "a red circle on a white background"
DIFFEDIT = dict(num_inference_steps=10, mask_samples=2, paste_back=True)
LEDITS = dict(num_inference_steps=12, skip=2)


def _scene(seed: int) -> np.ndarray:
    from retouch.shapes.world import HELD_OUT_SEED, render, sample_scene

    return render(sample_scene(HELD_OUT_SEED + seed, n_objects=1))  # uint8 (64, 64, 3)


def _same(batched, single) -> None:
    assert (batched.latents - single.latents).abs().max() <= LATENT_TOL
    diff = np.abs(np.asarray(batched.image, int) - np.asarray(single.image, int)).max()
    assert diff <= 1, diff
    assert batched.settings == single.settings and batched.seed == single.seed


def test_diffedit_many_queries_of_one_image_and_several_images(tiny_eps):
    a, b = _scene(1), _scene(2)
    edits = [
        dict(query=QUERIES[0], reference=REFERENCE, seed=1),
        dict(query=QUERIES[1], reference=REFERENCE, seed=2, guidance_scale=5.0),
        dict(query=QUERIES[2], seed=3),
    ]
    with unet_calls(tiny_eps) as sizes:
        batched = retouch.diffedit_many(tiny_eps, [a, a, b], edits, **DIFFEDIT)
    decode_calls = sizes[-8:]  # r·N = 8 decoding steps, each ONE call over 3 edits × [∅, query]
    assert decode_calls == [6] * 8
    singles = [retouch.diffedit(tiny_eps, img, **e, **DIFFEDIT) for img, e in zip([a, a, b], edits)]
    for x, y in zip(batched, singles):
        _same(x, y)
    # image a is encoded once, its cost on its first edit; the others pay their mask and decoding
    assert [r.unet_evals for r in batched] == [s.unet_evals for s in singles[:1]] + [
        singles[1].unet_evals - 8,
        singles[2].unet_evals,
    ]
    assert sum(sizes) == sum(r.unet_evals for r in batched)


def test_ledits_many_edits_of_one_inversion(tiny_eps):
    image = _scene(3)
    inv = retouch.invert(tiny_eps, image, source=REFERENCE, **LEDITS)
    top = np.zeros((64, 64), np.uint8)
    top[:32] = 1
    edits = [
        dict(add=["green circle"], remove=["red circle"], seed=1),
        dict(add=["blue square"], edit_scale=5.0, seed=2),
        dict(prompt=QUERIES[2], seed=3, mask=top, image=image, paste_back=True),
        dict(seed=4),  # nothing to edit: the reconstruction, no sampling
    ]
    with unet_calls(tiny_eps) as sizes:
        batched = retouch.ledits_many(tiny_eps, inv, edits, **LEDITS)
    assert sizes == [4 + 3 + 2] * 10  # per step ONE call: [∅, src, e1, e2] + [∅, src, e] + [∅, prompt]
    singles = [
        retouch.ledits(tiny_eps, inv, **{k: v for k, v in e.items()}, **LEDITS)  # same settings, alone
        for e in edits
    ]
    for x, y in zip(batched, singles):
        _same(x, y)
    assert batched[3].unet_evals == 0 and batched[3].message


def test_ledits_many_inverts_each_image_once_and_edits_images_of_one_size(tiny_eps):
    a, b = _scene(4), _scene(5)
    edits = [
        dict(add=["green circle"], seed=7),
        dict(add=["blue circle"], seed=7),
        dict(remove=["red circle"]),
    ]
    with unet_calls(tiny_eps) as sizes:
        batched = retouch.ledits_many(tiny_eps, [a, a, b], edits, **LEDITS)
    assert sizes.count(1) == 20  # two inversions of 10 steps (∅ only)
    singles = [retouch.ledits(tiny_eps, img, **e, **LEDITS) for img, e in zip([a, a, b], edits)]
    for x, y in zip(batched, singles):
        _same(x, y)
    assert batched[1].unet_evals == singles[1].unet_evals - 10  # the shared inversion is paid once


def test_the_edits_of_a_batch_must_share_their_step_grid_and_size(tiny_eps):
    """Refused in one line before any UNet call."""
    a = _scene(1)
    small = a[:48, :48]
    d, le = dict(num_inference_steps=10), LEDITS
    cases = [
        (
            retouch.diffedit_many,
            [a, a],
            [dict(query=QUERIES[0]), dict(query=QUERIES[1], encode_ratio=0.6)],
            d,
        ),
        (retouch.diffedit_many, [a, small], [dict(query=QUERIES[0]), dict(query=QUERIES[1])], d),
        (retouch.diffedit_many, [a, a, a], [dict(query=QUERIES[0])], d),
        (retouch.diffedit_many, a, [dict(reference=REFERENCE)], d),
        (retouch.ledits_many, [a, a], [dict(add=["x"]), dict(add=["y"], num_inference_steps=20)], le),
        (retouch.ledits_many, [a, small], [dict(add=["x"]), dict(add=["y"])], le),
        (retouch.ledits_many, a, ["green circle"], le),
    ]
    with unet_calls(tiny_eps) as sizes:
        for fn, images, edits, settings in cases:
            with pytest.raises(SettingError, match="batch|each edit|images for"):
                fn(tiny_eps, images, edits, **settings)
    assert sizes == []
