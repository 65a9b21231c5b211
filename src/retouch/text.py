"""Text prompts to CLIP embeddings [B, L, D], with the checks a user's prompt needs.

Stable Diffusion 1.x/2.x: the text encoder's last hidden states. SDXL (docs/models.md): the penultimate
hidden states of both encoders concatenated [B, 77, 768 + 1280], and the second encoder's pooled,
projected embedding [B, 1280], carried as one extra row [B, 78, 2048] (zero-padded) so that every
loop batches, splits and repeats a condition as one tensor; denoiser.unet_eps unpacks it."""

from __future__ import annotations

import threading

import torch

from retouch.errors import PromptError
from retouch.types import ModelBundle


def check_prompt(bundle: ModelBundle, text: str, name: str, allow_empty: bool = False) -> str:
    """The prompt, stripped; a PromptError naming `name` if it is not a usable string."""
    if not isinstance(text, str):
        raise PromptError(f"{name} must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text and not allow_empty:
        raise PromptError(f"{name} is empty")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # we report the length ourselves, in one line
    try:
        n = len(bundle.tokenizer(text).input_ids)  # with start and end tokens
    finally:
        hf_logging.set_verbosity(verbosity)
    limit = bundle.tokenizer.model_max_length
    if n > limit:
        raise PromptError(f"{name} is too long: {n} tokens, the text encoder takes at most {limit}")
    return text


CACHED_TEXTS = 256  # embeddings a loaded model keeps (the oldest dropped first)
_CACHE_LOCK = threading.Lock()  # web visitors edit at once: one writer at a time


@torch.inference_mode()
def encode_text(bundle: ModelBundle, texts: list[str]) -> torch.Tensor:
    """CLIP last hidden states, as Stable Diffusion conditions on them: [B, L, D].

    Each text is encoded alone, once: its embedding [1, L, D] is kept in the model's text cache, so
    an edit encodes each of its texts once and later edits (any visitor's) reuse them; alone, so
    that an embedding never depends on which texts it was encoded with."""
    cache = bundle.text_cache
    found = {}
    for text in dict.fromkeys(texts):
        emb = cache.get(text)
        if emb is None:
            emb = _encoder(bundle)(bundle, text)
            with _CACHE_LOCK:
                cache[text] = emb
                while len(cache) > CACHED_TEXTS:
                    cache.pop(next(iter(cache)), None)
        found[text] = emb
    return torch.cat([found[t] for t in texts])  # [B, L, D]


def _encoder(bundle):
    """The family's encoder of one text → [1, L, D] (a flow model's: docs/flow.md)."""
    if bundle.family in ("sd3", "flux"):
        from retouch.flows import encode_one

        return encode_one
    return _encode_xl if bundle.family == "sdxl" else _encode_sd


def _ids(tokenizer, text: str, device) -> torch.Tensor:
    return tokenizer(
        [text],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)  # [1, L]


def _encode_sd(bundle: ModelBundle, text: str) -> torch.Tensor:
    return bundle.text_encoder(_ids(bundle.tokenizer, text, bundle.device))[0].to(bundle.dtype)  # [1, L, D]


def _encode_xl(bundle: ModelBundle, text: str) -> torch.Tensor:
    """[1, L + 1, D1 + D2]: both encoders' penultimate hidden states, then the pooled row."""
    hidden = []
    for encoder, tokenizer in (
        (bundle.text_encoder, bundle.tokenizer),
        (bundle.text_encoder_2, bundle.tokenizer_2),
    ):
        out = encoder(_ids(tokenizer, text, bundle.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # [1, L, D_i]
    h = torch.cat(hidden, dim=-1)  # [1, L, D1 + D2]
    pooled = out[0]  # the second encoder's text_embeds [1, P]
    row = torch.nn.functional.pad(pooled, (0, h.shape[-1] - pooled.shape[-1]))[:, None]  # [1, 1, D]
    packed = torch.cat([h, row], dim=1).to(bundle.dtype)
    if not text and bundle.empty_is_zeros:  # force_zeros_for_empty_prompt: ∅ is zeros, hidden and pooled
        packed = torch.zeros_like(packed)
    return packed


def unpack_xl(cond: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An SDXL condition [B, L + 1, D] → (hidden states [B, L, D], pooled [B, pooled_dim])."""
    return cond[:, :-1], cond[:, -1, :pooled_dim]


def token_count(bundle: ModelBundle, text: str) -> int:
    """How many tokens the (first) tokenizer makes of `text`, the start and end tokens left out
    and truncated to the encoder's length, as LEDITS++ counts a concept's words."""
    tok = bundle.tokenizer
    return len(tok(text, truncation=True, max_length=tok.model_max_length).input_ids) - 2
