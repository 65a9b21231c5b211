"""FlowEdit (Kulikov, Kleiner, Huberman-Spiegelglas & Michaeli, ICCV 2025, arXiv 2412.08629):
inversion-free editing on a flow model (docs/flow.md).

Z starts at the image's latent and follows the difference of two velocity fields: the target text's at
Z + Z_src − x_src and the source text's at Z_src, a fresh noising of the image at each level. No
inversion, so no reconstruction error; the average over n_avg noises smooths the direction.
Beyond the paper: `mask="infer"` (DiffEdit's mask of the target against the source, fitted to the
image's edges: INFERRED_MASK) or a given mask confines the edit: Z moves only inside it and stays
the image's latent outside.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, replace

import torch

from retouch.denoiser import EvalCounter, cfg
from retouch.errors import SettingError
from retouch.flows import add_noise, check_flow_model, euler, levels, velocity_fn
from retouch.latents import decode, to_image
from retouch.methods.common import Progress, check_finite, generator, given_mask, prepare, stage
from retouch.methods.diffedit import diffedit_mask
from retouch.presets import FLOWEDIT, on_model
from retouch.settings import check_number, configured, setting
from retouch.text import check_prompt, encode_text
from retouch.types import EditResult

# The published settings per family (the paper's Tables and its reference code's defaults).
PUBLISHED = {
    "sd3": dict(num_inference_steps=50, n_max=33, n_min=0, n_avg=1, source_guidance_scale=3.5,
                target_guidance_scale=13.5),
    "flux": dict(num_inference_steps=28, n_max=24, n_min=0, n_avg=1, source_guidance_scale=1.5,
                 target_guidance_scale=5.5),
}  # fmt: skip


@dataclass(frozen=True)
class FlowEditConfig:
    """Every FlowEdit setting, once; None: the published value for the model's family (PUBLISHED:
    SD3 T = 50, n_max = 33, w_src = 3.5, w_tar = 13.5; FLUX T = 28, n_max = 24, w_src = 1.5, w_tar = 5.5)."""

    num_inference_steps: int | None = setting(
        None, "T, the scheduler's steps (SD3 50, FLUX 28)", values="[1, 1000], whole"
    )
    n_max: int | None = setting(
        None, "the edit runs the last n_max of the T steps (SD3 33, FLUX 24)", values="[0, 1000], whole"
    )
    n_min: int | None = setting(
        None, "the last n_min steps sample plainly under the target (0)", values="[0, 1000], whole"
    )
    n_avg: int | None = setting(
        None, "noises averaged per step for the edit direction (1)", values="[1, 100], whole"
    )
    source_guidance_scale: float | None = setting(
        None, "w_src, CFG on the source text (SD3 3.5, FLUX 1.5)", values="[0, 100]"
    )
    target_guidance_scale: float | None = setting(
        None, "w_tar, CFG on the target text (SD3 13.5, FLUX 5.5)", values="[0, 100]"
    )

    def resolved(self, family: str) -> FlowEditConfig:
        """The config with every None replaced by the family's published value, checked."""
        given = {k: v for k, v in asdict(self).items() if v is not None}
        out = FlowEditConfig(**{**PUBLISHED[family], **given})
        out.check()
        return out

    def check(self) -> None:
        """Raise SettingError on a value out of range (None is left to `resolved`)."""
        t = self.num_inference_steps
        if t is not None:
            check_number("num_inference_steps", t, 1, 1000, integer=True)
        for name in ("n_max", "n_min"):
            v = getattr(self, name)
            if v is not None:
                check_number(name, v, 0, 1000, integer=True)
        if self.n_avg is not None:
            check_number("n_avg", self.n_avg, 1, 100, integer=True)
        for name in ("source_guidance_scale", "target_guidance_scale"):
            v = getattr(self, name)
            if v is not None:
                check_number(name, v, 0, 100)
        if None not in (t, self.n_max, self.n_min):
            if self.n_max > t:
                raise SettingError(f"n_max must be <= num_inference_steps ({t}), got {self.n_max}")
            if self.n_min > self.n_max:
                raise SettingError(f"n_min must be <= n_max ({self.n_max}), got {self.n_min}")


# mask="infer": DiffEdit's mask fitted to the image's edges, less its regions of under 0.8 of the
# strongest one's summed score (the mask of DiffEdit's recolor and remove presets). On 60 fresh
# recolours, reshapes and removals (shapes-sd3 version 4, the stronger preset): 30 edits at 31.45 dB
# of background, 30 at 28.25 dB inside the paper's mask, 29 at 25.17 dB with no mask.
INFERRED_MASK = dict(mask_refine_radius=3.0, mask_keep_ratio=0.8)

