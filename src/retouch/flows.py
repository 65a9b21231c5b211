"""Flow-matching models (Stable Diffusion 3, FLUX): the bundle, their text conditioning, the velocity
network as one callable, and the path's step math (docs/flow.md).

Notation: the rectified-flow path x_t = (1 − t)·x0 + t·ε, t ∈ [0, 1] (diffusers' σ; its timestep is
1000·t); the network predicts the velocity v = ε − x0. From one prediction x̂0 = x_t − t·v and
ε̂ = x_t + (1 − t)·v. Levels are the scheduler's own (SD3's shift, FLUX's resolution-dependent shift),
noisiest first, ending at 0.

A condition is one tensor [B, L + 1, D], as for SDXL: the text states, then the pooled embedding as one
zero-padded row, so every loop batches, splits and repeats it as one tensor.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from retouch.errors import ModelError, SettingError
from retouch.presets import FLOW_FAMILIES  # "sd3", "flux" (named there, where no torch is imported)

VFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class FlowBundle:
    """A Stable Diffusion 3 or FLUX model loaded once, for every edit (the flow counterpart of
    `ModelBundle`: the same image, budget and fingerprint properties, a transformer for the UNet)."""

    vae: Any  # diffusers AutoencoderKL; latents are (z − shift_factor)·scaling_factor
    transformer: Any  # SD3Transformer2DModel or FluxTransformer2DModel
    scheduler: Any  # FlowMatchEulerDiscreteScheduler: its config gives the levels
    text_encoder: Any  # SD3: CLIPTextModelWithProjection (CLIP-L); FLUX: CLIPTextModel (pooled only)
    tokenizer: Any
    family: str  # "sd3" or "flux"
    model_id: str
    device: torch.device
    dtype: torch.dtype
    fingerprint: str = ""
    text_encoder_2: Any = None  # SD3: OpenCLIP-bigG with projection; FLUX: T5
    tokenizer_2: Any = None
    text_encoder_3: Any = None  # SD3: T5 (None: zeros in its place, as diffusers does)
    tokenizer_3: Any = None
    max_sequence_length: int = 256  # T5 tokens (SD3's and FLUX-schnell's 256; FLUX-dev takes 512)
    max_pixels: int | None = None
    resize: bool = True
    text_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def unet(self):
        """The denoising network (a transformer here), for code that counts its calls."""
        return self.transformer

    @property
    def prediction_type(self) -> str:
        return "flow"

    @property
    def guidance_distilled(self) -> bool:
        """FLUX-dev: the guidance scale is an input embedding (no ∅ branch)."""
        return bool(getattr(self.transformer.config, "guidance_embeds", False))

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides are padded to this: the VAE's factor times the patch (FLUX packs 2×2)."""
        patch = getattr(self.transformer.config, "patch_size", 1) if self.family == "sd3" else 2
        return self.vae_scale_factor * patch

    @property
    def native_size(self) -> int:
        sample = getattr(self.transformer.config, "sample_size", None)
        if self.family == "sd3" and sample:
            return sample * self.vae_scale_factor
        return self.vae.config.sample_size  # FLUX's transformer has no native size: its VAE's

    @property
    def pixel_budget(self) -> int:
        return self.max_pixels if self.max_pixels is not None else 4 * self.native_size**2


def is_flow(model) -> bool:
    return getattr(model, "family", None) in FLOW_FAMILIES


def network_name(model) -> str:
    """The model's denoising network as messages name it: "transformer" (SD3, FLUX) or "UNet"."""
    return "transformer" if is_flow(model) else "UNet"


# --- text ------------------------------------------------------------------------------------------


def _ids(tokenizer, text: str, length: int, device) -> torch.Tensor:
    return tokenizer(
        [text], padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)  # [1, L]


