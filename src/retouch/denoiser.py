"""The one network protocol every loop calls: eps_fn(x_t, t, cond) -> ε.

x_t [B, C, h, w] latents, t an integer training timestep, cond [B, L, D] text embeddings (the same
B: a caller batches all branches of a step into one call). The UNet's output is converted to ε
whatever the model's prediction type, so loops never see v-prediction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from retouch.schedule import Schedule
from retouch.text import unpack_xl
from retouch.types import ModelBundle

EpsFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


@dataclass
class EvalCounter:
    """UNet evaluations spent, counted in batch elements. Made per call, never shared."""

    n: int = 0


def unet_eps(
    bundle: ModelBundle, schedule: Schedule, counter: EvalCounter, image_size: tuple[int, int] | None = None
) -> EpsFn:
    """The bundle's UNet as an ε-predictor that counts its batch elements in `counter`. SDXL: the
    condition's pooled row and the added time ids (original size, crop (0, 0), target size: the
    image's own (height, width) `image_size`, default the latent's size in pixels; docs/models.md, SDXL) go
    to every batch element."""
    if bundle.family in ("sd3", "flux"):  # a flow model: its velocity, which the flow schedule steps with
        from retouch.flows import velocity_fn

        return velocity_fn(bundle, counter)
    unet, xl = bundle.unet, bundle.family == "sdxl"

    @torch.inference_mode()
    def eps_fn(x_t: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        b = x_t.shape[0]
        counter.n += b
        tt = torch.full((b,), int(t), dtype=torch.long, device=x_t.device)
        kw = {}
        if xl:
            cond, pooled = unpack_xl(cond, bundle.text_encoder_2.config.projection_dim)
            f = bundle.vae_scale_factor
            h, w = image_size or (x_t.shape[-2] * f, x_t.shape[-1] * f)
            ids = torch.tensor([[h, w, 0, 0, h, w]], device=x_t.device, dtype=bundle.dtype).expand(b, 6)
            kw["added_cond_kwargs"] = {"text_embeds": pooled.to(bundle.dtype), "time_ids": ids}
        out = unet(x_t.to(bundle.dtype), tt, encoder_hidden_states=cond.to(bundle.dtype), **kw).sample
        return schedule.to_eps(out.float(), x_t.float(), t)

    return eps_fn


def branches(eps_fn: EpsFn, x_t: torch.Tensor, t: int, conds: list[torch.Tensor]) -> list[torch.Tensor]:
    """ε for one latent under several conditions, in ONE batched network call.

    x_t [1, C, h, w] (or [B, ...] shared by all); conds: k tensors [B, L, D] → k tensors [B, C, h, w].
    """
    b = x_t.shape[0]
    eps = eps_fn(x_t.repeat(len(conds), *([1] * (x_t.dim() - 1))), t, torch.cat(conds))
    return list(eps.split(b))


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ε̃ = ε(∅) + w·(ε(c) − ε(∅))   (Ho & Salimans 2022, Eq. 6)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def branch_order(uncond, scale, away) -> tuple[str, ...]:
    """The conditions of `guided_eps`'s one network call, in batch order (each B rows)."""
    if away is not None and uncond is not None:
        return ("uncond", "cond", "away")
    if uncond is None or (not isinstance(scale, torch.Tensor) and scale == 1.0):
        return ("cond",)
    return ("uncond", "cond")


def guided_eps(
    eps_fn: EpsFn,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    scale,
    away: torch.Tensor | None = None,
    away_scale=0.0,
) -> EpsFn:
    """eps_fn with classifier-free guidance folded in; scale 1 or no uncond: a single branch.
    scale: a number, or one per batch element [B, 1, 1, 1]. With `away` [B, L, D] (and uncond):
    ε̃ + w_a·(ε(c) − ε(away)), a third branch of the same call, steering from `away` towards c
    (composable diffusion's negation, Liu et al. 2022); away_scale w_a: a number or [B, 1, 1, 1]."""
    order = branch_order(uncond, scale, away)
    if order == ("uncond", "cond", "away"):

        def composed(x, t, _c=None):
            b = x.shape[0]
            e_u, e_c, e_a = branches(eps_fn, x, t, [c.expand(b, -1, -1) for c in (uncond, cond, away)])
            return cfg(e_u, e_c, scale) + away_scale * (e_c - e_a)

        return composed
    if order == ("cond",):
        return lambda x, t, _c=None: eps_fn(x, t, cond.expand(x.shape[0], -1, -1))

    def fn(x, t, _c=None):
        e_u, e_c = branches(
            eps_fn, x, t, [uncond.expand(x.shape[0], -1, -1), cond.expand(x.shape[0], -1, -1)]
        )
        return cfg(e_u, e_c, scale)

    return fn


class UNetCalls:
    """Wraps unet.forward: the UNet evaluations (batch elements) of every call, and the first
    call's latent batch. `unwrap()` restores the forward."""

    def __init__(self, unet):
        self.unet, self._forward = unet, unet.forward
        self._own = "forward" in vars(unet)  # a compiled module's forward is its own attribute
        self.sizes: list[int] = []
        self.first: torch.Tensor | None = None
        unet.forward = self._counted

    def _counted(self, *args, **kwargs):
        # the latents: a UNet's first argument, a transformer's hidden_states
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        if self.first is None:
            self.first = sample.detach().clone()
        self.sizes.append(sample.shape[0])
        return self._forward(*args, **kwargs)

    @property
    def evals(self) -> int:
        return sum(self.sizes)

    def reset(self) -> None:
        self.sizes, self.first = [], None

    def take(self) -> int:
        """The evaluations since the last take/reset, and reset."""
        n = self.evals
        self.reset()
        return n

    def unwrap(self) -> None:
        if self._own:
            self.unet.forward = self._forward
        else:
            del self.unet.forward  # back to the class's method


@contextlib.contextmanager
def unet_calls(model):
    """Batch sizes of every UNet forward call of `model` (a ModelBundle) made inside the block."""
    calls = UNetCalls(model.unet)
    try:
        yield calls.sizes
    finally:
        calls.unwrap()
