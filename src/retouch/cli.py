"""The editing commands of `retouch`: edit (one subcommand per method), mask and invert.

    retouch edit diffedit photo.png -o out.png --query "a green circle on a white background"
    retouch edit ledits photo.png -o out.png --add "green circle" --remove "red circle"
    retouch mask photo.png -o mask.png --query "..." --reference "..."
    retouch invert photo.png -o photo.safetensors --source "..."
    retouch edit ledits photo.png -o out.png --inversion photo.safetensors --add "..."

Each method's settings are flags derived from its config dataclass (`guidance_scale` is
`--guidance-scale`), so each default is defined once, in the library; `--help` lists the paper's,
`--help-all` our additions too. A new method is one more `@edit.command`. Exit codes: 0 done; 2 bad
input or usage, with one line on stderr naming what and why; 1 anything else. Outputs are written
to a temporary file in the same folder and renamed, so a failure never leaves half an image.
Importing this module is light (click only): the library loads when a command runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from retouch import presets
from retouch.errors import InputError
from retouch.files import check_output, edit_params, image_saver, write_all_atomic
from retouch.shell import (
    CONTEXT,
    MethodCommand,
    Option,
    budget_options,
    fit_image,
    given_settings,
    load_model,
    model_options,
    progress_bars,
    set_threads,
    setting_options,
    threads_option,
)

METHODS = ("diffedit", "ledits")


def _diffedit_settings():
    from retouch.methods.diffedit import DiffEditConfig

    return setting_options({"diffedit": DiffEditConfig})


def _ledits_settings():
    from retouch.methods.ledits import LEditsConfig

    return setting_options({"ledits": LEditsConfig})


def _flowedit_settings():
    from retouch.methods.flowedit import FlowEditConfig

    return setting_options({"flowedit": FlowEditConfig})


def _mask_settings():
    from retouch.methods.diffedit import DiffEditConfig

    return setting_options({"diffedit": DiffEditConfig}, keep=presets.reads_mask)


def _invert_settings():
    from retouch.methods.ledits import INVERSION_FIELDS, LEditsConfig

    return setting_options({"ledits": LEditsConfig}, keep=lambda n: n in INVERSION_FIELDS)


# --- the options every command shares ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Run:
    """How a command runs: the model, the pixel budget, torch's threads, the seed and what it prints."""

    model: str | None
    device: str | None
    dtype: str | None
    max_pixels: int | None
    resize: bool
    threads: int | None
    seed: int | None
    as_json: bool
    quiet: bool
    no_progress: bool

    @classmethod
    def pop(cls, options: dict) -> _Run:
        """The run options taken out of a command's keyword arguments (the rest are settings); the
        seed checked before anything loads."""
        from retouch.settings import check_seed

        run = cls(**{f.name: options.pop(f.name) for f in dataclasses.fields(cls)})
        if run.seed is not None:
            check_seed(run.seed)
        return run

    @property
    def seed_kw(self) -> dict:
        return {} if self.seed is None else {"seed": self.seed}

    @property
    def progress(self) -> bool:
        return not (self.quiet or self.no_progress)

    def load(self):
        """(the model, seconds to load it), torch's threads set first."""
        set_threads(self.threads)
        return load_model(self.model, self.device, self.dtype, self.max_pixels, self.resize)

    def report(self, summary: dict, line: str) -> None:
        if self.as_json:
            click.echo(json.dumps(summary, default=str))
        elif not self.quiet:
            click.echo(line)


def _run_options(fn=None, *, shipped: str | None = None):
    """--model/--device/--dtype, the pixel budget, --threads, --seed, --json, -q, --no-progress;
    shipped: the command's default model (None: the library's)."""
    if fn is None:
        return lambda f: _run_options(f, shipped=shipped)
    fn = click.option(
        "--no-progress",
        is_flag=True,
        cls=Option,
        section="advanced",
        help="No progress bars (they are drawn only when stderr is a terminal).",
    )(fn)
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress bars, no summary line.")(fn)
    fn = click.option(
        "--json", "as_json", is_flag=True, help="Print a machine-readable summary (JSON) on stdout."
    )(fn)
    fn = click.option("--seed", type=int, default=None, help="Random seed [default: 0].")(fn)
    fn = threads_option(fn)
    fn = budget_options(fn)
    return model_options(fn, shipped=shipped)