def _pack(states: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """[1, L, D] states and [1, P] pooled (P ≤ D) → [1, L + 1, D]."""
    row = torch.nn.functional.pad(pooled, (0, states.shape[-1] - pooled.shape[-1]))[:, None]
    return torch.cat([states, row], dim=1)


def unpack(cond: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L + 1, D] → (states [B, L, D], pooled [B, pooled_dim])."""
    return cond[:, :-1], cond[:, -1, :pooled_dim]


def _t5(bundle: FlowBundle, encoder, tokenizer, text: str, width: int) -> torch.Tensor:
    """T5's last hidden states [1, S, D], or S zero rows of `width` when the model has no T5."""
    s = bundle.max_sequence_length
    if encoder is None:
        return torch.zeros(1, s, width, device=bundle.device, dtype=bundle.dtype)
    return encoder(_ids(tokenizer, text, s, bundle.device))[0]


def _encode_sd3(bundle: FlowBundle, text: str) -> torch.Tensor:
    """SD3 (Esser et al. 2024, §5.2.1): both CLIPs' penultimate states side by side, zero-padded to
    T5's width, then T5's states along the sequence; pooled = both CLIPs' projections."""
    states, pooled = [], []
    for enc, tok in ((bundle.text_encoder, bundle.tokenizer), (bundle.text_encoder_2, bundle.tokenizer_2)):
        out = enc(_ids(tok, text, tok.model_max_length, bundle.device), output_hidden_states=True)
        states.append(out.hidden_states[-2])  # [1, 77, D_i]
        pooled.append(out[0])  # text_embeds [1, P_i]
    clip = torch.cat(states, dim=-1)  # [1, 77, D1 + D2]
    width = bundle.transformer.config.joint_attention_dim
    t5 = _t5(bundle, bundle.text_encoder_3, bundle.tokenizer_3, text, width)  # [1, S, D3]
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return _pack(torch.cat([clip, t5.to(clip.dtype)], dim=1), torch.cat(pooled, dim=-1))


def _encode_flux(bundle: FlowBundle, text: str) -> torch.Tensor:
    """FLUX: T5's states carry the text; CLIP gives only its pooled output."""
    tok = bundle.tokenizer
    pooled = bundle.text_encoder(_ids(tok, text, tok.model_max_length, bundle.device)).pooler_output
    t5 = _t5(bundle, bundle.text_encoder_2, bundle.tokenizer_2, text, 0)  # [1, S, D]
    return _pack(t5, pooled.to(t5.dtype))


def encode_one(bundle: FlowBundle, text: str) -> torch.Tensor:
    """One text's condition [1, L + 1, D] (`retouch.text.encode_text` caches it)."""
    return (_encode_sd3 if bundle.family == "sd3" else _encode_flux)(bundle, text).to(bundle.dtype)


# --- the network -----------------------------------------------------------------------------------


def pack_flux(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] → FLUX's tokens of 2×2 patches [B, (h/2)·(w/2), 4C]."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_flux(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack_flux`: [B, (h/2)·(w/2), 4C] → [B, C, h, w]."""
    b, _, c4 = tokens.shape
    x = tokens.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def _flux_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """FLUX's image position ids [(h/2)·(w/2), 3]: (0, row, column) of each 2×2 patch."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class ZeroRunAttention:
    """SD3's joint attention (diffusers' `JointAttnProcessor2_0`) where the context's last token
    stands for `copies` identical ones, given once with log(copies) added to its logit.

    Without T5, SD3's context ends in T5's place with zero rows (256 by default). Identical tokens stay
    identical through every block (each block's context path is per token, and SD3 adds positions to
    the image tokens only), and attending to k equal keys with equal values is attending to one with
    its weight multiplied by k: the same attention, up to float rounding, on 64 + 25 tokens instead of
    64 + 280 for the shipped mini SD3's 64-pixel image (docs/flow.md, "Speed")."""

    def __init__(self, copies: int):
        self.bias = math.log(copies)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        b, n = hidden_states.shape[:2]

        def heads(x):  # [B, T, H·d] → [B, H, T, d]
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = (
            heads(attn.to_q(hidden_states)),
            heads(attn.to_k(hidden_states)),
            heads(attn.to_v(hidden_states)),
        )
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        bias = None
        if encoder_hidden_states is not None:
            cq = heads(attn.add_q_proj(encoder_hidden_states))
            ck = heads(attn.add_k_proj(encoder_hidden_states))
            cv = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
            bias = torch.zeros(1, 1, 1, k.shape[2], dtype=q.dtype, device=q.device)  # [1, 1, 1, T_all]
            bias[..., -1] = self.bias  # the run's one token weighs as `copies`
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * q.shape[-1])  # [B, T_all, H·d]
        if encoder_hidden_states is None:
            return attn.to_out[1](attn.to_out[0](out))
        img, ctx = out[:, :n], out[:, n:]
        if not attn.context_pre_only:
            ctx = attn.to_add_out(ctx)
        return attn.to_out[1](attn.to_out[0](img)), ctx


def zero_tokens(bundle: FlowBundle) -> int:
    """How many zero rows of the absent T5 `ZeroRunAttention` may give once: S for an SD3 model
    without T5 run in float32 with diffusers' stock attention, else 1 (nothing collapsed: a
    half-precision log(S) logit would round, a user's own processor is kept)."""
    s = bundle.max_sequence_length
    if bundle.family != "sd3" or bundle.text_encoder_3 is not None or s < 2 or bundle.dtype != torch.float32:
        return 1
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    stock = all(type(p) is JointAttnProcessor2_0 for p in bundle.transformer.attn_processors.values())
    return s if stock else 1


