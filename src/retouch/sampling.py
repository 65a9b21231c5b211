"""Samplers: DDIM decoding with a background to follow (DiffEdit, METHODS §1.3) and DDPM sampling
with stored noise maps (edit-friendly inversion, §2), as k-diffusion shapes them: a module-level
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
) -> torch.Tensor:
    """DDIM decoding (DDIM paper, Eq. 12 with η = 0) from x [B, C, h, w] at timesteps[0] down to
    the clean level; with a mask [h, w], after each step to level s the latent follows the
    background at the SAME level s: y ← M·y + (1−M)·x_s (DiffEdit, §3.2). The last level is -1,
    whose background is the clean x0. background: {level: [B, C, h, w]}."""
    for i, (t, t_next) in enumerate(pairs(timesteps)):
        x = schedule.ddim_step(x, eps_fn(x, t), t, t_next)
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
) -> torch.Tensor:
    """DDPM sampling with given noise maps (Huberman-Spiegelglas et al. 2024, Eq. 5):
    x_{t_next} = μ_t(x_t, ε̃) + σ_t·z_t, from x [1, C, h, w] at timesteps[0] to the clean level.

    guided(x, t, state) → (ε̃, state) is the guided noise function with its explicit state (SEGA's
    momentum); zs [K, C, h, w] one map per step. With a mask [h, w], latents outside it are pinned
    to the trajectory pin [K+1, C, h, w] (pin[i+1] at the level step i reaches). Returns x0."""
    for i, (t, t_next) in enumerate(pairs(timesteps)):
        eps, state = guided(x, t, state)
        mu, sigma = schedule.ddpm_mean_sigma(x, eps, t, t_next)
        x = mu + sigma * zs[i : i + 1]
        if mask is not None:
            x = mask * x + (1 - mask) * pin[i + 1 : i + 2]
        if progress:
            progress(i + 1, len(timesteps))
    return x