def _input(*decls, **kwargs):
    """An option of what to edit (listed first in a method's help)."""
    return click.option(*decls, cls=Option, section="inputs", **kwargs)


def _output(help_text: str):
    return _input("-o", "--output", type=click.Path(path_type=Path), required=True, help=help_text)


def _image_argument(fn):
    return click.argument("image", type=click.Path(dir_okay=False, path_type=Path))(fn)


def _preset_option(method: str, names: Sequence[str] | None = None):
    names = list(names or presets.BY_METHOD[method])
    return _input(
        "--preset",
        type=click.Choice(names),
        help=f"Named settings measured for an edit's aim ({presets.aims(method, names)}): "
        f"{presets.described(method, names)}. Explicit flags override them.",
    )


_fast = _input("--fast", is_flag=True, help="The method's named fast settings (explicit flags override).")


def _given(settings: dict, fast: dict | None = None) -> dict:
    """The settings flags given, over the method's fast settings when --fast was given."""
    return {**(fast or {}), **given_settings(settings)}


def _check_config(config_cls, given: dict, preset: str | None = None, presets=None):
    """The settings given (over the preset named), checked before the model loads."""
    from retouch.settings import configured

    return configured(config_cls(), presets or {}, preset, given)


def _texts(values: Sequence[str], name: str) -> list[str]:
    for v in values:
        if not v.strip():
            raise InputError(f"{name} is empty")
    return [v.strip() for v in values]


def _network(bundle) -> str:
    """The model's denoising network as the summary line names it ("UNet", or "transformer")."""
    from retouch.flows import network_name

    return network_name(bundle)


def _read_mask(mask: str | None, image, label: str = "image"):
    """None, "infer", or the mask file read and checked against the image's size."""
    from retouch.latents import load_image

    if mask is None or mask == "infer":
        return mask
    m = load_image(mask, "mask")
    if m.size != image.size:
        raise InputError(f"mask {mask} is {m.width}x{m.height}, the {label} is {image.width}x{image.height}")
    return m


# --- retouch edit METHOD ---------------------------------------------------------------------------


class EditGroup(click.Group):
    """`retouch edit METHOD IMAGE ...`; the former `retouch edit IMAGE --method M` is one line
    naming the new form."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        unknown = bool(args) and args[0] not in self.commands and not args[0].startswith("-")
        if unknown or "--method" in args:
            given = args[args.index("--method") + 1] if "--method" in args[:-1] else None
            method = given if given in self.commands else "|".join(self.commands)
            got = f"--method {given}" if given else repr(args[0])
            raise click.UsageError(
                f"retouch edit takes a method, then the image: retouch edit {method} IMAGE -o OUT ..."
                f" (got {got})",
                ctx,
            )
        return super().parse_args(ctx, args)


@click.group(cls=EditGroup, context_settings=CONTEXT)
def edit():
    """Edit an image with text: `retouch edit METHOD IMAGE -o OUT ...`; `retouch edit METHOD --help`
    lists a method's settings."""


def _edit_and_save(
    method: str,
    run: _Run,
    output: Path,
    preset: str | None,
    edit_with: Callable,
    save_mask: Path | None = None,
) -> None:
    """Load the model, edit (edit_with(bundle, progress, seed_kw) → EditResult), write OUTPUT (a PNG
    carries its parameters) and, with save_mask, the edit's mask beside it (both or neither), and
    report."""
    bundle, t_load = run.load()
    with progress_bars(run.progress) as progress:
        result = edit_with(bundle, progress, run.seed_kw)
    timings = {"load": t_load, **result.timings}
    params = edit_params(bundle, method, result.settings, result.seed)
    if save_mask is not None and result.mask is None:
        raise InputError(f"the edit made no mask to write to {save_mask}")
    t0 = time.perf_counter()
    saves = {output: image_saver(result.image, output, params)}
    if save_mask is not None:
        saves[save_mask] = image_saver(result.mask.image(), save_mask, params)
    write_all_atomic(saves)
    timings["write"] = time.perf_counter() - t0
    summary = {
        "output": str(output),
        **({"mask": str(save_mask)} if save_mask is not None else {}),
        "method": method,
        "model": bundle.model_id,
        "settings": result.settings,
        "seed": result.seed,
        "unet_evals": result.unet_evals,
        "mask_area": None if result.mask is None else result.mask.area,
        "timings": timings,
        "message": result.message,
    }
    label = f", preset {preset}" if preset else ""
    note = f" — {result.message}" if result.message else ""
    run.report(
        summary,
        f"wrote {output} ({method}{label}, {result.unet_evals} {_network(bundle)} evaluations, "
        f"{sum(timings.values()):.1f} s){note}",
    )


