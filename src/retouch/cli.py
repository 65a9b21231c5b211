"""The editing commands of `retouch`: edit, mask, invert, and the training stages.

    retouch edit photo.png -o out.png --method diffedit --query "a green circle on a white background"
    retouch edit photo.png -o out.png --method ledits --add "green circle" --remove "red circle"
    retouch mask photo.png -o mask.png --query "..." --reference "..."
    retouch invert photo.png -o photo.safetensors --source "..."
    retouch edit photo.png -o out.png --method ledits --inversion photo.safetensors --add "..."

Every method setting is a flag derived from its config dataclass (`guidance_scale` is
`--guidance-scale`), so each default is defined once, in the library. Exit codes: 0 done; 2 bad
input or usage, with one line on stderr naming what and why; 1 anything else. Outputs are written
to a temporary file in the same folder and renamed, so a failure never leaves half an image.
Importing this module is light (click only): the library loads when a command runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import click

from retouch import __version__, presets
from retouch.errors import InputError
from retouch.files import check_output, image_saver, save_image, write_all_atomic
from retouch.shell import (
    CONTEXT,
    SettingsCommand,
    budget_options,
    fit_image,
    given_settings,
    load_model,
    model_options,
    progress_bars,
    setting_options,
)


def _edit_settings():
    from retouch.methods.diffedit import DiffEditConfig
    from retouch.methods.ledits import LEditsConfig

    return setting_options({"diffedit": DiffEditConfig, "ledits": LEditsConfig})


def _mask_settings():
    from retouch.methods.diffedit import DiffEditConfig

    return setting_options({"diffedit": DiffEditConfig}, keep=presets.reads_mask)


def _invert_settings():
    from retouch.methods.ledits import INVERSION_FIELDS, LEditsConfig

    return setting_options({"ledits": LEditsConfig}, keep=lambda n: n in INVERSION_FIELDS)


def _train_settings():
    from retouch.shapes.train import TrainConfig

    return setting_options({"train": TrainConfig})


def _run_options(fn):
    fn = click.option("--no-progress", is_flag=True, help="No progress bars.")(fn)
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress bars, no summary line.")(fn)
    fn = click.option(
        "--json", "as_json", is_flag=True, help="Print a machine-readable summary (JSON) on stdout."
    )(fn)
    fn = click.option("--seed", type=int, default=None, help="Random seed [default: 0].")(fn)
    return fn


def _seed_kw(seed) -> dict:
    from retouch.settings import check_seed

    return {} if seed is None else {"seed": check_seed(seed)}


def _report(summary: dict, as_json: bool, quiet: bool, line: str) -> None:
    if as_json:
        click.echo(json.dumps(summary, default=str))
    elif not quiet:
        click.echo(line)


def _check_config(config_cls, method: str, given: dict, preset: str | None = None, presets=None):
    """The settings given (over the preset named, one of the method's `presets`), checked before
    the model loads: one line naming what is wrong."""
    from retouch.settings import configured

    names = {f.name for f in dataclasses.fields(config_cls)}
    for name in given:
        if name not in names:
            raise InputError(f"--{name.replace('_', '-')} is not a {method} setting")
    if preset is not None and preset not in presets:
        raise InputError(f"--preset {preset} is not a {method} preset; {method} has {', '.join(presets)}")
    return configured(config_cls(), presets or {}, preset, given)


def _texts(values: Sequence[str], name: str) -> list[str]:
    for v in values:
        if not v.strip():
            raise InputError(f"{name} is empty")
    return [v.strip() for v in values]


def _read_mask(mask: str | None, image, label: str = "image"):
    """None, "infer", or the mask file read and checked against the image's size."""
    from retouch.latents import load_image

    if mask is None or mask == "infer":
        return mask
    m = load_image(mask, "mask")
    if m.size != image.size:
        raise InputError(f"mask {mask} is {m.width}x{m.height}, the {label} is {image.width}x{image.height}")
    return m


@click.command(cls=SettingsCommand, settings=_edit_settings, context_settings=CONTEXT)
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The edited image.")
@click.option("--method", type=click.Choice(["diffedit", "ledits"]), default="diffedit", show_default=True)
@click.option("--query", help="diffedit: the text the edited image should fit.")
@click.option("--reference", help="diffedit: the text of what to change [default: empty].")
@click.option("--prompt", help="ledits: target prompt [default: none].")
@click.option("--source", help="ledits: the image's caption, used while inverting [default: empty].")
@click.option("--add", multiple=True, metavar="CONCEPT", help="ledits: a concept to add (repeatable).")
@click.option("--remove", multiple=True, metavar="CONCEPT", help="ledits: a concept to remove (repeatable).")
@click.option(
    "--preset",
    type=click.Choice(list(dict.fromkeys([*presets.LEDITS, *presets.DIFFEDIT]))),
    help=f"Named settings of the method ({', '.join(n for n in presets.LEDITS if n in presets.DIFFEDIT)}:"
    " both have one); explicit flags override them."
    f" ledits: the reference demo's concept settings and ours, {presets.described('ledits')};"
    f" diffedit: {presets.described('diffedit')}; "
    "measured in BENCHMARKS.md.",
)
@click.option(
    "--mask",
    metavar="FILE|infer",
    help="A mask image (nonzero = edit) instead of inferring one; ledits: 'infer' "
    "confines the edit to DiffEdit's mask [default: diffedit infers, ledits uses none].",
)
@click.option(
    "--inversion",
    type=click.Path(dir_okay=False, path_type=Path),
    help="ledits: edit from an inversion saved by `retouch invert`, without inverting.",
)
@model_options
@click.option("--fast", is_flag=True, help="The method's named fast settings (explicit flags override).")
@budget_options
@_run_options
def edit(
    image,
    output,
    method,
    query,
    reference,
    prompt,
    source,
    add,
    remove,
    preset,
    mask,
    inversion,
    model,
    device,
    dtype,
    fast,
    max_pixels,
    resize,
    seed,
    as_json,
    quiet,
    no_progress,
    **settings,
):
    """Edit IMAGE with text; write the result to OUTPUT (a PNG carries its parameters)."""
    from retouch.latents import load_image
    from retouch.methods import diffedit as de
    from retouch.methods import ledits as le

    given = given_settings(settings)
    if fast:
        given = {**(de.FAST if method == "diffedit" else le.FAST), **given}
    kw = _seed_kw(seed)
    img = load_image(image)
    inputs = _diffedit_inputs if method == "diffedit" else _ledits_inputs
    run, cfg_text = inputs(
        img,
        given,
        query=query,
        reference=reference,
        prompt=prompt,
        source=source,
        add=add,
        remove=remove,
        preset=preset,
        inversion=inversion,
    )
    user_mask = _read_mask(mask, img)
    check_output(output, [image, mask if mask not in (None, "infer") else None, inversion])
    bundle, t_load = load_model(model, device, dtype, max_pixels, resize)
    with progress_bars(not (quiet or no_progress)) as progress:
        result = run(bundle, user_mask, progress, kw)
    timings = {"load": t_load, **result.timings}
    settings_out = result.settings
    params = {
        "model": bundle.model_id,
        "fingerprint": bundle.fingerprint,
        "method": method,
        "settings": settings_out,
        "seed": result.seed,
        "retouch": __version__,
    }
    t0 = time.perf_counter()
    save_image(result.image, output, params)
    timings["write"] = time.perf_counter() - t0
    summary = {
        "output": str(output),
        "method": method,
        "model": bundle.model_id,
        "settings": settings_out,
        "seed": result.seed,
        "unet_evals": result.unet_evals,
        "mask_area": None if result.mask is None else result.mask.area,
        "timings": timings,
        "message": result.message,
    }
    _report(
        summary,
        as_json,
        quiet,
        f"wrote {output} ({method}{cfg_text}, {result.unet_evals} UNet "
        f"evaluations, {sum(timings.values()):.1f} s){' — ' + result.message if result.message else ''}",
    )


def _not_for(method: str, **flags) -> None:
    for name, value in flags.items():
        if value:
            raise InputError(f"--{name} is not used by --method {method}")


def _diffedit_inputs(img, given, query, reference, preset, **unused):
    """Check a diffedit edit's inputs; return run(bundle, mask, progress, seed_kw) and a label."""
    from retouch.methods.diffedit import PRESETS, DiffEditConfig, diffedit

    _not_for("diffedit", **unused)
    if query is None:
        raise InputError("--method diffedit needs --query TEXT")
    (query,) = _texts([query], "query")
    _check_config(DiffEditConfig, "diffedit", given, preset, PRESETS)

    def run(bundle, mask, progress, kw):
        return diffedit(
            bundle,
            img,
            query,
            reference or "",
            mask=None if mask == "infer" else mask,
            progress=progress,
            preset=preset,
            **kw,
            **given,
        )

    return run, f", preset {preset}" if preset else ""


def _ledits_inputs(img, given, prompt, source, add, remove, preset, inversion, **unused):
    """Check a ledits edit's inputs (and its saved inversion); return run(...) and a label."""
    from retouch.methods.ledits import PRESETS, LEditsConfig, inversion_steps, ledits
    from retouch.settings import settings_fields

    _not_for("ledits", **unused)
    add, remove = _texts(add, "concept to add"), _texts(remove, "concept to remove")
    if prompt is not None and not prompt.strip():
        raise InputError("prompt is empty")
    if not (prompt or add or remove):
        raise InputError("--method ledits needs --prompt TEXT or at least one --add/--remove CONCEPT")
    inv = None if inversion is None else _read_inversion(inversion, img, source)
    _check_config(LEditsConfig, "ledits", {**inversion_steps(inv), **given}, preset, PRESETS)
    for s in settings_fields(LEditsConfig):
        if s.kind == "per_concept":
            _check_finite(s.name, given.get(s.name))

    def run(bundle, mask, progress, kw):
        return ledits(
            bundle,
            img if inv is None else inv,
            add=add,
            remove=remove,
            prompt=prompt or "",
            source=source or "",
            preset=preset,
            mask=mask,
            image=img,
            progress=progress,
            **kw,
            **given,
        )

    return run, f", preset {preset}" if preset else ""


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
    from PIL import Image

    from retouch.latents import image_hash
    from retouch.types import Inversion

    inv = Inversion.load(path)
    if img.size != (inv.width, inv.height):  # made from the image fitted to a pixel budget
        img = img.resize((inv.width, inv.height), Image.LANCZOS)
    if inv.image_hash != image_hash(img):
        raise InputError(f"inversion {path} was made from another image")
    if source is not None and source.strip() != inv.source:
        raise InputError(f"--source differs from the inversion's source {inv.source!r}")
    return inv


@click.command(cls=SettingsCommand, settings=_mask_settings, context_settings=CONTEXT)
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="The mask (PNG, white = edit); an overlay is written beside it as NAME.overlay.png.",
)
@click.option("--query", required=True, help="The text the edited image should fit.")
@click.option("--reference", default="", help="The text of what to change [default: empty].")
@click.option(
    "--preset",
    type=click.Choice(presets.mask_presets()),
    help="DiffEdit's named mask settings (BENCHMARKS.md); explicit flags override them.",
)
@model_options
@budget_options
@_run_options
def mask(
    image,
    output,
    query,
    reference,
    preset,
    model,
    device,
    dtype,
    max_pixels,
    resize,
    seed,
    as_json,
    quiet,
    no_progress,
    **settings,
):
    """DiffEdit's mask of IMAGE alone: where QUERY and REFERENCE disagree."""
    from retouch.latents import load_image
    from retouch.methods.diffedit import PRESETS, DiffEditConfig, diffedit_mask

    given = given_settings(settings)
    (query,) = _texts([query], "query")
    cfg = _check_config(DiffEditConfig, "diffedit", given, preset, PRESETS)
    kw = _seed_kw(seed)
    img = load_image(image)
    overlay_path = output.with_name(f"{output.stem}.overlay{output.suffix}")
    check_output(output, [image])
    check_output(overlay_path, [image])
    bundle, t_load = load_model(model, device, dtype, max_pixels, resize)
    img = fit_image(bundle, img, quiet)
    t0 = time.perf_counter()
    m = diffedit_mask(bundle, img, query, reference, preset=preset, **kw, **given)
    timings = {"load": t_load, "mask": time.perf_counter() - t0}
    settings_out = {
        "method": "diffedit_mask",
        "query": query,
        "reference": reference,
        **dataclasses.asdict(cfg),
        "preset": preset,
        "model": bundle.model_id,
    }
    params = {
        "model": bundle.model_id,
        "fingerprint": bundle.fingerprint,
        "method": "diffedit_mask",
        "settings": settings_out,
        "seed": kw.get("seed", 0),
        "retouch": __version__,
    }
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
    _report(
        summary,
        as_json,
        quiet,
        f"wrote {output} and {overlay_path} (mask area {m.area:.1%}, {m.unet_evals} UNet evaluations)",
    )


