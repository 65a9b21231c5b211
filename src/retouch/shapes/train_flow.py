"""Training the mini Stable Diffusion 3 (a rectified-flow transformer) on ShapesWorld.

The model is diffusers' own: `SD3Transformer2DModel`, `FlowMatchEulerDiscreteScheduler`, two CLIP text
encoders with projection (no T5: `StableDiffusion3Pipeline` then feeds zeros in its place), and the
shipped Stable Diffusion model's autoencoder, whose latents are shifted and scaled as SD3's are:
z' = (z − shift_factor)·scaling_factor, both measured on training scenes.

Loss: the rectified-flow objective of SD3 (Esser et al. 2024): x_t = (1 − t)·x0 + t·ε with t drawn
logit-normal(0, 1), the transformer predicts v = ε − x0, mean squared error. Captions as for the SD model
(whole, partial and bare), caption dropout to "" for classifier-free guidance, EMA weights exported.
Checkpointed and resumable through `retouch.shapes.train`'s loop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from retouch.errors import ModelError
from retouch.flows import ZeroRunAttention
from retouch.shapes import world
from retouch.shapes.train import TrainConfig, _logged, _loop, _scene_of, _tokenize
from retouch.shapes.world import HELD_OUT_SEED

log = logging.getLogger(__name__)

SHIPPED_SD = Path(__file__).resolve().parents[1] / "weights" / "shapes-sd"

# The mini SD3: 64-px scenes → 16×16×4 latents → 8×8 patches of 2; a 24-token CLIP context.
MINI_SD3 = dict(layers=6, heads=6, head_dim=32, text=(64, 64), text_layers=(4, 2), tokens=24)
# diffusers' SD3 pipeline pads the absent T5's place with this many zero tokens by default.
T5_ZERO_TOKENS = 256
# No shift of the levels: a 64-px scene has 64 patches, far below the 4096 that SD3's shift 3.0 is for.
FLOW_SHIFT = 1.0


def build_sd3_components(tokenizer_dir: Path, seed: int = 0, size: dict = MINI_SD3) -> dict:
    """Untrained mini-SD3 parts (without the autoencoder): transformer, two text encoders with
    projection and their tokenizer, and the flow-matching scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    src = CLIPTokenizer.from_pretrained(SHIPPED_SD / "tokenizer")
    src.model_max_length = size["tokens"]
    src.save_pretrained(tokenizer_dir)
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)

    def text(width: int, layers: int):
        return CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(tok),
                hidden_size=width,
                intermediate_size=width * 4,
                num_hidden_layers=layers,
                num_attention_heads=max(1, width // 16),
                max_position_embeddings=77,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                projection_dim=width,
            )
        )

    te1, te2 = (text(w, n) for w, n in zip(size["text"], size["text_layers"]))
    inner = size["heads"] * size["head_dim"]
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=size["layers"],
        attention_head_dim=size["head_dim"],
        num_attention_heads=size["heads"],
        joint_attention_dim=sum(size["text"]),
        caption_projection_dim=inner,
        pooled_projection_dim=sum(size["text"]),
        pos_embed_max_size=64,  # up to 512-px images (128 latents, 64 patches a side)
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=FLOW_SHIFT)
    return dict(
        transformer=transformer,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok,
        tokenizer_2=tok,
        scheduler=scheduler,
    )


