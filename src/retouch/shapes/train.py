"""Training the mini Stable Diffusion on ShapesWorld: autoencoder, then UNet + text encoder.

Each stage is resumable: it checkpoints into its work folder (weights as safetensors, optimiser
state as plain tensors loaded with `weights_only=True`) and picks up from the last checkpoint.
Training uses scene seeds below HELD_OUT_SEED; every evaluation uses seeds at or above it.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from retouch.attention import CrossAttentionMaps, attention_processor, region_shares
from retouch.errors import InputError, ModelError, SettingError
from retouch.settings import check_number, setting
from retouch.shapes import world
from retouch.shapes.world import HELD_OUT_SEED

log = logging.getLogger(__name__)

# the trainable ones of retouch.shapes.architecture.SIZES
ARCHITECTURES = ("mini", "mini-attn", "mini-deep", "mini-deep-text")


@dataclass(frozen=True)
class TrainConfig:
    """Every training default, once (both stages; each reads what it needs)."""

    steps: int = setting(
        3000, "optimiser steps of the whole schedule (a resumed run may raise it)", values="≥ 1, whole"
    )
    batch_size: int = setting(32, "scenes per step", values="≥ 1, whole")
    lr: float = setting(1e-3, "peak learning rate (AdamW), after warm-up; cosine decay to 5 %", values="> 0")
    warmup: int = setting(200, "linear warm-up steps", values="≥ 0, whole")
    seed: int = setting(0, "seed of the data order, noises and initial weights", values="≥ 0, whole")
    checkpoint_every: int = setting(
        250, "steps between checkpoints (training resumes from the last)", values="≥ 1, whole"
    )
    log_every: int = setting(50, "steps between log lines", values="≥ 1, whole")
    kl_weight: float = setting(1e-6, "autoencoder: weight of the KL term", values="≥ 0")
    decoder_only: bool = setting(
        False, "autoencoder: fine-tune the decoder with the encoder (and latents) frozen"
    )
    caption_dropout: float = setting(
        0.1, "unet: share of empty captions, for classifier-free guidance", values="[0, 1]"
    )
    ema_decay: float = setting(0.999, "unet: EMA of the weights (the exported ones)", values="[0, 1]")
    min_snr_gamma: float = setting(5.0, "unet: Min-SNR loss weighting γ (Hang et al. 2023)", values="> 0")
    dataset_size: int = setting(60_000, "unet: training scenes encoded once and cached", values="≥ 1, whole")
    three_object_share: float = setting(
        0.4, "unet: share of three-object scenes (binding is hardest there)", values="[0, 1]"
    )
    whole_caption_share: float = setting(
        0.4, "unet: share of whole captions (the rest partial or bare)", values="[0, 1]"
    )
    bare_background_share: float = setting(
        1 / 6,
        'unet: share of the bare concepts that name the background ("white background")',
        values="[0, 1]",
    )
    architecture: str = setting(
        "mini",
        "unet: the architecture (retouch.shapes.architecture.SIZES); from --init of a smaller one, the model"
        " grows into it: the new blocks start as the identity, so training starts from its function",
        choices=ARCHITECTURES,
        shown="a resumed run's own, else --init's, else mini",
    )
    grown_lr_scale: float = setting(
        1.0,
        "unet: learning rate of the blocks and text layers a grown model gains, as a multiple of --lr",
        values="> 0",
    )
    grounding_weight: float = setting(
        0.0,
        "unet: weight of the token grounding loss (TokenCompose, Wang et al. 2024): each object's and"
        " the background's words keep their cross-attention inside their region [0: none]",
        values="≥ 0",
    )
    image_size: int = setting(
        64,
        "unet: pixels a side of the training scenes, a multiple of 16: the exported model's native"
        " size (the autoencoder is convolutional: the same one serves every size)",
        values="≥ 32, a multiple of 16",
    )

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "dataset_size"):
            check_number(name, getattr(self, name), 1, integer=True)
        check_number("warmup", self.warmup, 0, integer=True)
        check_number("seed", self.seed, 0, integer=True)
        check_number("lr", self.lr, 0, low_open=True)
        check_number("min_snr_gamma", self.min_snr_gamma, 0, low_open=True)
        check_number("grown_lr_scale", self.grown_lr_scale, 0, low_open=True)
        check_number("kl_weight", self.kl_weight, 0)
        check_number("grounding_weight", self.grounding_weight, 0)
        for name in (
            "caption_dropout",
            "ema_decay",
            "three_object_share",
            "whole_caption_share",
            "bare_background_share",
        ):
            check_number(name, getattr(self, name), 0, 1)
        check_number("image_size", self.image_size, 32, integer=True)
        if self.image_size % 16:
            raise SettingError(f"image_size must be a multiple of 16, got {self.image_size}")
        if self.architecture not in ARCHITECTURES:
            raise SettingError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")


def render_batch(seeds) -> tuple[torch.Tensor, list[str]]:
    """Scenes of `seeds` as pixels [B, 3, 64, 64] in [-1, 1] and their captions."""
    scenes = [world.sample_scene(int(s)) for s in seeds]
    imgs = np.stack([world.render(s) for s in scenes])  # (B, 64, 64, 3) uint8
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, [world.caption(s) for s in scenes]


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def _save_ckpt(work: Path, step: int, modules: dict, opt: torch.optim.Optimizer) -> None:
    tmp = work / "ckpt.tmp"
    tmp.mkdir(exist_ok=True)
    for name, m in modules.items():
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp / f"{name}.safetensors")
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "step.json").write_text(json.dumps({"step": step}))
    final = work / "ckpt"
    if final.exists():
        old = work / "ckpt.old"
        final.rename(old)
        tmp.rename(final)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.rename(final)


def _load_ckpt(work: Path, modules: dict, opt: torch.optim.Optimizer) -> int:
    ckpt = work / "ckpt"
    if not (ckpt / "step.json").exists():
        return 0
    for name, m in modules.items():
        m.load_state_dict(load_file(ckpt / f"{name}.safetensors"))
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    return json.loads((ckpt / "step.json").read_text())["step"]


def _loop(work: Path, cfg: TrainConfig, modules, groups, step_fn: Callable, after_step=None):
    """The shared training loop: lr schedule, logging, checkpointing, resume.

    `groups`: the optimiser's parameter groups, {"params": [...]} with an optional "lr_scale" s (the
    group's learning rate is the schedule's times s)."""
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.01)
    start = _load_ckpt(work, modules, opt)
    if start:
        log.info("resumed at step %d", start)
    t0, losses = time.time(), []
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg) * g.get("lr_scale", 1.0)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        loss = step_fn(step, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if after_step:
            after_step()
        losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0:
            rate = (step + 1 - start) / (time.time() - t0)
            log.info(
                "step %d/%d loss %.5f lr %.2e %.2f it/s",
                step + 1,
                cfg.steps,
                np.mean(losses),
                _lr_at(step, cfg),
                rate,
            )
            losses = []
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_ckpt(work, step + 1, modules, opt)
    return cfg.steps


def _logged(stage: Callable) -> Callable:
    """A training stage whose log lines also go to WORK/train.log while it runs. A WORK folder it
    made is removed again when the stage refuses its input before any checkpoint."""

    @functools.wraps(stage)
    def run(work: Path, *args, **kwargs):
        work, fresh = Path(work), not Path(work).exists()
        work.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(work / "train.log")
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        shapes = logging.getLogger("retouch.shapes")  # every stage's module logs under it
        shapes.addHandler(handler)
        level = shapes.level
        shapes.setLevel(logging.INFO)  # the file gets every line, whatever the app logs
        refused = False
        try:
            return stage(work, *args, **kwargs)
        except InputError:  # bad settings, an --init that does not fit
            refused = fresh and not (work / "ckpt").exists()
            raise
        finally:
            shapes.removeHandler(handler)
            shapes.setLevel(level)
            handler.close()
            if refused:
                shutil.rmtree(work, ignore_errors=True)

    return run


@_logged
def train_vae(work: Path, cfg: TrainConfig, init: Path | None = None) -> None:
    """Stage 1: the autoencoder (L1 + MSE reconstruction, tiny KL), on freshly rendered scenes."""
    from retouch.shapes.architecture import build_components

    log.info("train vae %s", asdict(cfg))
    vae = build_components("mini", tokenizer_dir=work / "tokenizer")["vae"]
    if init is not None and not (work / "ckpt").exists():
        vae.load_state_dict(load_file(init / "vae.safetensors"))
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    if cfg.decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    else:
        params = list(vae.parameters())

    def step_fn(step, gen):
        rng = np.random.default_rng([cfg.seed, step])  # per step: a resumed run draws the same scenes
        x, _ = render_batch(rng.integers(0, HELD_OUT_SEED, cfg.batch_size))
        with torch.set_grad_enabled(not cfg.decoder_only):
            post = vae.encode(x).latent_dist
            z = post.sample(generator=gen)
        y = vae.decode(z).sample
        rec = F.l1_loss(y, x) + F.mse_loss(y, x)
        kl = post.kl().mean() / x[0].numel() if not cfg.decoder_only else 0.0
        return rec + cfg.kl_weight * kl

    _loop(work, cfg, {"vae": vae}, [{"params": params}], step_fn)


@torch.no_grad()
def measure_scaling_factor(vae, n: int = 512) -> float:
    """1 / std of the autoencoder's latent means over n training renders (SD's recipe)."""
    x, _ = render_batch(range(n))
    z = torch.cat([vae.encode(b).latent_dist.mean for b in x.split(64)])
    return float(1.0 / z.std())


def _scene_of(seed: int, cfg: TrainConfig) -> world.Scene:
    """The training scene of a seed: 1, 2 or 3 objects, three with `three_object_share`."""
    rng = np.random.default_rng([int(seed), 0x0B7])
    rest = (1 - cfg.three_object_share) / 2
    n = int(rng.choice([1, 2, 3], p=[rest, rest, cfg.three_object_share]))
    return world.sample_scene(int(seed), n_objects=n)


def _px(image_size: int) -> str:
    """The latent cache's name suffix for a size (none at world.SIZE, as before sizes were a setting)."""
    return "" if image_size == world.SIZE else f"_{image_size}px"


