"""FlowEdit on tiny random SD3 and FLUX models: parity with the paper's algorithm restated over
diffusers' own pipelines (their text encoding, scheduler and transformer calls), its costs, seeds,
dtypes, sizes and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flow_tiny import bundle, flux_parts, sd3_parts
from retouch.errors import InputError
from retouch.methods.flowedit import flowedit, flowedit_many

IMAGE = (np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sd3():
    return bundle("sd3")


@pytest.fixture(scope="module")
def flux():
    return bundle("flux")


def _x_src(model) -> torch.Tensor:
    """The image's latent as the pipelines' image-to-image code makes it: (mean − shift)·scale."""
    x = torch.from_numpy(IMAGE).permute(2, 0, 1)[None].float() / 127.5 - 1
    z = model.vae.encode(x).latent_dist.mean
    return (z - model.vae.config.shift_factor) * model.vae.config.scaling_factor


@torch.no_grad()
def reference_sd3(model, src, tar, steps, n_max, n_min, n_avg, w_src, w_tar, seed):
    """FlowEdit as the paper's Algorithm 1 states it, on diffusers' StableDiffusion3Pipeline parts."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(**sd3_parts())
    pipe.transformer.load_state_dict(model.transformer.state_dict())
    for n in ("text_encoder", "text_encoder_2"):
        getattr(pipe, n).load_state_dict(getattr(model, n).state_dict())
    pipe.transformer.eval()
    enc = {}
    for name, text in (("neg", ""), ("src", src), ("tar", tar)):
        e, _, p, _ = pipe.encode_prompt(text, text, text, do_classifier_free_guidance=False)
        enc[name] = (e, p)
    pipe.scheduler.set_timesteps(steps)
    sig = pipe.scheduler.sigmas
    x_src = _x_src(model)
    gen = torch.Generator().manual_seed(seed)

    def v(x, t, names):
        e = torch.cat([enc[n][0] for n in names])
        p = torch.cat([enc[n][1] for n in names])
        return pipe.transformer(x, e, p, (t * 1000).expand(x.shape[0])).sample

    z = x_src.clone()
    x_tar = None
    for i in range(steps):
        if steps - i > n_max:
            continue
        t, t_next = sig[i], sig[i + 1]
        if steps - i > n_min:
            vt = torch.zeros_like(x_src)
            for _ in range(n_avg):
                noise = torch.randn(x_src.shape, generator=gen)
                zt_src = (1 - t) * x_src + t * noise
                zt_tar = z + zt_src - x_src
                out = v(torch.cat([zt_src, zt_src, zt_tar, zt_tar]), t, ["neg", "src", "neg", "tar"])
                su, sc, tu, tc = out.chunk(4)
                vt += ((tu + w_tar * (tc - tu)) - (su + w_src * (sc - su))) / n_avg
            z = z + (t_next - t) * vt
        else:
            if i == steps - n_min:
                noise = torch.randn(x_src.shape, generator=gen)
                x_tar = z + ((1 - t) * x_src + t * noise) - x_src
            u, c = v(torch.cat([x_tar, x_tar]), t, ["neg", "tar"]).chunk(2)
            x_tar = x_tar + (t_next - t) * (u + w_tar * (c - u))
    return z if n_min == 0 else x_tar