def encode_captions(te1, te2, ids: torch.Tensor, zero_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's conditioning without T5 (as `StableDiffusion3Pipeline.encode_prompt`): both CLIPs'
    penultimate states side by side, then `zero_tokens` zero rows; pooled = both projections.

    ids: [B, L] token ids → ([B, L + zero_tokens, D1 + D2], [B, P1 + P2])."""
    o1 = te1(ids, output_hidden_states=True)
    o2 = te2(ids, output_hidden_states=True)
    clip = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)  # [B, L, D1 + D2]
    zeros = clip.new_zeros(clip.shape[0], zero_tokens, clip.shape[-1])  # [B, Z, D]
    pooled = torch.cat([o1.text_embeds, o2.text_embeds], dim=-1)  # [B, P1 + P2]
    return torch.cat([clip, zeros], dim=1), pooled


@torch.no_grad()
def _flow_latents(work: Path, vae, cfg: TrainConfig, norm: tuple[float, float] | None = None):
    """Latent means of `dataset_size` training scenes, shifted and scaled (SD3's convention), cached.
    `norm`: the (shift, scale) to use, e.g. a model's that training goes on from; else measured."""
    path = work / f"latents_{cfg.dataset_size}.safetensors"
    if path.exists():
        d = load_file(path)
        shift, scale = float(d["shift"]), float(d["scale"])
        if norm is None or norm == (shift, scale):
            return d["latents"], d["seeds"], shift, scale
        z, seeds = d["latents"] / scale + shift, d["seeds"]  # [N, 4, 16, 16], normalised again below
    else:
        z, seeds = _encode_dataset(vae, cfg)
    if norm is None:
        mean = z.mean()
        norm = float(mean), float(1.0 / (z - mean).std())
    shift, scale = norm
    d = {
        "latents": (z - shift) * scale,
        "seeds": seeds,
        "shift": torch.tensor(shift),
        "scale": torch.tensor(scale),
    }
    _save_cache(d, path)
    return d["latents"], d["seeds"], shift, scale


def _encode_dataset(vae, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The autoencoder's latent means [N, 4, 16, 16] of `dataset_size` training scenes, and their seeds."""
    seeds = np.random.default_rng(cfg.seed + 1).choice(HELD_OUT_SEED, cfg.dataset_size, replace=False)
    raw = []
    for i in range(0, cfg.dataset_size, 256):
        scenes = [_scene_of(s, cfg) for s in seeds[i : i + 256]]
        x = torch.from_numpy(np.stack([world.render(s) for s in scenes])).permute(0, 3, 1, 2)
        raw.append(vae.encode(x.float() / 127.5 - 1).latent_dist.mean)  # [B, 4, 16, 16]
        if i % 10240 == 0:
            log.info("encoding dataset %d/%d", i, cfg.dataset_size)
    return torch.cat(raw), torch.from_numpy(seeds)


def _save_cache(tensors: dict, path: Path) -> None:
    """Written beside, then moved into place: a stopped run leaves the old cache or the new one."""
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    tmp.replace(path)


def _shipped_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(SHIPPED_SD / "vae").eval()


def _init_text(te1) -> None:
    """Start the first text encoder from the shipped SD model's (same tokenizer and width)."""
    state = load_file(SHIPPED_SD / "text_encoder" / "model.safetensors")
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
    missing, unexpected = te1.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("text_projection") for k in missing):
        raise RuntimeError(f"the shipped text encoder does not fit: {missing} {unexpected}")


FLOW_PARTS = {
    "transformer": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
    "text_encoder_2": "model.safetensors",
}


def _init_flow(parts: dict, vae, folder: Path) -> tuple[float, float]:
    """Start from a trained mini-SD3 folder (diffusers format): its transformer and two text
    encoders. Its autoencoder must be the one training encodes with. Returns its (shift, scale)."""
    try:
        theirs = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    except (FileNotFoundError, OSError) as e:
        raise ModelError(f"--init {folder}: no autoencoder weights to check ({e})") from None
    ours = vae.state_dict()
    if theirs.keys() != ours.keys() or any(not torch.equal(theirs[k].float(), ours[k]) for k in ours):
        raise ModelError(
            f"--init {folder}: its autoencoder is not the shipped SD model's, which training uses"
        )
    for name, file in FLOW_PARTS.items():
        try:
            parts[name].load_state_dict(load_file(folder / name / file))
        except (FileNotFoundError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0]
            raise ModelError(f"--init {folder}: its {name} does not fit the mini SD3 ({first})") from None
    config = json.loads((folder / "vae" / "config.json").read_text())
    return float(config["shift_factor"]), float(config["scaling_factor"])


@_logged
def train_flow(work: Path, cfg: TrainConfig, init: Path | None = None) -> None:
    """The mini SD3's transformer and text encoders: rectified-flow loss, caption dropout, EMA.
    `init`: a trained mini-SD3 folder to go on from (its latent shift and scale kept)."""
    log.info("train flow %s init %s", asdict(cfg), init)
    vae = _shipped_vae()
    parts = build_sd3_components(work / "tokenizer", seed=cfg.seed)
    tr, te1, te2, tok = (
        parts["transformer"],
        parts["text_encoder"],
        parts["text_encoder_2"],
        parts["tokenizer"],
    )
    norm = None  # a resumed run reads its own from the cache it wrote
    if not (work / "ckpt").exists():
        if init is None:
            _init_text(te1)
        else:
            norm = _init_flow(parts, vae, Path(init))
    latents, seeds, shift, scale = _flow_latents(work, vae, cfg, norm)
    scenes = [_scene_of(s, cfg) for s in seeds.tolist()]
    log.info("dataset %s shift %.4f scaling factor %.4f", tuple(latents.shape), shift, scale)
    tr.set_attn_processor(ZeroRunAttention(T5_ZERO_TOKENS))  # what the pipeline computes, faster
    empty_ids = _tokenize(tok, [""])[0]
    ema = build_sd3_components(work / "tokenizer", seed=cfg.seed)
    pairs = [(ema[n], parts[n]) for n in ("transformer", "text_encoder", "text_encoder_2")]
    for e, live in pairs:
        e.load_state_dict(live.state_dict())

    def step_fn(step, gen):
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=gen)
        x0 = latents[idx]  # [B, 4, 16, 16]
        rng = np.random.default_rng([cfg.seed, step])
        texts = [
            world.training_caption(scenes[i], rng, cfg.whole_caption_share, cfg.bare_background_share)
            for i in idx.tolist()
        ]
        ids = _tokenize(tok, texts)  # [B, 24]
        ids[torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout] = empty_ids
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.sigmoid(torch.randn(cfg.batch_size, generator=gen))  # logit-normal(0, 1)
        tb = t.view(-1, 1, 1, 1)
        x_t = (1 - tb) * x0 + tb * noise
        context, pooled = encode_captions(te1, te2, ids, zero_tokens=1)  # one row stands for 256
        pred = tr(x_t, context, pooled, t * 1000).sample
        return F.mse_loss(pred, noise - x0)

    @torch.no_grad()
    def ema_update():
        for e, live in pairs:
            for pe, p in zip(e.parameters(), live.parameters()):
                pe.lerp_(p, 1 - cfg.ema_decay)

    modules = {
        "transformer": tr,
        "text_encoder": te1,
        "text_encoder_2": te2,
        **{f"ema_{n}": ema[n] for n in ("transformer", "text_encoder", "text_encoder_2")},
    }
    params = [*tr.parameters(), *te1.parameters(), *te2.parameters()]
    _loop(work, cfg, modules, [{"params": params}], step_fn, after_step=ema_update)


def export_flow(out: Path, work: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Assemble the EMA weights into a diffusers `StableDiffusion3Pipeline` folder (safetensors)."""
    from diffusers import StableDiffusion3Pipeline

    parts = build_sd3_components(work / "tokenizer")
    for n in ("transformer", "text_encoder", "text_encoder_2"):
        parts[n].load_state_dict(load_file(work / "ckpt" / f"ema_{n}.safetensors"))
    cache = load_file(next(work.glob("latents_*.safetensors")))
    vae = _shipped_vae()
    vae.register_to_config(shift_factor=float(cache["shift"]), scaling_factor=float(cache["scale"]))
    parts["transformer"].type(dtype)
    pipe = StableDiffusion3Pipeline(vae=vae, text_encoder_3=None, tokenizer_3=None, **parts)
    pipe.save_pretrained(out, safe_serialization=True)
    index = Path(out) / "model_index.json"  # absent parts listed, so from_pretrained needs no arguments
    spec = json.loads(index.read_text())
    for name in ("text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor"):
        spec.setdefault(name, [None, None])
    index.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    step = json.loads((work / "ckpt" / "step.json").read_text())["step"]
    log.info("exported step %d to %s", step, out)
    return Path(out)
