"""Samplers: DDIM decoding with a background to follow (docs/diffedit.md, step 3) and DDPM sampling
with stored noise maps (docs/ledits.md, step 1), as k-diffusion shapes them: a module-level
function over a noise function, a schedule, a start latent and explicit state; nothing kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from retouch.schedule import Schedule, pairs

Progress = Callable[[int, int], None] | None
EpsT = Callable[[torch.Tensor, int], torch.Tensor]
GuidedEps = Callable[[torch.Tensor, int, object], tuple[torch.Tensor, object]]


def ddim_sample(
    eps_fn: EpsT,
    schedule: Schedule,
    x: torch.Tensor,
    timesteps: list[int],
    background: dict[int, torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
    progress: Progress = None,
    solver: str = "ddim",
) -> torch.Tensor:
    """DDIM decoding (DDIM paper, Eq. 12 with η = 0) from x [B, C, h, w] at timesteps[0] down to
    the clean level; with a mask [h, w] (or [B, 1, h, w]), after each step to level s the latent
    follows the background at the SAME level s: y ← M·y + (1−M)·x_s (DiffEdit, §3.2). The last
    level is -1, whose background is the clean x0. background: {level: [B, C, h, w]}.
    solver "dpmsolver++": the same ODE with DPM-Solver++(2M) steps (Schedule.dpmpp_2m)."""
    prev = None
    for i, (t, t_next) in enumerate(pairs(timesteps)):
        if solver == "ddim":
            x = schedule.ddim_step(x, eps_fn(x, t), t, t_next)
        else:
            x, _, prev = schedule.dpmpp_2m(x, eps_fn(x, t), t, t_next, prev)
        if mask is not None:
            x = mask * x + (1 - mask) * background[t_next]
        if progress:
            progress(i + 1, len(timesteps))
    return x


def ddpm_sample(
    guided: GuidedEps,
    schedule: Schedule,
    x: torch.Tensor,
    timesteps: list[int],
    zs: torch.Tensor,
    state,
    pin: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    progress: Progress = None,
    solver: str = "ddpm",
) -> torch.Tensor:
    """DDPM sampling with given noise maps (Huberman-Spiegelglas et al. 2024, Eq. 5):
    x_{t_next} = μ_t(x_t, ε̃) + σ_t·z_t, from x [B, C, h, w] at timesteps[0] to the clean level.

    guided(x, t, state) → (ε̃, state) is the guided noise function with its explicit state (SEGA's
    momentum); zs [K, B, C, h, w] (or [K, C, h, w] for B = 1) one map per step. With a mask
    [h, w] (or [B, 1, h, w]; or mask(state) giving one after each step), latents outside it are
    pinned to the trajectory pin [K+1, B, C, h, w] (pin[i+1] at the level step i reaches). solver
    "dpmsolver++": μ_t, σ_t of DPM-Solver++(2M) SDE steps (docs/ledits.md, DPM-Solver++), for
    inversions made with it. Returns x0."""
    prev = None
    for i, (t, t_next) in enumerate(pairs(timesteps)):
        eps, state = guided(x, t, state)
        if solver == "ddpm":
            mu, sigma = schedule.ddpm_mean_sigma(x, eps, t, t_next)
        else:
            mu, sigma, prev = schedule.dpmpp_2m(x, eps, t, t_next, prev, sde=True)
        x = mu + sigma * _at(zs, i, x)
        if mask is not None:
            m = mask(state) if callable(mask) else mask
            x = m * x + (1 - m) * _at(pin, i + 1, x)
        if progress:
            progress(i + 1, len(timesteps))
    return x


def _at(maps: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
    """Step i's map shaped like x [B, C, h, w]: maps is [K, B, C, h, w], or [K, C, h, w] (B = 1)."""
    return maps[i] if maps.dim() == x.dim() + 1 else maps[i : i + 1]