PRESETS = FLOWEDIT  # SD3's (retouch.presets.FLOWEDIT_BY_FAMILY: a preset's steps are its family's)


def checked_config(model, config: FlowEditConfig | None = None, preset=None, settings=None) -> FlowEditConfig:
    """The edit's settings on `model`: a flow model, then config, its family's preset and settings,
    checked, each unset one the family's published value (one-line errors, before any model work)."""
    check_flow_model(model, "flowedit")
    table = on_model("flowedit", model.family)
    if preset is not None and not table:
        raise SettingError(f"FlowEdit has no presets on {model.family} (they are measured on SD3)")
    c = configured(config or FlowEditConfig(), table, preset, settings or {})
    return c.resolved(model.family)


def _chunked(v_fn, max_batch: int | None):
    """v_fn over at most `max_batch` batch elements a call (None: every element in one call): the
    same velocities, in ⌈B / max_batch⌉ transformer calls."""
    if max_batch is None:
        return v_fn

    def chunked(x, t, cond, guidance=None):
        parts = []
        for i in range(0, x.shape[0], max_batch):
            g = guidance[i : i + max_batch] if torch.is_tensor(guidance) and guidance.dim() else guidance
            parts.append(v_fn(x[i : i + max_batch], t, cond[i : i + max_batch], guidance=g))
        return torch.cat(parts)

    return chunked


def _edit_directions(model, v_fn, zs, x_src, t, conds, c: FlowEditConfig, gen) -> torch.Tensor:
    """V_k = mean over n_avg fresh ε of v_tar_k(Z_k + Z_src − x_src) − v_src(Z_src) with
    Z_src = (1 − t)·x_src + t·ε, for every target k: zs [K, C, h, w] → [K, C, h, w]. Every edit of
    one seed draws the same ε, so Z_src and its source velocity are the targets' shared branch: ONE
    network call of n_avg·(2 + 2K) batch elements on SD3 ([∅, c_src] on Z_src, [∅, c_tar_k] on each
    Z_tar_k), n_avg·(1 + K) on FLUX (guidance embeddings, no ∅)."""
    uncond, src, tars = conds  # [1, L, D], [1, L, D], [K, L, D]
    k, a = zs.shape[0], c.n_avg
    noises = [
        torch.randn(x_src.shape, generator=gen, device=x_src.device, dtype=x_src.dtype) for _ in range(a)
    ]
    z_src = torch.cat([add_noise(x_src, n, t) for n in noises])  # [A, C, h, w]
    z_tar = (zs[None] + (z_src - x_src)[:, None]).flatten(0, 1)  # [A·K, C, h, w], noise-major
    tar_conds = tars.repeat(a, 1, 1)  # [A·K, L, D]
    if model.family == "flux":  # one branch per text, each with its own guidance embedding
        g = torch.tensor(
            [c.source_guidance_scale] * a + [c.target_guidance_scale] * (a * k), device=zs.device
        )
        v = v_fn(torch.cat([z_src, z_tar]), t, torch.cat([src.expand(a, -1, -1), tar_conds]), guidance=g)
        v_src, v_tar = v[:a], v[a:]
    else:
        x = torch.cat([z_src, z_src, z_tar, z_tar])  # [2A + 2AK, C, h, w]
        cond = torch.cat(
            [uncond.expand(a, -1, -1), src.expand(a, -1, -1), uncond.expand(a * k, -1, -1), tar_conds]
        )
        v_su, v_sc, v_tu, v_tc = v_fn(x, t, cond).split([a, a, a * k, a * k])
        v_src, v_tar = cfg(v_su, v_sc, c.source_guidance_scale), cfg(v_tu, v_tc, c.target_guidance_scale)
    v_tar = v_tar.view(a, k, *zs.shape[1:])  # [A, K, C, h, w]
    direction = torch.zeros_like(zs)
    for i in range(a):
        direction += (v_tar[i] - v_src[i : i + 1]) / a
    return direction


def _target_velocities(model, v_fn, xs, t, conds, c: FlowEditConfig) -> torch.Tensor:
    """Each target's guided velocity at its own xs [K, C, h, w]: CFG over [∅, c_tar_k] (SD3, 2K batch
    elements) or the guidance embedding (FLUX, K), in one call."""
    uncond, _, tars = conds
    if model.family == "flux":
        return v_fn(xs, t, tars, guidance=c.target_guidance_scale)
    k = xs.shape[0]
    v_u, v_c = v_fn(torch.cat([xs, xs]), t, torch.cat([uncond.expand(k, -1, -1), tars])).chunk(2)
    return cfg(v_u, v_c, c.target_guidance_scale)