@click.command(cls=SettingsCommand, settings=_invert_settings, context_settings=CONTEXT)
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="The inversion (.safetensors), for `retouch edit --method ledits --inversion`.",
)
@click.option("--source", default="", help="The image's caption [default: empty].")
@model_options
@click.option("--fast", is_flag=True, help="The method's named fast settings (explicit flags override).")
@budget_options
@_run_options
def invert(
    image,
    output,
    source,
    model,
    device,
    dtype,
    fast,
    max_pixels,
    resize,
    seed,
    as_json,
    quiet,
    no_progress,
    **settings,
):
    """Invert IMAGE once (edit-friendly DDPM inversion), to edit it many times with ledits."""
    from retouch.latents import load_image
    from retouch.methods.ledits import FAST, LEditsConfig
    from retouch.methods.ledits import invert as invert_image

    given = given_settings(settings)
    if fast:
        given = {**FAST, **given}
    _check_config(LEditsConfig, "ledits", given)
    kw = _seed_kw(seed)
    img = load_image(image)
    check_output(output, [image], image=False)
    bundle, t_load = load_model(model, device, dtype, max_pixels, resize)
    img = fit_image(bundle, img, quiet)
    t0 = time.perf_counter()
    with progress_bars(not (quiet or no_progress)) as progress:
        inv = invert_image(bundle, img, source, progress=progress, **kw, **given)
    timings = {"load": t_load, "invert": time.perf_counter() - t0}
    inv.save(output)
    summary = {
        "output": str(output),
        "method": "invert",
        "model": bundle.model_id,
        "source": inv.source,
        "settings": {**given, "num_inference_steps": inv.num_inference_steps, "skip": inv.skip},
        "seed": inv.seed,
        "unet_evals": inv.unet_evals,
        "timings": timings,
    }
    _report(
        summary,
        as_json,
        quiet,
        f"wrote {output} ({len(inv.timesteps)} steps, {inv.unet_evals} UNet "
        f"evaluations, {sum(timings.values()):.1f} s)",
    )