@torch.no_grad()
def _latent_dataset(work: Path, vae, cfg: TrainConfig, scale: float | None = None):
    """Latent means (scaled) and scene seeds of `dataset_size` training scenes, cached on disk.

    `scale`: the latent scaling factor to keep (a fine-tuned model keeps its own); else measured."""
    path = work / f"latents_{cfg.dataset_size}{_px(cfg.image_size)}.safetensors"
    if path.exists():
        d = load_file(path)
        return d["latents"], d["seeds"], float(d["scale"])
    scale = measure_scaling_factor(vae) if scale is None else scale
    seeds = np.random.default_rng(cfg.seed + 1).choice(HELD_OUT_SEED, cfg.dataset_size, replace=False)
    lats = []
    for i in range(0, cfg.dataset_size, 256):
        scenes = [_scene_of(s, cfg) for s in seeds[i : i + 256]]
        x = torch.from_numpy(np.stack([world.render(s, cfg.image_size) for s in scenes])).permute(0, 3, 1, 2)
        lats.append(vae.encode(x.float() / 127.5 - 1).latent_dist.mean * scale)  # [B, 4, size/4, size/4]
        if i % 10240 == 0:
            log.info("encoding dataset %d/%d", i, cfg.dataset_size)
    d = {"latents": torch.cat(lats), "seeds": torch.from_numpy(seeds), "scale": torch.tensor(scale)}
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    return d["latents"], d["seeds"], scale


