"""DiffEdit and LEDITS carried over to flow models (docs/flow.md), and loading SD3 and FLUX folders:
on tiny random models built in code. The core properties: LEDITS' inversion reconstructs exactly,
DiffEdit keeps the latents outside its mask, values of one family are refused by another."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import retouch
from flow_tiny import bundle, flux_parts, sd3_parts
from retouch.errors import InputError
from retouch.methods.common import prepare

IMAGE = (np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sd3():
    return bundle("sd3")


@pytest.mark.parametrize("source", ["", "a red circle"])
def test_ledits_on_sd3_with_no_edit_reconstructs_the_latent(sd3, source):
    inv = retouch.invert(sd3, IMAGE, source=source, num_inference_steps=10, skip=0.2, seed=4)
    assert inv.family == "sd3" and len(inv.timesteps) == 8 and 0 < inv.timesteps[-1] < inv.timesteps[0] <= 1
    r = retouch.ledits(sd3, inv, add=["a green circle"], edit_scale=0.0)
    assert r.unet_evals == (3 if source else 2) * 8  # [∅, source?, concept] a step; no inversion paid
    assert (r.latents - inv.x0).abs().max().item() <= 1e-5
    edited = retouch.ledits(sd3, inv, add=["a green circle"], remove=["a red circle"])
    assert (edited.latents - inv.x0).abs().max() > 1e-2


def test_ledits_on_sd3_with_a_target_prompt_and_the_same_seed_is_reproducible(sd3):
    kw = dict(prompt="a green circle", add=["a blue square"], num_inference_steps=6, skip=0.0, seed=2)
    a = retouch.ledits(sd3, IMAGE, source="a red circle", **kw)
    b = retouch.ledits(sd3, IMAGE, source="a red circle", **kw)
    assert torch.equal(a.latents, b.latents)
    assert torch.isfinite(a.latents).all()


def test_ledits_inversion_on_sd3_saves_and_loads_and_an_sd_model_refuses_it(sd3, tiny_eps, tmp_path):
    inv = retouch.invert(sd3, IMAGE, num_inference_steps=5, skip=0.0)
    inv.save(tmp_path / "i.safetensors")
    back = retouch.Inversion.load(tmp_path / "i.safetensors", sd3)
    assert back.timesteps == inv.timesteps and torch.equal(back.zs, inv.zs)
    with pytest.raises(InputError, match="sd3") as e:
        retouch.Inversion.load(tmp_path / "i.safetensors", tiny_eps)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError):
        retouch.ledits(tiny_eps, inv, add=["a green circle"])
    sd_inv = retouch.invert(tiny_eps, IMAGE, num_inference_steps=5, skip=0.0)
    with pytest.raises(InputError, match="sd"):
        retouch.ledits(sd3, sd_inv, add=["a green circle"])


def test_diffedit_on_sd3_keeps_every_latent_outside_its_mask(sd3):
    x0 = prepare(sd3, IMAGE).x0
    given = np.zeros((32, 48), np.uint8)
    given[8:24, 16:40] = 255
    r = retouch.diffedit(sd3, IMAGE, query="a green circle", reference="a red circle", mask=given,
                         num_inference_steps=10)  # fmt: skip
    m = r.mask.latent
    assert 0 < m.mean() < 1
    assert ((r.latents - x0).abs() * (1 - m)).max().item() == 0  # the background is the image's own
    assert ((r.latents - x0).abs() * m).max() > 1e-2  # and the inside changed
    assert r.unet_evals == 8 + 2 * 8  # encode r·N = 8 steps, decode 8 steps of [∅, Q]


def test_diffedit_mask_on_sd3_is_empty_when_the_texts_agree_and_costs_2n(sd3):
    m = retouch.diffedit_mask(sd3, IMAGE, query="a red circle", reference="a red circle", mask_samples=3)
    assert m.area == 0 and m.unet_evals == 6
    other = retouch.diffedit_mask(sd3, IMAGE, query="a green square", reference="a red circle",
                                  mask_samples=3, mask_threshold=0.2)  # fmt: skip
    assert other.scores.max() > 0


def test_diffedit_encoding_on_sd3_runs_the_flow_ode_backwards_to_its_levels(sd3):
    enc = retouch.ddim_encoding(sd3, IMAGE, num_inference_steps=10, encode_ratio=0.5)
    assert enc.timesteps[0] == -1 and len(enc.latents) == 6
    assert all(a < b for a, b in zip(enc.timesteps[1:], enc.timesteps[2:]))  # ascending levels
    assert enc.unet_evals == 5


def test_a_diffedit_encoding_of_another_family_is_refused_in_one_line_naming_both(sd3, tiny_eps):
    """An Encoding records its family; DiffEdit refuses one made on another family before any network
    call, naming both (before the weights' check, which would say only "another model")."""
    from retouch.denoiser import UNetCalls

    kw = dict(num_inference_steps=6, encode_ratio=0.5)
    flow_enc, sd_enc = (retouch.ddim_encoding(m, IMAGE, **kw) for m in (sd3, tiny_eps))
    assert (flow_enc.family, sd_enc.family) == ("sd3", "sd")
    for model, enc, words in ((tiny_eps, flow_enc, "an sd3 model, this is sd"),
                              (sd3, sd_enc, "an sd model, this is sd3")):  # fmt: skip
        calls = UNetCalls(model.unet)
        try:
            with pytest.raises(InputError) as e:
                retouch.diffedit(model, IMAGE, query="a green circle", encoding=enc, **kw)
        finally:
            calls.unwrap()
        assert str(e.value) == f"encoding was made with {words}" and calls.sizes == []


@pytest.mark.parametrize(
    "call",
    [
        lambda m: retouch.diffedit(m, IMAGE, query="a green circle", reference="a red circle"),
        lambda m: retouch.invert(m, IMAGE),
        lambda m: retouch.ledits(m, IMAGE, add=["a green circle"]),
    ],
)
def test_flux_refuses_the_methods_that_need_an_unconditional_branch(call):
    with pytest.raises(InputError, match="flowedit") as e:
        call(bundle("flux"))
    assert "\n" not in str(e.value)


def test_options_of_stable_diffusions_path_are_refused_on_a_flow_model(sd3):
    with pytest.raises(InputError, match="solver"):
        retouch.invert(sd3, IMAGE, solver="dpmsolver++")
    with pytest.raises(InputError, match="word"):
        retouch.diffedit(sd3, IMAGE, query="a green circle", changed_word_scale=3.0)


@pytest.mark.parametrize("preset", ["recolor", "remove"])
def test_a_diffedit_preset_on_a_flow_model_keeps_all_but_the_word_weights(sd3, preset):
    """The word weights weigh a UNet's cross-attention: on SD3 a preset leaves them out, and an edit
    with it is the edit with the rest of the preset given by hand."""
    from retouch.presets import DIFFEDIT, UNET_ONLY

    rest = {k: v for k, v in DIFFEDIT[preset].items() if k not in UNET_ONLY}
    left_out = {"shared_word_scale", "changed_word_scale"} if preset == "recolor" else {"shared_word_scale"}
    assert set(DIFFEDIT[preset]) - set(rest) == left_out
    kw = dict(query="a green circle", reference="a red circle", num_inference_steps=6, seed=3)
    by_preset = retouch.diffedit(sd3, IMAGE, preset=preset, **kw)
    by_hand = retouch.diffedit(sd3, IMAGE, **rest, **kw)
    assert by_preset.settings == {**by_hand.settings, "preset": preset}
    assert by_preset.settings["shared_word_scale"] == 1.0 and by_preset.settings["encode_ratio"] == 1.0
    assert torch.equal(by_preset.latents, by_hand.latents)


def test_sd3_and_flux_folders_load_as_flow_models(tmp_path):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    StableDiffusion3Pipeline(**sd3_parts()).save_pretrained(tmp_path / "sd3")
    FluxPipeline(**flux_parts()).save_pretrained(tmp_path / "flux")
    a = retouch.load(tmp_path / "sd3", device="cpu", dtype="float32")
    b = retouch.load(tmp_path / "flux", device="cpu", dtype="bfloat16")
    assert (a.family, a.text_encoder_3, a.max_sequence_length) == ("sd3", None, 256)
    assert (b.family, b.dtype, b.guidance_distilled) == ("flux", torch.bfloat16, True)
    built = bundle("sd3").transformer.state_dict()
    assert all(torch.equal(v, built[k]) for k, v in a.transformer.state_dict().items())


def test_an_sd3_folder_in_bfloat16_edits_a_768_by_512_image_at_its_own_size_with_every_method(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    StableDiffusion3Pipeline(**sd3_parts(vae_levels=4)).save_pretrained(tmp_path / "sd3")
    model = retouch.load(tmp_path / "sd3", device="cpu", dtype="bfloat16", max_pixels=768 * 512)
    img = (np.random.default_rng(2).random((512, 768, 3)) * 255).astype(np.uint8)
    results = [
        retouch.flowedit(model, img, "a red circle", "a green circle", num_inference_steps=4, n_max=3),
        retouch.diffedit(model, img, query="a green circle", reference="a red circle", num_inference_steps=4,
                         mask_samples=2),
        retouch.ledits(model, img, add=["a green circle"], num_inference_steps=4, skip=0.0),
    ]  # fmt: skip
    for r in results:
        assert r.image.size == (768, 512)
        assert torch.isfinite(r.latents).all()


def _context_lengths(model):
    """Every context length the transformer's context embedder sees, recorded by a hook."""
    seen = []
    embedder = model.transformer.context_embedder
    hook = embedder.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    return seen, hook


def test_sd3_without_t5_gives_its_zero_tokens_once_and_the_velocity_is_unchanged(sd3):
    """The absent T5's 256 zero rows reach the transformer as one row weighed 256 times
    (flows.ZeroRunAttention); the velocity equals the transformer's on the full context."""
    from retouch.flows import velocity_fn
    from retouch.text import encode_text

    cond = encode_text(sd3, ["a red circle", ""])  # [2, 77 + 256 + 1, D]
    x = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    counter = type("Counter", (), {"n": 0})()
    seen, hook = _context_lengths(sd3)
    try:
        v = velocity_fn(sd3, counter)(x, 0.6, cond)
        tr = sd3.transformer
        full = tr(
            hidden_states=x, encoder_hidden_states=cond[:, :-1], pooled_projections=cond[:, -1, :32],
            timestep=torch.full((2,), 600.0),
        ).sample  # fmt: skip
    finally:
        hook.remove()
    assert seen == [cond.shape[1] - 1 - 255, cond.shape[1] - 1]
    assert (v - full).abs().max().item() <= 1e-5 * full.abs().max().item()
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    assert all(type(p) is JointAttnProcessor2_0 for p in tr.attn_processors.values())  # restored


def test_sd3_zero_tokens_stay_whole_with_t5_in_half_precision_or_a_users_processor(sd3):
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    from retouch.flows import velocity_fn
    from retouch.text import encode_text

    class Mine(JointAttnProcessor2_0):
        pass

    counter = type("Counter", (), {"n": 0})()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for model in (bundle("sd3", t5=True), bundle("sd3", dtype=torch.bfloat16), sd3):
        own = dict(model.transformer.attn_processors)
        if model is sd3:
            model.transformer.set_attn_processor(Mine())
        cond = encode_text(model, ["a red circle"])
        seen, hook = _context_lengths(model)
        try:
            velocity_fn(model, counter)(x, 0.5, cond)
        finally:
            hook.remove()
            model.transformer.set_attn_processor(own)
        assert seen == [cond.shape[1] - 1]
