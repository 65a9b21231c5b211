"""SEGA, semantic guidance (Brack et al. 2023; docs/ledits.md, step 2), as a pure function of one step, and
LEDITS++'s implicitly masked guidance (Brack et al. 2024, §3.3; docs/ledits.md "LEDITS++").

The caller makes one batched network call per step over [∅, target (if any), e_1..e_k] and hands
the ε's here (with the step's cross-attention maps, for LEDITS++) with the momentum of the previous
step; this returns the guided ε̃ and the new state. Nothing else is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from retouch.denoiser import EpsFn, cfg

MASK_MODES = ("intersect", "attention", "noise")  # LEDITS++'s implicit masks: M¹ ∩ M², M¹ or M²


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
    """SEGA's state between steps: the step index and the momentum ν [B, C, h, w] (None: zero);
    with LEDITS++'s implicit masks, each concept's masks summed over the steps it was applied in
    [k, h, w] and the count of those steps per concept."""

    step: int = 0
    momentum: torch.Tensor | None = None
    mask_sum: torch.Tensor | None = None
    mask_steps: tuple[int, ...] = ()


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


def top_quantile(a: torch.Tensor, q: float) -> torch.Tensor:
    """1 where a ≥ its q-quantile over h·w, else 0: a [h, w] → float32 {0, 1} [h, w] (quantile in
    float32, linear interpolation between ranks)."""
    a = a.float()
    return (a >= torch.quantile(a.flatten(), q)).float()


def smooth3(a: torch.Tensor) -> torch.Tensor:
    """A 3×3 Gaussian blur of a [h, w] with weights ∝ exp(−d²) (σ² = ½, as LEDITS++'s code),
    edges reflected (repeated where a side is shorter than 2)."""
    d = torch.arange(3, dtype=torch.float32, device=a.device) - 1
    k = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2))  # [3, 3]
    mode = "reflect" if min(a.shape) > 1 else "replicate"
    x = F.pad(a.float()[None, None], (1, 1, 1, 1), mode=mode)  # [1, 1, h+2, w+2]
    return F.conv2d(x, (k / k.sum())[None, None])[0, 0]


def attention_mask(maps: torch.Tensor, tokens: int, q: float, size: tuple[int, int]) -> torch.Tensor:
    """LEDITS++'s cross-attention mask M¹ (§3.3): the concept's words' attention (tokens 1..n
    summed, the start token left out) at the UNet's 16×16-equivalent level, smoothed, kept above
    its q-quantile and brought to the latent's size by nearest neighbours.
    maps [h', w', L] (heads and layers averaged) → float32 {0, 1} [h, w]."""
    a = smooth3(maps[..., 1 : 1 + tokens].sum(-1))  # [h', w']
    keep = top_quantile(a, q)
    return F.interpolate(keep[None, None], size=size, mode="nearest")[0, 0]


def noise_mask(psi: torch.Tensor, q: float) -> torch.Tensor:
    """LEDITS++'s noise-estimate mask M² (§3.3): |ψ| summed over channels, kept above its
    q-quantile. psi [1, C, h, w] → float32 {0, 1} [h, w]."""
    return top_quantile(psi.float().abs().sum(1)[0], q)


def implicit_mask(mode: str, psi: torch.Tensor, maps, tokens: int, q: float) -> torch.Tensor:
    """A concept's implicit mask of one step: M¹ ∩ M² ("intersect"), M¹ ("attention") or M²
    ("noise"). psi [1, C, h, w]; maps [h', w', L] (None for "noise") → float32 {0, 1} [h, w]."""
    if mode == "noise":
        return noise_mask(psi, q)
    m1 = attention_mask(maps, tokens, q, tuple(psi.shape[-2:]))
    return m1 if mode == "attention" else m1 * noise_mask(psi, q)


def ledits_pp_step(
    eps_uncond: torch.Tensor,
    eps_concepts: list[torch.Tensor],
    concepts: list[Concept],
    step: int,
    mode: str,
    maps: torch.Tensor | None,
    tokens: list[int],
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor | float, list[torch.Tensor | None]]:
    """LEDITS++'s guidance term of one step (§3.3, Eq. 8): γ = Σ_i M_i ⊙ s_i·ψ_i, ψ_i =
    d_i·(ε(e_i) − ε(∅)), each concept inside its own implicit mask M_i, summed (no weights, no
    momentum, no per-channel threshold: λ_i sets the masks' quantile). A concept before its
    warm-up or from its cool-down is left out. mask [h, w] (a given mask) multiplies ψ first.
    ε's [1, C, h, w]; maps [k, h', w', L], one per concept (None for "noise"); tokens: each
    concept's token count. Returns (γ, each concept's mask [h, w], None where left out)."""
    gamma, masks = 0.0, []
    for i, c in enumerate(concepts):
        if step < c.warmup or (c.cooldown is not None and step >= c.cooldown):
            masks.append(None)
            continue
        psi = c.scale * c.direction * (eps_concepts[i] - eps_uncond)  # [1, C, h, w]
        psi = psi if mask is None else psi * mask
        m = implicit_mask(mode, psi, None if maps is None else maps[i], tokens[i], c.threshold)
        gamma = gamma + m.to(psi) * psi
        masks.append(m)
    return gamma, masks


def _weighted(psis: dict, concepts: list[Concept], idx: list[int]) -> torch.Tensor | float:
    total = sum(max(concepts[i].weight, 0.0) for i in idx)
    if not idx or total <= 0:
        return 0.0
    return sum(max(concepts[i].weight, 0.0) / total * psis[i] for i in idx)


@dataclass(frozen=True)
class Guide:
    """One edit's guidance (docs/ledits.md, step 2): ε(∅)'s condition, the base (target prompt,
    None: none) and its CFG scale, the SEGA concepts and their conditions, momentum settings and a mask [h, w]
    confining γ. Conditions [1, L, D]. implicit: None (SEGA), or LEDITS++'s implicit masks (one
    of MASK_MODES) with each concept's token count in `tokens`."""

    uncond: torch.Tensor
    concepts: tuple[Concept, ...] = ()
    concept_conds: tuple[torch.Tensor, ...] = ()
    base: torch.Tensor | None = None
    base_scale: float = 1.0
    momentum_scale: float = 0.3
    momentum_beta: float = 0.6
    mask: torch.Tensor | None = None
    implicit: str | None = None
    tokens: tuple[int, ...] = ()
    attention_alone_above: float = 1000.0  # "intersect": M¹ alone at timesteps above it (diffusers: 800)

    @property
    def conds(self) -> list[torch.Tensor]:
        """[∅, base?, e_1..e_k]: the branches of one step."""
        return [self.uncond, *([self.base] if self.base is not None else []), *self.concept_conds]

    @property
    def needs_maps(self) -> bool:
        """Whether a step needs the concepts' cross-attention maps."""
        return self.implicit in ("intersect", "attention") and bool(self.concepts)

    def combine(self, eps: list[torch.Tensor], x: torch.Tensor, state: SegaState, maps=None, t=None):
        """ε̃ and the new state from this edit's branch outputs (each [1, C, h, w]) at timestep t;
        maps: the branches' cross-attention maps [k_b, h', w', L] when `needs_maps`."""
        e = cfg(eps[0], eps[1], self.base_scale) if self.base is not None else eps[0]
        if not self.concepts:
            return e, SegaState(state.step + 1, state.momentum)
        k = len(self.concepts)
        if self.implicit is not None:
            mode = self.implicit
            if mode == "intersect" and t is not None and t > self.attention_alone_above:
                mode = "attention"
            gamma, masks = ledits_pp_step(
                eps[0], eps[-k:], list(self.concepts), state.step, mode,
                None if maps is None else maps[-k:], list(self.tokens), self.mask,
            )  # fmt: skip
            return e + gamma, _with_masks(state, masks, x)
        nu = torch.zeros_like(x) if state.momentum is None else state.momentum
        gamma, nu = sega_step(
            eps[0],
            eps[-k:],
            list(self.concepts),
            state.step,
            nu,
            self.momentum_scale,
            self.momentum_beta,
            self.mask,
        )
        return e + gamma, SegaState(state.step + 1, nu)