# ---------------------------------------------------------------------------------------------
# Training


@click.group(context_settings=CONTEXT)
def train():
    """Train the mini Stable Diffusion on ShapesWorld: vae, then unet, then export."""


def _train_config(settings, work: Path | None = None, init: Path | None = None):
    """The training settings given; for a UNet run (`work`), its architecture and image size
    where they are not given (`retouch.shapes.train.run_settings`)."""
    from retouch.shapes.train import TrainConfig, run_settings

    given = given_settings(settings)
    return TrainConfig(**(given if work is None else run_settings(work, init, given)))


def _train_logging(threads: int | None) -> None:
    """Training's log lines on stderr; torch's CPU threads as asked (the shell's to set)."""
    import torch

    lib = logging.getLogger("retouch")
    if not any(getattr(h, "retouch_cli", False) for h in lib.handlers):
        handler = logging.StreamHandler()  # stderr, as the command runs it
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        handler.retouch_cli = True
        lib.addHandler(handler)
    lib.setLevel(logging.INFO)
    if threads is not None:
        torch.set_num_threads(threads)


def _ckpt(folder: Path, name: str, what: str) -> None:
    if not (folder / "ckpt" / name).is_file():
        raise InputError(f"{folder} has no {what} checkpoint (ckpt/{name})")


