"""DiffEdit (docs/diffedit.md): contracts on tiny random models (epsilon and v-prediction), exactness with
analytic stand-ins for the UNet, and a few properties of the trained ShapesWorld model."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

import retouch
from retouch.denoiser import EvalCounter, guided_eps, unet_eps
from retouch.errors import SettingError
from retouch.filters import connected_regions
from retouch.latents import ImageError, decode, to_image
from retouch.masks import refined_scores, strongest_regions
from retouch.methods import diffedit as de
from retouch.methods.common import prepare
from retouch.sampling import ddim_sample
from retouch.schedule import Schedule
from retouch.shapes.architecture import SD1_SCHEDULER
from retouch.shapes.world import HELD_OUT_SEED, Obj, masks, render, sample_scene
from retouch.text import PromptError, encode_text
from retouch.types import Mask

torch.set_num_threads(1)

QUERY = "a green circle on a white background"
REFERENCE = "a red circle on a white background"
FAST = dict(num_inference_steps=4, mask_samples=2)  # r·N = 3: mask 4 + encode 3 + decode 6 UNet evals


def scene_render(seed: int = HELD_OUT_SEED + 7) -> np.ndarray:
    """A held-out ShapesWorld render, uint8 (64, 64, 3)."""
    return render(sample_scene(seed, n_objects=1))


def small_image(side: int = 16) -> np.ndarray:
    """A cheap image for counting tests: a coloured square, uint8 (side, side, 3)."""
    img = np.full((side, side, 3), 255, np.uint8)
    img[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = (220, 30, 30)
    return img


@pytest.fixture()
def unet_inputs(monkeypatch):
    """record(model) → a list that gets the latent batch [B, C, h, w] of every UNet forward call."""

    def record(model) -> list[torch.Tensor]:
        seen, forward = [], model.unet.forward

        def counted(sample, *args, **kwargs):
            seen.append(sample.detach().clone())
            return forward(sample, *args, **kwargs)

        monkeypatch.setattr(model.unet, "forward", counted)
        return seen

    return record


def evals(seen: list[torch.Tensor]) -> int:
    """UNet evaluations as batch elements, counted from outside the library."""
    return sum(x.shape[0] for x in seen)


def x_independent_eps(bundle, schedule, counter, image_size=None):
    """Stand-in for unet_eps: ε depends on t only (fixed random field per t), not on x or the text.
    DDIM inversion is then exact, so encode → decode must give x0 back to float rounding."""

    def eps_fn(x, t, cond):
        counter.n += x.shape[0]
        field = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(int(t) + 7))
        return field.to(x).expand_as(x)

    return eps_fn


def empty_prompt_reconstruction(model, image, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM-encode with ∅ through all the steps (r = 1), then DDIM-decode with ∅ and no guidance and
    no mask. Returns (x0, reconstructed x0), each [1, C, h, w]."""
    enc = retouch.ddim_encoding(model, image, num_inference_steps=steps, encode_ratio=1.0)
    schedule = Schedule.from_scheduler(model.scheduler)
    eps = guided_eps(unet_eps(model, schedule, EvalCounter()), encode_text(model, [""]), None, 1.0)
    descending = list(enc.timesteps[1:])[::-1]
    return enc.latents[0], ddim_sample(eps, schedule, enc.latents[-1], descending)


def psnr(a, b) -> float:
    """PSNR in dB between two uint8 images (arrays or PIL)."""
    err = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(255.0**2 / err))


