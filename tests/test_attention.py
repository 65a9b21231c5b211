"""Word weights inside a mask (retouch.attention; DiffEdit's changed_word_scale / shared_word_scale):
the attention they compute, written out by hand, and where DiffEdit's decoding applies them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import retouch
from retouch.attention import MaskedWordScales, masked_word_scales, word_scales
from retouch.shapes.world import HELD_OUT_SEED, render, sample_scene

torch.set_num_threads(1)

QUERY = "a green circle on a white background"
REFERENCE = "a red circle on a white background"
FAST = dict(num_inference_steps=4, mask_samples=2)


def test_word_scales_weigh_the_changed_and_the_shared_words(tiny_eps):
    w = word_scales(tiny_eps, "a green circle", "a red circle", changed=3.0, shared=0.5)
    n = len(tiny_eps.tokenizer("a green circle").input_ids)  # with start and end
    assert w.shape == (tiny_eps.tokenizer.model_max_length,)
    assert w[0] == 1 and w[n - 1 :].eq(1).all()  # start, end and padding untouched
    words = [
        tiny_eps.tokenizer.decode([t]).strip() for t in tiny_eps.tokenizer("a green circle").input_ids[1:-1]
    ]
    expected = [3.0 if word == "green" else 0.5 for word in words]
    assert w[1 : n - 1].tolist() == expected and 3.0 in expected
    # a removal's query has no word its reference lacks
    assert word_scales(tiny_eps, "a circle", "a red circle", 3.0, 0.5)[1:3].tolist() == [0.5, 0.5]


def _cross_attention(unet):
    return next(m for name, m in unet.named_modules() if name.endswith("attn2"))


@pytest.mark.parametrize("side", [4, 2])  # the latent's resolution, and the next block's
def test_the_processor_shifts_the_logits_by_the_mask_times_log_scale(tiny_eps, side):
    """softmax(q·kᵀ/√d + m·log s)·v per head, m the latent mask averaged down to the layer."""
    torch.manual_seed(0)
    attn = _cross_attention(tiny_eps.unet)
    rows, length = 2, 7
    h = torch.randn(rows, side * side, attn.to_q.in_features)
    e = torch.randn(rows, length, attn.to_k.in_features)
    mask = torch.zeros(rows, 1, 4, 4)
    mask[0, :, :2, :3] = 1.0  # row 1 unmasked: untouched
    scales = torch.ones(rows, length)
    scales[:, 2], scales[:, 4] = 4.0, 0.25
    proc = MaskedWordScales(scales.log(), mask)
    got = proc(attn, h, encoder_hidden_states=e)

    m = torch.nn.functional.adaptive_avg_pool2d(mask, (side, side)).flatten(1)  # [R, side²]
    heads = attn.heads
    q, k, v = (
        x.view(rows, x.shape[1], heads, -1).transpose(1, 2)
        for x in (attn.to_q(h), attn.to_k(e), attn.to_v(e))
    )
    logits = (
        q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + (m[:, :, None] * scales.log()[:, None])[:, None]
    )
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(rows, side * side, -1)
    expected = attn.to_out[1](attn.to_out[0](out))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    plain = attn.processor(attn, h, encoder_hidden_states=e)
    torch.testing.assert_close(got[1], plain[1], rtol=1e-4, atol=1e-5)  # no mask, no change
    assert not torch.allclose(got[0], plain[0], atol=1e-4)
    with pytest.raises(ValueError, match="set for 2 rows"):
        proc(attn, h[:1], encoder_hidden_states=e[:1])


def test_the_unets_own_processors_come_back(tiny_eps):
    unet = tiny_eps.unet
    own = dict(unet.attn_processors)
    with pytest.raises(RuntimeError):
        with masked_word_scales(unet, torch.ones(1, 77), torch.ones(1, 1, 4, 4)):
            assert all(isinstance(p, MaskedWordScales) for p in unet.attn_processors.values())
            raise RuntimeError
    assert dict(unet.attn_processors) == own


def test_decoding_weighs_the_query_rows_inside_the_mask_only(tiny_eps, monkeypatch):
    """Each decoding call's bias: the query's rows get m·log s at the words s names; ∅ and the
    reference rows none. Scales of 1 are the paper's decoding bitwise (no processor at all); in a
    batch each edit keeps its own scales."""
    img = render(sample_scene(HELD_OUT_SEED + 7, n_objects=1))
    mask = retouch.diffedit_mask(tiny_eps, img, QUERY, REFERENCE, **FAST)
    enc = retouch.ddim_encoding(tiny_eps, img, **FAST)
    kw = dict(mask=mask, encoding=enc, **FAST)
    biases, bias = [], MaskedWordScales.bias

    def recording(self, tokens, length, dtype, device):
        out = bias(self, tokens, length, dtype, device)
        biases.append((tokens, out.clone()))
        return out

    monkeypatch.setattr(MaskedWordScales, "bias", recording)
    weighed = retouch.diffedit(
        tiny_eps, img, QUERY, REFERENCE, changed_word_scale=3.0, reference_guidance_scale=1.0, **kw
    )
    assert (
        biases
        and dict(tiny_eps.unet.attn_processors)
        and not any(isinstance(p, MaskedWordScales) for p in tiny_eps.unet.attn_processors.values())
    )
    h, w = mask.latent.shape
    tokens, first = biases[0]  # [R, tokens, L]: the first cross-attention layer's resolution
    k = next(k for k in range(4) if math.ceil(h / 2**k) * math.ceil(w / 2**k) == tokens)
    assert first.shape[0] == 3  # ∅, query, reference
    assert first[0].eq(0).all() and first[2].eq(0).all()
    changed = word_scales(tiny_eps, QUERY, REFERENCE, 3.0, 1.0).log()
    m = torch.nn.functional.adaptive_avg_pool2d(mask.latent[None, None].float(), (h // 2**k, w // 2**k))
    torch.testing.assert_close(first[1], m.flatten()[:, None] * changed[None])
    assert changed.gt(0).sum() == 1 and mask.latent.sum() > 0

    biases.clear()
    paper = retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, reference_guidance_scale=1.0, **kw)
    ones = retouch.diffedit(
        tiny_eps, img, QUERY, REFERENCE, reference_guidance_scale=1.0, changed_word_scale=1.0, **kw
    )
    assert not biases and torch.equal(ones.latents, paper.latents)
    assert not torch.allclose(weighed.latents, paper.latents)
    both = retouch.diffedit_many(
        tiny_eps,
        img,
        [
            dict(query=QUERY, reference=REFERENCE, changed_word_scale=3.0, mask=mask, encoding=enc),
            dict(query=QUERY, reference=REFERENCE, mask=mask, encoding=enc),
        ],
        reference_guidance_scale=1.0,
        **FAST,
    )
    torch.testing.assert_close(both[0].latents, weighed.latents, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(both[1].latents, paper.latents, rtol=1e-3, atol=1e-4)
    assert np.asarray(both[0].image).shape == np.asarray(img).shape


def test_without_a_mask_the_words_are_weighed_everywhere(tiny_eps, monkeypatch):
    """mode="no_mask" (the paper's ablation) has no mask to confine the weights: every pixel of the
    query rows gets log s."""
    img = render(sample_scene(HELD_OUT_SEED + 7, n_objects=1))
    biases, bias = [], MaskedWordScales.bias

    def recording(self, tokens, length, dtype, device):
        out = bias(self, tokens, length, dtype, device)
        biases.append(out.clone())
        return out

    monkeypatch.setattr(MaskedWordScales, "bias", recording)
    retouch.diffedit(tiny_eps, img, QUERY, REFERENCE, mode="no_mask", changed_word_scale=3.0, **FAST)
    changed = word_scales(tiny_eps, QUERY, REFERENCE, 3.0, 1.0).log()
    assert biases and all(b.shape[0] == 2 for b in biases)  # ∅ and the query
    for b in biases:
        assert b[0].eq(0).all()
        torch.testing.assert_close(b[1], changed[None].expand(b.shape[1], -1))
