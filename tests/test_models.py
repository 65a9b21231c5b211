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