def half_mask(img: np.ndarray) -> np.ndarray:
    """A user mask: the left half of the image, uint8 (H, W)."""
    m = np.zeros(img.shape[:2], np.uint8)
    m[:, : img.shape[1] // 2] = 255
    return m


# --- encode and decode ---------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1.0, 0.8])
def test_encode_then_decode_is_exact_when_eps_ignores_x(tiny, monkeypatch, ratio):
    """With ε(x, t) = f(t), DDIM inversion is exact: the full diffedit path (encoding, CFG with the
    query, masked decoding at matching levels) must return x0 up to float rounding."""
    monkeypatch.setattr(de, "unet_eps", x_independent_eps)
    img = scene_render()
    out = retouch.diffedit(tiny, img, QUERY, REFERENCE, mode="no_mask", encode_ratio=ratio)
    x0 = prepare(tiny, img).x0
    torch.testing.assert_close(out.latents, x0, atol=1e-4, rtol=1e-4)
    assert out.unet_evals == round(ratio * 50) * 3  # encode 1, decode 2 (CFG) per step


def test_decode_blends_with_the_encoded_latent_at_the_same_level():
    """After the step to level s the background comes from x_s (not x_t), and the last one is x0."""
    schedule = Schedule.from_scheduler(DDIMScheduler(**SD1_SCHEDULER))
    ts = schedule.timesteps(10)[-6:]  # descending
    background = {t: torch.full((1, 4, 2, 2), float(t)) for t in [*ts, -1]}
    seen = {}

    def eps_fn(x, t):
        seen[t] = x.clone()
        return torch.zeros_like(x)

    z = ddim_sample(eps_fn, schedule, background[ts[0]], ts, background, torch.zeros(2, 2))
    assert all(torch.equal(seen[t], background[t]) for t in ts)
    assert torch.equal(z, background[-1])


def test_empty_prompt_reconstruction_runs_on_tiny(tiny):
    """Random weights do not invert well; the contract here is shapes and finiteness (the PSNR
    floor is checked on the trained model below)."""
    x0, rec = empty_prompt_reconstruction(tiny, scene_render(), steps=5)
    assert rec.shape == x0.shape and torch.isfinite(rec).all()


def test_all_zero_mask_gives_the_encode_decode_bitwise(tiny):
    img = scene_render()
    out = retouch.diffedit(tiny, img, QUERY, REFERENCE, mask=np.zeros((64, 64)), **FAST)
    prep = prepare(tiny, img)
    assert torch.equal(out.latents, prep.x0)
    roundtrip = to_image(decode(tiny, prep.x0), 64, 64)
    assert np.array_equal(np.asarray(out.image), np.asarray(roundtrip))


def test_dpmsolver_is_second_order_where_ddim_is_first():
    """On a smooth noise function, halving the step size divides DDIM's error by about 2 and
    DPM-Solver++(2M)'s by about 3 or more (second order, its first step first order), and 2M is
    nearer the exact ODE solution at every step count."""

    def eps(x, t):
        return 0.3 * torch.tanh(x) + 0.2 * (t / 1000) * torch.cos(2 * x) + 0.1

    schedule = Schedule.from_scheduler(DDIMScheduler(**SD1_SCHEDULER))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def grid(n):
        return [int(t) for t in np.unique(np.linspace(1, 901, n).round())[::-1]]

    exact = ddim_sample(eps, schedule, x, grid(900), solver="dpmsolver++")
    err = {
        (solver, n): float((ddim_sample(eps, schedule, x, grid(n), solver=solver) - exact).abs().max())
        for solver in ("ddim", "dpmsolver++")
        for n in (10, 20, 40)
    }
    assert all(err["dpmsolver++", n] < err["ddim", n] for n in (10, 20, 40)), err
    assert err["ddim", 20] / err["ddim", 40] < 2.4 < 2.7 < err["dpmsolver++", 20] / err["dpmsolver++", 40], (
        err
    )


# --- masks ---------------------------------------------------------------------------------------


def test_mask_is_binary_at_latent_size_and_soft_at_image_size(tiny):
    img = np.asarray(Image.fromarray(scene_render()).resize((70, 45)))
    mask = retouch.diffedit_mask(tiny, img, QUERY, REFERENCE, mask_samples=4)
    h, w = prepare(tiny, img).x0.shape[-2:]
    assert mask.latent.shape == (h, w) and set(mask.latent.unique().tolist()) <= {0.0, 1.0}
    assert mask.soft.shape == (45, 70) and 0 <= mask.soft.min() and mask.soft.max() <= 1
    assert mask.scores.shape == (h, w) and 0 <= mask.scores.min() and mask.scores.max() <= 1
    assert mask.image().size == (70, 45)
    assert mask.unet_evals == 8


def test_mask_is_deterministic_per_seed_and_samples_draw_their_own_noise(tiny, unet_inputs):
    img = scene_render()
    seen = unet_inputs(tiny)
    a = retouch.diffedit_mask(tiny, img, QUERY, REFERENCE, seed=1, mask_samples=4)
    b = retouch.diffedit_mask(tiny, img, QUERY, REFERENCE, seed=1, mask_samples=4)
    c = retouch.diffedit_mask(tiny, img, QUERY, REFERENCE, seed=2, mask_samples=4)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.latent, b.latent)
    assert not torch.equal(a.scores, c.scores)
    x = seen[0]  # [query × 4, reference × 4], one batched call
    assert x.shape[0] == 8 and torch.equal(x[:4], x[4:]), "both texts see the same noisy latents"
    assert all(not torch.equal(x[i], x[j]) for i in range(4) for j in range(i)), "one noise per sample"
    one = retouch.diffedit_mask(tiny, img, QUERY, REFERENCE, seed=1, mask_samples=1)
    eight = retouch.diffedit_mask(tiny, img, QUERY, REFERENCE, seed=1, mask_samples=8)
    assert not torch.allclose(one.scores, eight.scores)


