"""Word weights inside a mask: the UNet's cross-attention to chosen words, scaled where an edit is.

Ours (no paper's default uses it): while DiffEdit decodes, a pixel inside the edit mask attends to
the query's words with its attention logits shifted by m·log(s_j), m the mask's cover of that pixel
at the layer's resolution (0 outside: the model untouched there), s_j the word's scale; softmax
renormalises over the words, so a scale below 1 moves attention from that word to the others
(attention re-weighting as Prompt-to-Prompt does it, Hertz et al. 2022, but confined to the mask).

    weights = word_scales(model, query, reference, changed=2.0, shared=0.5)   # [L]
    with masked_word_scales(model.unet, row_weights, mask):                    # [R, L], [R, 1, h, w]
        ...UNet calls...
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from retouch.types import ModelBundle


def _word_ids(tokenizer, text: str) -> list[int]:
    """The text's token ids without the start and end tokens."""
    return tokenizer(text).input_ids[1:-1]


def word_scales(
    bundle: ModelBundle, query: str, reference: str, changed: float, shared: float
) -> torch.Tensor:
    """Per token of the query's condition [L]: `changed` for a word the reference lacks, `shared`
    for a word it also has, 1 for the start, end and padding tokens. Tokens, not words: a word the
    tokenizer splits is weighed piece by piece."""
    tok = bundle.tokenizer
    ref = set(_word_ids(tok, reference))
    w = torch.ones(tok.model_max_length)
    for i, t in enumerate(_word_ids(tok, query)):
        w[1 + i] = shared if t in ref else changed
    return w


def pooled_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """mask [R, 1, h, w] at the latent's resolution, averaged down to the UNet level whose latent
    has `pixels` pixels (each down block halves it, rounding up): [R, pixels], fractions in [0, 1]."""
    h, w = mask.shape[-2:]
    for k in range(8):
        hk, wk = math.ceil(h / 2**k), math.ceil(w / 2**k)
        if hk * wk == pixels:
            return F.adaptive_avg_pool2d(mask.float(), (hk, wk)).flatten(1)
    raise ValueError(f"no resolution of a {h}×{w} latent has {pixels} pixels")


@contextlib.contextmanager
def attention_processor(unet, processor):
    """Inside the block, every attention layer of `unet` runs `processor`; the UNet's own
    processors are restored after."""
    own = dict(unet.attn_processors)
    unet.set_attn_processor(processor)
    try:
        yield processor
    finally:
        unet.set_attn_processor(own)


class MaskedWordScales(AttnProcessor2_0):
    """Scaled-dot-product attention whose cross-attention logits are shifted by m·log(s) (the
    module's docstring). log_scales [R, L] for the R rows of every UNet call made while it is set;
    mask [R, 1, h, w] at the latent's resolution, fractions in [0, 1]."""

    def __init__(self, log_scales: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.log_scales, self.mask = log_scales, mask
        self._bias: dict[tuple, torch.Tensor] = {}

    def bias(self, tokens: int, length: int, dtype, device) -> torch.Tensor:
        """[R, tokens, length]: the additive logit bias at the layer whose latent has `tokens` pixels."""
        key = (tokens, length, dtype, device)
        if key not in self._bias:
            m = pooled_mask(self.mask, tokens)  # [R, tokens]
            b = m[:, :, None] * self.log_scales[:, None, :length].to(m)  # [R, tokens, L]
            self._bias[key] = b.to(device=device, dtype=dtype)
        return self._bias[key]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if encoder_hidden_states is not None and attention_mask is None and hidden_states.ndim == 3:
            rows = hidden_states.shape[0]
            if rows != self.log_scales.shape[0]:
                raise ValueError(
                    f"word scales are set for {self.log_scales.shape[0]} rows, the call has {rows}"
                )
            attention_mask = self.bias(
                hidden_states.shape[1],
                encoder_hidden_states.shape[1],
                hidden_states.dtype,
                hidden_states.device,
            )
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw)