def _zero_run(s: int, states: torch.Tensor) -> int:
    """s (the model's `zero_tokens`) where the context [B, L, D] does end in that many zero rows, else 1."""
    if s == 1 or states.shape[1] <= s or states.dtype != torch.float32 or states[:, -s:].any():
        return 1
    return s


@contextlib.contextmanager
def one_for_many(transformer, copies: int):
    """Inside the block the transformer attends with `ZeroRunAttention(copies)`; its own processors
    are restored after (nothing changes for copies = 1)."""
    if copies == 1:
        yield
        return
    own = dict(transformer.attn_processors)
    transformer.set_attn_processor(ZeroRunAttention(copies))
    try:
        yield
    finally:
        transformer.set_attn_processor(own)


def velocity_fn(bundle: FlowBundle, counter) -> VFn:
    """The transformer as v_fn(x_t [B, C, h, w], t, cond [B, L + 1, D], guidance=None) → v, float32,
    counting its batch elements in `counter`. FLUX: `guidance` is the guidance embedding's scale, a
    number or one per batch element [B]."""
    tr, dt = bundle.transformer, bundle.dtype
    zeros = zero_tokens(bundle) if bundle.family == "sd3" else 1  # once per edit, not per call

    @torch.inference_mode()
    def v_fn(x_t: torch.Tensor, t: float, cond: torch.Tensor, guidance=None) -> torch.Tensor:
        b, _, h, w = x_t.shape
        counter.n += b
        if bundle.family == "sd3":
            states, pooled = unpack(cond, tr.config.pooled_projection_dim)
            ts = torch.full((b,), t * 1000.0, device=x_t.device, dtype=dt)
            copies = _zero_run(zeros, states)
            with one_for_many(tr, copies):
                out = tr(
                    hidden_states=x_t.to(dt),
                    encoder_hidden_states=states[:, : states.shape[1] - copies + 1].to(dt),
                    pooled_projections=pooled.to(dt),
                    timestep=ts,
                ).sample
            return out.float()
        states, pooled = unpack(cond, tr.config.pooled_projection_dim)
        g = None
        if bundle.guidance_distilled:
            g = torch.as_tensor(3.5 if guidance is None else guidance, device=x_t.device, dtype=torch.float32)
            g = g.expand(b) if g.dim() == 0 else g
        out = tr(
            hidden_states=pack_flux(x_t.to(dt)),
            timestep=torch.full((b,), t, device=x_t.device, dtype=dt),
            guidance=g,
            pooled_projections=pooled.to(dt),
            encoder_hidden_states=states.to(dt),
            txt_ids=torch.zeros(states.shape[1], 3, device=x_t.device, dtype=dt),
            img_ids=_flux_ids(h, w, x_t.device, dt),
        ).sample
        return unpack_flux(out.float(), h, w)

    return v_fn


# --- the path --------------------------------------------------------------------------------------