def test_a_refined_mask_is_the_scores_fitted_to_the_image_then_thresholded(tiny, unet_inputs):
    """mask_refine_radius (ours): the paper's scores, guided-filtered on the image's pixels, are the
    mask's scores; the mask is them over the threshold; the UNet is called as for the paper's."""
    img = np.asarray(Image.fromarray(scene_render()).resize((70, 45)))
    seen = unet_inputs(tiny)
    paper = retouch.diffedit_mask(tiny, img, QUERY, REFERENCE, mask_samples=4)
    calls = len(seen)
    refined = retouch.diffedit_mask(tiny, img, QUERY, REFERENCE, mask_samples=4, mask_refine_radius=1.5)
    assert len(seen) == 2 * calls and refined.unet_evals == paper.unet_evals
    expected = refined_scores(paper.scores, prepare(tiny, img).pixels.tensor, tiny.vae_scale_factor, 1.5)
    assert not torch.allclose(expected, paper.scores)
    torch.testing.assert_close(refined.scores, expected)
    assert torch.equal(refined.latent, (expected > 0.5).float())
    assert refined.soft.shape == (45, 70)


def test_a_mask_keeping_its_strongest_regions_is_the_paper_s_less_the_weaker_regions(tiny):
    """mask_keep_ratio (ours): the paper's mask less the regions whose summed scores fall short of
    that share of the strongest region's; the scores are the paper's."""
    img = scene_render()
    paper = retouch.diffedit_mask(tiny, img, QUERY, REFERENCE, mask_samples=4, mask_threshold=0.3)
    kept = retouch.diffedit_mask(
        tiny, img, QUERY, REFERENCE, mask_samples=4, mask_threshold=0.3, mask_keep_ratio=1.0
    )
    assert len(connected_regions(paper.latent).unique()) > 2  # more than one region to choose from
    torch.testing.assert_close(kept.scores, paper.scores)
    assert torch.equal(kept.latent, strongest_regions(paper.latent, paper.scores, 1.0))
    assert 0 < kept.latent.sum() < paper.latent.sum() and len(connected_regions(kept.latent).unique()) == 2


def test_identical_query_and_reference_give_an_empty_mask(tiny):
    mask = retouch.diffedit_mask(tiny, scene_render(), REFERENCE, REFERENCE, mask_samples=3)
    assert torch.isfinite(mask.scores).all() and mask.scores.abs().sum() == 0
    assert mask.latent.sum() == 0 and mask.soft.sum() == 0 and mask.area == 0


def test_a_mask_of_another_size_is_refused_before_the_unet(tiny_eps, unet_inputs):
    other = Mask(torch.ones(8, 8), torch.ones(16, 16))
    seen = unet_inputs(tiny_eps)
    with pytest.raises(SettingError, match="latent resolution"):
        retouch.diffedit(tiny_eps, scene_render(), QUERY, mask=other)
    assert seen == []


# --- the background ------------------------------------------------------------------------------


def test_background_latents_are_kept_exactly(tiny):
    img = scene_render()
    x0 = prepare(tiny, img).x0
    given = retouch.diffedit(tiny, img, QUERY, REFERENCE, mask=half_mask(img), **FAST)
    m = given.mask.latent.bool()
    assert 0 < m.float().mean() < 1
    assert torch.equal(given.latents[..., ~m], x0[..., ~m])
    assert not torch.equal(given.latents[..., m], x0[..., m])
    inferred = retouch.diffedit(tiny, img, QUERY, REFERENCE, **FAST)
    m = inferred.mask.latent.bool()
    assert torch.equal(inferred.latents[..., ~m], x0[..., ~m])


def test_paste_back_keeps_the_input_pixels_outside_the_feathered_mask(tiny_eps):
    img = scene_render()
    out = retouch.diffedit(tiny_eps, img, QUERY, mask=half_mask(img), paste_back=True, **FAST)
    outside = out.mask.soft.numpy() == 0
    assert 0.2 < outside.mean() < 0.5  # the right half, minus the feathered edge
    assert np.array_equal(np.asarray(out.image)[outside], img[outside])
    plain = retouch.diffedit(tiny_eps, img, QUERY, mask=half_mask(img), **FAST)
    assert not np.array_equal(np.asarray(plain.image)[outside], img[outside])  # the VAE round trip