@torch.no_grad()
def reference_flux(model, src, tar, steps, n_max, w_src, w_tar, seed):
    """FlowEdit on diffusers' FluxPipeline parts: guidance embeddings instead of CFG."""
    from diffusers import FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    pipe = FluxPipeline(**flux_parts())
    for n in ("transformer", "text_encoder", "text_encoder_2"):
        getattr(pipe, n).load_state_dict(getattr(model, n).state_dict())
        getattr(pipe, n).eval()  # built in code, T5 would keep its dropout on
    enc = {k: pipe.encode_prompt(t, t, max_sequence_length=512)[:3] for k, t in (("src", src), ("tar", tar))}
    x_src = _x_src(model)
    _, c, h, w = x_src.shape
    c_ = pipe.scheduler.config
    mu = calculate_shift(
        (h // 2) * (w // 2), c_.base_image_seq_len, c_.max_image_seq_len, c_.base_shift, c_.max_shift
    )
    pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    sig = pipe.scheduler.sigmas
    img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
    pack = lambda x: FluxPipeline._pack_latents(x, 1, c, h, w)  # noqa: E731
    gen = torch.Generator().manual_seed(seed)

    def v(x, t, name, g):
        e, p, ids = enc[name]
        out = pipe.transformer(
            hidden_states=pack(x), timestep=t.expand(1), guidance=torch.tensor([g]), pooled_projections=p,
            encoder_hidden_states=e, txt_ids=ids, img_ids=img_ids,
        ).sample  # fmt: skip
        return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)  # (its 8: FLUX's VAE factor)

    z = x_src.clone()
    for i in range(steps - n_max, steps):
        t, t_next = sig[i], sig[i + 1]
        noise = torch.randn(x_src.shape, generator=gen)
        zt_src = (1 - t) * x_src + t * noise
        zt_tar = z + zt_src - x_src
        z = z + (t_next - t) * (v(zt_tar, t, "tar", w_tar) - v(zt_src, t, "src", w_src))
    return z


@pytest.mark.parametrize("n_min,n_avg", [(0, 1), (2, 2)])
def test_flowedit_on_sd3_equals_the_papers_algorithm_over_diffusers(sd3, n_min, n_avg):
    kw = dict(num_inference_steps=8, n_max=6, n_min=n_min, n_avg=n_avg)
    r = flowedit(sd3, IMAGE, "a red circle", "a green circle", seed=3, **kw,
                 source_guidance_scale=3.5, target_guidance_scale=13.5)  # fmt: skip
    ref = reference_sd3(sd3, "a red circle", "a green circle", 8, 6, n_min, n_avg, 3.5, 13.5, seed=3)
    assert r.latents.shape == ref.shape
    assert (r.latents - ref).abs().max().item() <= 1e-5
    assert (r.latents - _x_src(sd3)).abs().max() > 1e-2  # it edited
    assert r.unet_evals == 4 * (6 - n_min) * n_avg + 2 * n_min  # four branches a call, then two


def test_flowedit_on_flux_equals_the_papers_algorithm_over_diffusers(flux):
    r = flowedit(flux, IMAGE, "a red circle", "a green circle", seed=5, num_inference_steps=7, n_max=5)
    ref = reference_flux(flux, "a red circle", "a green circle", 7, 5, 1.5, 5.5, seed=5)
    assert (r.latents - ref).abs().max().item() <= 1e-5
    assert r.unet_evals == 2 * 5  # two branches a step, no ∅


def test_published_defaults_per_family(sd3, flux):
    r = flowedit(sd3, IMAGE, "a red circle", "a green circle", num_inference_steps=10, n_max=2)
    assert (r.settings["num_inference_steps"], r.settings["target_guidance_scale"]) == (10, 13.5)
    assert r.settings["source_guidance_scale"] == 3.5 and r.settings["n_avg"] == 1
    f = flowedit(flux, IMAGE, "a red circle", "a green circle", num_inference_steps=4, n_max=1)
    assert (f.settings["source_guidance_scale"], f.settings["target_guidance_scale"]) == (1.5, 5.5)


def test_same_seed_same_image_and_many_equals_single(sd3):
    kw = dict(num_inference_steps=6, n_max=4)
    a = flowedit(sd3, IMAGE, "a red circle", "a green circle", seed=1, **kw)
    b = flowedit(sd3, IMAGE, "a red circle", "a green circle", seed=1, **kw)
    c = flowedit(sd3, IMAGE, "a red circle", "a green circle", seed=2, **kw)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not torch.equal(a.latents, c.latents)
    many = flowedit_many(sd3, IMAGE, "a red circle", ["a blue square", "a green circle"], seed=1, **kw)
    assert (many[1].latents - a.latents).abs().max().item() <= 1e-5


