"""Tiny random flow models (Stable Diffusion 3, FLUX) built in code from the real diffusers and
transformers classes, for the flow tests. The shipped model's CLIP tokenizer serves every text slot
(T5's too: its ids only need to index the tiny T5's table)."""

from __future__ import annotations

from pathlib import Path

import torch

SHIPPED_TOKENIZER = Path(__file__).parents[1] / "src" / "retouch" / "weights" / "shapes-sd" / "tokenizer"


def _tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(SHIPPED_TOKENIZER)


def _clip(tok, width: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, projection_dim=width,
    )  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5(tok, width: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(vocab_size=len(tok), d_model=width, d_ff=2 * width, d_kv=8, num_layers=1, num_heads=2)
    )


def _vae(channels: int, shift: float, scale: float, levels: int = 2):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=(8, 16, 16, 16)[:levels],
        layers_per_block=1,
        latent_channels=channels, norm_num_groups=8, sample_size=32, shift_factor=shift, scaling_factor=scale,
    )  # fmt: skip


def _perturb(module, seed: int) -> None:
    """diffusers zero-initialises output layers: random weights everywhere, so tests see real signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def sd3_parts(t5: bool = False, seed: int = 0, vae_levels: int = 2) -> dict:
    """Parts of a tiny SD3 (a StableDiffusion3Pipeline's keyword arguments)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    torch.manual_seed(seed)
    tok = _tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=48,
    )  # fmt: skip
    _perturb(transformer, seed)
    return dict(
        transformer=transformer,
        vae=_vae(4, 0.1, 0.9, vae_levels),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=_clip(tok, 16, True),
        tokenizer=tok,
        text_encoder_2=_clip(tok, 16, True),
        tokenizer_2=tok,
        text_encoder_3=_t5(tok, 32) if t5 else None,
        tokenizer_3=tok if t5 else None,
    )


def flux_parts(seed: int = 0) -> dict:
    """Parts of a tiny FLUX-dev (guidance embedding, dynamic shift, packed latents)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.manual_seed(seed)
    tok = _tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    _perturb(transformer, seed)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    return dict(
        transformer=transformer,
        vae=_vae(4, 0.1, 0.9),
        scheduler=scheduler,
        text_encoder=_clip(tok, 16, False),
        tokenizer=tok,
        text_encoder_2=_t5(tok, 32),
        tokenizer_2=tok,
    )


def bundle(family: str, dtype=torch.float32, **kw):
    from retouch.models import flow_bundle

    parts = sd3_parts(**kw) if family == "sd3" else flux_parts(**kw)
    return flow_bundle(family, model_id=f"tiny-{family}", device="cpu", dtype=dtype, **parts)