# --- cost ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, cost", [("diffedit", 140), ("no_mask", 120), ("no_encoding", 100), ("sdedit", 80)]
)
def test_unet_evaluations_at_the_paper_settings(tiny_eps, unet_inputs, mode, cost):
    """N=50, r=0.8, n=10: mask 2n=20, encode 40, decode 2·40=80 (docs/diffedit.md)."""
    seen = unet_inputs(tiny_eps)
    out = retouch.diffedit(tiny_eps, small_image(), QUERY, REFERENCE, mode=mode)
    assert out.unet_evals == evals(seen) == cost
    assert (out.mask is None) == (mode in ("no_mask", "sdedit"))


def test_reusing_a_mask_and_an_encoding_costs_only_the_decoding(tiny_eps, unet_inputs):
    img = small_image()
    seen = unet_inputs(tiny_eps)
    mask = retouch.diffedit_mask(tiny_eps, img, QUERY, REFERENCE)
    enc = retouch.ddim_encoding(tiny_eps, img)
    assert (mask.unet_evals, enc.unet_evals, evals(seen)) == (20, 40, 60)
    seen.clear()
    out = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, mask=mask, encoding=enc)
    assert out.unet_evals == evals(seen) == 80
    fresh = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE)
    assert torch.equal(out.latents, fresh.latents)  # same seed: reusing changes nothing but the cost


def test_a_preset_sets_its_settings_under_explicit_ones_and_is_recorded(tiny_eps, unet_inputs):
    """preset="remove" encodes through every step and steers away from the reference (N=4: mask 4 +
    encode 4 + decode 3·4) and is
    recorded by name; an explicit setting beats it; a batch's preset serves the edits that name
    none; tight-mask's mask lies inside the paper's; an unknown name fails before any UNet call."""
    img = small_image()
    seen = unet_inputs(tiny_eps)
    out = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, preset="remove", **FAST)
    assert out.unet_evals == evals(seen) == 4 + 4 + 12
    assert out.settings["preset"] == "remove" and out.settings["encode_ratio"] == 1.0
    assert out.settings["reference_guidance_scale"] == 5.0
    assert retouch.ddim_encoding(tiny_eps, img, preset="remove", **FAST).encode_ratio == 1.0
    explicit = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, preset="remove", encode_ratio=0.5, **FAST)
    assert explicit.settings["encode_ratio"] == 0.5
    paper = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, **FAST)
    assert paper.settings["preset"] is None and paper.settings["encode_ratio"] == 0.8
    edits = [dict(query=QUERY, reference=REFERENCE), dict(query=QUERY, reference=REFERENCE, preset=None)]
    tight, own = retouch.diffedit_many(tiny_eps, img, edits, preset="tight-mask", **FAST)
    assert (tight.settings["preset"], tight.settings["mask_threshold"]) == ("tight-mask", 0.8)
    assert (own.settings["preset"], own.settings["mask_threshold"]) == (None, 0.5)
    assert torch.equal(own.mask.latent, paper.mask.latent)
    assert bool((tight.mask.latent <= own.mask.latent).all()) and tight.mask.area < own.mask.area
    assert torch.equal(
        retouch.diffedit_mask(tiny_eps, img, QUERY, REFERENCE, preset="tight-mask", **FAST).latent,
        tight.mask.latent,
    )
    seen.clear()
    for call in (retouch.diffedit, retouch.diffedit_mask):
        with pytest.raises(
            SettingError, match="preset must be one of tight-mask, remove, recolor, background, add, got 'obj"
        ):
            call(tiny_eps, img, QUERY, REFERENCE, preset="object")
    assert seen == []