def test_a_preset_is_its_families_settings_under_the_explicit_ones(sd3, flux):
    """SD3's presets (retouch.presets.FLOWEDIT_BY_FAMILY): an edit under one is the edit given its
    settings by hand, and names it; an explicit setting overrides it; FLUX has none (one line)."""
    from retouch.presets import FLOWEDIT_BY_FAMILY

    stronger = FLOWEDIT_BY_FAMILY["sd3"]["stronger"]
    kw = dict(seed=3, n_min=stronger["n_max"] - 2)  # the last n_min steps plain: a short test
    a = flowedit(sd3, IMAGE, "a red circle", "a green circle", preset="stronger", **kw)
    b = flowedit(sd3, IMAGE, "a red circle", "a green circle", **stronger, **kw)
    assert torch.equal(a.latents, b.latents) and a.settings == {**b.settings, "preset": "stronger"}
    assert (a.settings["n_max"], a.settings["target_guidance_scale"]) == (40, 7.0)
    c = flowedit(sd3, IMAGE, "a red circle", "a green circle", preset="stronger", n_max=3, n_min=0)
    assert (c.settings["n_max"], c.settings["target_guidance_scale"]) == (3, 7.0)
    with pytest.raises(InputError, match="preset must be one of stronger, background"):
        flowedit(sd3, IMAGE, "a red circle", "a green circle", preset="recolor")
    with pytest.raises(InputError, match="no presets on flux") as e:
        flowedit(flux, IMAGE, "a red circle", "a green circle", preset="stronger")
    assert "\n" not in str(e.value)


TARGETS = ["a blue square", "a green circle", "a yellow triangle"]


@pytest.mark.parametrize("n_min,n_avg", [(0, 1), (2, 2)])
def test_many_targets_are_one_transformer_call_a_step_and_each_equals_its_single_edit(sd3, n_min, n_avg):
    """flowedit_many of 3 targets: one transformer call a step of n_avg·(2 + 2·3) batch elements
    (the source branch shared), then 2·3 in the n_min plain steps; each edit's latents are its own
    flowedit's with the same seed (float rounding); max_batch splits each step, same latents."""
    from retouch.denoiser import UNetCalls

    kw = dict(num_inference_steps=8, n_max=6, n_min=n_min, n_avg=n_avg, seed=7)
    calls = UNetCalls(sd3.transformer)
    try:
        many = flowedit_many(sd3, IMAGE, "a red circle", TARGETS, **kw)
        sizes, calls.sizes = calls.sizes, []
        split = flowedit_many(sd3, IMAGE, "a red circle", TARGETS, max_batch=5, **kw)
        split_sizes, calls.sizes = calls.sizes, []
        alone = [flowedit(sd3, IMAGE, "a red circle", t, **kw) for t in TARGETS]
        alone_sizes = calls.sizes
    finally:
        calls.unwrap()
    edit_steps = 6 - n_min
    assert sizes == [n_avg * (2 + 2 * 3)] * edit_steps + [2 * 3] * n_min
    assert len(alone_sizes) == 3 * 6 and sum(alone_sizes) == 3 * (4 * edit_steps * n_avg + 2 * n_min)
    assert sum(r.unet_evals for r in many) == sum(sizes)
    assert many[1].unet_evals == many[2].unet_evals == 2 * n_avg * edit_steps + 2 * n_min
    assert max(split_sizes) == 5 and sum(split_sizes) == sum(sizes)
    for m, s, a in zip(many, split, alone):
        assert (m.latents - a.latents).abs().max().item() <= 1e-5
        assert (s.latents - m.latents).abs().max().item() <= 1e-5
        assert m.settings["target"] == a.settings["target"]
    assert (many[0].latents - many[1].latents).abs().max() > 1e-2  # the targets differ


def test_many_targets_on_flux_are_one_call_a_step_and_each_equals_its_single_edit(flux):
    from retouch.denoiser import UNetCalls

    kw = dict(num_inference_steps=7, n_max=5, seed=5)
    calls = UNetCalls(flux.transformer)
    try:
        many = flowedit_many(flux, IMAGE, "a red circle", TARGETS[:2], **kw)
    finally:
        calls.unwrap()
    assert calls.sizes == [1 + 2] * 5 and sum(r.unet_evals for r in many) == 15
    for m, t in zip(many, TARGETS[:2]):
        assert (m.latents - flowedit(flux, IMAGE, "a red circle", t, **kw).latents).abs().max().item() <= 1e-5


