"""The mini Stable Diffusion's components, built from the real diffusers/transformers classes.

`build_components(size)` makes an untrained bundle of the same classes Stable Diffusion uses:
"mini" is the shipped ShapesWorld model's architecture, "tiny" a toy one for tests.
`save_pipeline` writes them in the diffusers folder format (safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from retouch.shapes.world import vocabulary

# Stable Diffusion 1.x's scheduler: scaled-linear betas over 1000 steps, "leading" spacing + offset 1.
SD1_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)

SIZES = {
    # name: vae channels, unet channels, text width, text layers, unet layers per block, head dim, and
    # whether the UNet's top (full-resolution) level also attends to the text (SD's does; "mini" not)
    "mini": dict(vae=(32, 64, 64), unet=(64, 96, 128), text=64, text_layers=2, layers=1, head_dim=16),
    "tiny": dict(vae=(8, 16), unet=(16, 32), text=16, text_layers=1, layers=1, head_dim=8),
}
SIZES["mini-attn"] = {**SIZES["mini"], "top": True}
SIZES["mini-deep"] = {**SIZES["mini"], "layers": 2}  # two layers a block (SD's count): 8.1 M UNet parameters
SIZES["mini-deep-text"] = {**SIZES["mini-deep"], "text_layers": 4}  # and a text encoder twice as deep


def _bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges that turn every word into a single CLIP token ("word</w>")."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}

    def bpe(word: str) -> list[str]:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            pairs = [p for p in pairs if p[0] is not None]
            if not pairs:
                break
            _, i = min(pairs)
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
        return parts

    for word in words:
        parts = bpe(word)
        while len(parts) > 1:  # merge left to right until the word is one token
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            parts = bpe(word)
    return merges


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2/CLIP convention)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def build_tokenizer(folder: Path, words: list[str] | None = None, max_length: int = 77):
    """A CLIP BPE tokenizer whose vocabulary holds every grammar word as one token."""
    from transformers import CLIPTokenizer

    words = [w for w in (words or vocabulary()) if len(w) > 1]
    merges = _bpe_merges(words)
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)


def build_components(
    size: str = "mini",
    prediction_type: str = "epsilon",
    tokenizer_dir: Path | None = None,
    seed=0,
    image_size: int = 64,
) -> dict:
    """Untrained components of a Stable Diffusion of the given size: a dict of pipeline parts.

    `image_size`: the native pixels a side the model is made for (its config's sample sizes; the
    weights do not depend on it)."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    s = SIZES[size]
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(Path(tokenizer_dir or tempfile.mkdtemp(prefix="retouch-tok-")))
    n_vae = len(s["vae"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=s["vae"],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=s["text"],
            intermediate_size=s["text"] * 4,
            num_hidden_layers=s["text_layers"],
            num_attention_heads=max(1, s["text"] // 16),
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=s["text"],
        )
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 2 ** (n_vae - 1),
        in_channels=4,
        out_channels=4,
        cross_attention_dim=s["text"],
        attention_head_dim=s["head_dim"],
        norm_num_groups=8,
        **_unet_shape(s),
    )
    scheduler = DDIMScheduler(**{**SD1_SCHEDULER, "prediction_type": prediction_type})
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def _unet_shape(s: dict) -> dict:
    """The UNet config keys that tell the SIZES apart: its blocks, their widths and depth."""
    n_unet, top = len(s["unet"]), s.get("top", False)
    return dict(
        down_block_types=("CrossAttnDownBlock2D" if top else "DownBlock2D",)
        + ("CrossAttnDownBlock2D",) * (n_unet - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n_unet - 1)
        + ("CrossAttnUpBlock2D" if top else "UpBlock2D",),
        block_out_channels=s["unet"],
        layers_per_block=s["layers"],
    )


def size_of(unet_config: dict, text_config: dict, names=None) -> str | None:
    """Which of SIZES (of `names`, default all) a saved UNet and text encoder config (config.json
    dicts) were built as, None if none."""
    for name in names or SIZES:
        s = SIZES[name]
        shape = _unet_shape(s)
        if text_config.get("num_hidden_layers") == s["text_layers"] and all(
            list(unet_config.get(k, ())) == list(v) if isinstance(v, tuple) else unet_config.get(k) == v
            for k, v in shape.items()
        ):
            return name
    return None


def save_pipeline(folder: Path, components: dict) -> Path:
    """Write the components as a diffusers folder (safetensors): a StableDiffusionPipeline, or a
    StableDiffusionXLPipeline when they hold a second text encoder."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if "text_encoder_2" in components:
        pipe = StableDiffusionXLPipeline(**components, force_zeros_for_empty_prompt=True)
    else:
        pipe = StableDiffusionPipeline(
            **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


# SDXL base's scheduler config (its EulerDiscreteScheduler's betas and spacing; we step it with DDIM math)
SDXL_SCHEDULER = {**SD1_SCHEDULER}
SDXL_SIZES = {
    # tiny, tiny3: for tests; full: SDXL base 1.0's configs (sd_xl_base.yaml / the diffusers folder's)
    "tiny": dict(
        vae=(8, 16), unet=(16, 32), heads=(4, 8), depth=(1, 1), text=(16, 24), text_layers=2,
        projection=20, time_dim=8, sample=32, layers=1, groups=8,
    ),
    # three levels as SDXL's, the lowest with two transformer layers: cross-attention at latent/4,
    # where LEDITS++'s masks read it
    "tiny3": dict(
        vae=(8, 16), unet=(16, 32, 32), heads=(2, 4, 4), depth=(1, 1, 2), text=(16, 24), text_layers=2,
        projection=20, time_dim=8, sample=32, layers=1, groups=8,
    ),
    "full": dict(
        vae=(128, 256, 512, 512), unet=(320, 640, 1280), heads=(5, 10, 20), depth=(1, 2, 10),
        text=(768, 1280), text_layers=(12, 32), projection=1280, time_dim=256, sample=128, layers=2,
        groups=32,
    ),
}  # fmt: skip


def build_sdxl_components(size: str = "tiny", tokenizer_dir: Path | None = None, seed: int = 0) -> dict:
    """Untrained SDXL components from the real classes (docs/models.md, SDXL): CLIPTextModel and
    CLIPTextModelWithProjection (penultimate states concatenated, pooled from the second), a UNet
    with addition_embed_type="text_time", a VAE with force_upcast and SDXL's scaling factor."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    s = SDXL_SIZES[size]
    torch.manual_seed(seed)
    folder = Path(tokenizer_dir or tempfile.mkdtemp(prefix="retouch-tok-"))
    tokenizer = build_tokenizer(folder / "1")
    tokenizer_2 = build_tokenizer(folder / "2")
    layers = s["text_layers"] if isinstance(s["text_layers"], tuple) else (s["text_layers"],) * 2

    def text_config(width: int, n: int, **kw):
        return CLIPTextConfig(
            vocab_size=max(len(tokenizer), 49408 if size == "full" else 0),
            hidden_size=width,
            intermediate_size=width * 4,
            num_hidden_layers=n,
            num_attention_heads=max(1, width // 64) if size == "full" else 2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **kw,
        )

    text_encoder = CLIPTextModel(text_config(s["text"][0], layers[0], hidden_act="quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(
        text_config(s["text"][1], layers[1], hidden_act="gelu", projection_dim=s["projection"])
    )
    n_vae, n_unet = len(s["vae"]), len(s["unet"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=s["vae"],
        layers_per_block=2 if size == "full" else 1,
        latent_channels=4,
        norm_num_groups=s["groups"],
        sample_size=s["sample"] * 2 ** (n_vae - 1),
        scaling_factor=0.13025,
        force_upcast=True,
    )
    unet = UNet2DConditionModel(
        sample_size=s["sample"],
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_unet - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n_unet - 1) + ("UpBlock2D",),
        block_out_channels=s["unet"],
        layers_per_block=s["layers"],
        transformer_layers_per_block=s["depth"],
        attention_head_dim=s["heads"],
        cross_attention_dim=sum(s["text"]),
        addition_embed_type="text_time",
        addition_time_embed_dim=s["time_dim"],
        projection_class_embeddings_input_dim=6 * s["time_dim"] + s["projection"],
        use_linear_projection=True,
        norm_num_groups=s["groups"],
    )
    return dict(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=DDIMScheduler(**SDXL_SCHEDULER),
    )