def flowedit_loop(
    model, v_fn, x_src, ts: list[float], conds, c: FlowEditConfig, gen, callback=None, masks=None
):
    """FlowEdit's loop (the paper's Algorithm 1) over levels ts (T + 1, ending at 0) for K targets at
    once (conds: ∅ [1, L, D], source [1, L, D], targets [K, L, D]; one network call a step): the edit
    runs the last n_max steps; its last n_min steps sample plainly under each target from
    X = Z + (x_src noised to that level) − x_src. x_src [1, C, h, w] → the edited latents [K, C, h, w].
    masks [K, 1, h, w] (ours, optional; 1 = edit): each edit's direction is kept inside its mask
    only, so Z stays x_src outside it; in the last n_min steps X outside it follows the noised x_src."""
    steps = len(ts) - 1
    z, x = x_src.repeat(conds[2].shape[0], 1, 1, 1), None  # [K, C, h, w]
    for i in range(steps - c.n_max, steps):
        t, s = ts[i], ts[i + 1]
        if steps - i > c.n_min:
            v = _edit_directions(model, v_fn, z, x_src, t, conds, c, gen)  # [K, C, h, w]
            z = euler(z, v if masks is None else masks * v, t, s)
        else:
            if x is None:  # entering the last n_min steps: leave the edit path for plain sampling
                noise = torch.randn(x_src.shape, generator=gen, device=x_src.device, dtype=x_src.dtype)
                x = z + add_noise(x_src, noise, t) - x_src  # [K, C, h, w]
            x = euler(x, _target_velocities(model, v_fn, x, t, conds, c), t, s)
            if masks is not None:
                x = masks * x + (1 - masks) * add_noise(x_src, noise, s)
        if callback:
            callback(i - (steps - c.n_max) + 1, c.n_max)
    return z if x is None else x


def _per_target(mask, n: int) -> bool:
    """Whether `mask` is a list of masks, one per target (of `n`), rather than one mask given as
    nested lists of numbers: rows [H][W], or with channels [H][W][C] (C 1, 3 or 4) or [C][H][W],
    as an array of the same shape would be read. Nested lists three deep are one mask with channels
    unless they hold one [H][W] mask per target."""
    if not isinstance(mask, (list, tuple)) or not mask:
        return False
    depth, inner, item = 0, mask, mask
    while isinstance(item, (list, tuple)) and item:
        depth, inner, item = depth + 1, item, item[0]
    if not isinstance(item, numbers.Number):
        return True  # paths, images, arrays or None, one per target
    if depth == 3:
        return len(mask) == n and len(inner) not in (1, 3, 4)
    return depth > 3


def _masks(model, image, prep, source: str, targets: list[str], mask, seed: int) -> list[tuple]:
    """(Mask or None, evaluations spent on it here, "infer"/"given"/None) for each edit: None (the
    paper: the whole image); "infer": DiffEdit's mask of the target against the source, fitted
    (INFERRED_MASK), from the same seed (2n evaluations); a Mask (paid for before: 0); or a mask
    of the image's size (path, image, array or nested list of rows; nonzero = edit). A list of
    masks gives one per target."""
    masks = list(mask) if _per_target(mask, len(targets)) else [mask] * len(targets)
    if len(masks) != len(targets):
        raise SettingError(f"mask: {len(masks)} masks for {len(targets)} targets")
    if model.family == "flux" and any(isinstance(m, str) and m == "infer" for m in masks):
        raise SettingError(
            "mask='infer' needs DiffEdit's mask, which FLUX (a distilled model, no ∅ branch) cannot "
            "infer: give a mask file"
        )
    out = []
    for target, m in zip(targets, masks):
        if m is None:
            out.append((None, 0, None))
            continue
        if isinstance(m, str) and m == "infer":
            m = diffedit_mask(model, image, target, source, seed=seed, x0=prep.x0, **INFERRED_MASK)
            out.append((m, m.unet_evals, "infer"))
            continue
        out.append((given_mask(model, m, prep, feather=1.0), 0, "given"))
    return out