@edit.command(
    "diffedit",
    cls=MethodCommand,
    settings=_diffedit_settings,
    context_settings=CONTEXT,
    short_help="DiffEdit: a mask where the texts disagree, then DDIM encoding and masked decoding.",
)
@_image_argument
@_output("The edited image (a PNG carries its parameters).")
@_input("--query", required=True, help="The text the edited image should fit.")
@_input(
    "--reference",
    default="",
    help="The text of what to change; the image's caption works best [default: empty].",
)
@_preset_option("diffedit")
@_fast
@_input("--mask", metavar="FILE", help="A mask image (nonzero = edit) instead of inferring one.")
@_run_options
def diffedit_command(image, output, query, reference, preset, fast, mask, **options):
    """DiffEdit (Couairon et al. 2022): infer where QUERY and REFERENCE disagree, encode IMAGE with
    DDIM and decode it under QUERY inside that mask; write the result to OUTPUT."""
    from retouch.latents import load_image
    from retouch.methods.diffedit import FAST, PRESETS, DiffEditConfig, diffedit

    run = _Run.pop(options)
    given = _given(options, FAST if fast else None)
    img = load_image(image)
    (query,) = _texts([query], "query")
    _check_config(DiffEditConfig, given, preset, PRESETS)
    user_mask = _read_mask(mask, img)
    check_output(output, [image, mask])

    def edit_with(bundle, progress, seed_kw):
        return diffedit(
            bundle,
            img,
            query,
            reference,
            mask=user_mask,
            progress=progress,
            preset=preset,
            **seed_kw,
            **given,
        )

    _edit_and_save("diffedit", run, output, preset, edit_with)


@edit.command(
    "flowedit",
    cls=MethodCommand,
    settings=_flowedit_settings,
    context_settings=CONTEXT,
    short_help="FlowEdit (SD3, FLUX): no inversion, from the source text's image to the target's.",
)
@_image_argument
@_output("The edited image (a PNG carries its parameters).")
@_input("--target", required=True, help="The text the edited image should fit.")
@_input("--source", default="", help="The text of what the image shows now [default: empty].")
@_preset_option("flowedit")
@_input(
    "--mask",
    metavar="FILE|infer",
    help="Ours: edit only inside this mask (nonzero = edit); 'infer': DiffEdit's mask of TARGET "
    "against SOURCE [default: no mask, as the paper].",
)
@click.option(
    "--save-mask",
    cls=Option,
    section="advanced",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the edit's mask (PNG, white = edited): the given or inferred one.",
)
@_run_options(shipped="shapes-sd3")  # the default SD model is no flow model
def flowedit_command(image, output, target, source, preset, mask, save_mask, **options):
    """FlowEdit (Kulikov et al. 2025) on a flow model (the shipped shapes-sd3, an SD3 or FLUX folder):
    move IMAGE from SOURCE's velocity field to TARGET's, with no inversion; write OUTPUT. Unset
    settings take the model family's published values (docs/flow.md)."""
    from retouch.latents import load_image
    from retouch.methods.flowedit import PRESETS, FlowEditConfig, flowedit

    run = _Run.pop(options)
    given = _given(options, None)
    img = load_image(image)
    (target,) = _texts([target], "target")
    _check_config(FlowEditConfig, given, preset, PRESETS).check()
    user_mask = _read_mask(mask, img)
    inputs = [image, mask if mask != "infer" else None]
    check_output(output, inputs)
    if save_mask is not None:
        if user_mask is None:
            raise InputError("--save-mask needs a mask: --mask FILE|infer")
        check_output(save_mask, [*inputs, output])

    def edit_with(bundle, progress, seed_kw):
        return flowedit(
            bundle, img, source, target, preset=preset, progress=progress, mask=user_mask, **seed_kw, **given
        )

    _edit_and_save("flowedit", run, output, preset, edit_with, save_mask)


