"""The shipped flow model (a mini Stable Diffusion 3 trained on ShapesWorld): diffusers' own
StableDiffusion3Pipeline loads and samples it, and retouch's flow conditioning and velocity give that
pipeline's result; its folder holds only safetensors, within 30 MB."""

from __future__ import annotations

import pytest
import torch

import retouch
from retouch.models import SHIPPED_SD3


@pytest.fixture(scope="module")
def sd3():
    return retouch.load("shapes-sd3", device="cpu")


def test_the_shipped_flow_model_is_safetensors_within_30_mb():
    files = [p for p in SHIPPED_SD3.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20


def test_diffusers_sd3_pipeline_samples_it_as_retouch_does(sd3):
    from diffusers import StableDiffusion3Pipeline

    from retouch.denoiser import EvalCounter, cfg
    from retouch.flows import euler, levels, velocity_fn
    from retouch.text import encode_text

    pipe = StableDiffusion3Pipeline.from_pretrained(SHIPPED_SD3, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    caption = "a red circle on a white background"
    out = pipe(caption, height=64, width=64, num_inference_steps=6, guidance_scale=5.0, latents=noise,
               output_type="latent").images  # fmt: skip
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()
    v_fn = velocity_fn(sd3, EvalCounter())
    uncond, cond = encode_text(sd3, ["", caption]).split(1)
    x, ts = noise.clone(), levels(sd3.scheduler, 6)
    for t, s in zip(ts, ts[1:]):
        v_u, v_c = v_fn(torch.cat([x, x]), t, torch.cat([uncond, cond])).chunk(2)
        x = euler(x, cfg(v_u, v_c, 5.0), t, s)
    assert (x - out).abs().max().item() <= 1e-4


def test_every_method_edits_with_the_shipped_flow_model(sd3):
    from retouch.shapes.world import HELD_OUT_SEED, render, sample_scene

    img = render(sample_scene(HELD_OUT_SEED + 7))
    a = retouch.flowedit(
        sd3, img, "", "a green circle on a white background", num_inference_steps=10, n_max=7
    )
    b = retouch.diffedit(sd3, img, query="a green circle", num_inference_steps=10)
    c = retouch.ledits(sd3, img, add=["green circle"], num_inference_steps=10, skip=0.2)
    for r in (a, b, c):
        assert r.image.size == (64, 64) and torch.isfinite(r.latents).all()
    assert sd3.family == "sd3" and a.unet_evals == 4 * 7


def test_load_is_annotated_with_both_bundles(sd3):
    import typing

    from retouch.flows import FlowBundle
    from retouch.types import ModelBundle

    assert isinstance(sd3, FlowBundle)
    assert set(typing.get_args(typing.get_type_hints(retouch.load)["return"])) == {ModelBundle, FlowBundle}


def test_the_command_line_runs_flowedit_on_the_shipped_flow_model(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from retouch.files import read_params
    from retouch.main import main
    from retouch.shapes.world import HELD_OUT_SEED, render, sample_scene

    src = tmp_path / "in.png"
    Image.fromarray(render(sample_scene(HELD_OUT_SEED + 3))).save(src)
    args = [
        "edit",
        "flowedit",
        str(src),
        "--model",
        "shapes-sd3",
        "--target",
        "a blue square on a white background",
    ]
    ok = CliRunner().invoke(
        main, [*args, "-o", str(tmp_path / "a.png"), "--num-inference-steps", "6", "--n-max", "4"]
    )
    assert ok.exit_code == 0, ok.output
    assert "16 transformer evaluations" in ok.stdout and "UNet" not in ok.stdout, ok.stdout
    with Image.open(tmp_path / "a.png") as out:
        assert out.size == (64, 64)
    bad = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "b.png"), "--n-max", "99"])
    assert bad.exit_code == 2 and "n_max" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b.png").exists()
    plain = ["edit", "flowedit", str(src), "--target", "a blue square", "--num-inference-steps", "6"]
    default = CliRunner().invoke(main, [*plain, "--n-max", "4", "-o", str(tmp_path / "c.png")])
    assert default.exit_code == 0, default.output  # no --model: the shipped flow model
    same = (read_params(tmp_path / p)["fingerprint"] for p in ("a.png", "c.png"))
    assert next(same) == next(same) and read_params(tmp_path / "a.png")["family"] == "sd3"
    on_sd = CliRunner().invoke(main, [*plain, "--model", "shapes-sd", "-o", str(tmp_path / "d.png")])
    assert on_sd.exit_code == 2 and "flow model" in on_sd.stderr and "shapes-sd3" in on_sd.stderr
    assert len(on_sd.stderr.strip().splitlines()) == 1 and not (tmp_path / "d.png").exists()