_folder = click.Path(file_okay=False, path_type=Path)
_threads = click.option(
    "--threads", type=click.IntRange(1), default=None, help="torch CPU threads [default: torch's own]."
)


@train.command("vae", cls=SettingsCommand, settings=_train_settings, context_settings=CONTEXT)
@click.argument("work", type=_folder)
@click.option("--init", type=_folder, help="Start from this folder's vae.safetensors.")
@_threads
def train_vae_command(work, init, threads, **settings):
    """Stage 1: the autoencoder, checkpointed (and resumed) in WORK."""
    from retouch.shapes.train import train_vae

    if init is not None and not (init / "vae.safetensors").is_file():
        raise InputError(f"--init {init} has no vae.safetensors")
    cfg = _train_config(settings)
    _train_logging(threads)
    train_vae(work, cfg, init=init)


@train.command("unet", cls=SettingsCommand, settings=_train_settings, context_settings=CONTEXT)
@click.argument("work", type=_folder)
@click.option("--vae-work", type=_folder, required=True, help="The autoencoder's work folder.")
@click.option("--init", type=_folder, help="Fine-tune from this trained model folder (diffusers format).")
@_threads
def train_unet_command(work, vae_work, init, threads, **settings):
    """Stage 2: UNet and text encoder on the trained autoencoder's latents, in WORK."""
    from retouch.shapes.train import train_unet

    _ckpt(vae_work, "vae.safetensors", "autoencoder")
    if init is not None and not (init / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        raise InputError(f"--init {init} is not a diffusers model folder with a UNet")
    cfg = _train_config(settings, work, init)
    _train_logging(threads)
    train_unet(work, vae_work, cfg, init=init)


@train.command("export", context_settings=CONTEXT)
@click.argument("out", type=_folder)
@click.option("--vae-work", type=_folder, required=True, help="The autoencoder's work folder.")
@click.option("--unet-work", type=_folder, required=True, help="The UNet's work folder.")
@click.option("--decoder-work", type=_folder, help="A decoder fine-tuned with the encoder frozen.")
@click.option(
    "--unet-dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Precision of the stored UNet weights (float16 halves them; they load as float32).",
)
def train_export_command(out, vae_work, unet_work, decoder_work, unet_dtype):
    """Assemble the trained parts into a diffusers model folder OUT."""
    import torch

    from retouch.shapes.train import export

    _ckpt(vae_work, "vae.safetensors", "autoencoder")
    _ckpt(unet_work, "ema_unet.safetensors", "UNet")
    if decoder_work is not None:
        _ckpt(decoder_work, "vae.safetensors", "decoder")
    dtype = getattr(torch, unet_dtype)
    click.echo(f"wrote {export(out, vae_work, unet_work, decoder_work, dtype)}")


@train.command("judge", context_settings=CONTEXT)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Weights file [default: the shipped judge's].",
)
@click.option("--steps", type=click.IntRange(1), default=800, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@_threads
def train_judge_command(output, steps, seed, threads):
    """The ShapesWorld judge: train on renders, save with its held-out accuracies beside it."""
    from retouch.shapes.judge import DEFAULT_WEIGHTS, train_and_export

    _train_logging(threads or 1)
    meta = train_and_export(output or DEFAULT_WEIGHTS, steps, seed)
    click.echo(json.dumps(meta, indent=2))