def levels(scheduler, num_inference_steps: int, latent_hw: tuple[int, int] | None = None) -> list[float]:
    """The scheduler's levels t_0 > … > t_{N−1} and a final 0 (N + 1 floats), as diffusers' SD3 and
    FLUX pipelines set them: SD3 shifts by its config's `shift`; FLUX (dynamic shifting) by μ that
    grows with the number of image tokens, (h/2)·(w/2) of the latent `latent_hw`."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    c = sched.config
    if c.use_dynamic_shifting:
        if latent_hw is None:
            raise SettingError("this model shifts its levels by the image's size: give the latent's size")
        tokens = (latent_hw[0] // 2) * (latent_hw[1] // 2)
        slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
        mu = c.base_shift + slope * (tokens - c.base_image_seq_len)
        n = num_inference_steps
        sigmas = [1.0 - i * (1.0 - 1.0 / n) / max(1, n - 1) for i in range(n)]  # linspace(1, 1/N, N)
        sched.set_timesteps(sigmas=sigmas, mu=mu)
    else:
        sched.set_timesteps(num_inference_steps)
    return [float(s) for s in sched.sigmas]


@dataclass(frozen=True)
class FlowSchedule:
    """The step math of the rectified-flow path, in the interface of `retouch.schedule.Schedule`, so
    DiffEdit's and LEDITS' loops run on a flow model unchanged: their "ε" is the network's velocity v
    (CFG and SEGA are linear in it), a level is the path's t, and level −1 is the clean end, t = 0."""

    scheduler: Any
    prediction_type: str = "flow"

    def timesteps(self, num_inference_steps: int) -> list[float]:
        """The levels noisiest first, without the final 0 (the loops' clean end is −1)."""
        return levels(self.scheduler, num_inference_steps)[:-1]

    @staticmethod
    def level(t: float) -> float:
        return 0.0 if t < 0 else float(t)

    def to_eps(self, model_output: torch.Tensor, x_t: torch.Tensor, t: float) -> torch.Tensor:
        return model_output

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
        return add_noise(x0, noise, self.level(t))

    def pred_x0(self, x_t: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
        """x̂0 = x_t − t·v."""
        return x_t - self.level(t) * v

    def ddim_step(self, x_t: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
        """The flow ODE's Euler step, which on this path is DDIM's (either direction)."""
        return euler(x_t, v, self.level(t), self.level(t_next))

    def ddpm_mean_sigma(self, x_t: torch.Tensor, v: torch.Tensor, t: float, t_next: float):
        """(μ, η) of the DDPM-type step (`stochastic_mean_sigma`). The last step, to the clean end, is
        deterministic (η = 0); it returns η = 1 there, so that an inversion keeps x0 − μ as its last
        map and sampling with it lands on x0 exactly, as the edit-friendly inversion keeps its last z."""
        mu, eta = stochastic_mean_sigma(x_t, v, self.level(t), self.level(t_next))
        return mu, (eta if eta > 0 else 1.0)

    def dpmpp_2m(self, *args, **kwargs):
        raise SettingError(
            "the dpmsolver++ solver is for Stable Diffusion's path: use ddim/ddpm on a flow model"
        )


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
    """x_t = (1 − t)·x0 + t·ε (the rectified-flow path)."""
    return (1 - t) * x0 + t * noise


def euler(x: torch.Tensor, v: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """x_s = x_t + (s − t)·v: the flow ODE's Euler step, either direction (DDIM on this path)."""
    return x + (s - t) * v


def stochastic_mean_sigma(x: torch.Tensor, v: torch.Tensor, t: float, s: float):
    """The DDPM-type step from t to s < t on the path x_t = α_t·x0 + σ_t·ε (α = 1 − t, σ = t):
    x_s = α_s·x̂0 + √(σ_s² − η²)·ε̂ + η·z,  η² = σ_s²·(1 − (α_t·σ_s)² / (α_s·σ_t)²)
    (on Stable Diffusion's path this is the DDPM posterior). Returns (μ, η); η = 0 at s = 0."""
    x0_hat, eps_hat = x - t * v, x + (1 - t) * v
    a_t, s_t, a_s, s_s = 1 - t, t, 1 - s, s
    eta2 = 0.0 if s_s == 0 else s_s**2 * (1 - (a_t * s_s) ** 2 / (a_s * s_t) ** 2)
    eta2 = max(eta2, 0.0)
    return a_s * x0_hat + math.sqrt(max(s_s**2 - eta2, 0.0)) * eps_hat, math.sqrt(eta2)


def check_flow_model(model, method: str) -> None:
    """A flow bundle, else a one-line error."""
    if not is_flow(model):
        family = getattr(model, "family", type(model).__name__)
        raise ModelError(
            f"{method} runs on a flow model (Stable Diffusion 3, FLUX; shipped: shapes-sd3); "
            f"this one is {family}"
        )


def check_carried_over(model, method: str, cfg) -> None:
    """DiffEdit and LEDITS on a flow model (docs/flow.md): SD3 only (FLUX has no ∅ branch), the
    papers' solvers (Euler/DDIM and the DDPM-type step), and none of our cross-attention word weights
    (written for the UNet's cross-attention; SD3's is joint attention). One line, before model work."""
    if not is_flow(model):
        return
    refuse_flux(model, method)
    if getattr(cfg, "solver", "ddim") not in ("ddim", "ddpm"):
        raise SettingError(f"solver {cfg.solver} is for Stable Diffusion's path: a flow model uses ddim/ddpm")
    if getattr(cfg, "implicit_mask", "none") in ("attention", "intersect"):
        raise SettingError(
            "LEDITS++'s attention mask reads a UNet's cross-attention: on a flow model use implicit_mask"
            " noise (or none)"
        )
    if getattr(cfg, "weighs_words", False):
        raise SettingError(
            "changed_word_scale and shared_word_scale weigh a UNet's cross-attention: keep them at 1 on a"
            " flow model (its presets leave them out)"
        )


def refuse_flux(model, method: str) -> None:
    """FLUX is distilled (dev: guidance as an input; schnell: few steps): it has no ∅ branch to
    contrast, invert or guide against, so only FlowEdit runs on it."""
    if model.family == "flux":
        raise SettingError(
            f"{method} needs an unconditional (∅) branch, which FLUX (a distilled model) has not:"
            " use flowedit on FLUX"
        )
