"""Text prompts to CLIP embeddings [B, L, D], with the checks a user's prompt needs."""

from __future__ import annotations

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


@torch.inference_mode()
def encode_text(bundle: ModelBundle, texts: list[str]) -> torch.Tensor:
    """CLIP last hidden states, as Stable Diffusion conditions on them: [B, L, D].

    Each text is encoded alone, once: its embedding [1, L, D] is kept in the model's text cache, so
    an edit encodes each of its texts once and later edits (any visitor's) reuse them; alone, so
    that an embedding never depends on which texts it was encoded with."""
    cache = bundle.text_cache
    for text in dict.fromkeys(texts):
        if text not in cache:
            ids = bundle.tokenizer(
                [text],
                padding="max_length",
                max_length=bundle.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(bundle.device)  # [1, L]
            cache[text] = bundle.text_encoder(ids)[0].to(bundle.dtype)  # [1, L, D]
            while len(cache) > CACHED_TEXTS:
                cache.pop(next(iter(cache)), None)
    return torch.cat([cache[t] for t in texts])  # [B, L, D]
