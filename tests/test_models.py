"""retouch.models: the fingerprint sees every weight; outputs record a model's name, not its path."""

from __future__ import annotations

import pytest
import torch

from retouch.models import fingerprint, model_name
from retouch.shapes.architecture import build_components


def test_fingerprint_changes_with_any_one_weight(tmp_path):
    parts = build_components("tiny", tokenizer_dir=tmp_path / "tok")
    args = (parts["vae"], parts["text_encoder"], parts["unet"], parts["scheduler"])
    before = fingerprint(*args)
    assert fingerprint(*args) == before  # deterministic
    name, weight = next((n, p) for n, p in parts["unet"].named_parameters() if "attn2.to_k" in n)
    with torch.no_grad():
        weight[0, 0] += 1e-3  # as merging a LoRA into one attention projection would
    assert fingerprint(*args) != before, name


def test_model_name_is_the_folder_name_or_the_hub_id(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert model_name(str(folder)) == "my-model"
    assert model_name("stabilityai/stable-diffusion-2-1") == "stabilityai/stable-diffusion-2-1"


@pytest.mark.slow
def test_the_compiled_path_gives_the_same_images(tiny_eps):
    """retouch.load(compile=True) / models.compiled: torch.compile of the UNet. Same latents to
    COMPILED_TOL (fused kernels round differently), same pixels to one level of 255."""
    import numpy as np

    import retouch
    from retouch.models import compiled

    COMPILED_TOL = 1e-4
    img = np.zeros((64, 64, 3), np.uint8)
    img[16:48, 16:48] = (200, 30, 30)
    kw = dict(query="a green square", reference="a red square", mode="no_mask", num_inference_steps=4)
    plain = retouch.diffedit(tiny_eps, img, **kw)
    fast = compiled(tiny_eps)
    assert fast.fingerprint == tiny_eps.fingerprint and fast.unet is not tiny_eps.unet
    out = retouch.diffedit(fast, img, **kw)
    assert float((out.latents - plain.latents).abs().max()) <= COMPILED_TOL
    assert np.abs(np.asarray(out.image, int) - np.asarray(plain.image, int)).max() <= 1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_stable_diffusion_is_finite_and_exact(prediction_type, dtype, tmp_path):
    """SD 1.x/2.x in half precision (UNet, text encoder; the VAE in float32 where its config asks):
    LEDITS with no edit reconstructs to HALF_TOL, both methods give finite images of the input's size."""
    import numpy as np

    import retouch
    from retouch.models import from_components
    from retouch.shapes.architecture import build_components

    HALF_TOL = 2e-2
    parts = build_components("tiny", prediction_type=prediction_type, tokenizer_dir=tmp_path / "tok")
    model = from_components(**parts, model_id="tiny-half", device="cpu", dtype=dtype)
    assert model.unet.dtype == getattr(torch, dtype)
    img = (np.random.default_rng(1).random((45, 70, 3)) * 255).astype(np.uint8)
    steps = dict(num_inference_steps=12, skip=2)
    inv = retouch.invert(model, img, source="a red circle", **steps)
    same = retouch.ledits(
        model, inv, prompt="a red circle", target_guidance_scale=inv.source_guidance_scale, **steps
    )
    assert float((same.latents - inv.x0).abs().max()) < HALF_TOL
    out = retouch.ledits(model, inv, add=["green circle"], remove=["red circle"], **steps)
    d = retouch.diffedit(model, img, "a green circle", "a red circle", num_inference_steps=6, mask_samples=2)
    for r in (out, d):
        assert torch.isfinite(r.latents).all() and r.image.size == (70, 45)


def test_text_embeddings_are_kept_bounded_and_do_not_depend_on_their_batch(tiny_eps):
    from retouch.text import CACHED_TEXTS, encode_text

    tiny_eps.text_cache.clear()
    alone = encode_text(tiny_eps, ["a red circle"])
    calls = []
    forward = tiny_eps.text_encoder.forward
    tiny_eps.text_encoder.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    try:
        both = encode_text(tiny_eps, ["a blue square", "a red circle"])
        assert len(calls) == 1  # the cached text is not encoded again
        assert torch.equal(both[1:], alone)
        for i in range(CACHED_TEXTS + 10):
            encode_text(tiny_eps, [f"a red circle {i}"])
        assert len(tiny_eps.text_cache) == CACHED_TEXTS
    finally:
        del tiny_eps.text_encoder.forward
    assert torch.equal(encode_text(tiny_eps, ["a red circle"]), alone)  # evicted, encoded again, the same


def test_a_saved_config_names_the_size_it_was_built_as():
    """size_of reads back which of SIZES a UNet and text encoder config were built as (what training
    checks a model it starts from against); a config of no size is None."""
    from retouch.shapes.architecture import SIZES, size_of

    for name in SIZES:
        parts = build_components(name, seed=0)
        unet, text = dict(parts["unet"].config), parts["text_encoder"].config.to_dict()
        assert size_of(unet, text) == name
        assert size_of({**unet, "layers_per_block": 3}, text) is None
        assert size_of(unet, {**text, "num_hidden_layers": 7}) is None
    assert size_of(unet, text, ["mini"]) is None  # mini-deep-text's, not among the names asked