def test_guidance_from_the_reference_steers_decoding_from_its_text(tiny_eps, monkeypatch):
    """guide_from_reference: decoding's unconditional branch reads the reference's embedding, not
    ∅'s (the mask and the encoding are unchanged); with no reference it is the paper's decoding;
    in a batch each edit keeps its own."""
    from retouch.text import encode_text

    img = small_image()
    mask, enc = (
        retouch.diffedit_mask(tiny_eps, img, QUERY, REFERENCE, **FAST),
        retouch.ddim_encoding(tiny_eps, img, **FAST),
    )
    texts, forward = [], tiny_eps.unet.forward

    def recording(sample, t, encoder_hidden_states=None, **kw):
        texts.append(encoder_hidden_states.detach().clone())
        return forward(sample, t, encoder_hidden_states=encoder_hidden_states, **kw)

    monkeypatch.setattr(tiny_eps.unet, "forward", recording)
    kw = dict(mask=mask, encoding=enc, **FAST)
    steered = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, guide_from_reference=True, **kw)
    ref, empty, query = encode_text(tiny_eps, [REFERENCE, "", QUERY])
    assert len(texts) == 3  # one call a step, [uncond, cond] as one batch
    for batch in texts:
        assert torch.equal(batch[0], ref) and torch.equal(batch[1], query)
    texts.clear()
    paper = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, **kw)
    assert all(torch.equal(b[0], empty) for b in texts)
    assert not torch.allclose(steered.latents, paper.latents)
    assert steered.settings["guide_from_reference"] and not paper.settings["guide_from_reference"]
    no_reference = retouch.diffedit(tiny_eps, img, QUERY, "", guide_from_reference=True, **kw)
    assert torch.equal(no_reference.latents, retouch.diffedit(tiny_eps, img, QUERY, "", **kw).latents)
    both = retouch.diffedit_many(
        tiny_eps,
        img,
        [
            dict(query=QUERY, reference=REFERENCE, guide_from_reference=True, mask=mask, encoding=enc),
            dict(query=QUERY, reference=REFERENCE, mask=mask, encoding=enc),
        ],
        **FAST,
    )
    torch.testing.assert_close(both[0].latents, steered.latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1].latents, paper.latents, rtol=1e-4, atol=1e-5)


def test_steering_away_from_the_reference_adds_its_branch_and_term(tiny_eps, monkeypatch):
    """reference_guidance_scale w_R: each decoding call holds [∅, query, reference] as one batch and
    the step's ε is ε(∅) + w·(ε(Q) − ε(∅)) + w_R·(ε(Q) − ε(R)); w_R = 0, or no reference, is the
    paper's decoding bitwise; in a batch each edit keeps its own w_R."""
    from retouch.text import encode_text

    img = small_image()
    mask, enc = (
        retouch.diffedit_mask(tiny_eps, img, QUERY, REFERENCE, **FAST),
        retouch.ddim_encoding(tiny_eps, img, **FAST),
    )
    calls, forward = [], tiny_eps.unet.forward

    def recording(sample, t, encoder_hidden_states=None, **kw):
        out = forward(sample, t, encoder_hidden_states=encoder_hidden_states, **kw)
        calls.append((encoder_hidden_states.detach().clone(), sample.detach().clone(), out.sample.clone()))
        return out

    monkeypatch.setattr(tiny_eps.unet, "forward", recording)
    kw = dict(mask=mask, encoding=enc, **FAST)
    away = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, reference_guidance_scale=2.0, **kw)
    empty, query, ref = encode_text(tiny_eps, ["", QUERY, REFERENCE])
    assert len(calls) == 3 and away.unet_evals == 3 * 3  # one call a step, three branches
    for texts, _, _ in calls:
        assert [torch.equal(a, b) for a, b in zip(texts, (empty, query, ref))] == [True] * 3
    # the first step's ε from its three branches, and the step it took: DDIM, then the blend
    schedule = Schedule.from_scheduler(tiny_eps.scheduler)
    e_u, e_c, e_r = calls[0][2].split(1)
    eps = e_u + 7.5 * (e_c - e_u) + 2.0 * (e_c - e_r)
    t, s = schedule.timesteps(FAST["num_inference_steps"])[-3:][:2]
    m = mask.latent.to(eps)
    expected = m * schedule.ddim_step(enc.latents[-1], eps, t, s) + (1 - m) * enc.latents[-2]
    torch.testing.assert_close(calls[1][1][:1], expected, rtol=1e-4, atol=1e-5)
    calls.clear()
    paper = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, **kw)
    assert len(calls[0][0]) == 2 and not torch.allclose(away.latents, paper.latents)
    zero = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, reference_guidance_scale=0.0, **kw)
    assert torch.equal(zero.latents, paper.latents)
    no_ref = retouch.diffedit(tiny_eps, img, QUERY, "", reference_guidance_scale=2.0, **kw)
    assert torch.equal(no_ref.latents, retouch.diffedit(tiny_eps, img, QUERY, "", **kw).latents)
    assert no_ref.message == "reference_guidance_scale needs a reference text: not applied"
    assert away.message == "" and zero.message == ""
    # what the mode does not use is said (the background preset's no_mask takes no mask)
    unmasked = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, mode="no_mask", **kw)
    assert unmasked.mask is None
    assert unmasked.message == "mask given, but mode=no_mask uses none: not applied"
    noised = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, mode="no_encoding", **kw)
    assert noised.message == "encoding given, but mode=no_encoding uses none: not applied"
    both = retouch.diffedit_many(
        tiny_eps,
        img,
        [
            dict(query=QUERY, reference=REFERENCE, reference_guidance_scale=2.0, mask=mask, encoding=enc),
            dict(query=QUERY, reference=REFERENCE, mask=mask, encoding=enc),
        ],
        **FAST,
    )
    torch.testing.assert_close(both[0].latents, away.latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1].latents, paper.latents, rtol=1e-4, atol=1e-5)