def test_max_batch_is_a_whole_number_of_at_least_one(sd3):
    with pytest.raises(InputError, match="max_batch"):
        flowedit_many(sd3, IMAGE, "a red circle", TARGETS, num_inference_steps=4, n_max=2, max_batch=0)


def test_non_square_size_kept_and_half_precision_finite():
    img = (np.random.default_rng(1).random((27, 45, 3)) * 255).astype(np.uint8)  # padded to 28×48
    for dtype in (torch.bfloat16, torch.float16):
        for fam in ("sd3", "flux"):
            r = flowedit(bundle(fam, dtype=dtype), img, "a red circle", "a green circle",
                         num_inference_steps=4, n_max=3)  # fmt: skip
            assert r.image.size == (45, 27)
            assert torch.isfinite(r.latents).all()


@pytest.mark.parametrize(
    "bad,word",
    [
        (dict(n_max=9), "n_max"),
        (dict(n_min=5, n_max=3), "n_min"),
        (dict(n_avg=float("nan")), "n_avg"),
        (dict(n_avg=0), "n_avg"),
        (dict(num_inference_steps=-1), "num_inference_steps"),
        (dict(target_guidance_scale=float("inf")), "target_guidance_scale"),
    ],
)
def test_bad_settings_are_one_line_errors_before_model_work(sd3, bad, word):
    kw = {"num_inference_steps": 8, **bad}
    with pytest.raises(InputError, match=word) as e:
        flowedit(sd3, IMAGE, "a red circle", "a green circle", **kw)
    assert "\n" not in str(e.value)


def test_an_sd_model_is_refused_in_one_line(tiny_eps):
    with pytest.raises(InputError, match="flow model"):
        flowedit(tiny_eps, IMAGE, "a red circle", "a green circle")


@pytest.mark.parametrize("n_min", [0, 2])
def test_a_mask_keeps_the_latent_outside_it_and_a_full_mask_is_the_paper(sd3, n_min):
    """Ours, mask=: outside the mask the edited latent is the image's (that of an edit whose mask
    is empty); a mask of the whole image gives the paper's edit exactly; the mask is the result's."""
    kw = dict(num_inference_steps=8, n_max=6, n_min=n_min, seed=4)
    half = np.zeros(IMAGE.shape[:2], np.uint8)
    half[:, :24] = 255  # the left half of the 48-pixel-wide image
    paper = flowedit(sd3, IMAGE, "a red circle", "a green circle", **kw)
    full = flowedit(sd3, IMAGE, "a red circle", "a green circle", mask=np.full_like(half, 255), **kw)
    none = flowedit(sd3, IMAGE, "a red circle", "a green circle", mask=np.zeros_like(half), **kw)
    left = flowedit(sd3, IMAGE, "a red circle", "a green circle", mask=half, **kw)
    assert torch.equal(full.latents, paper.latents) and paper.mask is None
    assert full.unet_evals == paper.unet_evals and left.settings["mask"] == "given"
    m = left.mask.latent.bool()  # [h, w]
    assert m.any() and not m.all() and m[:, 0].all() and not m[:, -1].any()
    assert torch.equal(left.latents[..., ~m], none.latents[..., ~m])
    assert (left.latents[..., m] - none.latents[..., m]).abs().max() > 1e-2  # edited inside
    assert (none.latents - _x_src(sd3)).abs().max().item() <= 1e-4  # an empty mask: the image


def test_a_mask_given_as_nested_lists_is_one_mask_for_every_target(sd3):
    """A mask as a list of rows (as JSON gives it) is one mask, not one per target: flowedit and
    flowedit_many edit as with the same mask as an array."""
    kw = dict(num_inference_steps=6, n_max=4, seed=1)
    half = np.zeros(IMAGE.shape[:2], np.uint8)
    half[:, :24] = 1
    rows = half.tolist()  # 48 rows of 48 numbers
    one = flowedit(sd3, IMAGE, "a red circle", "a green circle", mask=rows, **kw)
    assert torch.equal(
        one.latents, flowedit(sd3, IMAGE, "a red circle", "a green circle", mask=half, **kw).latents
    )
    many = flowedit_many(sd3, IMAGE, "a red circle", TARGETS[:2], mask=rows, **kw)
    assert all(torch.equal(r.mask.latent, one.mask.latent) for r in many)
    rgb = np.repeat(half[..., None], 3, axis=-1).tolist()  # 48 rows of 48 pixels of 3 numbers
    many = flowedit_many(sd3, IMAGE, "a red circle", TARGETS[:2], mask=rgb, **kw)
    assert all(torch.equal(r.mask.latent, one.mask.latent) for r in many)


