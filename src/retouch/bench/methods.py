"""The methods ShapesBench runs, each split into the part an edit can reuse and the edit itself.

    prep = method.prepare(ctx, case, settings)      # DDIM encoding / DDPM inversion (or None)
    out  = method.edit(ctx, case, settings, prep)   # Output(image, mask, reported evals)

A second edit of the same image costs only `edit`: timing the two parts apart gives the cost of
a first and of a second edit. Methods with the same `prep_key` share one preparation per case.

retouch: diffedit (and the paper's ablations diffedit_no_mask, diffedit_no_encoding, sdedit);
diffedit_presets (DiffEdit with the preset a user picks for the edit's kind, KIND_PRESETS);
diffedit_concepts (DiffEdit given the edit's phrases, "green circle" against "red circle");
ledits_prompt, ledits_concepts, ledits_both, ledits_masked (both, with mask="infer");
ledits_presets (concepts, with the preset a user picks for the edit's kind); ledits++ (concepts,
preset "ledits++": LEDITS++'s implicit masks on the exact DPM-Solver++ inversion).
diffusers: diffusers_diffedit (StableDiffusionDiffEditPipeline), diffusers_ledits
(LEditsPPPipelineStableDiffusion at LEDITS's settings, concepts only: LEDITS++ has no target
prompt), diffusers_ledits++ (the same pipeline at the "ledits++" preset's settings).
flowedit (a flow model's: FlowEdit at its family's published settings), flowedit_presets (with the
preset a user picks for the edit's kind), flowedit_masked (the same with mask="infer": inside
DiffEdit's mask of the target caption against the source's, fitted to the image's edges, for edits
of an object the image has; no mask for additions and new backgrounds, which that mask cannot
place or hold).
autoencoder: the VAE round trip alone, the ceiling of preservation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from retouch.bench import diffusers_pipelines as dp
from retouch.bench.cases import Case
from retouch.denoiser import UNetCalls
from retouch.methods.diffedit import DiffEditConfig
from retouch.methods.flowedit import FlowEditConfig
from retouch.methods.ledits import LEditsConfig
from retouch.timing import timed
from retouch.types import ModelBundle


@dataclass(frozen=True)
class Settings:
    """One benchmark configuration: the methods' configs and the LEDITS source text."""

    diffedit: DiffEditConfig = field(default_factory=DiffEditConfig)
    ledits: LEditsConfig = field(default_factory=lambda: LEditsConfig(skip=0.36))
    flowedit: FlowEditConfig = field(default_factory=FlowEditConfig)  # None: the family's published
    source: str = "caption"  # LEDITS inversions (both libraries): "caption" or "empty"
    given: tuple[str, ...] = ()  # the settings the run was given: they override a preset, as elsewhere

    def given_in(self, config) -> dict:
        """The settings the run was given that `config` has, at its values (to lay over a preset)."""
        return {k: getattr(config, k) for k in self.given if hasattr(config, k)}

    def source_text(self, case: Case) -> str:
        return case.source_caption if self.source == "caption" else ""

    def with_sweep(self, family: str, value: float | None) -> Settings:
        """The settings at one point of a family's sweep: DiffEdit's encoding ratio, or a factor
        on LEDITS's guidance (target_guidance_scale and edit_scale alike). None: unchanged."""
        if value is None:
            return self
        if family == "diffedit":
            return replace(self, diffedit=replace(self.diffedit, encode_ratio=float(value)))
        lc = self.ledits
        scale = lc.edit_scale
        scaled = (
            [float(v) * value for v in scale] if isinstance(scale, (list, tuple)) else float(scale) * value
        )
        return replace(
            self,
            ledits=replace(lc, target_guidance_scale=lc.target_guidance_scale * value, edit_scale=scaled),
        )


@dataclass(frozen=True)
class Output:
    """An edit's result: image uint8 (H, W, 3), mask bool (h, w) at latent resolution (None if the
    method has none), and the UNet evaluations the method itself reports (None if it does not)."""

    image: np.ndarray
    mask: np.ndarray | None = None
    reported_evals: int | None = None


class Context:
    """The loaded model and, built on first use, diffusers' pipelines on the same modules."""

    def __init__(self, model: ModelBundle):
        self.model = model
        self._pipes: dict[str, Any] = {}

    def pipe(self, name: str):
        if name not in self._pipes:
            build = {"diffedit": dp.diffedit_pipeline, "ledits": dp.ledits_pipeline}[name]
            self._pipes[name] = build(self.model)
        return self._pipes[name]


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # "diffedit" or "ledits": which settings it reads, what its sweep varies
    edit: Callable[[Context, Case, Settings, Any], Output]
    prepare: Callable[[Context, Case, Settings], Any] | None = None
    prep_key: Callable[[Settings], tuple] | None = None
    has_mask: bool = False
    library: str = "retouch"


