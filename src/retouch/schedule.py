"""Step math of the diffusion schedule, in one place. Never calls a network.

Notation of docs/diffedit.md: ᾱ_t the cumulative product of alphas; t > t_next (t_next less noisy);
t_next = -1 means "the clean end" (ᾱ = the scheduler's final alpha, as diffusers' DDIM does).
Timesteps are integer training timesteps; a loop's position is a step index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from retouch.errors import SettingError


@dataclass(frozen=True)
class Schedule:
    """ᾱ per training timestep (float64 computed once by diffusers, kept as float32) and the
    inference timesteps of the scheduler the model ships with."""

    alphas_cumprod: torch.Tensor  # [T] float64
    final_alpha_cumprod: float
    prediction_type: str
    scheduler: object

    @classmethod
    def from_scheduler(cls, scheduler) -> Schedule:
        """The schedule of a model's scheduler; a flow model's (FlowMatchEulerDiscreteScheduler) is
        `retouch.flows.FlowSchedule`, the same interface over the rectified-flow path."""
        from diffusers import DDIMScheduler

        if type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler":
            from retouch.flows import FlowSchedule

            return FlowSchedule(scheduler)

        ddim = DDIMScheduler.from_config(scheduler.config)
        final = 1.0 if ddim.config.set_alpha_to_one else float(ddim.alphas_cumprod[0])
        return cls(ddim.alphas_cumprod.double(), final, ddim.config.prediction_type, ddim)

    def timesteps(self, num_inference_steps: int) -> list[int]:
        """The scheduler's own inference timesteps, noisiest first (SD 1.x: leading + offset).
        SettingError when a timestep falls past the schedule (leading + offset 1 at N = T puts
        the first at T): the bound is the largest N whose timesteps all fall in [0, T)."""
        ts = self._timesteps(num_inference_steps)
        if ts and max(ts) < len(self.alphas_cumprod) and min(ts) >= 0:
            return ts
        n = num_inference_steps - 1
        while n > 1 and max(self._timesteps(n)) >= len(self.alphas_cumprod):
            n -= 1
        raise SettingError(
            f"num_inference_steps={num_inference_steps} is more steps than this model's scheduler "
            f"has timesteps for: at most {n}"
        )

    def _timesteps(self, num_inference_steps: int) -> list[int]:
        sched = type(self.scheduler).from_config(self.scheduler.config)
        sched.set_timesteps(num_inference_steps)
        return [int(t) for t in sched.timesteps]

    def alpha_bar(self, t: int) -> float:
        return self.final_alpha_cumprod if t < 0 else float(self.alphas_cumprod[t])

    def to_eps(self, model_output: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """The network's output as a noise prediction ε, whatever its prediction type."""
        a = self.alpha_bar(t)
        if self.prediction_type == "epsilon":
            return model_output
        if self.prediction_type == "v_prediction":  # v = √ᾱ ε − √(1−ᾱ) x0  ⇒  ε = √ᾱ v + √(1−ᾱ) x_t
            return a**0.5 * model_output + (1 - a) ** 0.5 * x_t
        if self.prediction_type == "sample":  # x0 given: ε = (x_t − √ᾱ x0) / √(1−ᾱ)
            return (x_t - a**0.5 * model_output) / (1 - a) ** 0.5
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    def pred_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """x̂0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t   (DDIM paper, Eq. 9)."""
        a = self.alpha_bar(t)
        return (x_t - (1 - a) ** 0.5 * eps) / a**0.5

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε   (DDPM, Eq. 4)."""
        a = self.alpha_bar(t)
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise

    def ddim_step(self, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_next: int) -> torch.Tensor:
        """Deterministic DDIM (η=0) from level t to t_next, either direction (DDIM paper, Eq. 12):
        x_next = √ᾱ_next x̂0 + √(1−ᾱ_next) ε. Used with t_next > t it is DDIM inversion."""
        a_next = self.alpha_bar(t_next)
        return a_next**0.5 * self.pred_x0(x_t, eps, t) + (1 - a_next) ** 0.5 * eps

    def ddpm_mean_sigma(self, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_next: int):
        """DDPM posterior as DDIM with η=1 (DDIM paper, Eq. 16):
        σ² = (1−ᾱ_next)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_next);  μ = √ᾱ_next x̂0 + √(1−ᾱ_next−σ²) ε.
        Returns (μ [B, C, h, w], σ float)."""
        a_t, a_next = self.alpha_bar(t), self.alpha_bar(t_next)
        var = (1 - a_next) / (1 - a_t) * (1 - a_t / a_next)
        mu = a_next**0.5 * self.pred_x0(x_t, eps, t) + max(1 - a_next - var, 0.0) ** 0.5 * eps
        return mu, var**0.5

    def alpha_sigma(self, t: int) -> tuple[float, float]:
        """(α_t, σ_t) = (√ᾱ_t, √(1−ᾱ_t)): x_t = α_t x0 + σ_t ε."""
        a = self.alpha_bar(t)
        return a**0.5, (1 - a) ** 0.5

    def lam(self, t: int) -> float:
        """λ_t = log α_t − log σ_t, the half log-SNR DPM-Solver steps in (∞ at a clean level)."""
        alpha, sigma = self.alpha_sigma(t)
        return math.inf if sigma == 0 else math.log(alpha / sigma)

    def dpmpp_2m(self, x, eps, t: int, t_next: int, prev=None, sde: bool = False):
        """One DPM-Solver++(2M) step from level t to t_next (Lu et al. 2022, arXiv 2211.01095).

        D0 = x̂0(x, ε) is the data prediction; with the previous step's (D_prev, h_prev) it is
        corrected to D = D0 + (D0 − D_prev)/(2r), r = h_prev/h, h = λ_next − λ_t (Alg. 2; the
        2M SDE midpoint form D0 + ½·D1 (docs/ledits.md, DPM-Solver++) is the same expression). Then
          ODE (Eq. 9):  x_next = (σ_next/σ_t)·x − α_next·(e^(−h) − 1)·D,            σ = 0
          SDE (LEDITS++):    μ = (σ_next/σ_t)·e^(−h)·x + α_next·(1 − e^(−2h))·D,  σ = σ_next·√(1 − e^(−2h))
        First order (no prev) is exactly DDIM (ODE) or the DDPM posterior (SDE). Either
        direction: t_next > t runs the ODE as an inversion (ε then taken at t_next, as DDIM
        inversion does). A step from or to a clean level whose σ is 0 is first order.
        Returns (x_next or μ, σ, the state (D0, h) for the next step)."""
        d0 = self.pred_x0(x, eps, t)
        h = self.lam(t_next) - self.lam(t)
        if not math.isfinite(h):  # σ_t or σ_next is 0: the first-order step, DDIM or DDPM
            if sde:
                mu, sigma = self.ddpm_mean_sigma(x, eps, t, t_next)
                return mu, sigma, None
            return self.ddim_step(x, eps, t, t_next), 0.0, None
        d = d0 if prev is None else d0 + (d0 - prev[0]) * (h / (2 * prev[1]))
        (_, s_t), (a_n, s_n) = self.alpha_sigma(t), self.alpha_sigma(t_next)
        if sde:
            e = math.exp(-h)
            return (s_n / s_t * e) * x + (a_n * (1 - e * e)) * d, s_n * (1 - e * e) ** 0.5, (d0, h)
        return (s_n / s_t) * x - (a_n * math.expm1(-h)) * d, 0.0, (d0, h)


def pairs(timesteps: list[int]) -> list[tuple[int, int]]:
    """(t, t_next) for each denoising step, noisiest first; the last t_next is -1 (clean)."""
    return list(zip(timesteps, [*timesteps[1:], -1]))
