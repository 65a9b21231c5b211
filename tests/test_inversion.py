"""Edit-friendly DDPM inversion (docs/ledits.md, step 1): the schedule math against diffusers' schedulers, the
core invariant (invert, then denoise with the same text and scale → x0 to float rounding) with an
analytic noise predictor, tiny random ε- and v-prediction models and the shipped model; the
noise's independence, the number of steps inverted, seeding, and saving/loading."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

import retouch
from retouch.denoiser import EvalCounter, guided_eps, unet_calls, unet_eps
from retouch.errors import OutputError
from retouch.guidance import SegaState, sega_eps
from retouch.inversion import ddpm_invert
from retouch.sampling import ddpm_sample
from retouch.schedule import Schedule, pairs
from retouch.shapes.architecture import SD1_SCHEDULER
from retouch.text import encode_text
from retouch.types import Inversion

torch.set_num_threads(1)

CAPTION = "a red circle on a white background"
TOL = 1e-4  # "to float rounding", on latents of magnitude ~1


@pytest.fixture(scope="module", params=["tiny_eps", "tiny_v"])
def tiny_model(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def shipped_model(request):
    return request.getfixturevalue("shipped")


def _schedule(prediction_type: str) -> Schedule:
    from diffusers import DDIMScheduler

    return Schedule.from_scheduler(DDIMScheduler(**{**SD1_SCHEDULER, "prediction_type": prediction_type}))


# --- schedule math against diffusers -------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("n", [10, 50])
def test_steps_match_diffusers_ddim(prediction_type, n):
    """ddim_step ≡ DDIMScheduler.step(η=0); ddpm_mean_sigma ≡ DDIMScheduler.step(η=1, variance_noise=z)."""
    from diffusers import DDIMScheduler

    schedule = _schedule(prediction_type)
    ref = DDIMScheduler.from_config(schedule.scheduler.config)
    ref.set_timesteps(n)
    assert [int(t) for t in ref.timesteps] == schedule.timesteps(n)
    g = torch.Generator().manual_seed(0)
    for t, t_next in pairs(schedule.timesteps(n)):
        x, out, z = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
        eps = schedule.to_eps(out, x, t)
        want = ref.step(out, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(schedule.ddim_step(x, eps, t, t_next), want, atol=1e-5, rtol=1e-5)
        mu, sigma = schedule.ddpm_mean_sigma(x, eps, t, t_next)
        want = ref.step(out, t, x, eta=1.0, variance_noise=z).prev_sample
        torch.testing.assert_close(mu + sigma * z, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_posterior_matches_diffusers_ddpm(prediction_type):
    """The η=1 DDIM step is DDPM's posterior (DDPM Eq. 7); diffusers' DDPM ends on ᾱ=1 where DDIM
    (and we) end on the final alpha, so the last step is left out."""
    from diffusers import DDPMScheduler

    schedule = _schedule(prediction_type)
    ref = DDPMScheduler.from_config(schedule.scheduler.config)
    ref.set_timesteps(20)
    assert [int(t) for t in ref.timesteps] == schedule.timesteps(20)
    g = torch.Generator().manual_seed(1)
    for t, t_next in pairs(schedule.timesteps(20))[:-1]:
        x, out = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
        want = ref.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))
        mu, sigma = schedule.ddpm_mean_sigma(x, schedule.to_eps(out, x, t), t, t_next)
        torch.testing.assert_close(mu + sigma * z, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_dpmsolver_2m_steps_match_diffusers(prediction_type, algorithm):
    """Schedule.dpmpp_2m ≡ DPMSolverMultistepScheduler (solver_order 2, midpoint, our timesteps,
    ending at the final alpha's level as `final_sigmas_type="sigma_min"` does): a whole trajectory
    under one noise function, first step first order, the rest second order."""
    from diffusers import DPMSolverMultistepScheduler

    schedule = _schedule(prediction_type)
    timesteps = schedule.timesteps(20)
    ref = DPMSolverMultistepScheduler.from_config(
        schedule.scheduler.config,
        algorithm_type=algorithm,
        solver_order=2,
        lower_order_final=False,
        final_sigmas_type="sigma_min",
    )
    with warnings.catch_warnings():  # numpy 2 on diffusers' array of a tensor
        warnings.simplefilter("ignore", DeprecationWarning)
        ref.set_timesteps(timesteps=timesteps)
    assert [int(t) for t in ref.timesteps] == timesteps
    g = torch.Generator().manual_seed(2)
    x = ours = torch.randn(1, 4, 8, 8, generator=g)
    prev, sde = None, algorithm.startswith("sde")
    for t, t_next in pairs(timesteps):
        out, z = analytic_net(ours, t, torch.zeros(1, 1, 1)), torch.randn(1, 4, 8, 8, generator=g)
        x = ref.step(analytic_net(x, t, torch.zeros(1, 1, 1)), t, x, variance_noise=z).prev_sample
        mu, sigma, prev = schedule.dpmpp_2m(ours, schedule.to_eps(out, ours, t), t, t_next, prev, sde)
        ours = mu + sigma * z
        assert (sigma > 0) == sde
        torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_first_order_dpmsolver_steps_are_ddim_and_ddpm():
    schedule = _schedule("epsilon")
    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for t, t_next in [(901, 881), (21, 1), (1, -1), (-1, 21), (21, 41)]:  # down, to clean, and up
        ode, sigma, _ = schedule.dpmpp_2m(x, eps, t, t_next)
        torch.testing.assert_close(ode, schedule.ddim_step(x, eps, t, t_next), atol=1e-5, rtol=1e-5)
        if t_next < t or t_next < 0:
            mu, s = schedule.ddpm_mean_sigma(x, eps, t, t_next)
            sde, sigma, _ = schedule.dpmpp_2m(x, eps, t, t_next, sde=True)
            torch.testing.assert_close(sde, mu, atol=1e-5, rtol=1e-5)
            assert sigma == pytest.approx(s, rel=1e-9)


# --- the core invariant ---------------------------------------------------------------------------


def _inversion(x0, trajectory, zs, timesteps, n, skip, source="", scale=1.0) -> Inversion:
    return Inversion(
        x0,
        torch.cat(trajectory),
        zs,
        tuple(timesteps),
        n,
        skip,
        source,
        scale,
        "analytic",
        "analytic",
        "",
        8 * x0.shape[-2],
        8 * x0.shape[-1],
        0,
        0,
    )


def analytic_net(x: torch.Tensor, t: int, c: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for the UNet's output: x [B, C, h, w], c [B, L, D] → [B, C, h, w]."""
    return 0.1 * x + (t / 1000) * torch.sin(x) + c.mean(dim=(1, 2)).view(-1, 1, 1, 1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("n,skip", [(10, 0), (10, 3), (50, 10), (100, 36)])
@pytest.mark.parametrize("with_source", [False, True])
@pytest.mark.parametrize("solver", ["ddpm", "dpmsolver++"])
def test_invariant_with_an_analytic_noise_predictor(
    prediction_type, n, skip, with_source, solver, record_property
):
    schedule = _schedule(prediction_type)
    g = torch.Generator().manual_seed(n + skip)
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    uncond, cond = torch.randn(1, 6, 5, generator=g), torch.randn(1, 6, 5, generator=g) + 0.5
    timesteps = schedule.timesteps(n)[skip:]

    def analytic_eps(x, t, c):  # read as the model's prediction type, as unet_eps does
        return schedule.to_eps(analytic_net(x, t, c), x, t)

    eps = (
        guided_eps(analytic_eps, cond, uncond, 3.5)
        if with_source
        else guided_eps(analytic_eps, uncond, None, 1)
    )
    trajectory, zs = ddpm_invert(eps, schedule, x0, timesteps, g, solver=solver)
    inv = replace(_inversion(x0, trajectory, zs, timesteps, n, skip), solver=solver)
    target = cond if with_source else None
    out = _sample(analytic_eps, schedule, inv, uncond, target, 3.5)
    err = float((out - x0).abs().max())
    record_property("max_abs_error", err)
    assert err < 1e-5
    if len(timesteps) > 2:  # the other sampler does not reconstruct: the solver is the second order's
        other = replace(inv, solver="ddpm" if solver == "dpmsolver++" else "dpmsolver++")
        assert float((_sample(analytic_eps, schedule, other, uncond, target, 3.5) - x0).abs().max()) > 1e-3


def _reconstruct(model, inv: Inversion) -> torch.Tensor:
    """DDPM sampling with the inversion's own text and scale and no concepts: [1, C, h, w]."""
    schedule = Schedule.from_scheduler(model.scheduler)
    uncond, cond = encode_text(model, ["", inv.source]).split(1)
    target = cond if inv.source else None
    return _sample(
        unet_eps(model, schedule, EvalCounter()), schedule, inv, uncond, target, inv.source_guidance_scale
    )


def _sample(eps_fn, schedule, inv: Inversion, uncond, target, scale) -> torch.Tensor:
    """DDPM sampling from the inversion with its z maps, CFG on `target` (None: ε(∅)), no concepts."""
    guided = sega_eps(eps_fn, uncond, [], [], target, scale)
    return ddpm_sample(
        guided, schedule, inv.trajectory[:1], list(inv.timesteps), inv.zs, SegaState(), solver=inv.solver
    )


def _check_invariant(model, image, n, skip, source, record_property, solver="ddpm") -> None:
    inv = retouch.invert(model, image, source=source, num_inference_steps=n, skip=skip, solver=solver)
    assert inv.solver == solver
    errs = [float((_reconstruct(model, inv) - inv.x0).abs().max())]
    if source:  # through the public API: the source as the target prompt, at the same scale
        out = retouch.ledits(
            model,
            inv,
            prompt=source,
            num_inference_steps=n,
            skip=skip,
            target_guidance_scale=inv.source_guidance_scale,
            solver=solver,
        )
        errs.append(float((out.latents - inv.x0).abs().max()))
    else:  # no concepts, no prompt: the reconstruction without running the sampler
        out = retouch.ledits(model, inv, num_inference_steps=n, skip=skip, solver=solver)
        assert out.message and torch.equal(out.latents, inv.x0) and out.unet_evals == 0
        # an edit whose base is ∅, through the sampler: a concept at scale 0 adds nothing, and
        # only the batch of the UNet call changes ([∅, e] instead of [∅]: float rounding)
        out = retouch.ledits(
            model, inv, add=["green circle"], edit_scale=0.0, num_inference_steps=n, skip=skip, solver=solver
        )
        errs.append(float((out.latents - inv.x0).abs().max()))
    record_property("max_abs_error", max(errs))
    record_property("max_abs_errors", repr(errs))
    assert max(errs) < TOL, errs


@pytest.mark.parametrize("n,skip", [(10, 0), (25, 5)])
@pytest.mark.parametrize("source", ["", CAPTION])
@pytest.mark.parametrize("solver", ["ddpm", "dpmsolver++"])
def test_invariant_tiny_models(tiny_model, scene_image, n, skip, source, solver, record_property):
    _check_invariant(tiny_model, scene_image[0], n, skip, source, record_property, solver)


@pytest.mark.parametrize("n,skip", [(10, 0), (50, 10)])
@pytest.mark.parametrize("source", ["", CAPTION])
@pytest.mark.parametrize("solver", ["ddpm", "dpmsolver++"])
def test_invariant_shipped_model(shipped_model, scene_image, n, skip, source, solver, record_property):
    from retouch.shapes.world import caption

    text = caption(scene_image[1]) if source else ""
    _check_invariant(shipped_model, scene_image[0], n, skip, text, record_property, solver)


# --- what is inverted, and with what noise --------------------------------------------------------


def test_each_timestep_has_its_own_noise(tiny_eps, scene_image):
    """x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε̃_t with an independent ε̃_t per step (docs/ledits.md, step 1): the top
    latent is exactly the seed's first draw, every later one its own next draw, and the draws are
    uncorrelated."""
    seed, n = 11, 12
    inv = retouch.invert(tiny_eps, scene_image[0], num_inference_steps=n, skip=0, seed=seed)
    schedule = Schedule.from_scheduler(tiny_eps.scheduler)
    g = torch.Generator().manual_seed(seed)
    draws = [torch.randn(inv.x0.shape, generator=g) for _ in inv.timesteps]
    assert torch.equal(inv.trajectory[:1], schedule.add_noise(inv.x0, draws[0], inv.timesteps[0]))
    noises = []
    for i, t in enumerate(inv.timesteps):
        a = schedule.alpha_bar(t)
        noises.append((inv.trajectory[i] - a**0.5 * inv.x0[0]) / (1 - a) ** 0.5)
        torch.testing.assert_close(noises[-1], draws[i][0], atol=1e-3, rtol=1e-3)
    flat = torch.stack([e.flatten() for e in noises])  # [K, C·h·w]
    corr = torch.corrcoef(flat) - torch.eye(len(noises))
    assert float(corr.abs().max()) < 0.1
    zs = inv.zs.flatten(1)
    assert all(float((zs[i] - zs[j]).abs().mean()) > 0.1 for i in range(n) for j in range(i))


@pytest.mark.parametrize("source,evals", [("", 64), (CAPTION, 128)])
def test_only_the_edited_steps_are_inverted(tiny_eps, scene_image, source, evals):
    with unet_calls(tiny_eps) as sizes:
        inv = retouch.invert(tiny_eps, scene_image[0], source=source)  # N=100, skip=36
    schedule = Schedule.from_scheduler(tiny_eps.scheduler)
    assert inv.timesteps == tuple(schedule.timesteps(100)[36:])
    assert inv.zs.shape[0] == 64 and inv.trajectory.shape[0] == 65
    assert sum(sizes) == inv.unet_evals == evals


def test_same_seed_same_inversion_other_seed_other_noise(tiny_eps, scene_image):
    kw = dict(num_inference_steps=10, skip=2)
    a = retouch.invert(tiny_eps, scene_image[0], seed=3, **kw)
    b = retouch.invert(tiny_eps, scene_image[0], seed=3, **kw)
    c = retouch.invert(tiny_eps, scene_image[0], seed=4, **kw)
    assert torch.equal(a.zs, b.zs) and torch.equal(a.trajectory, b.trajectory)
    assert float((a.zs - c.zs).abs().mean()) > 0.1


# --- saving and loading ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_inversion(tiny_eps):
    from retouch.shapes.world import render, sample_scene

    image = render(sample_scene(10_000_123, n_objects=2))
    return retouch.invert(tiny_eps, image, source=CAPTION, num_inference_steps=10, skip=2, seed=5)


def test_save_load_round_trip(tiny_eps, small_inversion, tmp_path):
    path = tmp_path / "inv.safetensors"
    small_inversion.save(path)
    loaded = Inversion.load(path, model=tiny_eps)
    for name in ("x0", "trajectory", "zs"):
        assert torch.equal(getattr(loaded, name), getattr(small_inversion, name))
    for name in Inversion._META:
        assert getattr(loaded, name) == getattr(small_inversion, name), name
    assert isinstance(loaded.timesteps, tuple)
    # the loaded inversion edits like the original
    kw = dict(add=["green circle"], num_inference_steps=10, skip=2)
    a = retouch.ledits(tiny_eps, small_inversion, **kw)
    b = retouch.ledits(tiny_eps, loaded, **kw)
    assert torch.equal(a.latents, b.latents)


def test_load_refuses_another_model(tiny_eps, tiny_v, small_inversion, tmp_path):
    path = tmp_path / "inv.safetensors"
    small_inversion.save(path)
    with pytest.raises(ValueError, match="another model"):
        Inversion.load(path, model=tiny_v)
    with pytest.raises(ValueError, match="another model"):
        retouch.ledits(tiny_v, Inversion.load(path), add=["green circle"], num_inference_steps=10, skip=2)
    with pytest.raises(ValueError, match="no such file"):
        Inversion.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a retouch inversion"):
        Inversion.load(tmp_path / "junk.safetensors")


def test_save_is_atomic(small_inversion, tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "inv.safetensors"
    small_inversion.save(path)
    before = path.read_bytes()

    def failing(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OutputError, match=r"cannot write .*inv\.safetensors: disk full"):
        small_inversion.save(path)
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inv.safetensors"]  # no partial file left


# --- one validation step: what a file says against what it holds and the model's schedule -----------------


def _rewritten(path, out, change, resign: bool = True):
    """A copy of the inversion file with change(meta, tensors) applied; resign: its checksum made
    again (an edit by someone who knows the format), else the old one kept."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from retouch.types import content_hash

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["retouch_inversion"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(meta, tensors)
    if resign:
        meta["content_hash"] = content_hash({k: v for k, v in meta.items() if k != "content_hash"}, tensors)
    save_file(tensors, out, metadata={"retouch_inversion": json.dumps(meta)})
    return out


def test_a_damaged_or_spliced_inversion_file_is_refused_as_such(tiny_eps, small_inversion, tmp_path):
    """Flipped data bytes, or one file's tensors under another's metadata: refused as damaged by the
    checksum written at save time, not reported later as an edit that overflowed."""
    from retouch.errors import InversionError

    path = tmp_path / "inv.safetensors"
    small_inversion.save(path)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x40  # a byte of the last tensor's data
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(InversionError, match="checksum"):
        Inversion.load(tmp_path / "flipped.safetensors", model=tiny_eps)
    other = retouch.invert(tiny_eps, np.full((64, 64, 3), 200, np.uint8), num_inference_steps=10, skip=2)
    other.save(tmp_path / "other.safetensors")

    def splice(meta, tensors):
        import json

        from safetensors import safe_open

        with safe_open(str(tmp_path / "other.safetensors"), framework="pt") as f:
            meta.clear()
            meta.update(json.loads(f.metadata()["retouch_inversion"]))

    spliced = _rewritten(path, tmp_path / "spliced.safetensors", splice, resign=False)
    with pytest.raises(InversionError, match="checksum"):
        Inversion.load(spliced)


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("a timestep of -5", lambda m, t: m.update(timesteps=[*m["timesteps"][:-1], -5]), "timesteps"),
        ("a timestep of 9701", lambda m, t: m.update(timesteps=[9701, *m["timesteps"][1:]]), "timesteps"),
        ("steps that disagree", lambda m, t: m.update(num_inference_steps=12), "timesteps"),
        ("a skip that disagrees", lambda m, t: m.update(skip=3), "timesteps"),
        ("height 60000", lambda m, t: m.update(height=60000, width=60000), "height"),
        ("float16 tensors", lambda m, t: t.update({k: v.half() for k, v in t.items()}), "float32"),
    ],
)
def test_an_inversion_is_checked_against_its_tensors_and_the_schedule(
    tiny_eps, small_inversion, tmp_path, name, change, message
):
    """Every field against the tensors and the model's schedule (the scheduler's timesteps for the
    recorded steps and skip), before any model work, even when the checksum was made again."""
    from retouch.errors import InputError

    path = tmp_path / "inv.safetensors"
    small_inversion.save(path)
    bad = _rewritten(path, tmp_path / "bad.safetensors", change)
    with pytest.raises(InputError, match=message):
        retouch.ledits(tiny_eps, Inversion.load(bad, model=tiny_eps), add=["green circle"])


def test_a_fifo_given_as_an_inversion_is_refused_without_opening_it(tmp_path):
    """(In a child process: open() of a FIFO blocks the whole interpreter.)"""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "inv.safetensors"
    os.mkfifo(fifo)
    code = "import sys; from retouch.types import Inversion; Inversion.load(sys.argv[1])"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("Inversion.load blocked on a FIFO")
    assert done.returncode != 0 and "not a regular file" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("n", [1000, 999])
def test_a_thousand_steps_run_or_are_refused_before_any_model_work(tiny_eps, n):
    """The scheduler's leading spacing + offset puts N=1000's first timestep at 1000, past the
    schedule (0..999): refused with the bound, before the UNet runs; 999 runs."""
    from retouch.errors import SettingError
    from retouch.schedule import Schedule

    schedule = Schedule.from_scheduler(tiny_eps.scheduler)
    if n == 999:
        assert max(schedule.timesteps(n)) <= 999
        return
    with pytest.raises(SettingError, match="at most 999"):
        schedule.timesteps(n)
    with pytest.raises(SettingError, match="at most 999"):
        retouch.invert(tiny_eps, np.full((64, 64, 3), 200, np.uint8), num_inference_steps=n, skip=0)


def test_the_number_of_concepts_is_bounded(tiny_eps):
    from retouch.errors import SettingError
    from retouch.methods.ledits import MAX_CONCEPTS

    image = np.full((64, 64, 3), 200, np.uint8)
    with pytest.raises(SettingError, match=f"at most {MAX_CONCEPTS} concepts"):
        retouch.ledits(tiny_eps, image, add=["a circle"] * (MAX_CONCEPTS + 1))


def test_no_model_or_no_image_is_an_input_error(tiny_eps):
    from retouch.errors import InputError

    image = np.full((64, 64, 3), 200, np.uint8)
    with pytest.raises(InputError, match="model must be a ModelBundle"):
        retouch.diffedit(None, image, "a green circle")
    with pytest.raises(InputError, match="model must be a ModelBundle"):
        retouch.ledits(None, image, add=["a green circle"])
    with pytest.raises(InputError, match="model must be a ModelBundle"):
        retouch.invert("model", image)
    with pytest.raises(InputError, match="image"):
        retouch.diffedit(tiny_eps, None, "a green circle")


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_an_animated_image_is_refused_in_one_line(tmp_path, fmt):
    from PIL import Image

    from retouch.errors import ImageError
    from retouch.latents import load_image

    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with pytest.raises(ImageError, match="animated"):
        load_image(path)
    frames[0].save(tmp_path / f"still.{fmt.lower()}", format=fmt)
    assert load_image(tmp_path / f"still.{fmt.lower()}").size == (64, 64)


def test_an_inversion_larger_than_its_image_is_refused_before_any_resize(small_inversion, monkeypatch):
    from dataclasses import replace

    from PIL import Image

    from retouch.errors import InversionError
    from retouch.methods.ledits import check_inversion_image

    image = Image.new("RGB", (small_inversion.width, small_inversion.height))
    resized = []
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: resized.append(a))
    with pytest.raises(InversionError, match="larger than"):
        check_inversion_image(replace(small_inversion, height=60000, width=60000), image)
    assert not resized
    with pytest.raises(InversionError, match="another image"):
        check_inversion_image(small_inversion, image)