def masked_word_scales(unet, scales: torch.Tensor, mask: torch.Tensor):
    """A block inside which every cross-attention layer of `unet` weighs word j of row r by
    scales[r, j] where mask[r] covers (scales [R, L] ≥ 0, mask [R, 1, h, w]); self-attention is
    computed as before. The UNet's own processors are restored after."""
    return attention_processor(unet, MaskedWordScales(scales.float().clamp_min(1e-6).log(), mask))


class CrossAttentionMaps(AttnProcessor2_0):
    """Attention as diffusers computes it, each cross-attention layer's probabilities averaged over
    heads and kept (with their graph, for a loss on them): `maps`, one [B, pixels, L] per layer."""

    def __init__(self):
        super().__init__()
        self.maps: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if encoder_hidden_states is None or attention_mask is not None or hidden_states.ndim != 3:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw)
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))  # [B·heads, pixels, d]
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # [B·heads, L, d]
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        p = attn.get_attention_scores(q, k, None)  # [B·heads, pixels, L]
        self.maps.append(p.unflatten(0, (-1, attn.heads)).mean(1))  # [B, pixels, L]
        out = attn.batch_to_head_dim(torch.bmm(p, v))  # [B, pixels, heads·d]
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def region_shares(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """The share of each token's cross-attention (summed over a layer's pixels) that falls inside
    its region: maps [B, pixels, L] (one layer of `CrossAttentionMaps`), regions [B, L, h, w] at
    the latent's resolution, fractions in [0, 1] (averaged down to the layer's) → [B, L]."""
    m = pooled_mask(regions.flatten(0, 1)[:, None], maps.shape[1]).unflatten(
        0, regions.shape[:2]
    )  # [B, L, pixels]
    return (maps.transpose(1, 2) * m).sum(-1) / maps.sum(1).clamp_min(1e-12)


def concept_level(unet_config, h: int, w: int) -> tuple[int, int]:
    """The UNet level whose cross-attention LEDITS++'s masks read, for a latent of h×w: the one two
    downsamplings below the latent (Stable Diffusion's 16×16 at 512 px, SDXL's 32×32 at 1024, the
    shipped model's 4×4 at 64 px: diffusers' latent/4, the authors' fixed 16×16 at 512), each
    downsampling halving a side and rounding up as the UNet's stride-2 convolutions do. A UNet
    without cross-attention there reads its cross-attention level nearest to it. Returns (h', w')."""
    attends = [i for i, kind in enumerate(unet_config.down_block_types) if "CrossAttn" in kind]
    if not attends:
        raise ValueError("the UNet has no cross-attention: LEDITS++'s attention mask needs it")
    level = min(attends, key=lambda i: (abs(i - 2), -i))
    return math.ceil(h / 2**level), math.ceil(w / 2**level)


class LevelMaps(CrossAttentionMaps):
    """`CrossAttentionMaps` at one level only: the layers whose latent has `pixels` pixels keep
    their head-averaged probabilities (one [B, pixels, L] per layer); every other call runs the
    fused attention untouched."""

    def __init__(self, pixels: int):
        super().__init__()
        self.pixels = pixels

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if hidden_states.ndim == 3 and hidden_states.shape[1] == self.pixels:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw)
        return AttnProcessor2_0.__call__(
            self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw
        )

    def take(self, size: tuple[int, int]) -> torch.Tensor:
        """The mean over the kept layers of the last UNet call, and forget them: [B, h', w', L]."""
        if not self.maps:
            raise RuntimeError(f"no cross-attention layer of the UNet ran at {size[0]}×{size[1]}")
        out = torch.stack(self.maps).float().mean(0).unflatten(1, size)  # [B, h', w', L]
        self.maps = []
        return out


@contextlib.contextmanager
def level_maps(unet, size: tuple[int, int]):
    """A block inside which the cross-attention layers of `unet`'s down and up blocks at the level
    of size (h', w') keep their maps (`LevelMaps`); the middle block is left out, as LEDITS++'s
    code and diffusers read only the down and up blocks. Yields the LevelMaps; the UNet's own
    processors are restored after."""
    maps, plain = LevelMaps(size[0] * size[1]), AttnProcessor2_0()
    procs = {
        name: maps if ".attn2." in name and name.startswith(("down_blocks", "up_blocks")) else plain
        for name in unet.attn_processors
    }
    with attention_processor(unet, procs):
        yield maps