@edit.command(
    "ledits",
    cls=MethodCommand,
    settings=_ledits_settings,
    context_settings=CONTEXT,
    short_help="LEDITS: edit-friendly DDPM inversion, then semantic guidance by prompt and concepts.",
)
@_image_argument
@_output("The edited image (a PNG carries its parameters).")
@_input("--prompt", help="The target prompt: the whole edited image's text [default: none].")
@_input("--add", multiple=True, metavar="CONCEPT", help="A concept to add (repeatable).")
@_input("--remove", multiple=True, metavar="CONCEPT", help="A concept to remove (repeatable).")
@_input("--source", help="The image's caption, used while inverting [default: empty].")
@_preset_option("ledits")
@_fast
@_input(
    "--mask",
    metavar="FILE|infer",
    help="Edit only inside this mask (nonzero = edit); 'infer': DiffEdit's mask of the texts "
    "[default: no mask].",
)
@_input(
    "--inversion",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Edit from an inversion saved by `retouch invert`, without inverting.",
)
@click.option(
    "--save-mask",
    cls=Option,
    section="advanced",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the edit's mask (PNG, white = edited): the given or inferred one, or the union of "
    "LEDITS++'s implicit masks.",
)
@_run_options
def ledits_command(
    image, output, prompt, add, remove, source, preset, fast, mask, inversion, save_mask, **options
):
    """LEDITS (Tsaban & Passos 2023): invert IMAGE (edit-friendly DDPM), then regenerate it with
    semantic guidance: a target PROMPT and concepts to ADD or REMOVE; write the result to OUTPUT."""
    from retouch.latents import load_image
    from retouch.methods.ledits import FAST, PRESETS, LEditsConfig, inversion_steps, ledits
    from retouch.settings import settings_fields

    run = _Run.pop(options)
    given = _given(options, FAST if fast else None)
    img = load_image(image)
    add, remove = _texts(add, "concept to add"), _texts(remove, "concept to remove")
    if prompt is not None and not prompt.strip():
        raise InputError("prompt is empty")
    if not (prompt or add or remove):
        raise InputError("ledits needs --prompt TEXT or at least one --add/--remove CONCEPT")
    inv = None if inversion is None else _read_inversion(inversion, img, source)
    cfg = _check_config(LEditsConfig, {**inversion_steps(inv), **given}, preset, PRESETS)
    for s in settings_fields(LEditsConfig):
        if s.kind == "per_concept":
            _check_finite(s.name, given.get(s.name))
    user_mask = _read_mask(mask, img)
    inputs = [image, mask if mask != "infer" else None, inversion]
    check_output(output, inputs)
    if save_mask is not None:
        if user_mask is None and (cfg.implicit_mask == "none" or not (add or remove)):
            raise InputError(
                "--save-mask needs a mask: --mask FILE|infer, or concepts under implicit masks "
                "(--preset ledits++ or --implicit-mask)"
            )
        check_output(save_mask, [*inputs, output])

    def edit_with(bundle, progress, seed_kw):
        return ledits(
            bundle,
            img if inv is None else inv,
            add=add,
            remove=remove,
            prompt=prompt or "",
            source=source or "",
            preset=preset,
            mask=user_mask,
            image=img,
            progress=progress,
            **seed_kw,
            **given,
        )

    _edit_and_save("ledits", run, output, preset, edit_with, save_mask)


def _check_finite(name: str, value) -> None:
    """NaN and infinities in a per-concept setting, before the model loads (ledits checks the
    ranges once it knows the concepts)."""
    from retouch.settings import check_number

    for v in value if isinstance(value, list) else [value]:
        if v is not None:
            check_number(name, v)


def _read_inversion(path: Path, img, source):
    """Load a saved inversion and check it against the image (the edit runs on its steps unless
    given others, which ledits refuses)."""
    from retouch.methods.ledits import check_inversion_image
    from retouch.types import Inversion

    inv = Inversion.load(path)
    check_inversion_image(inv, img, f"inversion {path}")
    if source is not None and source.strip() != inv.source:
        raise InputError(f"--source differs from the inversion's source {inv.source!r}")
    return inv


