"""Inversions: DDIM encoding (docs/diffedit.md, step 2) and edit-friendly DDPM inversion (docs/ledits.md).

Loops call only eps_fn(x_t, t) (guidance already folded in by the caller) and the schedule's step
math. Each returns values; nothing is kept between calls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from retouch.errors import SettingError
from retouch.schedule import Schedule, pairs

Progress = Callable[[int, int], None] | None
EpsT = Callable[[torch.Tensor, int], torch.Tensor]


def ddim_encode(
    eps_fn: EpsT,
    schedule: Schedule,
    x0: torch.Tensor,
    timesteps: list[int],
    progress: Progress = None,
    solver: str = "ddim",
) -> list[torch.Tensor]:
    """DDIM inversion of x0 up through `timesteps` (ascending, least noisy first).

    Each step goes from the current level to the next noisier t, with ε evaluated at (x, t) as
    in DDIM inversion (DDIM paper, Eq. 13 run backwards). x0 [B, C, h, w] sits at level -1.
    solver "dpmsolver++": the same ODE run with DPM-Solver++(2M) steps (Schedule.dpmpp_2m).
    Returns [x0, x_{t_1}, ..., x_{t_k}]: k+1 latents [B, C, h, w].
    """
    latents = [x0]
    x, level, prev = x0, -1, None
    for i, t in enumerate(timesteps):
        eps = eps_fn(x, t)
        if solver == "ddim":
            x = schedule.ddim_step(x, eps, level, t)
        else:
            x, _, prev = schedule.dpmpp_2m(x, eps, level, t, prev)
        latents.append(x)
        level = t
        if progress:
            progress(i + 1, len(timesteps))
    return latents


def ddpm_invert(
    eps_fn: EpsT,
    schedule: Schedule,
    x0: torch.Tensor,
    timesteps: list[int],
    generator: torch.Generator,
    progress: Progress = None,
    solver: str = "ddpm",
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024, Alg. 1).

    timesteps: the steps editing will run, noisiest first. x0 [1, C, h, w].
    1. x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε̃_t with an INDEPENDENT ε̃_t per timestep;
    2. downward: μ_t from ε(x_t); z_t = (x_next − μ_t)/σ_t; x_next ← μ_t + σ_t z_t (so the next
       network call sees exactly what the sampler will produce);
    3. the last map (to the clean level, where x_next = x0) is kept too.
    solver "dpmsolver++": μ_t, σ_t of DPM-Solver++(2M) SDE steps (LEDITS++;
    docs/ledits.md, DPM-Solver++), whose multistep memory is built from the replaced latents, the
    ones the sampler will see.
    Returns (trajectory [x_{t_1}, ..., x_{t_k}, x0] of k+1 latents, z maps [k, C, h, w]).
    """
    noisy = [
        schedule.add_noise(x0, torch.randn(x0.shape, generator=generator, device=x0.device), t)
        for t in timesteps
    ] + [x0]
    trajectory, zs, prev = [noisy[0]], [], None
    for i, (t, t_next) in enumerate(pairs(timesteps)):
        x_t = trajectory[-1]
        if solver == "ddpm":
            mu, sigma = schedule.ddpm_mean_sigma(x_t, eps_fn(x_t, t), t, t_next)
        else:
            mu, sigma, prev = schedule.dpmpp_2m(x_t, eps_fn(x_t, t), t, t_next, prev, sde=True)
        # a step to a clean level of σ = 0 (a schedule ending at ᾱ = 1) is deterministic: no map
        z = (noisy[i + 1] - mu) / sigma if sigma > 0 else torch.zeros_like(mu)
        zs.append(z)
        trajectory.append(x0 if t_next < 0 else mu + sigma * z)
        if progress:
            progress(i + 1, len(timesteps))
    return trajectory, torch.cat(zs)


def check_inversion(model, inv) -> None:
    """An Inversion against the model, before any model work (SettingError): its family and
    weights, its latents' shape for its image size, that size within the pixel budget, and its
    timesteps: the scheduler's for its num_inference_steps, after its skip."""
    if inv.family != model.family:
        raise SettingError(f"inversion was made with an {inv.family} model, this is {model.family}")
    if inv.fingerprint != model.fingerprint:
        raise SettingError(f"inversion was made with another model ({inv.model_id})")
    m, f = model.size_multiple, model.vae_scale_factor
    if inv.height * inv.width > model.pixel_budget:
        raise SettingError(
            f"inversion is of a {inv.width}x{inv.height} image, over this model's budget of "
            f"{model.pixel_budget} pixels"
        )
    latent = (model.latent_channels, -(-inv.height // m) * m // f, -(-inv.width // m) * m // f)
    if tuple(inv.x0.shape[1:]) != latent:
        raise SettingError(
            f"inversion latents are {list(inv.x0.shape[1:])}; a {inv.width}x{inv.height} "
            f"image on this model has {list(latent)}"
        )
    expected = Schedule.from_scheduler(model.scheduler).timesteps(inv.num_inference_steps)[inv.skip :]
    if list(inv.timesteps) != expected:
        raise SettingError(
            f"inversion timesteps {_short(inv.timesteps)} are not this model's scheduler's for "
            f"num_inference_steps={inv.num_inference_steps}, skip={inv.skip} ({_short(expected)})"
        )


def _short(ts) -> str:
    ts = list(ts)
    return str(ts) if len(ts) <= 6 else f"[{ts[0]}, {ts[1]}, …, {ts[-1]}] ({len(ts)})"