ARCHITECTURE_FILE = "architecture.json"


def _architecture_of(work: Path) -> dict:
    """What a UNet work folder was trained as: {"architecture", "image_size"}; the defaults for
    work folders older than these settings, which record neither or only the first."""
    path = work / ARCHITECTURE_FILE
    return {"architecture": "mini", "image_size": world.SIZE} | (
        json.loads(path.read_text()) if path.exists() else {}
    )


def run_settings(work: Path, init: Path | None, given: dict) -> dict:
    """The settings given, with the architecture and image size a run takes where they are not:
    a work folder's own when the run resumes, else the architecture of the --init model."""
    if (work / "ckpt").exists():
        return {**_architecture_of(work), **given}
    if init is not None and "architecture" not in given:
        name = _model_architecture(init)
        return given if name is None else {"architecture": name, **given}
    return given


def _tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def _deepen(state: dict, layers: int) -> dict:
    """A shallower UNet's weights renamed for one of `layers` layers per block: each up block's
    resnets and attentions after its first move up by the layers gained, so that each still reads the
    skip it read (the new down layers pass their input through, so a down block's last skip is the
    one its old last layer gave; the new up layers take the skips in between)."""
    held = [int(m[1]) for k in state if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))]
    gained = layers - 1 - max(held, default=layers)  # none held: not a UNet's, left for the check
    if gained <= 0:
        return state

    def moved(key: str) -> str:
        m = re.match(r"(up_blocks\.\d+\.(?:resnets|attentions)\.)(\d+)(\..*)", key)
        return f"{m[1]}{int(m[2]) + gained}{m[3]}" if m and int(m[2]) >= 1 else key

    return {moved(k): v for k, v in state.items()}


