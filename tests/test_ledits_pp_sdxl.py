"""LEDITS++ on SDXL (docs/ledits.md "Against diffusers"): the edit stage equal to diffusers'
LEditsPPPipelineStableDiffusionXL given its own inversion noises, on a tiny random SDXL with
cross-attention at latent/4 as SDXL's; where diffusers' SDXL pipeline fails (float16, a UNet
without cross-attention at latent/4), ours edits and its no-op reconstructs.

Where diffusers' SDXL pipeline departs from the paper and from SDXL, and what retouch follows:

- its micro-conditioning gives the UNet (width, height) as SDXL's original and target size, where
  SDXL (and diffusers' own StableDiffusionXLPipeline) give (height, width): the same on a square
  image, transposed on any other. retouch follows SDXL (the image's own height, width; crop (0, 0)).
- its inversion zeroes the last three noise maps by default (num_zero_noise_steps=3), so it does
  not reconstruct exactly; retouch keeps every map, as the paper's inversion. The parity test
  inverts with none zeroed.
- it reads the cross-attention at latent/4 over the down and up blocks (every transformer layer of
  that level, heads and layers averaged alike), as retouch does; unlike its Stable Diffusion
  sibling it does not switch to the attention mask alone above t = 800, so the parity test runs
  from t = 865.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import retouch
from ledits_pp_parity import PARITY, max_difference, theirs_inverted
from retouch.bench import diffusers_pipelines as dp

torch.set_num_threads(1)
# numpy 2 on diffusers' DPM-Solver scheduler, which makes an array of a tensor
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

PP = dict(num_inference_steps=12, skip=2, solver="dpmsolver++")


def _folder(tmp_path_factory, size: str):
    from retouch.shapes.architecture import build_sdxl_components, save_pipeline

    folder = tmp_path_factory.mktemp(f"xl-{size}")
    return save_pipeline(folder / "model", build_sdxl_components(size, folder / "tok"))


@pytest.fixture(scope="module")
def xl3_folder(tmp_path_factory):
    """A tiny random SDXL with three levels, cross-attention at latent/4 (architecture "tiny3")."""
    return _folder(tmp_path_factory, "tiny3")


@pytest.fixture(scope="module")
def xl3_zero_end(xl3_folder):
    """It loaded in float32, its schedule ending at ᾱ = 1 (σ = 0) as diffusers' DPM-Solver's does."""
    from diffusers import DDIMScheduler

    from retouch.shapes.architecture import SD1_SCHEDULER

    model = retouch.load(str(xl3_folder), device="cpu")
    return dataclasses.replace(model, scheduler=DDIMScheduler(**{**SD1_SCHEDULER, "set_alpha_to_one": True}))


def _image(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["intersect", "attention", "noise"])
def test_sdxl_edit_equals_diffusers_given_its_inversion(xl3_zero_end, mode, monkeypatch, record_property):
    model, image = xl3_zero_end, _image()
    n, k = 30, 27  # diffusers' timesteps from 865 down
    pipe = theirs_inverted(model, image, n, k)
    assert max(int(t) for t in pipe.inversion_steps) > 800 and bool(pipe.zs[-2].any())  # none zeroed
    err = max_difference(model, image, pipe, n, k, mode, monkeypatch)
    record_property("max_abs_difference", err)
    assert err <= PARITY, err


def _unet_time_ids(unet, run) -> list[list[int]]:
    """The distinct time ids the UNet was given while `run()` ran."""
    seen, forward = [], unet.forward

    def spy(*args, added_cond_kwargs=None, **kw):
        seen.append(added_cond_kwargs["time_ids"][0].tolist())
        return forward(*args, added_cond_kwargs=added_cond_kwargs, **kw)

    unet.forward = spy
    try:
        run()
    finally:
        del unet.forward
    return sorted({tuple(int(v) for v in ids) for ids in seen})


def test_diffusers_gives_sdxl_width_then_height_ours_height_then_width(xl3_zero_end):
    model, image = xl3_zero_end, _image(64, 128)  # 128 wide, 64 high
    pipe = dp.ledits_pipeline(model)
    theirs = _unet_time_ids(
        model.unet, lambda: dp.ledits_invert(pipe, Image.fromarray(image), "", 3.5, 4, 3, seed=0)
    )
    assert theirs == [(128, 64, 0, 0, 128, 64)]
    ours = _unet_time_ids(model.unet, lambda: retouch.invert(model, image, num_inference_steps=4, skip=1))
    assert ours == [(64, 128, 0, 0, 64, 128)]


# --- where diffusers fails ----------------------------------------------------------------------------


def _finite_edit_and_exact_no_op(model, image):
    inv = retouch.invert(model, image, **PP)
    same = retouch.ledits(model, inv, add=["green circle"], preset="ledits++", edit_scale=0.0)
    out = retouch.ledits(model, inv, add=["green circle"], remove=["red square"], preset="ledits++")
    assert torch.isfinite(out.latents).all() and np.isfinite(np.asarray(out.image, float)).all()
    assert all(m.area > 0 for m in out.concept_masks)
    return float((same.latents - inv.x0).abs().max())


@pytest.mark.filterwarnings("ignore:`upcast_vae` is deprecated:FutureWarning")
def test_diffusers_sdxl_fails_in_float16_ours_edits(xl3_folder, record_property):
    """diffusers' inversion upcasts the VAE to float32 for its reconstruction and leaves it there;
    the edit then decodes float16 latents with it and fails (on any device: the mismatch is of
    dtypes). torch runs this float16 UNet on the CPU, so both sides are checked here."""
    from diffusers import LEditsPPPipelineStableDiffusionXL

    image = _image()
    pipe = LEditsPPPipelineStableDiffusionXL.from_pretrained(
        xl3_folder, dtype=torch.float16, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.invert(
        image=Image.fromarray(image),
        num_inversion_steps=10,
        skip=0.2,
        generator=torch.Generator().manual_seed(0),
    )
    assert pipe.unet.dtype == torch.float16 and pipe.vae.dtype == torch.float32
    with pytest.raises(RuntimeError, match=r"Input type \(c10::Half\) and bias type \(float\)"):
        pipe(editing_prompt=["green circle"], edit_guidance_scale=5.0)
    model = retouch.load(str(xl3_folder), device="cpu", dtype="float16")
    assert model.unet.dtype == torch.float16
    err = _finite_edit_and_exact_no_op(model, image)
    record_property("max_abs_error", err)
    assert err < 1e-4, err  # the same float16 ε while inverting and editing


def test_ours_edits_sdxl_in_bfloat16(xl3_folder):
    model = retouch.load(str(xl3_folder), device="cpu", dtype="bfloat16")
    assert model.unet.dtype == torch.bfloat16
    assert _finite_edit_and_exact_no_op(model, _image()) < 1e-4


def test_diffusers_sdxl_needs_cross_attention_at_latent_over_four_ours_does_not(tmp_path_factory):
    model = retouch.load(str(_folder(tmp_path_factory, "tiny")), device="cpu")  # attends at latent/2 only
    image = _image()
    pipe = dp.ledits_pipeline(model)
    dp.ledits_invert(pipe, Image.fromarray(image), "", 3.5, 12, 10, seed=0)
    with dp.own_attention_processors(pipe.unet), pytest.raises(ValueError, match="non-empty list"):
        pipe(editing_prompt=["green circle"], use_intersect_mask=True, output_type="latent")
    assert _finite_edit_and_exact_no_op(model, image) < 1e-4