def test_a_list_of_masks_as_nested_lists_gives_each_target_its_own():
    """Nested lists three deep are one [H][W] mask per target when there is one per target and the
    innermost lists are rows (not 1, 3 or 4 channels); paths, arrays and None are always per target."""
    from retouch.methods.flowedit import _per_target

    rows = np.zeros((48, 48), np.uint8).tolist()
    assert not _per_target(rows, 2) and not _per_target(np.zeros((48, 48)), 1)
    assert _per_target([rows, rows], 2) and not _per_target([rows, rows, rows], 2)  # [C][H][W]
    rgb = np.zeros((48, 48, 3), np.uint8).tolist()
    assert not _per_target(rgb, 48) and _per_target([rgb, rgb], 2)
    assert _per_target([None, rows], 2) and _per_target(["a.png", "b.png"], 2)


def test_an_inferred_mask_is_diffedits_of_the_target_against_the_source(sd3):
    """mask="infer": DiffEdit's mask of the target (query) against the source (reference), fitted to
    the image's edges (INFERRED_MASK), from the edit's seed, its cost in the edit's; the same seed
    gives the same edit; in flowedit_many each target's own mask, each edit equal to its single edit."""
    from retouch.methods.diffedit import diffedit_mask
    from retouch.methods.flowedit import INFERRED_MASK

    kw = dict(num_inference_steps=6, n_max=4, seed=2)
    a = flowedit(sd3, IMAGE, "a red circle", "a green circle", mask="infer", **kw)
    b = flowedit(sd3, IMAGE, "a red circle", "a green circle", mask="infer", **kw)
    paper = flowedit(sd3, IMAGE, "a red circle", "a green circle", **kw)
    ref = diffedit_mask(sd3, IMAGE, "a green circle", "a red circle", seed=2, **INFERRED_MASK)
    assert torch.equal(a.mask.latent, ref.latent) and a.settings["mask"] == "infer"
    assert a.unet_evals == paper.unet_evals + ref.unet_evals and ref.unet_evals > 0
    assert torch.equal(a.latents, b.latents)
    given = flowedit(sd3, IMAGE, "a red circle", "a green circle", mask=ref, **kw)  # paid for before
    assert torch.equal(given.latents, a.latents) and given.unet_evals == paper.unet_evals
    many = flowedit_many(sd3, IMAGE, "a red circle", TARGETS[:2], mask=["infer", None], **kw)
    assert many[1].mask is None and (many[1].latents - flowedit(
        sd3, IMAGE, "a red circle", TARGETS[1], **kw).latents).abs().max().item() <= 1e-5  # fmt: skip
    alone = flowedit(sd3, IMAGE, "a red circle", TARGETS[0], mask="infer", **kw)
    assert (many[0].latents - alone.latents).abs().max().item() <= 1e-5
    assert torch.equal(many[0].mask.latent, alone.mask.latent)


@pytest.mark.parametrize(
    "mask,word",
    [
        (np.zeros((8, 8), np.uint8), "mask is 8x8"),
        (["infer"] * 3, "3 masks for 1 targets"),
        ("no/such/mask.png", "cannot read mask"),
    ],
)
def test_a_bad_mask_is_a_one_line_error(sd3, mask, word):
    """A mask of another size, one mask too many, a missing file; on FLUX "infer" (DiffEdit's mask needs
    the ∅ branch a distilled model has not), before any transformer call."""
    if isinstance(mask, str):
        with pytest.raises(InputError, match="FLUX") as e:
            flowedit(bundle("flux"), IMAGE, "a red circle", "a green circle", num_inference_steps=4, n_max=2,
                     mask="infer")  # fmt: skip
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match=word) as e:
        flowedit_many(
            sd3, IMAGE, "a red circle", ["a green circle"], num_inference_steps=4, n_max=2, mask=mask
        )
    assert "\n" not in str(e.value)
