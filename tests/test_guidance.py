"""SEGA (docs/ledits.md, step 2) as a pure function of one step: threshold, warm-up, cool-down, weights,
momentum and mask, each against the formula written out here."""

from __future__ import annotations

import pytest
import torch

from retouch.guidance import Concept, sega_step, threshold_per_channel

torch.set_num_threads(1)

SHAPE = (1, 4, 32, 32)  # [B, C, h, w]


def _eps(seed: int, n: int) -> list[torch.Tensor]:
    """n random ε's [B, C, h, w] from one seed."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(n)]


def _psi(c: Concept, e_c: torch.Tensor, e_u: torch.Tensor) -> torch.Tensor:
    """s_i · threshold(d_i (ε(e_i) − ε(∅)), λ_i): the reference formula, one concept."""
    return c.scale * threshold_per_channel(c.direction * (e_c - e_u), c.threshold)


@pytest.mark.parametrize("q", [0.95, 0.9, 0.5])
def test_threshold_keeps_the_stated_fraction_of_each_channel(q):
    psi = torch.randn(2, 4, 32, 32) * torch.arange(1, 5).view(1, 4, 1, 1)  # channels of different scale
    kept = threshold_per_channel(psi, q)
    n = 32 * 32
    frac = (kept != 0).flatten(2).sum(2).float() / n  # [B, C]
    assert torch.all((frac - (1 - q)).abs() <= 1.5 / n), frac
    # the kept elements are the largest |ψ| of their channel, unchanged
    cut = psi.abs().flatten(2).quantile(q, dim=2)[..., None, None]
    assert torch.equal(kept, torch.where(psi.abs() >= cut, psi, torch.zeros_like(psi)))


def test_threshold_in_float32_for_fp16_inputs():
    psi = torch.randn(1, 4, 32, 32).half()
    kept = threshold_per_channel(psi, 0.95)  # torch.quantile refuses fp16: works only via float32
    assert kept.dtype == torch.float16
    assert torch.equal(kept, threshold_per_channel(psi.float(), 0.95).half())
    frac = (kept != 0).flatten(2).float().mean(2)
    assert torch.all((frac - 0.05).abs() < 0.01), frac


def test_warmup_delays_the_term_but_feeds_momentum():
    e_u, e_c = _eps(0, 2)
    c = Concept("x", +1, scale=5.0, warmup=2, threshold=0.9)
    nu = torch.zeros(SHAPE)
    for step in range(2):  # before δ: nothing applied, momentum fed
        gamma, nu_new = sega_step(e_u, [e_c], [c], step, nu, 0.3, 0.6)
        assert float(torch.as_tensor(gamma).abs().max()) == 0.0
        expected = _psi(c, e_c, e_u) + 0.3 * nu
        torch.testing.assert_close(nu_new, 0.6 * nu + 0.4 * expected)
        nu = nu_new
    gamma, _ = sega_step(e_u, [e_c], [c], 2, nu, 0.3, 0.6)  # at δ: applied, with momentum
    torch.testing.assert_close(gamma, _psi(c, e_c, e_u) + 0.3 * nu)


def test_warmup_per_concept_applies_only_the_warmed_ones_normalised():
    e_u, e_a, e_b = _eps(1, 3)
    a = Concept("a", +1, scale=3.0, warmup=0, threshold=0.8, weight=2.0)
    b = Concept("b", -1, scale=4.0, warmup=3, threshold=0.8, weight=1.0)
    nu = torch.randn(SHAPE)
    gamma, nu_new = sega_step(e_u, [e_a, e_b], [a, b], 1, nu, 0.3, 0.6)
    torch.testing.assert_close(gamma, _psi(a, e_a, e_u))  # a alone, weight 2/2, no momentum
    full = (2 * _psi(a, e_a, e_u) + _psi(b, e_b, e_u)) / 3 + 0.3 * nu
    torch.testing.assert_close(nu_new, 0.6 * nu + 0.4 * full)  # b feeds the momentum


def test_cooldown_stops_the_term():
    e_u, e_a, e_b = _eps(2, 3)
    a = Concept("a", +1, scale=3.0, warmup=0, cooldown=4, threshold=0.9)
    b = Concept("b", +1, scale=2.0, warmup=0, threshold=0.9)
    nu = torch.zeros(SHAPE)
    gamma, _ = sega_step(e_u, [e_a, e_b], [a, b], 3, nu, 0.0, 0.6)
    torch.testing.assert_close(gamma, (_psi(a, e_a, e_u) + _psi(b, e_b, e_u)) / 2)
    gamma, _ = sega_step(e_u, [e_a, e_b], [a, b], 4, nu, 0.0, 0.6)
    torch.testing.assert_close(gamma, _psi(b, e_b, e_u))  # a gone, b renormalised to weight 1
    gamma, nu_new = sega_step(e_u, [e_a], [a], 7, nu, 0.0, 0.6)
    assert float(torch.as_tensor(gamma).abs().max()) == 0.0
    assert float(nu_new.abs().max()) == 0.0


def test_weights_are_normalised_over_active_concepts():
    e_u, e_a, e_b = _eps(3, 3)
    a = Concept("a", +1, scale=3.0, warmup=0, threshold=0.9, weight=3.0)
    b = Concept("b", -1, scale=5.0, warmup=0, threshold=0.9, weight=1.0)
    gamma, _ = sega_step(e_u, [e_a, e_b], [a, b], 0, torch.zeros(SHAPE), 0.0, 0.6)
    torch.testing.assert_close(gamma, 0.75 * _psi(a, e_a, e_u) + 0.25 * _psi(b, e_b, e_u))
    # scaling every weight changes nothing
    a2, b2 = (Concept(c.text, c.direction, c.scale, 0, None, c.threshold, 10 * c.weight) for c in (a, b))
    gamma2, _ = sega_step(e_u, [e_a, e_b], [a2, b2], 0, torch.zeros(SHAPE), 0.0, 0.6)
    torch.testing.assert_close(gamma2, gamma)


def test_direction_flips_the_term():
    e_u, e_c = _eps(4, 2)
    add = Concept("x", +1, warmup=0)
    rem = Concept("x", -1, warmup=0)
    g_add, _ = sega_step(e_u, [e_c], [add], 0, torch.zeros(SHAPE), 0.0, 0.6)
    g_rem, _ = sega_step(e_u, [e_c], [rem], 0, torch.zeros(SHAPE), 0.0, 0.6)
    torch.testing.assert_close(g_rem, -g_add)


def test_momentum_update_matches_the_formula_over_steps():
    """γ = Σ w_i s_i ψ_i + s_m ν;  ν ← β ν + (1−β) γ   (SEGA Eqs. 7–8), over several steps."""
    c = Concept("x", +1, scale=6.0, warmup=0, threshold=0.95)
    s_m, beta = 0.3, 0.6
    nu, nu_ref = torch.zeros(SHAPE), torch.zeros(SHAPE)
    for step in range(5):
        e_u, e_c = _eps(10 + step, 2)
        gamma, nu = sega_step(e_u, [e_c], [c], step, nu, s_m, beta)
        gamma_ref = _psi(c, e_c, e_u) + s_m * nu_ref
        nu_ref = beta * nu_ref + (1 - beta) * gamma_ref
        torch.testing.assert_close(gamma, gamma_ref)
        torch.testing.assert_close(nu, nu_ref)


def test_mask_confines_the_term_and_the_momentum():
    mask = torch.zeros(32, 32)
    mask[8:20, 4:16] = 1
    c = Concept("x", -1, scale=8.0, warmup=0, threshold=0.5)
    nu = torch.zeros(SHAPE)
    for step in range(3):
        e_u, e_c = _eps(20 + step, 2)
        gamma, nu = sega_step(e_u, [e_c], [c], step, nu, 0.3, 0.6, mask=mask)
        outside = (1 - mask).bool()
        assert float(gamma[..., outside].abs().max()) == 0.0
        assert float(nu[..., outside].abs().max()) == 0.0
        assert float(gamma[..., mask.bool()].abs().max()) > 0