def test_an_encoding_of_another_image_model_or_settings_is_refused(tiny_eps, tiny_v, unet_inputs):
    img = small_image()
    enc = retouch.ddim_encoding(tiny_eps, img, num_inference_steps=5)
    seen_eps, seen_v = unet_inputs(tiny_eps), unet_inputs(tiny_v)
    other = small_image()
    other[0, 0] = 0
    cases = [
        (tiny_eps, other, {}, "another image"),
        (tiny_eps, img, {"num_inference_steps": 6}, "num_inference_steps=5"),
        (tiny_eps, img, {"encode_ratio": 0.6}, "encode_ratio=0.8"),
        (tiny_v, img, {}, "another model"),
    ]
    for model, image, settings, message in cases:
        settings = {"num_inference_steps": 5, **settings}
        with pytest.raises(SettingError, match=message):
            retouch.diffedit(model, image, QUERY, encoding=enc, **settings)
    # an Encoding whose fields disagree with its latents or the scheduler's timesteps
    for bad, message in [
        (replace(enc, timesteps=(-1, *[t + 1 for t in enc.timesteps[1:]])), "timesteps"),
        (replace(enc, latents=enc.latents[:-1]), "timesteps"),
        (replace(enc, latents=(*enc.latents[:-1], enc.latents[-1][..., :2, :2])), "shaped like"),
        (replace(enc, latents=(*enc.latents[:-1], enc.latents[-1] * float("nan"))), "finite"),
    ]:
        with pytest.raises(SettingError, match=message):
            retouch.diffedit(tiny_eps, img, QUERY, encoding=bad, num_inference_steps=5)
    assert seen_eps == [] and seen_v == []


def test_an_edit_from_an_encoding_runs_on_its_steps(tiny_eps):
    """Not repeated, the encoding's steps are the edit's (the same image as when repeated); a
    preset or a config that says otherwise is refused."""
    img = small_image()
    enc = retouch.ddim_encoding(tiny_eps, img, num_inference_steps=5, encode_ratio=0.6)
    a = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, encoding=enc, seed=1)
    b = retouch.diffedit(
        tiny_eps, img, QUERY, REFERENCE, encoding=enc, seed=1, num_inference_steps=5, encode_ratio=0.6
    )
    assert a.unet_evals == b.unet_evals and torch.equal(a.latents, b.latents)
    assert (a.settings["num_inference_steps"], a.settings["encode_ratio"]) == (5, 0.6)
    with pytest.raises(SettingError, match="encode_ratio=0.6"):  # the preset's r = 1.0
        retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, encoding=enc, preset="recolor")
    with pytest.raises(SettingError, match="num_inference_steps=5"):  # the defaults' 50
        retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, encoding=enc, config=retouch.DiffEditConfig())


# --- the ablations -------------------------------------------------------------------------------


def test_ablations_run_and_differ_as_they_should(tiny_eps):
    img = scene_render()
    x0 = prepare(tiny_eps, img).x0
    mask = retouch.diffedit_mask(tiny_eps, img, QUERY, REFERENCE, **FAST)
    m = torch.zeros_like(mask.latent, dtype=torch.bool)
    m[: m.shape[0] // 2] = True  # a given mask: the top half
    given = Mask(m.float(), mask.soft)
    runs = {
        mode: retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, mask=given, mode=mode, **FAST)
        for mode in de.MODES
    }
    assert runs["no_mask"].mask is None and runs["sdedit"].mask is None
    for mode in ("diffedit", "no_encoding"):  # masked: the background latents are x0 exactly
        assert torch.equal(runs[mode].mask.latent, given.latent)
        assert torch.equal(runs[mode].latents[..., ~m], x0[..., ~m])
    for mode in ("no_mask", "sdedit"):  # unmasked: the whole latent moves
        assert not torch.equal(runs[mode].latents[..., ~m], x0[..., ~m])
    assert not torch.equal(runs["diffedit"].latents[..., m], runs["no_encoding"].latents[..., m])
    assert not torch.equal(runs["no_mask"].latents, runs["sdedit"].latents)
    assert [runs[k].unet_evals for k in de.MODES] == [9, 9, 6, 6]  # given mask: no mask cost


