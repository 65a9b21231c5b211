"""LEDITS (Tsaban & Passos 2023, arXiv 2307.00522) = edit-friendly DDPM inversion + SEGA.

    inv = invert(model, image, source="a red circle on a white background")   # docs/ledits.md, step 1
    out = ledits(model, inv, add=["green circle"], remove=["red circle"])       # steps 2 and 3
    out = ledits(model, inv, prompt="a green circle on a white background")

The inversion is a value: reuse it for any number of edits, or save it and load it later.
LEDITS++ (Brack et al. 2024, arXiv 2311.16711) is `preset="ledits++"`: its DPM-Solver++ 2M SDE
inversion and its implicit masks (`implicit_mask`), each concept guided only inside its own.
Beyond the paper: `mask="infer"` (DiffEdit's mask) or a given mask confines the guidance to the
edited region and pins the latents outside it to the inversion's trajectory; `paste_back=True`
then also keeps the input's pixels outside it (the VAE decoder sees the whole latent, so edited
latents shift its colours everywhere).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from retouch.attention import concept_level, level_maps
from retouch.denoiser import EvalCounter, guided_eps, unet_eps
from retouch.errors import PromptError, SettingError
from retouch.flows import check_carried_over
from retouch.guidance import MASK_MODES, Concept, Guide, SegaState, sega_eps_many
from retouch.inversion import check_inversion, ddpm_invert
from retouch.latents import decode, fitted, image_hash, paste_back, to_image, to_pixels, upsample_mask
from retouch.methods.common import Progress, check_finite, check_model, generator, mask_for, prepare, stage
from retouch.methods.diffedit import diffedit_mask
from retouch.presets import LEDITS
from retouch.sampling import ddpm_sample
from retouch.schedule import Schedule
from retouch.settings import check_number, check_seed, configured, setting
from retouch.text import check_prompt, encode_text, token_count
from retouch.timing import Timer
from retouch.types import EditResult, Inversion, Mask, ModelBundle

PRESETS = LEDITS  # the reference demo's concept settings (retouch.presets)

Number = float | Sequence[float]
INVERSION_FIELDS = ("num_inference_steps", "skip", "source_guidance_scale", "solver")  # what invert() reads
SOLVERS = ("ddpm", "dpmsolver++")
IMPLICIT = ("none", *MASK_MODES)
# The named fast setting: a fifth of the defaults' evaluations at their quality on ShapesBench (the
# paper's DDPM at N=20 and its skip fraction; DPM-Solver++ did worse there, BENCHMARKS.md)
FAST = dict(num_inference_steps=20, skip=0.36)


@dataclass(frozen=True)
class LEditsConfig:
    """Every LEDITS default, once: the papers' values, as the reference demo the LEDITS authors
    published with their paper sets them (Tsaban & Passos 2023, arXiv 2307.00522; the Hugging Face
    Space editing-images/ledits; docs/ledits.md, defaults).

    The papers': N, skip and w_src (edit-friendly DDPM inversion), w_tar, and SEGA's s_i, δ_i, λ_i,
    w_i, the cool-down, s_m and β_m. Ours (a field's `ours`; off by default): paste_back and
    feather. solver's dpmsolver++ is LEDITS++'s inversion (Brack et al. 2024), for fewer steps.

    The edit_* fields are one value for every concept or a sequence of one per concept (the
    concepts to add first, then those to remove)."""

    num_inference_steps: int = setting(100, "N", values="[1, 1000], whole")
    skip: float = setting(
        36,
        "steps not edited at the top: a count (36) or a fraction of N (0.36)",
        values="a whole count below N, or a fraction of N in (0, 1)",
    )
    source_guidance_scale: float = setting(
        3.5, "w_src, CFG of the source prompt while inverting", values="≥ 0"
    )
    target_guidance_scale: float = setting(
        15.0, "w_tar, CFG of the target prompt while editing", values="≥ 0"
    )
    edit_scale: Number = setting(7.0, "s_i", values="≥ 0")
    edit_warmup: Number = setting(2, "δ_i, steps before a concept's term is applied", values="≥ 0, whole")
    edit_cooldown: Number | None = setting(
        None, "step from which a concept's term stops (None: never)", advanced=True, values="≥ 0, whole"
    )
    edit_threshold: Number = setting(0.95, "λ_i: per-channel quantile; 0.95 keeps 5 %", values="[0, 1]")
    edit_weight: Number = setting(
        1.0, "w_i ≥ 0, normalised over the active concepts", advanced=True, values="≥ 0"
    )
    momentum_scale: float = setting(0.3, "s_m", advanced=True, values="≥ 0")
    momentum_beta: float = setting(0.6, "β_m", advanced=True, values="[0, 1]")
    feather: float = setting(1.0, "pixels, for the display mask and paste-back", ours=True, values="[0, 64]")
    paste_back: bool = setting(
        False, "with a mask: paste the unmasked input pixels back after decoding", ours=True
    )
    solver: str = setting(
        "ddpm",
        "ddpm (the paper) or dpmsolver++: LEDITS++'s 2M SDE inversion, for fewer steps",
        SOLVERS,
        advanced=True,
    )
    implicit_mask: str = setting(
        "none",
        "LEDITS++'s implicit masks: none (LEDITS: SEGA's per-channel threshold), intersect "
        "(cross-attention ∩ noise estimate, the paper's), attention or noise; λ_i is their quantile",
        IMPLICIT,
        advanced=True,
    )
    implicit_keep: bool = setting(
        False,
        "with implicit masks: the latents outside every concept's mask so far follow the "
        "inversion's trajectory, as outside a given mask",
        ours=True,
    )
    attention_alone_above: float = setting(
        1000.0,
        "with intersect masks: the cross-attention mask alone at timesteps above this one "
        "(diffusers' LEDITS++ pipeline: 800); 1000: the intersection at every step (the paper's)",
        ours=True,
        values="[0, 1000]",
    )
    implicit_tokens: str = setting(
        "sequence",
        "whose attention the cross-attention mask sums: sequence (every token after the start "
        "token but the last, as the authors' code and diffusers) or words (the concept's own)",
        ("sequence", "words"),
        advanced=True,
    )

    def check(self) -> None:
        check_number("num_inference_steps", self.num_inference_steps, 1, 1000, integer=True)
        check_number("skip", self.skip, 0)
        if self.skip_steps >= self.num_inference_steps:
            raise SettingError(
                f"skip ({self.skip}) must leave at least one of the {self.num_inference_steps} steps to edit"
            )
        check_number("source_guidance_scale", self.source_guidance_scale, 0)
        check_number("target_guidance_scale", self.target_guidance_scale, 0)
        check_number("momentum_scale", self.momentum_scale, 0)
        check_number("momentum_beta", self.momentum_beta, 0, 1)
        check_number("feather", self.feather, 0, 64)
        check_number("attention_alone_above", self.attention_alone_above, 0, 1000)
        if self.solver not in SOLVERS:
            raise SettingError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.implicit_tokens not in ("sequence", "words"):
            raise SettingError(f"implicit_tokens must be sequence or words, got {self.implicit_tokens!r}")
        if self.implicit_mask not in IMPLICIT:
            raise SettingError(
                f"implicit_mask must be one of {', '.join(IMPLICIT)}, got {self.implicit_mask!r}"
            )

    @property
    def skip_steps(self) -> int:
        """skip as a step count: a value below 1 is a fraction of num_inference_steps."""
        if 0 < self.skip < 1:
            return int(round(self.skip * self.num_inference_steps))
        if int(self.skip) != self.skip:
            raise SettingError(f"skip must be a whole step count or a fraction in (0, 1), got {self.skip}")
        return int(self.skip)


def _config(config, preset, settings) -> LEditsConfig:
    return configured(config or LEditsConfig(), PRESETS, preset, settings)


def _per_concept(name: str, value, k: int, **limits) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * k
    if len(values) != k:
        raise SettingError(f"{name} has {len(values)} values for {k} concepts")
    for v in values:
        if v is not None:
            check_number(name, v, **limits)
    return values


MAX_CONCEPTS = 64  # concepts of one edit: each adds a UNet batch row per step (and memory)


def make_concepts(model, add: Sequence[str], remove: Sequence[str], cfg: LEditsConfig) -> list[Concept]:
    """The SEGA concepts of an edit, with their per-concept settings checked."""
    if isinstance(add, str) or isinstance(remove, str):
        raise SettingError("add and remove take lists of concepts, e.g. add=['green circle']")
    if len(add) + len(remove) > MAX_CONCEPTS:  # each is a UNet batch row at every step
        raise SettingError(
            f"{len(add) + len(remove)} concepts: an edit takes at most {MAX_CONCEPTS} concepts "
            "(added and removed together)"
        )
    texts = [check_prompt(model, c, "concept") for c in [*add, *remove]]
    k = len(texts)
    scale = _per_concept("edit_scale", cfg.edit_scale, k, low=0)
    warmup = _per_concept("edit_warmup", cfg.edit_warmup, k, low=0, integer=True)
    cooldown = _per_concept("edit_cooldown", cfg.edit_cooldown, k, low=0, integer=True)
    threshold = _per_concept("edit_threshold", cfg.edit_threshold, k, low=0, high=1)
    if cfg.implicit_mask != "none":
        _check_implicit(model, texts, threshold)
    weight = _per_concept("edit_weight", cfg.edit_weight, k, low=0)
    return [
        Concept(
            texts[i],
            +1 if i < len(add) else -1,
            float(scale[i]),
            int(warmup[i]),
            None if cooldown[i] is None else int(cooldown[i]),
            float(threshold[i]),
            float(weight[i]),
        )
        for i in range(k)
    ]


def _check_implicit(model, texts: list[str], thresholds: list[float]) -> None:
    """LEDITS++'s masks need a quantile strictly inside (0, 1) and words to attend to."""
    for q in thresholds:
        if not 0 < q < 1:
            raise SettingError(
                f"edit_threshold is the implicit masks' quantile: it must be in (0, 1), got {q}"
            )
    for text in texts:
        if token_count(model, text) == 0:
            raise PromptError(f"concept {text!r} has no tokens: the text encoder reads nothing in it")


def invert(
    model: ModelBundle,
    image,
    source: str = "",
    config: LEditsConfig | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    preset: str | None = None,
    **settings,
) -> Inversion:
    """Edit-friendly DDPM inversion of `image` (docs/ledits.md, step 1) over the steps editing will run.

    Args:
        model (`ModelBundle`): a model from `retouch.load`.
        image (path, `PIL.Image.Image` or array): the image to invert.
        source (`str`, defaults to ""): the image's caption; with one, ε̃ uses CFG w_src, without
            it ε(∅).
        config (`LEditsConfig`, *optional*): every setting at once; the defaults are the papers'.
        seed (`int`, defaults to 0): the seed of the inversion's noises.
        progress (`Callable[[str, int, int], None]`, *optional*): called as progress("invert",
            done, total) after each step.
        preset (`str`, *optional*): one of `PRESETS` (e.g. "ledits++"), the inversion its edits
            will run on: its steps, skip and solver, `settings` laid over them.
        **settings: any `LEditsConfig` field; the inversion reads num_inference_steps, skip,
            source_guidance_scale and solver.

    Returns:
        `Inversion`: the latents and noise maps to edit from (`ledits`) any number of times;
        `Inversion.save(path)` / `Inversion.load(path)` keep it on disk.
    """
    check_model(model)
    cfg = _config(config, preset, settings)
    check_carried_over(model, "ledits", cfg)
    source = check_prompt(model, source, "source", allow_empty=True)
    seed = check_seed(seed)
    prep = prepare(model, image)
    schedule, counter = Schedule.from_scheduler(model.scheduler), EvalCounter()
    timesteps = schedule.timesteps(cfg.num_inference_steps)[cfg.skip_steps :]
    uncond, cond = encode_text(model, ["", source]).split(1)
    eps = guided_eps(
        unet_eps(model, schedule, counter, (prep.pixels.height, prep.pixels.width)),
        cond,
        uncond if source else None,
        cfg.source_guidance_scale if source else 1.0,
    )
    trajectory, zs = ddpm_invert(
        eps, schedule, prep.x0, timesteps, generator(model, seed), stage(progress, "invert"), cfg.solver
    )
    return Inversion(
        prep.x0,
        torch.cat(trajectory),
        zs,
        tuple(timesteps),
        cfg.num_inference_steps,
        cfg.skip_steps,
        source,
        cfg.source_guidance_scale if source else 1.0,
        model.fingerprint,
        model.model_id,
        prep.hash,
        prep.pixels.height,
        prep.pixels.width,
        seed,
        counter.n,
        cfg.solver,
        model.family,
    )


def _edit_mask(model, image, inv: Inversion, job: _Job) -> tuple[Mask | None, int]:
    """The edit's mask and the evaluations spent on it here: None; a Mask given (0); "infer":
    DiffEdit's mask of the query (the prompt, or the added concepts) against the reference (the
    source caption, or the removed concepts); a user mask (0)."""
    mask, concepts = job.mask, job.concepts
    if mask is None:
        return None, 0
    if isinstance(mask, str) and mask == "infer":
        if image is None:
            raise SettingError("mask='infer' needs the image: pass image= with the inversion")
        query = job.prompt or ", ".join(c.text for c in concepts if c.direction > 0)
        reference = inv.source or ", ".join(c.text for c in concepts if c.direction < 0)
        m = diffedit_mask(
            model, image, query or reference, reference if query else "", seed=job.seed, x0=inv.x0
        )  # the inversion's (its image was checked by hash): no VAE pass
        return m, m.unet_evals
    return mask_for(model, mask, inv.height, inv.width, tuple(inv.x0.shape[-2:]), job.cfg.feather), 0


def _resolve_inversion(model, image_or_inversion, image, source, cfg, seed, progress):
    """(the inversion, the image (None if unknown), evaluations spent here): an Inversion given is
    checked against the model, the settings and the image (0); an image is inverted here."""
    inv = image_or_inversion
    if isinstance(inv, Inversion):
        if image is not None and image_hash(fitted(model, image)[0]) != inv.image_hash:
            raise SettingError("the inversion was made from another image")
        _check_inversion(model, inv, cfg)
        return inv, image, 0
    image = inv if image is None else image
    inv = invert(model, image, source, cfg, seed, progress)
    return inv, image, inv.unet_evals


def _guide(model, inv: Inversion, prompt: str, concepts, cfg: LEditsConfig, mask) -> Guide:
    """One edit's CFG + SEGA. No target prompt: the base term is the inversion's own (source with
    w_src, or ∅), so that whatever SEGA does not touch is reconstructed exactly."""
    base_text = prompt or inv.source
    base_scale = cfg.target_guidance_scale if prompt else inv.source_guidance_scale
    texts = ["", *([base_text] if base_text else []), *[c.text for c in concepts]]
    embs = encode_text(model, texts).split(1)  # each [1, L, D]
    implicit = None if cfg.implicit_mask == "none" else cfg.implicit_mask
    return Guide(
        embs[0],
        tuple(concepts),
        tuple(embs[len(embs) - len(concepts) :]),
        embs[1] if base_text else None,
        base_scale,
        cfg.momentum_scale,
        cfg.momentum_beta,
        mask,
        implicit,
        tuple(_tokens(model, c.text, cfg) for c in concepts) if implicit else (),
        cfg.attention_alone_above,
    )


def _tokens(model, text: str, cfg: LEditsConfig) -> int:
    """How many tokens after the start token the concept's cross-attention mask sums."""
    if cfg.implicit_tokens == "words":
        return token_count(model, text)
    return model.tokenizer.model_max_length - 2


def _edit(model, invs: list[Inversion], guides: list[Guide], masks: list, progress, keep: list[bool]):
    """DDPM sampling of every edit from its inversion's x_{t_start} with its z maps and guided ε̃
    (docs/ledits.md, step 3), all edits as ONE batch per step; with a mask, guidance only inside and
    latents outside pinned to the inversion's trajectory. With LEDITS++'s masks, the UNet's
    cross-attention at its 16×16-equivalent level is read at every step. Returns (x0 [B, C, h, w],
    evaluations, the edits' final SEGA states)."""
    schedule, counter = Schedule.from_scheduler(model.scheduler), EvalCounter()
    x = torch.cat([inv.trajectory[:1] for inv in invs])  # [B, C, h, w]
    zs = invs[0].zs if len(invs) == 1 else torch.stack([inv.zs for inv in invs], dim=1)  # [K, B, C, h, w]
    m = pin = None
    if any(keep):
        m, pin = _kept_outside(guides, keep, masks, x), _trajectories(invs)
    elif any(mk is not None for mk in masks):
        ones = torch.ones(x.shape[-2:], device=x.device)
        m = torch.stack([ones if mk is None else mk for mk in masks])[:, None]  # [B, 1, h, w]
        pin = _trajectories(invs)
    eps = unet_eps(model, schedule, counter, (invs[0].height, invs[0].width))
    needs_maps = any(g.needs_maps for g in guides)
    size = concept_level(model.unet.config, *x.shape[-2:]) if needs_maps else None
    last = {}
    with level_maps(model.unet, size) if needs_maps else _nothing() as store:
        many = sega_eps_many(eps, guides, None if store is None else lambda: store.take(size))

        def guided(x, t, states):
            e, last["states"] = many(x, t, states)
            return e, last["states"]

        z = ddpm_sample(
            guided,
            schedule,
            x,
            list(invs[0].timesteps),
            zs,
            tuple(SegaState() for _ in invs),
            pin=pin,
            mask=m,
            progress=stage(progress, "edit"),
            solver=invs[0].solver,
        )
    z = check_finite(z, "the guidance scales (target_guidance_scale, edit_scale, momentum_scale)")
    return z, counter.n, last["states"]


def _trajectories(invs: list[Inversion]) -> torch.Tensor:
    """The inversions' trajectories: [K+1, C, h, w] for one, [K+1, B, C, h, w] for several."""
    return invs[0].trajectory if len(invs) == 1 else torch.stack([inv.trajectory for inv in invs], dim=1)


def _kept_outside(guides: list[Guide], keep: list[bool], given: list, x: torch.Tensor):
    """The mask of each step (ours, implicit_keep): mask(states) → [B, 1, h, w], for an edit that
    keeps, 1 where its concepts have been inside their implicit masks at any step so far (their
    summed masks > 0), 0 elsewhere (pinned to the trajectory); for another, its given mask [h, w]
    or 1 everywhere."""
    ones = torch.ones(x.shape[-2:], device=x.device)  # [h, w]

    def row(g: Guide, k: bool, mk, st: SegaState) -> torch.Tensor:
        if not k or g.implicit is None:
            return ones if mk is None else mk
        return 0 * ones if st.mask_sum is None else (st.mask_sum.sum(0) > 0).float()

    def mask(states) -> torch.Tensor:
        return torch.stack([row(*a) for a in zip(guides, keep, given, states)])[:, None]  # [B, 1, h, w]

    return mask


@contextlib.contextmanager
def _nothing():
    yield None


def _concept_masks(model, state: SegaState, job: _Job, inv: Inversion) -> tuple[tuple[Mask, ...], str]:
    """Each concept's implicit mask as a Mask (scores: the share of its guided steps in which a
    latent pixel was inside, [h, w]; latent: the pixels whose share is at least half the largest,
    as the masks move from step to step) and a message naming the concepts whose mask was empty
    at every step."""
    if state.mask_sum is None:
        return (), ""
    out, notes = [], []
    for c, total, n in zip(job.concepts, state.mask_sum, state.mask_steps):
        share = (total / max(n, 1)).cpu()  # [h, w]
        latent = ((share >= 0.5 * share.max()) & (share > 0)).float()
        soft = upsample_mask(latent, model.vae_scale_factor, inv.height, inv.width, job.cfg.feather)
        out.append(Mask(latent, soft, share))
        if n == 0:
            notes.append(f"concept {c.text!r} was never applied (its warm-up outlasts the edited steps)")
        elif not total.any():
            notes.append(f"concept {c.text!r}: its implicit mask was empty at every step (no edit there)")
    return tuple(out), "; ".join(notes)


EDIT_KEYS = ("add", "remove", "prompt", "seed", "mask", "image", "preset")  # an edit's own
GRID = ("num_inference_steps", "skip_steps", "solver")  # what the edits of a batch share


@dataclass(frozen=True)
class _Job:
    add: tuple[str, ...]
    remove: tuple[str, ...]
    prompt: str
    seed: int
    mask: object
    image: object
    preset: str | None
    cfg: LEditsConfig
    concepts: list


def edit_job(model, edit: dict, config, preset, settings: dict) -> _Job:
    """One edit of a batch, checked before any model work: concepts, texts, seed, settings."""
    if not isinstance(edit, dict):
        raise SettingError("each edit is a dict, e.g. dict(add=['green circle'], remove=['red circle'])")
    own = {k: v for k, v in edit.items() if k not in EDIT_KEYS}
    preset = edit.get("preset", preset)
    cfg = _config(config, preset, {**settings, **own})
    add, remove = edit.get("add", ()), edit.get("remove", ())
    concepts = make_concepts(model, add, remove, cfg)
    prompt = check_prompt(model, edit.get("prompt", ""), "prompt", allow_empty=True)
    return _Job(
        tuple(add), tuple(remove), prompt, check_seed(edit.get("seed", 0)), edit.get("mask"),
        edit.get("image"), preset, cfg, concepts,
    )  # fmt: skip


def ledits_many(
    model: ModelBundle,
    images_or_inversions,
    edits: Sequence[dict],
    source: str = "",
    config: LEditsConfig | None = None,
    preset: str | None = None,
    progress: Progress | None = None,
    **settings,
) -> list[EditResult]:
    """Several LEDITS edits, their sampling as ONE UNet batch per step.

    Each distinct image is inverted once (with `source` and its first edit's seed, the cost counted
    on that edit). The results are those of one `ledits` call per edit, to the float rounding of
    batched arithmetic.

    Args:
        model (`ModelBundle`): a model from `retouch.load`.
        images_or_inversions (an image or `Inversion`, or a list of one per edit): all of one size.
        edits (`Sequence[dict]`): one dict per edit: add, remove, prompt, seed, mask, image, preset
            and any `LEditsConfig` field of its own (e.g. edit_scale).
        source (`str`, defaults to ""): the images' caption, used while inverting.
        config (`LEditsConfig`, *optional*): every setting at once; the defaults are the papers'.
        preset (`str`, *optional*): one of `PRESETS`, for every edit that names none.
        progress (`Callable[[str, int, int], None]`, *optional*): called as progress(stage, done,
            total) after each step.
        **settings: any `LEditsConfig` field, for every edit. The edits share num_inference_steps,
            skip and solver; edits from an Inversion run on its steps unless `config` or a setting
            says otherwise, which is refused.

    Returns:
        `list[EditResult]`: one per edit, in order (as `ledits` returns).
    """
    check_model(model)
    source = check_prompt(model, source, "source", allow_empty=True)
    if config is None:
        settings = {**inversion_steps(images_or_inversions), **settings}
    jobs = [edit_job(model, e, config, preset, settings) for e in edits]
    for j in jobs:
        check_carried_over(model, "ledits", j.cfg)
    if not jobs:
        return []
    given = _batch_items(images_or_inversions, jobs)
    fits: dict[int, tuple] = {}  # each distinct image read and fitted to the budget once

    def fit(image):
        if id(image) not in fits:
            fits[id(image)] = fitted(model, image)
        return fits[id(image)]

    sizes = {(g.width, g.height) if isinstance(g, Inversion) else fit(g)[0].size for g in given}
    if len(sizes) > 1:
        raise SettingError("the images of one batch must be of one size")
    timer = Timer(model.device)
    with timer("invert", when=any(not isinstance(g, Inversion) for g in given)):
        invs, images, evals = _invert_all(model, jobs, given, source, progress)
    masks = []
    with timer("mask", when=any(isinstance(j.mask, str) for j in jobs)):
        for i, (job, inv, image) in enumerate(zip(jobs, invs, images)):
            m, spent = (None, 0) if inv is None else _edit_mask(model, image, inv, job)
            masks.append(m)
            evals[i] += spent
    live = [i for i, inv in enumerate(invs) if inv is not None]
    if live:
        with timer("edit"):
            latents = [_latent(masks[i], invs[i]) for i in live]
            guides = [
                _guide(model, invs[i], jobs[i].prompt, jobs[i].concepts, jobs[i].cfg, m)
                for i, m in zip(live, latents)
            ]
            keep = [jobs[i].cfg.implicit_keep and jobs[i].cfg.implicit_mask != "none" for i in live]
            z, spent, states = _edit(model, [invs[i] for i in live], guides, latents, progress, keep)
            out = decode(model, z)
    results = []
    for i, job in enumerate(jobs):
        record = _record(model, job, given[i], source)
        if invs[i] is None:
            if isinstance(given[i], Inversion):
                _resolve_inversion(model, given[i], job.image, source, job.cfg, job.seed, None)
            results.append(_reconstruction(model, given[i], record, job.seed))
            continue
        b = live.index(i)
        img, note = fit(images[i]) if images[i] is not None else (None, "")
        pixels, m = out[b : b + 1], masks[i]
        if job.cfg.paste_back and m is not None:
            pixels = paste_back(
                pixels, to_pixels(model, img), m.latent, model.vae_scale_factor, job.cfg.feather
            )
        image = to_image(pixels, invs[i].height, invs[i].width)
        evals_i = evals[i] + spent // len(live)
        own, empty = _concept_masks(model, states[b], job, invs[i])
        if m is None and own:  # the implicit masks' union is the edit's mask
            union = torch.stack([c.latent for c in own]).amax(0)
            m = Mask(
                union,
                upsample_mask(union, model.vae_scale_factor, invs[i].height, invs[i].width, job.cfg.feather),
            )
        message = "; ".join(filter(None, [note, empty]))
        results.append(
            EditResult(image, m, evals_i, record, job.seed, dict(timer.times), z[b : b + 1], message, own)
        )
    return results


def inversion_steps(images_or_inversions) -> dict:
    """The steps the first Inversion given was made on, as settings (none given: {}): an edit
    from it runs on them."""
    items = (
        images_or_inversions if isinstance(images_or_inversions, (list, tuple)) else [images_or_inversions]
    )
    inv = next((i for i in items if isinstance(i, Inversion)), None)
    if inv is None:
        return {}
    return dict(num_inference_steps=inv.num_inference_steps, skip=inv.skip, solver=inv.solver)


def _batch_items(images_or_inversions, jobs: list[_Job]) -> list:
    """One image or Inversion per edit (one given for all is repeated), checked against the edits."""
    given = images_or_inversions
    given = list(given) if isinstance(given, (list, tuple)) else [given] * len(jobs)
    if len(given) != len(jobs):
        raise SettingError(f"{len(given)} images for {len(jobs)} edits: give one, or one per edit")
    if len({tuple(getattr(j.cfg, f) for f in GRID) for j in jobs}) > 1:
        raise SettingError("the edits of one batch must share num_inference_steps, skip and solver")
    for job, item in zip(jobs, given):
        if job.cfg.paste_back and job.mask is not None and job.image is None and isinstance(item, Inversion):
            raise SettingError("paste_back needs the image: pass image= with the inversion")
    return given


def _invert_all(model, jobs: list[_Job], given: list, source: str, progress):
    """The inversion (None: nothing to edit), the image and the evaluations spent, per edit. Each
    distinct image is inverted once per seed; an edit given an Inversion spends nothing."""
    invs, images, evals, done = [], [], [], {}
    for job, item in zip(jobs, given):
        if not job.concepts and not job.prompt:  # nothing to edit: neither invert nor sample
            invs.append(None)
            images.append(job.image)
            evals.append(0)
            continue
        key = (id(item), job.seed) if not isinstance(item, Inversion) else (id(item), id(job.image))
        spent = 0
        if key not in done:
            inv, image, spent = _resolve_inversion(
                model, item, job.image, source, job.cfg, job.seed, progress
            )
            done[key] = inv, image
        invs.append(done[key][0])
        images.append(done[key][1])
        evals.append(spent)
    return invs, images, evals


def _record(model, job: _Job, item, source: str) -> dict:
    """What an edit's result records of how it was made: skip as a step count (the default's form,
    and an Inversion's), however it was given."""
    return {
        "method": "ledits",
        "prompt": job.prompt,
        "add": list(job.add),
        "remove": list(job.remove),
        "source": item.source if isinstance(item, Inversion) else source,
        **asdict(job.cfg),
        "skip": job.cfg.skip_steps,
        "preset": job.preset,
        "model": model.model_id,
    }


def _latent(mask: Mask | None, inv: Inversion):
    return None if mask is None else mask.latent.to(inv.x0)


def ledits(
    model: ModelBundle,
    image_or_inversion,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    prompt: str = "",
    source: str = "",
    config: LEditsConfig | None = None,
    preset: str | None = None,
    seed: int = 0,
    mask=None,
    image=None,
    progress: Progress | None = None,
    **settings,
) -> EditResult:
    """Edit with SEGA concepts to add or remove and/or a target prompt, from an Inversion (or an
    image, inverted here): LEDITS (docs/ledits.md).

    Args:
        model (`ModelBundle`): a model from `retouch.load`.
        image_or_inversion (`Inversion`, path, `PIL.Image.Image` or array): an inversion from
            `invert` (edits from it cost only their sampling), or the image, inverted here.
        add (`Sequence[str]`, defaults to ()): concepts to add, e.g. ["green circle"].
        remove (`Sequence[str]`, defaults to ()): concepts to remove.
        prompt (`str`, defaults to ""): a target prompt, the whole edited image's text.
        source (`str`, defaults to ""): the image's caption, used while inverting an image.
        config (`LEditsConfig`, *optional*): every setting at once; the defaults are the papers'.
        preset (`str`, *optional*): one of `PRESETS` ("style", "face", "object", "background"),
            under the explicit settings.
        seed (`int`, defaults to 0): the same seed, settings and model give the same image.
        mask (`Mask`, image, array or "infer", *optional*): confine the edit to a mask (ours):
            "infer" for DiffEdit's mask of the texts, or a mask of the image's size.
        image (path, `PIL.Image.Image` or array, *optional*): the image of an Inversion, which
            mask="infer" needs.
        progress (`Callable[[str, int, int], None]`, *optional*): called as progress(stage, done,
            total) after each step ("invert", "edit").
        **settings: any `LEditsConfig` field, e.g. `edit_scale=[9, 4]` (one per concept).

    Returns:
        `EditResult`: the edited image, the mask used (or None), the UNet evaluations this call
        spent, every setting, the seed, timings by stage, the final latent and a message (or "").
    """
    check_model(model)
    edit = dict(add=add, remove=remove, prompt=prompt, seed=seed, mask=mask, image=image)
    return ledits_many(model, image_or_inversion, [edit], source, config, preset, progress, **settings)[0]


def _reconstruction(model, image_or_inversion, settings: dict, seed: int) -> EditResult:
    """The VAE reconstruction of the image's x0 [1, C, h, w], with no UNet evaluation."""
    if isinstance(image_or_inversion, Inversion):
        inv = image_or_inversion
        x0, height, width = inv.x0, inv.height, inv.width
    else:
        prep = prepare(model, image_or_inversion)
        x0, height, width = prep.x0, prep.pixels.height, prep.pixels.width
    img = to_image(decode(model, x0), height, width)
    note = "" if isinstance(image_or_inversion, Inversion) else prep.note
    message = "; ".join(filter(None, ["no concepts and no target prompt: returned the reconstruction", note]))
    return EditResult(img, None, 0, settings, seed, {}, x0, message)


def check_inversion_image(inv: Inversion, img, name: str = "inversion") -> None:
    """An inversion against the image it is said to be of (InversionError): its size at most the
    image's (an image is only ever fitted down to a budget), checked before anything is resized
    to it; then the image fitted to that size has its pixels (the hash)."""
    from PIL import Image

    from retouch.errors import InversionError

    if inv.width * inv.height > img.width * img.height or inv.width > img.width or inv.height > img.height:
        raise InversionError(
            f"{name} is of a {inv.width}x{inv.height} image, larger than this {img.width}x{img.height} one"
        )
    if img.size != (inv.width, inv.height):  # made from the image fitted to a pixel budget
        img = img.resize((inv.width, inv.height), Image.LANCZOS)
    if inv.image_hash != image_hash(img):
        raise InversionError(f"{name} was made from another image")


def _check_inversion(model, inv: Inversion, cfg: LEditsConfig) -> None:
    check_inversion(model, inv)
    if (inv.num_inference_steps, inv.skip, inv.solver) != (
        cfg.num_inference_steps,
        cfg.skip_steps,
        cfg.solver,
    ):
        raise SettingError(
            f"inversion has num_inference_steps={inv.num_inference_steps}, skip={inv.skip}, solver="
            f"{inv.solver}; the edit asks for {cfg.num_inference_steps}, {cfg.skip_steps}, {cfg.solver}: "
            "invert again with those"
        )
