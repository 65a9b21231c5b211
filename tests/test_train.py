"""The token grounding loss of `retouch train unet --grounding-weight` (TokenCompose's token loss)."""

import numpy as np
import pytest
import torch

from retouch.attention import CrossAttentionMaps, attention_processor
from retouch.shapes import world
from retouch.shapes.train import _tokenize, grounding_loss, token_regions


@pytest.fixture(scope="module")
def parts():
    from retouch.shapes.architecture import build_components

    torch.manual_seed(0)
    return build_components("mini", seed=0)


def _scenes(n=4):
    scenes = [world.sample_scene(s) for s in range(n)]
    return scenes, [world.caption(s) for s in scenes]


def _conditions(parts, texts):
    return parts["text_encoder"](_tokenize(parts["tokenizer"], texts))[0]  # [B, L, D]  (as training does)


def test_cross_attention_maps_compute_what_diffusers_computes(parts):
    unet = parts["unet"]
    scenes, texts = _scenes()
    x, t = (
        torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(1)),
        torch.tensor([10, 300, 600, 900]),
    )
    with torch.no_grad():
        cond = _conditions(parts, texts)
        before = unet(x, t, cond).sample
        with attention_processor(unet, CrossAttentionMaps()) as rec:
            after = unet(x, t, cond).sample
    assert torch.allclose(before, after, atol=1e-5)
    crossing = [n for n in unet.attn_processors if "attn2" in n]
    assert len(rec.maps) == len(crossing) > 0
    for a in rec.maps:  # a pixel's attention over the tokens sums to one
        assert a.shape[0] == 4 and a.shape[2] == 77
        assert torch.allclose(a.sum(-1), torch.ones(a.shape[:2]), atol=1e-5)


def test_grounding_loss_is_the_outside_share_squared():
    """Attention all inside the region: 0; spread evenly over the pixels: (1 − the region's area)²,
    at every resolution the maps come in (the region averaged down to it)."""
    regions = torch.zeros(1, 77, 16, 16)
    regions[0, 2, :8, :8] = 1  # token 2's region: a quarter of the image
    named = torch.zeros(1, 77, dtype=torch.bool)
    named[0, 2] = True
    inside = torch.zeros(1, 64, 77)  # an 8×8 level
    inside[0, :, 2] = regions[0, 2].reshape(8, 2, 8, 2).mean((1, 3)).flatten()
    even = torch.full((1, 16, 77), 1 / 77)  # a 4×4 level
    assert float(grounding_loss([inside], regions, named)) == pytest.approx(0.0, abs=1e-6)
    assert float(grounding_loss([even], regions, named)) == pytest.approx(0.75**2)
    assert float(grounding_loss([inside, even], regions, named)) == pytest.approx(0.75**2 / 2)


def test_token_regions_put_each_word_at_its_token():
    from transformers import CLIPTokenizer

    from retouch.models import SHIPPED

    tok = CLIPTokenizer.from_pretrained(SHIPPED / "tokenizer")
    scenes, texts = _scenes(3)
    texts[1] = "this is not a caption of the world"  # words the tokenizer splits otherwise: none named
    regions, named = token_regions(tok, scenes, texts, 16)
    assert regions.shape == (3, 77, 16, 16) and named.shape == (3, 77)
    assert not named[1].any()
    for b in (0, 2):
        words = world.word_regions(scenes[b], texts[b])
        cover = torch.from_numpy(world.region_masks(scenes[b], 16))
        ids = tok(texts[b]).input_ids
        assert named[b].tolist() == [False] + [r is not None for r in words] + [False] * (76 - len(words))
        for j, r in enumerate(words):
            if r is not None:
                assert torch.equal(regions[b, 1 + j], cover[r])
                assert tok.decode([ids[1 + j]]).strip() == texts[b].replace(",", " ,").split()[j]


@pytest.mark.slow
def test_a_step_on_the_grounding_loss_draws_the_words_attention_into_their_regions(parts):
    """The maps keep their graph: one gradient step on the loss alone lowers it."""
    unet = parts["unet"]
    scenes, texts = _scenes()
    regions, named = token_regions(parts["tokenizer"], scenes, texts, 16)
    x, t = (
        torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(2)),
        torch.tensor([50, 200, 400, 700]),
    )
    params = [p for n, p in unet.named_parameters() if "attn2.to_q" in n or "attn2.to_k" in n]
    opt = torch.optim.SGD(params, lr=50.0)
    losses = []
    for _ in range(2):
        with attention_processor(unet, CrossAttentionMaps()) as rec:
            unet(x, t, _conditions(parts, texts).detach())
        loss = grounding_loss(rec.maps, regions, named)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in params)
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0] - 1e-3, losses
    assert np.isfinite(losses).all()
