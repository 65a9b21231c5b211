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


@torch.no_grad()
def encode_text(bundle: ModelBundle, texts: list[str]) -> torch.Tensor:
    """CLIP last hidden states, as Stable Diffusion conditions on them: [B, L, D]."""
    tok = bundle.tokenizer
    ids = tok(
        list(texts),
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(bundle.device)  # [B, L]
    return bundle.text_encoder(ids)[0].to(bundle.dtype)  # [B, L, D]
