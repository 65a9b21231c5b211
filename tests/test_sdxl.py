"""SDXL through the same code path (docs/models.md, SDXL): a tiny SDXL built in code from the real classes
(two CLIP text encoders, the second with projection; a UNet with addition_embed_type="text_time";
a VAE with force_upcast), saved as a diffusers folder and loaded through retouch.load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import retouch
from retouch.errors import InversionError, SettingError
from retouch.masks import refined_scores

torch.set_num_threads(1)

SOURCE = "a red circle on a white background"
LEDITS = dict(num_inference_steps=12, skip=2)
EXACT = 1e-4  # float32: "to float rounding"
BF16 = 2e-2  # bfloat16 keeps 8 bits of mantissa; latents of magnitude ~1


@pytest.fixture(scope="module")
def xl_folder(tmp_path_factory):
    from retouch.shapes.architecture import build_sdxl_components, save_pipeline

    folder = tmp_path_factory.mktemp("tiny-sdxl")
    return save_pipeline(folder / "model", build_sdxl_components("tiny", folder / "tok"))


@pytest.fixture(scope="module")
def xl(xl_folder):
    return retouch.load(str(xl_folder), device="cpu")


def _image(h: int = 45, w: int = 70) -> np.ndarray:
    """Non-square, sides not multiples of 8."""
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)


def test_load_recognises_sdxl_and_diffusers_loads_the_same_folder(xl, xl_folder):
    from diffusers import StableDiffusionXLPipeline

    assert xl.family == "sdxl" and xl.empty_is_zeros and xl.text_encoder_2 is not None
    assert xl.vae.config.scaling_factor == 0.13025 and xl.vae.config.force_upcast
    pipe = StableDiffusionXLPipeline.from_pretrained(xl_folder)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert retouch.load(device="cpu").family == "sd"  # the shipped model: SD 1.x


def test_conditioning_pooled_row_zeros_for_empty_and_time_ids_from_the_true_size(xl):
    from retouch.text import encode_text, unpack_xl

    emb = encode_text(xl, ["", SOURCE])  # [2, 78, 40]: 77 token rows of 16 + 24, then pooled
    assert emb.shape == (2, 78, 16 + 24)
    assert torch.count_nonzero(emb[0]) == 0  # force_zeros_for_empty_prompt: ∅ is zeros
    hidden, pooled = unpack_xl(emb[1:], xl.text_encoder_2.config.projection_dim)
    ids = xl.tokenizer_2([SOURCE], padding="max_length", max_length=77, return_tensors="pt").input_ids
    torch.testing.assert_close(pooled, xl.text_encoder_2(ids)[0])
    seen = []
    forward = xl.unet.forward

    def spy(sample, t, encoder_hidden_states, added_cond_kwargs=None, **kw):
        seen.append(added_cond_kwargs["time_ids"].clone())
        return forward(sample, t, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs, **kw)

    xl.unet.forward = spy
    try:
        retouch.diffedit(xl, _image(), "a green circle", SOURCE, num_inference_steps=4, mask_samples=1)
    finally:
        del xl.unet.forward
    assert seen and all((ids == torch.tensor([45.0, 70, 0, 0, 45, 70])).all() for ids in seen)


@pytest.mark.parametrize("solver", ["ddpm", "dpmsolver++"])
def test_ledits_without_an_edit_reconstructs_exactly_and_edits_run(xl, solver, record_property):
    img = _image()
    inv = retouch.invert(xl, img, source=SOURCE, solver=solver, **LEDITS)
    assert inv.family == "sdxl"
    same = retouch.ledits(
        xl, inv, prompt=SOURCE, target_guidance_scale=inv.source_guidance_scale, solver=solver, **LEDITS
    )
    err = float((same.latents - inv.x0).abs().max())
    record_property("max_abs_error", err)
    assert err < EXACT, err
    out = retouch.ledits(
        xl, inv, add=["green circle"], remove=["red circle"], prompt="a green circle", solver=solver, **LEDITS
    )
    assert out.image.size == (70, 45) and np.isfinite(np.asarray(out.image, float)).all()
    assert out.unet_evals == 10 * 4  # [∅, prompt, green, red] per edited step


def test_diffedit_zero_mask_is_the_encode_decode_and_the_background_is_kept(xl):
    from retouch.latents import decode, to_image
    from retouch.methods.common import prepare

    img = _image()
    out = retouch.diffedit(xl, img, "a green circle", SOURCE, mask=np.zeros((45, 70)), num_inference_steps=6)
    prep = prepare(xl, img)
    assert torch.equal(out.latents, prep.x0)
    assert np.array_equal(np.asarray(out.image), np.asarray(to_image(decode(xl, prep.x0), 45, 70)))
    half = np.zeros((45, 70), np.uint8)
    half[:, :35] = 1
    out = retouch.diffedit(xl, img, "a green circle", SOURCE, mask=half, num_inference_steps=6)
    keep = out.mask.latent == 0
    assert keep.any() and torch.equal(out.latents[..., keep], prep.x0[..., keep])
    # steering away from the reference: SDXL's two encoders and pooled row take the third branch too
    away = retouch.diffedit(
        xl, img, "a green circle", SOURCE, mask=half, num_inference_steps=6, reference_guidance_scale=3.0
    )
    assert torch.equal(away.latents[..., keep], prep.x0[..., keep])
    assert not torch.allclose(away.latents[..., ~keep], out.latents[..., ~keep])
    # word weights inside the mask: SDXL's cross-attention, at each of its (odd-sized) resolutions
    words = retouch.diffedit(
        xl,
        img,
        "a green circle",
        SOURCE,
        mask=half,
        num_inference_steps=6,
        changed_word_scale=3.0,
        shared_word_scale=0.5,
    )
    assert torch.equal(words.latents[..., keep], prep.x0[..., keep])
    assert not torch.allclose(words.latents[..., ~keep], out.latents[..., ~keep])
    # the mask fitted to the image's edges, at SDXL's odd latent size
    paper = retouch.diffedit_mask(xl, img, "a green circle", SOURCE, num_inference_steps=6, mask_samples=2)
    fitted = retouch.diffedit_mask(
        xl, img, "a green circle", SOURCE, num_inference_steps=6, mask_samples=2, mask_refine_radius=2.0
    )
    expected = refined_scores(paper.scores, prep.pixels.tensor, xl.vae_scale_factor, 2.0)
    assert fitted.latent.shape == prep.x0.shape[-2:] and fitted.soft.shape == (45, 70)
    torch.testing.assert_close(fitted.scores, expected)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_is_finite_and_exact_to_its_rounding(xl_folder, dtype, record_property):
    half = retouch.load(str(xl_folder), device="cpu", dtype=dtype)
    assert half.unet.dtype == getattr(torch, dtype)
    assert half.vae.dtype == (torch.float32 if dtype == "float16" else torch.bfloat16)  # force_upcast
    img = _image()
    inv = retouch.invert(half, img, source=SOURCE, **LEDITS)
    same = retouch.ledits(half, inv, prompt=SOURCE, target_guidance_scale=inv.source_guidance_scale, **LEDITS)
    err = float((same.latents - inv.x0).abs().max())
    record_property("max_abs_error", err)
    assert err < BF16, err
    out = retouch.ledits(half, inv, add=["green circle"], remove=["red circle"], **LEDITS)
    assert torch.isfinite(out.latents).all() and out.image.size == (70, 45)
    d = retouch.diffedit(half, img, "a green circle", SOURCE, num_inference_steps=6, mask_samples=2)
    assert torch.isfinite(d.latents).all() and d.image.size == (70, 45)


def test_an_inversion_records_the_family_and_another_model_refuses_it(xl, tmp_path):
    inv = retouch.invert(xl, _image(), **LEDITS)
    inv.save(tmp_path / "xl.safetensors")
    sd = retouch.load(device="cpu")
    with pytest.raises(InversionError, match="made with an sdxl model, this is sd"):
        retouch.Inversion.load(tmp_path / "xl.safetensors", sd)
    with pytest.raises(SettingError, match="made with an sdxl model"):
        retouch.ledits(sd, inv, add=["green circle"], **LEDITS)
    assert retouch.Inversion.load(tmp_path / "xl.safetensors", xl).family == "sdxl"


def test_the_command_line_edits_with_an_sdxl_folder(xl_folder, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from retouch.files import read_params
    from retouch.main import main

    Image.fromarray(_image()).save(tmp_path / "in.png")
    for method, args in [
        ("diffedit", ["--query", "a green circle", "--num-inference-steps", "6", "--mask-samples", "2"]),
        (
            "ledits",
            ["--add", "green circle", "--num-inference-steps", "8", "--skip", "2", "--solver", "dpmsolver++"],
        ),
    ]:
        out = tmp_path / f"{method}.png"
        result = CliRunner().invoke(
            main,
            ["edit", method, str(tmp_path / "in.png"), "-o", str(out), "--model", str(xl_folder),
             "--dtype", "bfloat16", "--no-progress", *args],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        with Image.open(out) as img:
            assert img.size == (70, 45)
        assert read_params(out)["model"] == "model"  # the folder's name, not its path