def _new_blocks(own: dict, state: dict, block: str, what: str) -> list[str]:
    """The blocks (`block`: a pattern whose group 1 names one) of a model's weights `own` that the
    trained weights `state` lack; a ModelError naming the misfit when `state` has weights `own`
    lacks, weights of other shapes, or lacks more than whole blocks."""
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state]
    blocks = [re.match(block, k) for k in missing]
    if unexpected or reshaped or not all(blocks):
        if unexpected:
            odd = f"it has weights this architecture lacks: {', '.join(unexpected[:2])}"
        elif reshaped:
            odd = f"its weights have other shapes: {', '.join(reshaped[:2])}"
        else:
            odd = f"this architecture needs weights it lacks: {', '.join(missing[:2])}"
        raise ModelError(f"{what} does not fit the architecture ({odd}, ...)")
    return sorted({b[1] for b in blocks})


def _grow_into(unet, state: dict) -> list[str]:
    """Load a trained UNet's weights into `unet`, of the same architecture or a grown one: with
    cross-attention at more levels, or more layers per block. Each new block starts as the identity:
    an attention's output projection at zero (its residual passes the features through), a resnet's
    last convolution at zero with its shortcut passing the features and dropping the skip it is
    given, so `unet` computes what the trained one did. Returns the new blocks' names."""
    state = _deepen(state, unet.config.layers_per_block)
    # the blocks the weights lack, e.g. up_blocks.2.attentions.1 or down_blocks.0.resnets.1
    new = _new_blocks(unet.state_dict(), state, r"(.*\.(?:attentions|resnets)\.\d+)\.", "--init")
    unet.load_state_dict(state, strict=False)
    with torch.no_grad():
        for name in new:
            block = unet.get_submodule(name)
            last = block.proj_out if ".attentions." in name else block.conv2
            last.weight.zero_()
            last.bias.zero_()
            if getattr(block, "conv_shortcut", None) is not None:
                # an up block's new resnet reads [features, skip]: [out, out + skip, 1, 1] = [I, 0]
                block.conv_shortcut.weight.zero_()
                block.conv_shortcut.bias.zero_()
                n = block.conv_shortcut.weight.shape[0]
                block.conv_shortcut.weight[:, :n, 0, 0] = torch.eye(n)
    if new:
        kinds = {k: sum(f".{k}." in n for n in new) for k in ("attentions", "resnets")}
        log.info(
            "grown: %d new attention blocks, %d new resnet blocks, starting as the identity (%s ...)",
            kinds["attentions"], kinds["resnets"], new[0],
        )  # fmt: skip
    return new


def _grow_text_into(te, state: dict) -> list[str]:
    """Load a trained text encoder's weights into `te`, of as many layers or more: each layer it
    gains comes after the trained ones and starts as the identity (its attention's output projection
    and its MLP's last layer at zero: both residual branches add nothing), so `te` encodes as the
    trained one did. Returns the new layers' names."""
    # the layers the weights lack, e.g. text_model.encoder.layers.2
    new = _new_blocks(te.state_dict(), state, r"(.*\bencoder\.layers\.\d+)\.", "--init's text encoder")
    te.load_state_dict(state, strict=False)
    with torch.no_grad():
        for name in new:
            layer = te.get_submodule(name)
            for last in (layer.self_attn.out_proj, layer.mlp.fc2):
                last.weight.zero_()
                last.bias.zero_()
    if new:
        log.info("grown: %d new text encoder layers, starting as the identity", len(new))
    return new


