"""Shared fixtures: tiny random Stable Diffusion models built in code, and the shipped model."""

from __future__ import annotations

import os

import pytest
import torch

# two cores: one torch thread in each of pytest-xdist's two workers (the README's command), else two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def make_tiny(prediction_type: str, tmp_path_factory):
    from retouch.models import from_components
    from retouch.shapes.architecture import build_components

    tok_dir = tmp_path_factory.mktemp(f"tok-{prediction_type}")
    parts = build_components("tiny", prediction_type=prediction_type, tokenizer_dir=tok_dir, seed=0)
    return from_components(**parts, model_id=f"tiny-{prediction_type}")


@pytest.fixture(scope="session")
def tiny_eps(tmp_path_factory):
    """A tiny random epsilon-prediction model (real diffusers/transformers classes)."""
    return make_tiny("epsilon", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_v(tmp_path_factory):
    """A tiny random v-prediction model."""
    return make_tiny("v_prediction", tmp_path_factory)


@pytest.fixture(scope="session", params=["epsilon", "v_prediction"])
def tiny(request, tmp_path_factory):
    return make_tiny(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def mini_model(tmp_path_factory):
    """A model folder of the "mini" architecture (one layer a UNet block, two text layers: what the
    larger ones grow from), random weights but the shipped autoencoder and vocabulary."""
    from safetensors.torch import load_file

    from retouch.models import SHIPPED
    from retouch.shapes.architecture import build_components, save_pipeline

    folder = tmp_path_factory.mktemp("mini")
    parts = build_components("mini", tokenizer_dir=folder / "tokenizer", seed=0)
    parts["vae"].load_state_dict(load_file(SHIPPED / "vae" / "diffusion_pytorch_model.safetensors"))
    return save_pipeline(folder / "model", parts)


@pytest.fixture(scope="session")
def shipped():
    """The shipped ShapesWorld model, on the CPU in float32."""
    import retouch

    return retouch.load(device="cpu")


@pytest.fixture()
def scene_image():
    """A held-out ShapesWorld render (uint8 (64, 64, 3)) and its scene."""
    from retouch.shapes.world import HELD_OUT_SEED, render, sample_scene

    scene = sample_scene(HELD_OUT_SEED + 7, n_objects=1)
    return render(scene), scene