# --- determinism, images and errors --------------------------------------------------------------


def test_same_seed_same_image(tiny):
    img = scene_render()
    a, b, c = (
        retouch.diffedit(tiny, img, QUERY, REFERENCE, seed=s, mode="no_encoding", **FAST) for s in (3, 3, 4)
    )
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, c.latents)


def test_integral_float_settings_are_accepted(tiny_eps):
    out = retouch.diffedit(tiny_eps, small_image(), QUERY, num_inference_steps=4.0, mask_samples=2.0)
    assert out.unet_evals == 2 * 2 + 3 + 2 * 3 and out.settings["mask_samples"] == 2


def _images() -> dict[str, Image.Image]:
    rgb = Image.fromarray(scene_render()).resize((70, 45))
    rgba = rgb.convert("RGBA")
    sixteen = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257).convert("I;16")
    return {
        "rgb": rgb,
        "rgba_opaque": rgba,
        "gray": rgb.convert("L"),
        "palette": rgb.convert("P"),
        "16bit": sixteen,
    }


@pytest.mark.parametrize("kind", ["rgb", "rgba_opaque", "gray", "palette", "16bit"])
def test_image_kinds_come_back_at_their_size(tiny_eps, kind):
    img = _images()[kind]
    out = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, **FAST)
    assert out.image.size == (70, 45) and out.image.mode == "RGB"
    assert out.mask.soft.shape == (45, 70)


def _transparent() -> Image.Image:
    img = Image.fromarray(scene_render()).convert("RGBA")
    img.putpixel((0, 0), (0, 0, 0, 0))
    return img


BAD = [
    ("transparent", {}, ImageError, "transparent"),
    ("query", {"query": ""}, PromptError, "query is empty"),
    ("query", {"query": "   "}, PromptError, "query is empty"),
    ("ratio 0", {"encode_ratio": 0.0}, SettingError, "encode_ratio"),
    ("ratio 1.5", {"encode_ratio": 1.5}, SettingError, "encode_ratio"),
    ("n 0", {"mask_samples": 0}, SettingError, "mask_samples"),
    ("n 2.5", {"mask_samples": 2.5}, SettingError, "mask_samples"),
    ("nan w", {"guidance_scale": float("nan")}, SettingError, "guidance_scale"),
    ("nan mask w", {"mask_guidance_scale": float("nan")}, SettingError, "mask_guidance_scale"),
    ("mask w 0", {"mask_guidance_scale": 0.0}, SettingError, "mask_guidance_scale must be > 0"),
    ("negative w_R", {"reference_guidance_scale": -1.0}, SettingError, "reference_guidance_scale"),
    ("nan w_R", {"reference_guidance_scale": float("nan")}, SettingError, "reference_guidance_scale"),
    ("negative word scale", {"changed_word_scale": -0.5}, SettingError, "changed_word_scale"),
    ("nan word scale", {"shared_word_scale": float("nan")}, SettingError, "shared_word_scale"),
    ("negative refine radius", {"mask_refine_radius": -1.0}, SettingError, "mask_refine_radius"),
    ("nan refine radius", {"mask_refine_radius": float("nan")}, SettingError, "mask_refine_radius"),
    ("keep ratio 2", {"mask_keep_ratio": 2.0}, SettingError, "mask_keep_ratio"),
    ("negative keep ratio", {"mask_keep_ratio": -0.1}, SettingError, "mask_keep_ratio"),
    ("unknown", {"guidance": 3.0}, SettingError, "unknown setting 'guidance'"),
    ("mode", {"mode": "inpaint"}, SettingError, "mode"),
    ("seed", {"seed": -1}, SettingError, "seed"),
    ("mask size", {"mask": np.ones((10, 10))}, ValueError, "mask is 10x10"),
]


