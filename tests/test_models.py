"""retouch.models: the fingerprint sees every weight; outputs record a model's name, not its path."""

from __future__ import annotations

import torch

from retouch.architecture import build_components
from retouch.models import fingerprint, model_name


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
