"""LEDITS++ (docs/ledits.md "LEDITS++"): implicit masks, each concept inside its own; the edit
stage equal to diffusers' LEditsPPPipelineStableDiffusion given its own inversion noises; where
diffusers fails (a UNet without cross-attention at latent/4, sizes whose latent is not a multiple
of 4), ours edits; bad input refused before any UNet call."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import retouch
from ledits_pp_parity import PARITY, max_difference, theirs_inverted
from retouch.attention import concept_level
from retouch.bench import diffusers_pipelines as dp
from retouch.denoiser import unet_calls
from retouch.errors import InputError
from retouch.guidance import SegaState, attention_mask, implicit_mask, noise_mask, smooth3
from retouch.methods.ledits import _concept_masks, edit_job
from retouch.models import from_components
from retouch.shapes.architecture import SD1_SCHEDULER, build_components

torch.set_num_threads(1)
# numpy 2 on diffusers' DPM-Solver scheduler, which makes an array of a tensor
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def image():
    from retouch.shapes.world import render, sample_scene

    return render(sample_scene(10_000_011, n_objects=2))  # uint8 (64, 64, 3)


@pytest.fixture(scope="module")
def mini_random(tmp_path_factory):
    """The shipped architecture ("mini": cross-attention at latent/4, as Stable Diffusion's) with
    random weights and Stable Diffusion 1.x's schedule."""
    parts = build_components("mini", tokenizer_dir=tmp_path_factory.mktemp("tok-pp"), seed=0)
    return from_components(**parts, model_id="mini-random")


@pytest.fixture(scope="module")
def mini_zero_end(mini_random):
    """The same modules, the schedule ending at ᾱ = 1 (σ = 0) as diffusers' LEDITS++ scheduler's
    does (final_sigmas_type "zero"): its last step is deterministic."""
    from diffusers import DDIMScheduler

    return dataclasses.replace(
        mini_random, scheduler=DDIMScheduler(**{**SD1_SCHEDULER, "set_alpha_to_one": True})
    )


# --- the masks, against hand-made inputs ------------------------------------------------------------


def test_noise_mask_keeps_the_strongest_pixels():
    psi = torch.linspace(0, 0.1, 64).reshape(1, 1, 8, 8).repeat(1, 4, 1, 1)  # a weak gradient
    psi[0, :, 2:4, 5:7] = -1.0  # 4 of 64 pixels pull hard (either way)
    m = noise_mask(psi, 60 / 63)  # the quantile at the 4th strongest of 64
    assert m.shape == (8, 8) and m[2:4, 5:7].eq(1).all() and m.sum() == 4


def test_attention_mask_follows_the_concept_tokens_not_the_others():
    maps = torch.zeros(4, 4, 77)
    maps[..., 0] = 1.0  # the start token everywhere: left out
    maps[0, 3, 1] = 5.0  # the concept's word in one corner cell
    m = attention_mask(maps, 1, 0.9, (16, 16))
    assert m.shape == (16, 16)
    assert m[0:4, 12:16].eq(1).all()  # its cell, upsampled by nearest neighbours
    assert m[8:, :8].eq(0).all()


def test_smoothing_sums_to_one_and_spreads():
    a = torch.zeros(5, 5)
    a[2, 2] = 1.0
    b = smooth3(a)
    assert torch.isclose(b.sum(), torch.tensor(1.0)) and b[2, 2] < 1 and b[1, 2] > 0


def test_intersection_is_inside_both():
    torch.manual_seed(0)
    psi, maps = torch.randn(1, 4, 16, 16), torch.rand(4, 4, 77)
    both = implicit_mask("intersect", psi, maps, 3, 0.5)
    assert torch.equal(
        both, implicit_mask("attention", psi, maps, 3, 0.5) * implicit_mask("noise", psi, maps, 3, 0.5)
    )


def test_level_is_latent_over_four_where_the_unet_attends_there(mini_random, tiny_eps):
    assert concept_level(mini_random.unet.config, 16, 16) == (4, 4)  # SD at 512: 16×16 of 64×64
    assert concept_level(mini_random.unet.config, 18, 22) == (5, 6)  # rounding up, as the UNet does
    assert concept_level(tiny_eps.unet.config, 32, 32) == (16, 16)  # no cross-attention at /4


# --- the edit ------------------------------------------------------------------------------------------


def test_each_concept_has_its_own_mask_and_the_union_is_the_edits(mini_random, image):
    out = retouch.ledits(
        mini_random,
        image,
        add=["green circle"],
        remove=["red square"],
        preset="ledits++",
        num_inference_steps=12,
        skip=2,
    )
    a, r = out.concept_masks
    assert a.latent.shape == r.latent.shape == (16, 16)
    assert 0 < a.area < 1 and 0 < r.area < 1
    assert not torch.equal(a.scores, r.scores)
    assert torch.equal(out.mask.latent, torch.maximum(a.latent, r.latent))
    assert out.mask.overlay(Image.fromarray(image)).size == (64, 64)


def test_zero_scales_reconstruct_exactly(mini_random, image):
    inv = retouch.invert(mini_random, image, **_pp(12, 2))
    out = retouch.ledits(mini_random, inv, add=["green circle"], preset="ledits++", edit_scale=0.0)
    assert torch.allclose(out.latents, inv.x0, atol=1e-4)


def test_a_concept_never_applied_or_never_masked_is_said(mini_random, image):
    out = retouch.ledits(
        mini_random, image, add=["green circle"], preset="ledits++", num_inference_steps=12, skip=2,
        edit_warmup=20,
    )  # fmt: skip
    assert "'green circle' was never applied" in out.message
    job = edit_job(mini_random, dict(add=["green circle"]), None, "ledits++", {})
    inv = retouch.invert(mini_random, image, **_pp(12, 2))
    state = SegaState(10, None, torch.zeros(1, 16, 16), (10,))
    masks, message = _concept_masks(mini_random, state, job, inv)
    assert masks[0].area == 0 and "'green circle': its implicit mask was empty" in message


@pytest.mark.parametrize(
    "settings, words",
    [
        (dict(edit_threshold=1.0), "(0, 1)"),
        (dict(edit_threshold=0.0), "(0, 1)"),
        (dict(implicit_mask="everywhere"), "implicit_mask"),
        (dict(attention_alone_above=float("nan")), "attention_alone_above must be finite"),
        (dict(attention_alone_above=-1), "attention_alone_above must be >= 0"),
    ],
)
def test_bad_settings_fail_before_any_unet_call(mini_random, image, settings, words):
    with unet_calls(mini_random) as sizes, pytest.raises(InputError, match=r".*") as err:
        retouch.ledits(mini_random, image, add=["green circle"], preset="ledits++", **settings)
    assert sizes == [] and words in str(err.value) and "\n" not in str(err.value)


def test_an_empty_concept_fails_before_any_unet_call(mini_random, image):
    with unet_calls(mini_random) as sizes, pytest.raises(InputError, match="concept"):
        retouch.ledits(mini_random, image, add=["   "], preset="ledits++")
    assert sizes == []


# --- parity with diffusers ------------------------------------------------------------------------------


def _pp(n: int, skip: int) -> dict:
    return dict(num_inference_steps=n, skip=skip, solver="dpmsolver++")


@pytest.mark.parametrize("mode", ["intersect", "attention", "noise"])
def test_edit_equals_diffusers_given_its_inversion(mini_zero_end, image, mode, monkeypatch, record_property):
    n, k = 30, 20  # diffusers' timesteps from 641 down: below 800, where it uses M¹ alone
    pipe = theirs_inverted(mini_zero_end, image, n, k)
    assert max(int(t) for t in pipe.inversion_steps) <= 800
    err = max_difference(mini_zero_end, image, pipe, n, k, mode, monkeypatch)
    record_property("max_abs_difference", err)
    assert err <= PARITY, err


def test_from_above_t_800_the_edit_equals_diffusers_with_its_attention_alone_rule(
    mini_zero_end, image, monkeypatch
):
    """diffusers uses the attention mask alone at timesteps above 800; `attention_alone_above=800`
    follows it (parity from t ≈ 930 down), the paper's intersection at every step does not."""
    n, k = 30, 28
    pipe = theirs_inverted(mini_zero_end, image, n, k)
    assert max(int(t) for t in pipe.inversion_steps) > 800
    rule = max_difference(
        mini_zero_end, image, pipe, n, k, "intersect", monkeypatch, attention_alone_above=800
    )
    paper = max_difference(mini_zero_end, image, pipe, n, k, "intersect", monkeypatch)
    assert rule <= PARITY < 1e-2 < paper, (rule, paper)


def test_diffusers_needs_cross_attention_at_latent_over_four_ours_does_not(tiny_eps, image):
    pipe = theirs_inverted(tiny_eps, image, 12, 10)
    with dp.own_attention_processors(pipe.unet), pytest.raises(ValueError, match="non-empty list"):
        pipe(editing_prompt=["green circle"], edit_guidance_scale=5.0, output_type="latent")
    out = retouch.ledits(
        tiny_eps, image, add=["green circle"], preset="ledits++", num_inference_steps=12, skip=2
    )
    assert np.isfinite(np.asarray(out.image)).all() and out.concept_masks[0].area > 0


# --- SDXL in float16, at 384×256 -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def xl_fp16(tmp_path_factory):
    """A tiny SDXL (both text encoders, text_time conditioning) whose VAE downsamples by 8 as SDXL's
    does, so that a 384×256 image has a 48×32 latent; float16, its VAE upcast to float32."""
    from diffusers import AutoencoderKL

    from retouch.shapes.architecture import build_sdxl_components, save_pipeline

    folder = tmp_path_factory.mktemp("xl8")
    parts = build_sdxl_components("tiny", folder / "tok")
    parts["vae"] = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    save_pipeline(folder / "model", parts)
    return retouch.load(str(folder / "model"), device="cpu", dtype="float16", max_pixels=768 * 512)


@pytest.mark.slow
def test_sdxl_float16_384x256_edits_and_its_no_op_reconstructs(xl_fp16, record_property):
    img = (np.random.default_rng(1).random((256, 384, 3)) * 255).astype(np.uint8)
    inv = retouch.invert(xl_fp16, img, **_pp(12, 2))
    assert inv.x0.shape == (1, 4, 32, 48) and xl_fp16.unet.dtype == torch.float16
    same = retouch.ledits(xl_fp16, inv, add=["green circle"], preset="ledits++", edit_scale=0.0)
    err = float((same.latents - inv.x0).abs().max())
    record_property("max_abs_error", err)
    assert err < 1e-4, err  # the same float16 ε while inverting and editing: exact to float rounding
    out = retouch.ledits(xl_fp16, inv, add=["green circle"], remove=["red square"], preset="ledits++")
    assert torch.isfinite(out.latents).all() and out.image.size == (384, 256)
    assert all(0 < m.area < 1 for m in out.concept_masks) and out.mask.soft.shape == (256, 384)


def test_diffusers_refuses_sizes_off_32_pixels_ours_edits_them(mini_random):
    img = (np.random.default_rng(2).random((40, 72, 3)) * 255).astype(np.uint8)  # 72×40
    pipe = dp.ledits_pipeline(mini_random)
    with dp.own_attention_processors(pipe.unet), pytest.raises(ValueError, match="factor of 32"):
        pipe.invert(image=Image.fromarray(img), num_inversion_steps=10, skip=0.2)
    out = retouch.ledits(
        mini_random, img, add=["green circle"], preset="ledits++", num_inference_steps=12, skip=2
    )
    assert (
        out.image.size == (72, 40) and torch.isfinite(out.latents).all() and 0 < out.concept_masks[0].area < 1
    )


# --- implicit_keep (ours) -------------------------------------------------------------------------------


def test_keep_pins_the_latents_outside_every_mask_so_far(mini_random, image):
    inv = retouch.invert(mini_random, image, **_pp(12, 2))
    edit = dict(add=["green circle"], remove=["red square"], preset="ledits++")
    kept = retouch.ledits(mini_random, inv, **edit, implicit_keep=True)
    free = retouch.ledits(mini_random, inv, **edit)
    never = torch.stack([m.scores for m in kept.concept_masks]).amax(0).eq(0)  # [h, w]
    assert 0 < never.float().mean() < 1
    diff = (kept.latents - inv.x0).abs()[0].amax(0)  # [h, w]
    assert diff[never].max() == 0 and diff[~never].max() > 0.01
    assert (free.latents - inv.x0).abs()[0].amax(0)[never].max() > 0.01  # without it they drift


def test_keep_in_a_batch_is_each_edits_own(mini_random, image):
    inv = retouch.invert(mini_random, image, **_pp(12, 2))
    edits = [
        dict(add=["green circle"], preset="ledits++", implicit_keep=True),
        dict(add=["green circle"], preset="ledits++"),
        dict(add=["green circle"], preset="ledits++", mask=np.pad(np.ones((32, 32)), 16)),
    ]
    batch = retouch.ledits_many(mini_random, inv, edits)
    for e, b in zip(edits, batch):
        one = retouch.ledits(mini_random, inv, **e)
        assert torch.allclose(b.latents, one.latents, atol=1e-4)
    assert not torch.allclose(batch[0].latents, batch[1].latents, atol=1e-3)
