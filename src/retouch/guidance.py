"""SEGA, semantic guidance (Brack et al. 2023; docs/ledits.md, step 2), as a pure function of one step.

The caller makes one batched network call per step over [∅, target (if any), e_1..e_k] and hands
the ε's here with the momentum of the previous step; this returns the guided ε̃ and the new
momentum. Nothing else is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retouch.denoiser import EpsFn, cfg


@dataclass(frozen=True)
class Concept:
    """One SEGA concept: text, direction (+1 add, −1 remove) and its settings.

    scale s_i; warmup δ_i (steps before the term is applied); cooldown (step from which it is no
    longer applied; None: never); threshold λ_i (per-channel quantile: 0.95 keeps 5 %); weight w_i.
    """

    text: str
    direction: int
    scale: float = 7.0
    warmup: int = 2
    cooldown: int | None = None
    threshold: float = 0.95
    weight: float = 1.0


@dataclass(frozen=True)
class SegaState:
    """SEGA's state between steps: the step index and the momentum ν [B, C, h, w] (None: zero)."""

    step: int = 0
    momentum: torch.Tensor | None = None


def threshold_per_channel(psi: torch.Tensor, q: float) -> torch.Tensor:
    """Keep the elements with |ψ| ≥ quantile(|ψ|, q) over h·w, per channel; zero the rest.

    psi [B, C, h, w]; the quantile is computed in float32 (fp16 quantiles are too coarse)."""
    a = psi.float().abs().flatten(2)  # [B, C, h·w]
    cut = torch.quantile(a, q, dim=2, keepdim=True)[..., None]  # [B, C, 1, 1]
    return torch.where(psi.float().abs() >= cut, psi.float(), 0.0).to(psi.dtype)


def sega_step(
    eps_uncond: torch.Tensor,
    eps_concepts: list[torch.Tensor],
    concepts: list[Concept],
    step: int,
    momentum: torch.Tensor,
    momentum_scale: float,
    momentum_beta: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SEGA term γ of one step and the new momentum ν   (SEGA, Eqs. 4–8).

    ψ_i = d_i·(ε(e_i) − ε(∅)), thresholded per channel, scaled by s_i; weights w_i normalised
    over the concepts not yet cooled down; γ = Σ w_i ψ_i (+ s_m·ν); ν ← β ν + (1−β) γ. A concept
    in warm-up feeds the momentum but is not applied; while any concept warms up, only the warmed
    ones are applied, without momentum (as SEGA's reference code). mask [h, w] confines γ.
    All ε [B, C, h, w]. Returns (γ to add to ε̃, new ν).
    """
    live = [i for i, c in enumerate(concepts) if c.cooldown is None or step < c.cooldown]
    psis = {}
    for i in live:
        c = concepts[i]
        psi = c.direction * (eps_concepts[i] - eps_uncond)
        psi = threshold_per_channel(psi, c.threshold) * c.scale
        psis[i] = psi if mask is None else psi * mask
    gamma = _weighted(psis, concepts, live)
    gamma = gamma + momentum_scale * momentum
    new_momentum = momentum_beta * momentum + (1 - momentum_beta) * gamma
    warm = [i for i, c in enumerate(concepts) if step >= c.warmup]
    if len(warm) == len(concepts):
        return gamma, new_momentum
    return _weighted(psis, concepts, [i for i in warm if i in psis]), new_momentum


def _weighted(psis: dict, concepts: list[Concept], idx: list[int]) -> torch.Tensor | float:
    total = sum(max(concepts[i].weight, 0.0) for i in idx)
    if not idx or total <= 0:
        return 0.0
    return sum(max(concepts[i].weight, 0.0) / total * psis[i] for i in idx)


@dataclass(frozen=True)
class Guide:
    """One edit's guidance (docs/ledits.md, step 2): ε(∅)'s condition, the base (target prompt,
    None: none) and its CFG scale, the SEGA concepts and their conditions, momentum settings and a mask [h, w]
    confining γ. Conditions [1, L, D]."""

    uncond: torch.Tensor
    concepts: tuple[Concept, ...] = ()
    concept_conds: tuple[torch.Tensor, ...] = ()
    base: torch.Tensor | None = None
    base_scale: float = 1.0
    momentum_scale: float = 0.3
    momentum_beta: float = 0.6
    mask: torch.Tensor | None = None

    @property
    def conds(self) -> list[torch.Tensor]:
        """[∅, base?, e_1..e_k]: the branches of one step."""
        return [self.uncond, *([self.base] if self.base is not None else []), *self.concept_conds]

    def combine(self, eps: list[torch.Tensor], x: torch.Tensor, state: SegaState):
        """ε̃ and the new state from this edit's branch outputs (each [1, C, h, w])."""
        e = cfg(eps[0], eps[1], self.base_scale) if self.base is not None else eps[0]
        if not self.concepts:
            return e, SegaState(state.step + 1, state.momentum)
        nu = torch.zeros_like(x) if state.momentum is None else state.momentum
        gamma, nu = sega_step(
            eps[0],
            eps[-len(self.concepts) :],
            list(self.concepts),
            state.step,
            nu,
            self.momentum_scale,
            self.momentum_beta,
            self.mask,
        )
        return e + gamma, SegaState(state.step + 1, nu)


def sega_eps_many(eps_fn: EpsFn, guides: list[Guide]):
    """CFG plus SEGA for several edits as one guided noise function: fn(x, t, states) → (ε̃,
    states), x [B, C, h, w] (edit b's latent x[b]), one state per edit, and ONE network call per
    step over every edit's branches [∅, base?, e_1..e_k] (docs/ledits.md, step 2)."""
    rows = [b for b, g in enumerate(guides) for _ in g.conds]
    conds = torch.cat([c for g in guides for c in g.conds])  # [Σ k_b, L, D]
    sizes = [len(g.conds) for g in guides]

    def fn(x: torch.Tensor, t: int, states: tuple[SegaState, ...]):
        eps = eps_fn(x[rows], t, conds).split(1)  # Σ k_b × [1, C, h, w]
        out, new, i = [], [], 0
        for b, (g, k) in enumerate(zip(guides, sizes)):
            e, state = g.combine(list(eps[i : i + k]), x[b : b + 1], states[b])
            out.append(e)
            new.append(state)
            i += k
        return torch.cat(out), tuple(new)

    return fn


def sega_eps(
    eps_fn: EpsFn,
    uncond: torch.Tensor,
    concepts: list[Concept],
    concept_conds: list[torch.Tensor],
    base: torch.Tensor | None = None,
    base_scale: float = 1.0,
    momentum_scale: float = 0.3,
    momentum_beta: float = 0.6,
    mask: torch.Tensor | None = None,
):
    """CFG plus SEGA as one guided noise function (docs/ledits.md, step 2), as k-diffusion wraps a model:
    fn(x, t, state) → (ε̃, new state), one batched network call per step over [∅, base?, e_1..e_k].

    ε̃ = ε(∅) + w·(ε(base) − ε(∅)) (no base: ε(∅)), plus γ from `sega_step`. uncond, base and each
    concept condition [1, L, D]; mask [h, w] confines γ. The momentum lives in the state."""
    guide = Guide(
        uncond, tuple(concepts), tuple(concept_conds), base, base_scale, momentum_scale, momentum_beta, mask
    )
    many = sega_eps_many(eps_fn, [guide])

    def fn(x: torch.Tensor, t: int, state: SegaState) -> tuple[torch.Tensor, SegaState]:
        e, (state,) = many(x, t, (state,))
        return e, state

    return fn