def _with_masks(state: SegaState, masks: list, x: torch.Tensor) -> SegaState:
    """The next state, each concept's mask of this step added to its sum (None: not applied)."""
    k, (h, w) = len(masks), x.shape[-2:]
    total = torch.zeros(k, h, w, device=x.device) if state.mask_sum is None else state.mask_sum
    steps = state.mask_steps or (0,) * k
    add = torch.stack([torch.zeros(h, w, device=x.device) if m is None else m for m in masks])
    counts = tuple(n + (m is not None) for n, m in zip(steps, masks))
    return SegaState(state.step + 1, None, total + add, counts)


def sega_eps_many(eps_fn: EpsFn, guides: list[Guide], maps=None):
    """CFG plus SEGA for several edits as one guided noise function: fn(x, t, states) → (ε̃,
    states), x [B, C, h, w] (edit b's latent x[b]), one state per edit, and ONE network call per
    step over every edit's branches [∅, base?, e_1..e_k] (docs/ledits.md, step 2). maps(): the last network
    call's cross-attention maps [Σ k_b, h', w', L] (`LevelMaps.take`), for LEDITS++'s masks."""
    rows = [b for b, g in enumerate(guides) for _ in g.conds]
    conds = torch.cat([c for g in guides for c in g.conds])  # [Σ k_b, L, D]
    sizes = [len(g.conds) for g in guides]
    if maps is None and any(g.needs_maps for g in guides):
        raise ValueError("LEDITS++'s attention masks need the cross-attention maps")

    def fn(x: torch.Tensor, t: int, states: tuple[SegaState, ...]):
        eps = eps_fn(x[rows], t, conds).split(1)  # Σ k_b × [1, C, h, w]
        attn = maps() if maps is not None else None  # [Σ k_b, h', w', L]
        out, new, i = [], [], 0
        for b, (g, k) in enumerate(zip(guides, sizes)):
            own = attn[i : i + k] if attn is not None and g.needs_maps else None
            e, state = g.combine(list(eps[i : i + k]), x[b : b + 1], states[b], own, t)
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
