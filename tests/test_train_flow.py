"""The flow training's latent cache: SD3's shift and scale, measured once or kept from --init's model."""

import pytest
import torch
from safetensors.torch import load_file

from retouch.shapes.train import TrainConfig
from retouch.shapes.train_flow import _flow_latents, _save_cache


def _cache(tmp_path, z, shift, scale):
    path = tmp_path / f"latents_{z.shape[0]}.safetensors"
    seeds = torch.arange(z.shape[0]) * 7 + 3
    _save_cache({"latents": (z - shift) * scale, "seeds": seeds, "shift": torch.tensor(shift),
                 "scale": torch.tensor(scale)}, path)  # fmt: skip
    return path


def test_a_cache_of_another_normalisation_is_renormalised_to_the_models_and_rewritten(tmp_path):
    """Going on from a model whose shift and scale differ from the cache's: the same latents, normalised
    the model's way, returned and written back; read again, the cache gives them unchanged."""
    torch.manual_seed(0)
    z = torch.randn(8, 4, 16, 16) * 2.5 + 0.4  # the autoencoder's latent means
    path = _cache(tmp_path, z, 0.4, 0.4)
    cfg = TrainConfig(dataset_size=8)
    latents, seeds, shift, scale = _flow_latents(tmp_path, None, cfg, norm=(0.61, 0.25))
    assert (shift, scale) == (0.61, 0.25)
    assert torch.allclose(latents, (z - 0.61) * 0.25, atol=1e-5)
    assert torch.equal(seeds, torch.arange(8) * 7 + 3)
    d = load_file(path)
    assert float(d["shift"]) == pytest.approx(0.61) and float(d["scale"]) == pytest.approx(0.25)
    assert torch.allclose(d["latents"], latents) and not path.with_suffix(".tmp").exists()
    again = _flow_latents(tmp_path, None, cfg, norm=(float(d["shift"]), float(d["scale"])))
    assert torch.equal(again[0], d["latents"])


def test_a_cache_is_read_as_it_is_when_no_model_sets_the_normalisation(tmp_path):
    """Without --init (norm None) a resumed run keeps its cache's own shift and scale: nothing is
    measured again or rewritten (the vae is never asked for)."""
    z = torch.linspace(-3, 3, 8 * 4 * 16 * 16).reshape(8, 4, 16, 16)
    path = _cache(tmp_path, z, 0.1, 0.5)
    before = path.stat().st_mtime_ns
    latents, _, shift, scale = _flow_latents(tmp_path, None, TrainConfig(dataset_size=8))
    assert (shift, scale) == pytest.approx((0.1, 0.5)) and path.stat().st_mtime_ns == before
    assert torch.allclose(latents, (z - 0.1) * 0.5, atol=1e-6)