def _image(pil) -> np.ndarray:
    return np.asarray(pil.convert("RGB"))


def _mask(result) -> np.ndarray | None:
    return None if result.mask is None else result.mask.latent.cpu().numpy() > 0.5


# --- retouch DiffEdit ------------------------------------------------------------------------------


def _ddim_key(s: Settings) -> tuple:
    return ("ddim", s.diffedit.num_inference_steps, s.diffedit.encode_ratio)


def _ddim_encoding(ctx: Context, case: Case, s: Settings):
    from retouch.methods.diffedit import ddim_encoding

    return ddim_encoding(ctx.model, case.input_image, config=s.diffedit)


# The preset (the method's PRESETS) a user picks for each kind of edit, by method; the other
# kinds keep the settings run.
KIND_PRESETS = {
    "diffedit": {"recolor": "recolor", "remove": "remove", "background": "background", "add": "add"},
    "ledits": {"recolor": "object", "reshape": "object", "remove": "object", "background": "background"},
    "flowedit": {
        "recolor": "stronger",
        "reshape": "stronger",
        "remove": "stronger",
        "add": "stronger",
        "background": "background",
    },
}


def _preset_for(ctx: Context, case: Case, s: Settings) -> Settings:
    """The settings with the DiffEdit preset of the case's kind as it applies to the model (on a
    flow model less the word weights: retouch.presets.on_model), the run's own laid over it."""
    from retouch.presets import on_model
    from retouch.settings import with_preset, with_settings

    name = KIND_PRESETS["diffedit"].get(case.kind)
    table = on_model("diffedit", ctx.model.family)
    return replace(s, diffedit=with_settings(with_preset(s.diffedit, table, name), s.given_in(s.diffedit)))


def _diffedit_preset(ctx: Context, case: Case, s: Settings, encoding) -> Output:
    return _diffedit(None)(ctx, case, _preset_for(ctx, case, s), encoding)


def _diffedit(mode: str | None, concepts: bool = False) -> Callable:
    """DiffEdit in `mode` (None: the settings' own, a preset's) given the captions, or (concepts)
    the edit's own phrases where it has one of each ("green circle" against "red circle":
    recolours, reshapes, backgrounds; the captions otherwise)."""

    def edit(ctx: Context, case: Case, s: Settings, encoding) -> Output:
        from retouch.methods.diffedit import diffedit

        phrases = concepts and len(case.add) == len(case.remove) == 1
        r = diffedit(
            ctx.model,
            case.input_image,
            case.add[0] if phrases else case.target_caption,
            case.remove[0] if phrases else case.source_caption,
            config=s.diffedit if mode is None else replace(s.diffedit, mode=mode),
            seed=case.seed,
            encoding=encoding,
        )
        return Output(_image(r.image), _mask(r), r.unet_evals)

    return edit


# --- retouch LEDITS --------------------------------------------------------------------------------


def _ddpm_key(s: Settings) -> tuple:
    c = s.ledits
    return ("ddpm", s.source, c.num_inference_steps, c.skip_steps, c.source_guidance_scale, c.solver)


def _ddpm_inversion(ctx: Context, case: Case, s: Settings):
    from retouch.methods.ledits import invert

    return invert(ctx.model, case.input_image, s.source_text(case), config=s.ledits, seed=case.seed)


def _ledits(prompt: bool, concepts: bool, masked: bool = False, presets: bool = False) -> Callable:
    def edit(ctx: Context, case: Case, s: Settings, inv) -> Output:
        from retouch.methods.ledits import ledits

        preset = KIND_PRESETS["ledits"].get(case.kind) if presets else None
        given = s.given_in(s.ledits) if preset else {}
        r = ledits(
            ctx.model,
            inv,
            add=list(case.add) if concepts else [],
            remove=list(case.remove) if concepts else [],
            prompt=case.target_caption if prompt else "",
            config=s.ledits,
            preset=preset,
            seed=case.seed,
            mask="infer" if masked else None,
            image=case.input_image if masked else None,
            **given,
        )
        return Output(_image(r.image), _mask(r), r.unet_evals)

    return edit


def _pp_config(s: Settings) -> LEditsConfig:
    """The "ledits++" preset, with the settings the run was given laid over it."""
    from retouch.methods.ledits import PRESETS
    from retouch.settings import configured

    return configured(LEditsConfig(), PRESETS, "ledits++", s.given_in(s.ledits))


def _pp_key(s: Settings) -> tuple:
    c = _pp_config(s)
    return ("ledits++", s.source, c.num_inference_steps, c.skip_steps, c.source_guidance_scale, c.solver)