def _model_architecture(folder: Path) -> str | None:
    """Which of ARCHITECTURES a model folder's UNet and text encoder are, None if none."""
    from retouch.shapes.architecture import size_of

    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        text = json.loads((folder / "text_encoder" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return size_of(unet, text, ARCHITECTURES)


def _init_from(parts: dict, folder: Path) -> list:
    """Start from a trained model folder: its UNet, and its text encoder with token rows mapped by
    token string onto the new tokenizer (a word new to the grammar starts from the article's row).
    Returns the modules the folder's model did not have, which start as the identity (see
    `_grow_into` and `_grow_text_into`)."""
    try:
        return _load_init(parts, folder)
    except ModelError as e:
        name = _model_architecture(folder)
        raise ModelError(f"{e}; --init is a {name} model" if name else str(e)) from None


def _load_init(parts: dict, folder: Path) -> list:
    from transformers import CLIPTokenizer

    unet, te = parts["unet"], parts["text_encoder"]
    new = _grow_into(unet, load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    state = load_file(folder / "text_encoder" / "model.safetensors")
    key = next(k for k in state if k.endswith("token_embedding.weight"))
    old_vocab = CLIPTokenizer.from_pretrained(folder / "tokenizer").get_vocab()
    new_vocab = parts["tokenizer"].get_vocab()
    old_rows = state[key]  # [V_old, D]
    rows = old_rows[old_vocab["a</w>"]].repeat(len(new_vocab), 1)  # [V_new, D]
    for token, i in new_vocab.items():
        if token in old_vocab:
            rows[i] = old_rows[old_vocab[token]]
    state[key] = rows
    new_text = _grow_text_into(te, state)
    return [unet.get_submodule(n) for n in new] + [te.get_submodule(n) for n in new_text]


def grounding_loss(maps: list[torch.Tensor], regions: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
    """TokenCompose's token loss (Wang et al. 2024, Eq. 3): for each word that names a region,
    (1 − the share of its cross-attention inside the region)², averaged over those words, then
    over the layers. maps: per layer [B, pixels, L] (`CrossAttentionMaps`); regions [B, L, h, w],
    each token's region at the latent's resolution; named [B, L] bool, at least one True."""
    return sum(((1 - region_shares(a, regions)) ** 2)[named].mean() for a in maps) / len(maps)


def token_regions(tokenizer, scenes: list[world.Scene], texts: list[str], size: int):
    """Each token's region for `grounding_loss`: (regions [B, L, size, size] coverage, named [B, L]
    bool) from `world.word_regions`; a caption the tokenizer does not split into its words (one
    token a word) names none."""
    length = tokenizer.model_max_length
    regions, named = (
        torch.zeros(len(texts), length, size, size),
        torch.zeros(len(texts), length, dtype=torch.bool),
    )
    for b, (scene, text) in enumerate(zip(scenes, texts)):
        words = world.word_regions(scene, text)
        if len(tokenizer(text).input_ids) != len(words) + 2 or len(words) + 2 > length:
            continue
        cover = torch.from_numpy(world.region_masks(scene, size))  # [k, size, size]
        for j, r in enumerate(words):
            if r is not None:
                regions[b, 1 + j], named[b, 1 + j] = cover[r], True  # position 0: the start token
    return regions, named


@_logged
def train_unet(work: Path, vae_work: Path, cfg: TrainConfig, init: Path | None = None) -> None:
    """Stage 2: UNet and text encoder together, epsilon loss, caption dropout, EMA, Min-SNR.

    Captions are drawn afresh each step (`world.training_caption`): whole, partial or bare concepts.
    `init`: a trained model folder to fine-tune from instead of starting afresh."""
    from diffusers import DDPMScheduler

    from retouch.shapes.architecture import SD1_SCHEDULER, build_components

    log.info("train unet %s", asdict(cfg))
    kind = {"architecture": cfg.architecture, "image_size": cfg.image_size}
    if (work / "ckpt").exists():
        for name, was in _architecture_of(work).items():
            if was != kind[name]:
                flag = "--" + name.replace("_", "-")
                raise SettingError(f"{work} holds a model of {name} {was}: resume it with {flag} {was}")
    parts = build_components(cfg.architecture, tokenizer_dir=work / "tokenizer", seed=cfg.seed)
    vae, unet, te, tok = parts["vae"], parts["unet"], parts["text_encoder"], parts["tokenizer"]
    vae.load_state_dict(load_file(vae_work / "ckpt" / "vae.safetensors"))
    vae.eval()
    scale, grown = None, []
    if init is not None:
        grown = _init_from(parts, init)
        scale = json.loads((init / "vae" / "config.json").read_text())["scaling_factor"]
        log.info("initialised from %s, scaling factor %s", init, scale)
    (work / ARCHITECTURE_FILE).write_text(json.dumps(kind))  # once the weights fit it
    latents, seeds, scale = _latent_dataset(work, vae, cfg, scale)
    scenes = [_scene_of(s, cfg) for s in seeds.tolist()]
    log.info("dataset %s scaling factor %.4f", tuple(latents.shape), scale)
    empty_ids = _tokenize(tok, [""])[0]
    sched = DDPMScheduler(**{k: v for k, v in SD1_SCHEDULER.items() if k != "set_alpha_to_one"})
    alphas_cumprod = sched.alphas_cumprod
    ema = build_components(cfg.architecture, tokenizer_dir=work / "tokenizer")
    ema_unet, ema_te = ema["unet"], ema["text_encoder"]
    ema_unet.load_state_dict(unet.state_dict())
    ema_te.load_state_dict(te.state_dict())
    pairs = [(ema_unet, unet), (ema_te, te)]
    new = {id(p) for module in grown for p in module.parameters()}
    trained = [*unet.parameters(), *te.parameters()]
    groups = [
        {"params": [p for p in trained if id(p) not in new]},
        {"params": [p for p in trained if id(p) in new], "lr_scale": cfg.grown_lr_scale},
    ]

    grounded: list[float] = []

    def step_fn(step, gen):
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=gen)
        x0 = latents[idx]  # [B, 4, h, w]
        rng = np.random.default_rng([cfg.seed, step])
        texts = [
            world.training_caption(scenes[i], rng, cfg.whole_caption_share, cfg.bare_background_share)
            for i in idx.tolist()
        ]
        tok_ids = _tokenize(tok, texts)
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout
        tok_ids[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
        x_t = sched.add_noise(x0, noise, t)
        recording = attention_processor(unet, CrossAttentionMaps()) if cfg.grounding_weight else nullcontext()
        with recording as rec:
            pred = unet(x_t, t, te(tok_ids)[0]).sample
        snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        w = torch.clamp(snr, max=cfg.min_snr_gamma) / snr  # Min-SNR-gamma for epsilon targets
        loss = (w * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        if not cfg.grounding_weight:
            return loss
        regions, named = token_regions(tok, [scenes[i] for i in idx.tolist()], texts, x0.shape[-1])
        named[drop] = False  # an empty caption names nothing
        grounding = grounding_loss(rec.maps, regions, named) if named.any() else torch.zeros(())
        grounded.append(grounding.item())
        if (step + 1) % cfg.log_every == 0:
            log.info("step %d grounding loss %.4f", step + 1, np.mean(grounded))
            grounded.clear()
        return loss + cfg.grounding_weight * grounding

    @torch.no_grad()
    def ema_update():
        for ema, live in pairs:
            for pe, p in zip(ema.parameters(), live.parameters()):
                pe.lerp_(p, 1 - cfg.ema_decay)

    modules = {"unet": unet, "text_encoder": te, "ema_unet": ema_unet, "ema_text_encoder": ema_te}
    _loop(work, cfg, modules, [g for g in groups if g["params"]], step_fn, after_step=ema_update)


def export(
    out: Path,
    vae_work: Path,
    unet_work: Path,
    decoder_work: Path | None = None,
    unet_dtype: torch.dtype = torch.float32,
) -> Path:
    """Assemble the trained parts into a diffusers folder (EMA weights, measured scaling factor).

    `unet_dtype`: the precision the UNet's weights are stored in (float16 halves the folder; loaders
    that ask for float32, as retouch and diffusers do by default, get them back as float32)."""
    from retouch.shapes.architecture import build_components, save_pipeline

    kind = _architecture_of(unet_work)
    parts = build_components(
        kind["architecture"], tokenizer_dir=unet_work / "tokenizer", image_size=kind["image_size"]
    )
    vae_state = load_file(vae_work / "ckpt" / "vae.safetensors")
    if decoder_work is not None:  # decoder fine-tuned with the encoder frozen: latents unchanged
        vae_state = load_file(decoder_work / "ckpt" / "vae.safetensors")
    parts["vae"].load_state_dict(vae_state)
    parts["unet"].load_state_dict(load_file(unet_work / "ckpt" / "ema_unet.safetensors"))
    parts["text_encoder"].load_state_dict(load_file(unet_work / "ckpt" / "ema_text_encoder.safetensors"))
    suffix = _px(kind["image_size"])  # the latents of the size it was trained at
    cache = next(c for c in unet_work.glob("latents_*") if re.fullmatch(rf"latents_\d+{suffix}", c.stem))
    scale = float(load_file(cache)["scale"])
    parts["vae"].register_to_config(scaling_factor=scale)
    parts["unet"].type(unet_dtype)  # (not .to(): diffusers' override warns about float32 modules)
    return save_pipeline(out, parts)