def flowedit(
    model,
    image,
    source: str,
    target: str,
    config: FlowEditConfig | None = None,
    preset: str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    mask=None,
    **settings,
) -> EditResult:
    """Edit `image` from the `source` text's description to the `target` text's with FlowEdit.

    Args:
        model (`FlowBundle`): a flow model (`retouch.load` of a Stable Diffusion 3 or FLUX folder,
            or "shapes-sd3").
        image (path, PIL image or array): the image to edit.
        source (`str`): what the image shows now; may be "" (the ∅ text).
        target (`str`): what it should show.
        config (`FlowEditConfig`, *optional*): None fields take the family's published values.
        preset (`str`, *optional*): one of `PRESETS` ("stronger", "background"; SD3's, ours:
            the published settings are the defaults), under the explicit settings.
        seed (`int`, defaults to 0): seeds the fresh noises; the same seed gives the same image.
        progress (*optional*): progress(stage, done, total) after each step.
        mask (*optional*; ours): None (the paper: the whole image may change); "infer": DiffEdit's
            mask of the target against the source, fitted to the image's edges (INFERRED_MASK);
            a `Mask` from `diffedit_mask`; or a mask of the image's size (nonzero = edit). The
            latent outside it stays the image's.
        **settings: any FlowEditConfig field by name.

    Returns:
        `EditResult`: the image, the mask used (or None), unet_evals (transformer batch elements,
        an inferred mask's included), the settings used.
    """
    return flowedit_many(
        model, image, source, [target], config, preset, seed, progress, mask=mask, **settings
    )[0]


def flowedit_many(
    model,
    image,
    source: str,
    targets: list[str],
    config: FlowEditConfig | None = None,
    preset: str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    max_batch: int | None = None,
    mask=None,
    **settings,
) -> list[EditResult]:
    """Several FlowEdit edits of one image (one per target text) as ONE transformer call a step:
    the image is encoded once; each edit draws its noises from `seed` as it would alone, so the
    noised image Z_src and its source velocity are shared, and each edit equals its single edit (to
    float rounding). A step's batch: n_avg·(2 + 2K) elements on SD3, n_avg·(1 + K) on FLUX.

    Args:
        model (`FlowBundle`): a flow model.
        image (path, PIL image or array): the image to edit.
        source (`str`): what the image shows now; may be "".
        targets (`list[str]`): one target text per edit.
        config (`FlowEditConfig`, *optional*): None fields take the family's published values.
        preset (`str`, *optional*): one of `PRESETS` (SD3's), under the explicit settings.
        seed (`int`, defaults to 0): seeds every edit's noises.
        progress (*optional*): progress(stage, done, total) after each step.
        max_batch (`int`, *optional*): at most this many batch elements a transformer call (a
            step's batch split into ⌈B / max_batch⌉ calls, the same results); None: one call.
        mask (*optional*; ours): as `flowedit`'s, for every target, or a list of one per target.
        **settings: any FlowEditConfig field by name.

    Returns:
        `list[EditResult]`: one per target, in order; their unet_evals add up to the edit's
        transformer batch elements, the shared source branch counted in the first's.
    """
    c = checked_config(model, config, preset, settings)
    source = check_prompt(model, source, "source", allow_empty=True)
    if not targets:
        raise SettingError("targets is empty: give at least one target text")
    if max_batch is not None:
        check_number("max_batch", max_batch, 1, None, integer=True)
    targets = [check_prompt(model, t, "target") for t in targets]
    prep = prepare(model, image)
    x_src = prep.x0  # [1, C, h, w]
    masks = _masks(model, image, prep, source, targets, mask, seed)
    stacked = None
    if any(m is not None for m, _, _ in masks):  # [K, 1, h, w], 1 = edit
        ones = torch.ones(x_src.shape[-2:], device=x_src.device)
        stacked = torch.stack([ones if m is None else m.latent.to(x_src) for m, _, _ in masks])[:, None]
    ts = levels(model.scheduler, c.num_inference_steps, tuple(x_src.shape[-2:]))
    counter = EvalCounter()
    v_fn = _chunked(velocity_fn(model, counter), max_batch)
    uncond, src, *tars = encode_text(model, ["", source, *targets]).split(1)  # [1, L, D] each
    conds = (uncond, src, torch.cat(tars))  # ∅, c_src, the targets' [K, L, D]
    gen = generator(model, seed)
    zs = flowedit_loop(model, v_fn, x_src, ts, conds, c, gen, stage(progress, "edit"), stacked)
    zs = check_finite(zs, "the guidance scales")
    shared = (c.n_max - c.n_min) * c.n_avg * (1 if model.family == "flux" else 2)  # the source branch
    own = (counter.n - shared) // len(targets)
    results = []
    for k, (target, (m, spent, masked)) in enumerate(zip(targets, masks)):
        z = zs[k : k + 1]  # [1, C, h, w]
        img = to_image(decode(model, z), prep.pixels.height, prep.pixels.width)
        results.append(
            EditResult(
                img,
                m,
                own + (shared if k == 0 else 0) + spent,
                {
                    "method": "flowedit",
                    "source": source,
                    "target": target,
                    **asdict(c),
                    "preset": preset,
                    "mask": masked,
                },
                seed,
                latents=z,
                message=prep.note,
            )
        )
    return results


def published(family: str) -> FlowEditConfig:
    """The published settings of a family, as a config."""
    return replace(FlowEditConfig(), **PUBLISHED[family])