# --- retouch mask, retouch invert ------------------------------------------------------------------


@click.command(cls=MethodCommand, settings=_mask_settings, context_settings=CONTEXT)
@_image_argument
@_output("The mask (PNG, white = edit); an overlay is written beside it as NAME.overlay.png.")
@_input("--query", required=True, help="The text the edited image should fit.")
@_input("--reference", default="", help="The text of what to change [default: empty].")
@_preset_option("diffedit", presets.mask_presets())
@_run_options
def mask(image, output, query, reference, preset, **options):
    """DiffEdit's mask of IMAGE alone: where QUERY and REFERENCE disagree."""
    from retouch.latents import load_image
    from retouch.methods.diffedit import PRESETS, DiffEditConfig, diffedit_mask

    run = _Run.pop(options)
    given = given_settings(options)
    (query,) = _texts([query], "query")
    cfg = _check_config(DiffEditConfig, given, preset, PRESETS)
    img = load_image(image)
    overlay_path = output.with_name(f"{output.stem}.overlay{output.suffix}")
    check_output(output, [image])
    check_output(overlay_path, [image])
    bundle, t_load = run.load()
    img = fit_image(bundle, img, run.quiet)
    t0 = time.perf_counter()
    m = diffedit_mask(bundle, img, query, reference, preset=preset, **run.seed_kw, **given)
    timings = {"load": t_load, "mask": time.perf_counter() - t0}
    settings_out = {
        "method": "diffedit_mask",
        "query": query,
        "reference": reference,
        **dataclasses.asdict(cfg),
        "preset": preset,
        "model": bundle.model_id,
    }
    params = edit_params(bundle, "diffedit_mask", settings_out, run.seed or 0)
    saves = {
        output: image_saver(m.image(), output, params),
        overlay_path: image_saver(m.overlay(img), overlay_path, params),
    }
    write_all_atomic(saves)  # both files or neither
    summary = {
        "output": str(output),
        "overlay": str(overlay_path),
        "method": "diffedit_mask",
        "model": bundle.model_id,
        "settings": settings_out,
        "seed": params["seed"],
        "unet_evals": m.unet_evals,
        "mask_area": m.area,
        "timings": timings,
    }
    run.report(
        summary,
        f"wrote {output} and {overlay_path} (mask area {m.area:.1%}, {m.unet_evals} "
        f"{_network(bundle)} evaluations)",
    )


@click.command(cls=MethodCommand, settings=_invert_settings, context_settings=CONTEXT)
@_image_argument
@_output("The inversion (.safetensors), for `retouch edit ledits --inversion`.")
@_input("--source", default="", help="The image's caption [default: empty].")
@_preset_option("ledits")
@_fast
@_run_options
def invert(image, output, source, preset, fast, **options):
    """Invert IMAGE once (edit-friendly DDPM inversion), to edit it many times with ledits; with
    --preset, over the steps, skip and solver of the preset the edits will name."""
    from retouch.latents import load_image
    from retouch.methods.ledits import FAST, PRESETS, LEditsConfig
    from retouch.methods.ledits import invert as invert_image

    run = _Run.pop(options)
    given = _given(options, FAST if fast else None)
    _check_config(LEditsConfig, given, preset, PRESETS)
    img = load_image(image)
    check_output(output, [image], image=False)
    bundle, t_load = run.load()
    img = fit_image(bundle, img, run.quiet)
    t0 = time.perf_counter()
    with progress_bars(run.progress) as progress:
        inv = invert_image(bundle, img, source, progress=progress, preset=preset, **run.seed_kw, **given)
    timings = {"load": t_load, "invert": time.perf_counter() - t0}
    inv.save(output)
    summary = {
        "output": str(output),
        "method": "invert",
        "model": bundle.model_id,
        "source": inv.source,
        "settings": {
            **given,
            "num_inference_steps": inv.num_inference_steps,
            "skip": inv.skip,
            "solver": inv.solver,
        },
        "preset": preset,
        "seed": inv.seed,
        "unet_evals": inv.unet_evals,
        "timings": timings,
    }
    run.report(
        summary,
        f"wrote {output} ({len(inv.timesteps)} steps, {inv.unet_evals} {_network(bundle)} "
        f"evaluations, {sum(timings.values()):.1f} s)",
    )