@pytest.mark.parametrize("case, kwargs, error, message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_inputs_are_refused_before_any_unet_call(tiny_eps, unet_inputs, case, kwargs, error, message):
    seen = unet_inputs(tiny_eps)
    image = _transparent() if case == "transparent" else scene_render()
    kwargs = {"query": QUERY, **kwargs}
    with pytest.raises(error, match=message):
        retouch.diffedit(tiny_eps, image, **kwargs)
    assert issubclass(error, ValueError) and seen == []


def test_mask_and_encoding_alone_check_their_inputs_first(tiny_eps, unet_inputs):
    seen = unet_inputs(tiny_eps)
    with pytest.raises(SettingError, match="mask_samples"):
        retouch.diffedit_mask(tiny_eps, scene_render(), QUERY, mask_samples=0)
    with pytest.raises(PromptError, match="query is empty"):
        retouch.diffedit_mask(tiny_eps, scene_render(), "")
    with pytest.raises(ImageError, match="transparent pixels"):
        retouch.diffedit_mask(tiny_eps, _transparent(), QUERY)
    with pytest.raises(SettingError, match="encode_ratio"):
        retouch.ddim_encoding(tiny_eps, scene_render(), encode_ratio=float("nan"))
    with pytest.raises(ImageError, match="transparent pixels"):
        retouch.ddim_encoding(tiny_eps, _transparent())
    assert seen == []


# --- the trained ShapesWorld model (fails until src/retouch/weights/shapes-sd exists) -------------


def test_shipped_empty_prompt_reconstruction_psnr(shipped, scene_image, record_property):
    """r = 1, N = 20: DDIM encode then decode with ∅ reproduces the input closely."""
    img, _ = scene_image
    x0, rec = empty_prompt_reconstruction(shipped, img, steps=20)
    out = to_image(decode(shipped, rec), 64, 64)
    roundtrip = to_image(decode(shipped, x0), 64, 64)
    vs_input, vs_roundtrip, vae = psnr(out, img), psnr(out, roundtrip), psnr(roundtrip, img)
    record_property("psnr_vs_input_db", vs_input)
    record_property("psnr_vs_vae_roundtrip_db", vs_roundtrip)
    print(
        f"\nreconstruction PSNR: {vs_input:.2f} dB vs input, {vs_roundtrip:.2f} dB vs the VAE round trip"
        f" (VAE round trip alone {vae:.2f} dB)"
    )
    assert vs_input > 25


def test_shipped_recolour_mask_overlaps_the_object(shipped, record_property):
    """'a red circle …' → 'a green circle …': IoU with the object's mask at latent resolution > 0.4."""
    scene = sample_scene(HELD_OUT_SEED + 11, n_objects=1)
    o = scene.objects[0]
    scene = dataclasses.replace(scene, background="white", objects=(Obj("circle", "red", o.x, o.y, o.r),))
    mask = retouch.diffedit_mask(shipped, render(scene), QUERY, REFERENCE, seed=0)
    f = shipped.vae_scale_factor
    truth = torch.from_numpy(masks(scene)[0]).float()
    truth = torch.nn.functional.avg_pool2d(truth[None, None], f)[0, 0] >= 0.5  # [h, w]
    pred = mask.latent.bool()
    iou = float((pred & truth).sum() / (pred | truth).sum())
    record_property("recolour_mask_iou", iou)
    print(f"\nrecolour mask IoU {iou:.3f} (mask area {mask.area:.3f}, object {truth.float().mean():.3f})")
    assert iou > 0.4


def test_a_reused_encoding_or_inversion_is_not_vae_encoded_again(tiny_eps, monkeypatch):
    """x0 comes with the encoding (and the inversion): a second edit runs no VAE encoder (at 512
    pixels on a CPU that is seconds an edit)."""
    img = scene_render()
    encoding = retouch.ddim_encoding(tiny_eps, img, **FAST)
    inv = retouch.invert(tiny_eps, img, num_inference_steps=4, skip=1)
    calls = []
    encode = tiny_eps.vae.encode
    monkeypatch.setattr(tiny_eps.vae, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    again = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, encoding=encoding, **FAST)
    fresh = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, **FAST)
    assert len(calls) == 1  # the fresh edit's
    assert np.array_equal(np.asarray(again.image), np.asarray(fresh.image))
    steps = dict(num_inference_steps=4, skip=1)
    retouch.ledits(tiny_eps, inv, add=["green circle"], mask="infer", image=img, **steps)
    assert len(calls) == 1


@pytest.mark.slow
def test_the_library_writes_nothing_to_stdout_or_stderr():
    """The README's call, as a user runs it: no bars, no warnings, no prints."""
    code = (
        "import retouch; retouch.diffedit(retouch.load(), 'examples/red_circle.png', "
        "query='a green circle on a white background', reference='a red circle on a white background')"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")


def test_diffedit_has_no_solver_setting(tiny_eps):
    """DPM-Solver++ lost every DiffEdit measurement (docs/experiments.md): DDIM, the paper's, only."""
    with pytest.raises(SettingError, match="unknown setting 'solver'"):
        retouch.diffedit(tiny_eps, small_image(), QUERY, solver="dpmsolver++", num_inference_steps=2)