def _pp_inversion(ctx: Context, case: Case, s: Settings):
    from retouch.methods.ledits import invert

    return invert(ctx.model, case.input_image, s.source_text(case), config=_pp_config(s), seed=case.seed)


def _ledits_pp(ctx: Context, case: Case, s: Settings, inv) -> Output:
    from retouch.methods.ledits import ledits

    r = ledits(
        ctx.model, inv, add=list(case.add), remove=list(case.remove), config=_pp_config(s), seed=case.seed
    )
    return Output(_image(r.image), _mask(r), r.unet_evals)


# --- diffusers --------------------------------------------------------------------------------------


def _their_ddim_encoding(ctx: Context, case: Case, s: Settings):
    from retouch.latents import load_image, to_pixels

    pipe = ctx.pipe("diffedit")
    x0 = dp.vae_mean_latents(pipe, to_pixels(ctx.model, load_image(case.input_image)).tensor)
    return x0, dp.diffedit_encode(pipe, x0, s.diffedit, case.seed)


def _their_diffedit(ctx: Context, case: Case, s: Settings, prep) -> Output:
    from retouch.latents import to_image

    x0, encoded = prep
    pipe = ctx.pipe("diffedit")
    mask = dp.diffedit_mask(pipe, x0, case.target_caption, case.source_caption, s.diffedit, case.seed)
    z = dp.diffedit_decode(pipe, case.target_caption, case.source_caption, mask, encoded, s.diffedit)
    h, w = case.input_image.shape[:2]
    return Output(_image(to_image(dp.decode_latents(pipe, z), h, w)), mask[0] > 0.5)


def _their_ddpm_key(s: Settings) -> tuple:
    return ("dpm-sde", *_ddpm_key(s)[1:])


def _their_inversion(ctx: Context, case: Case, s: Settings, pp: bool = False):
    from PIL import Image

    pipe = ctx.pipe("ledits")
    c = _pp_config(s) if pp else s.ledits
    n = c.num_inference_steps
    dp.ledits_invert(
        pipe,
        Image.fromarray(case.input_image),
        s.source_text(case),
        c.source_guidance_scale,
        n,
        n - c.skip_steps,
        case.seed,
    )
    token = (case.id, _their_pp_key(s) if pp else _their_ddpm_key(s))
    pipe._retouch_bench_inverted = token  # the pipeline keeps its inversion: remember whose it is
    return token


def _their_pp_key(s: Settings) -> tuple:
    return ("diffusers", *_pp_key(s))


def _their_ledits(ctx: Context, case: Case, s: Settings, token, pp: bool = False) -> Output:
    pipe = ctx.pipe("ledits")
    if getattr(pipe, "_retouch_bench_inverted", None) != token:
        raise RuntimeError(f"diffusers' LEDITS++ pipeline holds another inversion than {token}")
    c = _pp_config(s) if pp else s.ledits
    k = len(case.add) + len(case.remove)
    scale, warmup, threshold = (
        v if isinstance(v, (list, tuple)) else [v] * k
        for v in (c.edit_scale, c.edit_warmup, c.edit_threshold)
    )
    img = dp.ledits_edit(
        pipe, case.add, case.remove, list(scale), list(warmup), list(threshold), masks=True, seed=case.seed
    )
    return Output(_image(img))


# --- the ceiling ----------------------------------------------------------------------------------


# the kinds flowedit_masked edits inside the inferred mask: an object to find. DiffEdit's mask cannot
# place an object not yet drawn (2 % of v5's additions drawn inside it, 32 % without) nor hold a
# whole new background.
MASKED_KINDS = ("recolor", "reshape", "remove")


def _flowedit(presets: bool = False, masked: bool = False) -> Callable:
    """FlowEdit from the source caption to the target caption, each setting not given the family's
    published one; with `presets`, under the preset of the case's kind (KIND_PRESETS), the settings
    the run was given laid over it; `masked`: mask="infer" where the edit changes an object the
    image has (MASKED_KINDS)."""

    def edit(ctx: Context, case: Case, s: Settings, prep) -> Output:
        from retouch.methods.flowedit import flowedit

        preset = KIND_PRESETS["flowedit"][case.kind] if presets else None
        given = s.given_in(s.flowedit) if preset else {}
        mask = "infer" if masked and case.kind in MASKED_KINDS else None
        r = flowedit(
            ctx.model, case.input_image, case.source_caption, case.target_caption, s.flowedit,
            preset=preset, seed=case.seed, mask=mask, **given,
        )  # fmt: skip
        return Output(_image(r.image), _mask(r), r.unet_evals)

    return edit


def _autoencoder(ctx: Context, case: Case, s: Settings, prep) -> Output:
    from retouch.latents import decode, encode, load_image, to_image, to_pixels

    px = to_pixels(ctx.model, load_image(case.input_image))
    with torch.no_grad():
        out = decode(ctx.model, encode(ctx.model, px.tensor))
    return Output(_image(to_image(out, px.height, px.width)), None, 0)


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("autoencoder", "none", _autoencoder, library="vae"),
        Method("flowedit", "none", _flowedit()),  # a flow model's (SD3, FLUX)
        Method("flowedit_presets", "none", _flowedit(presets=True)),
        Method("flowedit_masked", "none", _flowedit(presets=True, masked=True), has_mask=True),
        Method("diffedit", "diffedit", _diffedit("diffedit"), _ddim_encoding, _ddim_key, has_mask=True),
        Method(
            "diffedit_presets",
            "diffedit",
            _diffedit_preset,
            lambda ctx, case, s: _ddim_encoding(ctx, case, _preset_for(ctx, case, s)),
            lambda s: ("presets", *_ddim_key(s)),  # the encoding of one case under its preset
            has_mask=True,
        ),
        Method(
            "diffedit_concepts",
            "diffedit",
            _diffedit("diffedit", True),
            _ddim_encoding,
            _ddim_key,
            has_mask=True,
        ),
        Method("diffedit_no_mask", "diffedit", _diffedit("no_mask"), _ddim_encoding, _ddim_key),
        Method("diffedit_no_encoding", "diffedit", _diffedit("no_encoding"), has_mask=True),
        Method("sdedit", "diffedit", _diffedit("sdedit")),
        Method("ledits_prompt", "ledits", _ledits(True, False), _ddpm_inversion, _ddpm_key),
        Method("ledits_concepts", "ledits", _ledits(False, True), _ddpm_inversion, _ddpm_key),
        Method("ledits_both", "ledits", _ledits(True, True), _ddpm_inversion, _ddpm_key),
        Method("ledits_presets", "ledits", _ledits(False, True, presets=True), _ddpm_inversion, _ddpm_key),
        Method(
            "ledits_masked",
            "ledits",
            _ledits(True, True, masked=True),
            _ddpm_inversion,
            _ddpm_key,
            has_mask=True,
        ),
        Method(
            "diffusers_diffedit",
            "diffedit",
            _their_diffedit,
            _their_ddim_encoding,
            lambda s: ("diffusers", *_ddim_key(s)),
            has_mask=True,
            library="diffusers",
        ),
        Method(
            "diffusers_ledits",
            "ledits",
            _their_ledits,
            _their_inversion,
            _their_ddpm_key,
            library="diffusers",
        ),
        Method("ledits++", "ledits", _ledits_pp, _pp_inversion, _pp_key, has_mask=True),
        Method(
            "diffusers_ledits++",
            "ledits",
            lambda ctx, case, s, token: _their_ledits(ctx, case, s, token, pp=True),
            lambda ctx, case, s: _their_inversion(ctx, case, s, pp=True),
            _their_pp_key,
            library="diffusers",
        ),
    ]
}

# retouch's method and its diffusers counterpart with matched settings (benchmarks/speed.py)
COUNTERPARTS = {
    "diffedit": "diffusers_diffedit",
    "ledits_concepts": "diffusers_ledits",
    "ledits++": "diffusers_ledits++",
}


FLOW_ONLY = ("flowedit", "flowedit_presets", "flowedit_masked")  # methods of a flow model, named to run


def parse_methods(text: str) -> list[str]:
    """'all' (every method but a flow model's) or a comma list of method names → the names, in the
    registry's order."""
    everything = [n for n in METHODS if n not in FLOW_ONLY]  # "all": what the SD model runs
    names = everything if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; valid: all, {', '.join(METHODS)}")
    return [n for n in METHODS if n in names]


@dataclass(frozen=True)
class Timed:
    """A phase's value, wall seconds and UNet evaluations."""

    value: Any
    seconds: float
    evals: int


def run_method(
    ctx: Context, calls: UNetCalls, method: Method, case: Case, settings: Settings, preps: dict
) -> tuple[Output, Timed | None, Timed]:
    """Run one method on one case: (output, its preparation (None if it has none), its edit).
    preps: a per-case cache {prep_key: Timed}, shared by methods with the same key."""
    device = ctx.model.device
    prep = None
    if method.prepare is not None:
        key = method.prep_key(settings)
        if key not in preps:
            value, seconds, evals = timed(lambda: method.prepare(ctx, case, settings), device, calls)
            preps[key] = Timed(value, seconds, evals)
        prep = preps[key]
    out, seconds, evals = timed(lambda: method.edit(ctx, case, settings, prep and prep.value), device, calls)
    return out, prep, Timed(None, seconds, evals)
