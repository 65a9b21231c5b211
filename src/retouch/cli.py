"""The `retouch` command: a thin shell over the library.

    retouch edit photo.png -o out.png --method diffedit --query "a green circle on a white background"
    retouch edit photo.png -o out.png --method ledits --add "green circle" --remove "red circle"
    retouch mask photo.png -o mask.png --query "..." --reference "..."
    retouch invert photo.png -o photo.safetensors --source "..."
    retouch edit photo.png -o out.png --method ledits --inversion photo.safetensors --add "..."

Every method setting is a flag derived from its config dataclass (`guidance_scale` is
`--guidance-scale`), so each default is defined once, in the library. Exit codes: 0 done; 2 bad
input or usage, with one line on stderr naming what and why; 1 anything else. Outputs are written
to a temporary file in the same folder and renamed, so a failure never leaves half an image.

Importing this module is light (click only): the library loads when a command runs, and the
settings flags are built when the command that has them is used, so `retouch --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import re
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from retouch import __version__

PNG_KEY = "retouch"  # the PNG text chunk holding an output's parameters, as JSON


# ---------------------------------------------------------------------------------------------
# Settings: config dataclass fields as flags (and as the web form's fields, see retouch.ui)


@dataclass(frozen=True)
class Setting:
    """One field of a method's config dataclass, described for a CLI flag or a form field.

    kind: "int", "float", "bool", "str" or "per_concept" (one number, or one per concept);
    optional: None is a valid value; help: the comment on the field's line in the dataclass.
    """

    name: str
    kind: str
    optional: bool
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").capitalize()


def _field_comments(cls) -> dict[str, str]:
    """The trailing `# comment` of each field line in the class's source (empty if unavailable)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, flags=re.MULTILINE)
    return {name: text.strip() for name, text in found}


def _kind(hint) -> tuple[str, bool]:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in args
    args = tuple(a for a in args if a is not type(None))
    if any(typing.get_origin(a) is Sequence or a in (list, tuple) for a in args):
        return "per_concept", optional
    for t in (bool, int, float, str):
        if t in args:
            return t.__name__, optional
    raise TypeError(f"no flag type for {hint!r}")


def settings_fields(config_cls) -> list[Setting]:
    """The fields of a config dataclass, in order, as Settings (name, kind, default, help)."""
    hints = typing.get_type_hints(config_cls)
    comments = _field_comments(config_cls)
    return [
        Setting(f.name, *_kind(hints[f.name]), f.default, comments.get(f.name, ""))
        for f in dataclasses.fields(config_cls)
    ]


_NONE = object()  # "none" given explicitly, as opposed to a flag not given (None)


def parse_numbers(text: str, optional: bool = False):
    """A per-concept setting as typed: "7" → 7, "7,5" → [7, 5], "none" → None (if optional).
    ValueError if a part is not a number."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if optional and part.lower() == "none":
            values.append(None)
            continue
        try:
            values.append(int(part))
        except ValueError:
            values.append(float(part))
    return values[0] if len(values) == 1 else values


class _PerConcept(click.ParamType):
    """One number for every concept, or a comma list of one per concept ("7" or "7,5")."""

    name = "NUMBER[,NUMBER...]"

    def __init__(self, optional: bool):
        self.optional = optional

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            value = parse_numbers(value, self.optional)
        except ValueError:
            self.fail(f"{value!r} is not a number or a comma list of numbers", param, ctx)
        return _NONE if value is None else value


class _OptionalFloat(click.ParamType):
    name = "FLOAT|none"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        if value.strip().lower() == "none":
            return _NONE
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'none'", param, ctx)


def _click_type(s: Setting):
    if s.kind == "per_concept":
        return _PerConcept(s.optional)
    if s.kind == "float" and s.optional:
        return _OptionalFloat()
    return {"int": click.INT, "float": click.FLOAT, "str": click.STRING}[s.kind]


def setting_options(configs: dict[str, type], keep: Callable[[str], bool] = lambda name: True):
    """click Options for the fields of the config classes ({label: class}); a field several
    classes share is one flag whose help gives each class's default. Every option defaults to
    None (not given): the library's own defaults apply unless a flag is given."""
    merged: dict[str, tuple[Setting, dict[str, Any]]] = {}
    for label, cls in configs.items():
        for s in settings_fields(cls):
            if keep(s.name):
                merged.setdefault(s.name, (s, {}))[1][label] = s.default
    options = []
    for s, defaults in merged.values():
        shown = {k: "none" if v is None else v for k, v in defaults.items()}
        if len(configs) == 1 or len(set(map(str, shown.values()))) == 1:
            default = str(next(iter(shown.values())))
        else:
            default = ", ".join(f"{v} for {k}" for k, v in shown.items())
        only = "" if len(defaults) == len(configs) else f" ({', '.join(defaults)} only)"
        help_text = f"{s.help}{only} [default: {default}]"
        if s.kind == "bool":
            decl = f"{s.flag}/--no-{s.flag[2:]}"
            options.append(click.Option([decl, s.name], default=None, help=help_text))
        else:
            options.append(click.Option([s.flag, s.name], type=_click_type(s), default=None,
                                        help=help_text))
    return options


def given_settings(values: dict) -> dict:
    """The settings flags that were given ({field: value}), 'none' mapped back to None."""
    return {k: None if v is _NONE else v for k, v in values.items() if v is not None}


class SettingsCommand(click.Command):
    """A command whose settings flags are built on first use (from config classes that import
    torch), so that listing the commands stays light."""

    def __init__(self, *args, settings: Callable[[], list[click.Option]], **kwargs):
        self._build_settings = settings
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._build_settings is not None:
            build, self._build_settings = self._build_settings, None
            self._params.extend(build())
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = value


def _edit_settings():
    from retouch.methods.diffedit import DiffEditConfig
    from retouch.methods.ledits import LEditsConfig

    return setting_options({"diffedit": DiffEditConfig, "ledits": LEditsConfig})


def _mask_settings():
    from retouch.methods.diffedit import DiffEditConfig

    return setting_options({"diffedit": DiffEditConfig}, keep=lambda n: n in MASK_FIELDS or "mask_" in n)


def _invert_settings():
    from retouch.methods.ledits import LEditsConfig

    return setting_options({"ledits": LEditsConfig}, keep=lambda n: n in INVERSION_FIELDS)


def _train_settings():
    from retouch.train import TrainConfig

    return setting_options({"train": TrainConfig})


MASK_FIELDS = ("num_inference_steps", "feather")  # with every mask_* field: what the mask reads
INVERSION_FIELDS = ("num_inference_steps", "skip", "source_guidance_scale")  # what invert() reads


# ---------------------------------------------------------------------------------------------
# Errors, outputs


class BadInput(click.ClickException):
    """Bad input: exit code 2, one line on stderr."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# retouch's input errors: ValueError subclasses whose message is one line naming what and why.
INPUT_ERRORS = (("retouch.latents", "ImageError"), ("retouch.text", "PromptError"),
                ("retouch.methods.common", "SettingError"), ("retouch.models", "ModelError"))


def is_input_error(e: BaseException) -> bool:
    """Whether e is one of retouch's input errors (looked up without importing anything)."""
    classes = tuple(getattr(sys.modules[m], name) for m, name in INPUT_ERRORS if m in sys.modules)
    return isinstance(e, classes)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_output(out: Path, inputs: Sequence[Path | None] = (), image: bool = True) -> Path:
    """Refuse an output path that is one of the inputs, a folder, in a missing or unwritable
    folder, or (for images) of a format Pillow cannot write."""
    out = Path(out)
    for src in inputs:
        if src is not None and _same_file(out, Path(src)):
            raise BadInput(f"output {out} is the input file {src}: refusing to overwrite it")
    if out.is_dir():
        raise BadInput(f"output {out} is a folder: give a file name")
    folder = out.parent
    if not folder.is_dir():
        raise BadInput(f"cannot write {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write {out}: folder {folder} is not writable")
    if image:
        _image_format(out)
    return out


def _image_format(path: Path) -> str:
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise BadInput(f"cannot write {path}: unknown image format {path.suffix!r} (use .png)")
    return fmt


def write_atomic(path: Path, save: Callable[[Path], None]) -> None:
    """save(tmp) into a temporary file beside `path`, then rename it over `path`: a reader (or a
    crash) never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)


def save_image(img, path: Path, params: dict | None = None) -> None:
    """Write an image atomically; a PNG carries `params` as JSON in its "retouch" text chunk."""
    from PIL.PngImagePlugin import PngInfo

    fmt = _image_format(Path(path))
    kwargs = {}
    if fmt == "PNG" and params is not None:
        info = PngInfo()
        info.add_text(PNG_KEY, json.dumps(params, default=str))
        kwargs["pnginfo"] = info
    write_atomic(path, lambda tmp: img.save(tmp, format=fmt, **kwargs))


def read_params(path) -> dict:
    """The parameters `retouch` wrote into a PNG's text chunk."""
    from PIL import Image

    with Image.open(path) as img:
        return json.loads(img.text[PNG_KEY])


def mask_overlay(image, mask, color=(255, 0, 80), opacity: float = 0.55):
    """The image with the mask (a retouch Mask) tinted over it, for display."""
    from PIL import Image

    tint = mask.image().resize(image.size).point(lambda v: round(v * opacity))
    return Image.composite(Image.new("RGB", image.size, color), image.convert("RGB"), tint)


# ---------------------------------------------------------------------------------------------
# The command group


class _Group(click.Group):
    """A group whose usage errors are one line too, and whose `lazy` subcommands (name →
    "module:attribute") are imported only when used."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx, name):
        if name in self.lazy:
            return _import_command(name, self.lazy[name])
        return super().get_command(ctx, name)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"Error: {' '.join(e.format_message().split())}{hint}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except ValueError as e:
            if not is_input_error(e):
                raise
            click.echo(f"Error: {' '.join(str(e).split())}", err=True)
            sys.exit(BadInput.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _import_command(name: str, target: str) -> click.Command:
    module, attr = target.split(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        reason = f"{module}.{attr} cannot be loaded: {e}"

        @click.command(name, help=f"(unavailable: {reason})",
                       context_settings={"ignore_unknown_options": True})
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def unavailable(args):
            path = click.get_current_context().command_path
            raise click.ClickException(f"{path} is unavailable: {reason}")

        return unavailable


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="retouch")
def main():
    """Edit images with text using diffusion models: DiffEdit and LEDITS."""


def _model_options(fn):
    fn = click.option("--dtype", default=None, help="float32, float16 or bfloat16 [default: float16 on "
                      "GPU, float32 on CPU]")(fn)
    fn = click.option("--device", default=None, help="cpu, cuda, cuda:1... [default: cuda if available]")(fn)
    fn = click.option("--model", default=None, metavar="FOLDER|HUB_ID",
                      help="A diffusers Stable Diffusion 1.x/2.x model [default: the shipped ShapesWorld "
                      "model]")(fn)
    return fn


def _run_options(fn):
    fn = click.option("--no-progress", is_flag=True, help="No progress bars.")(fn)
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress bars, no summary line.")(fn)
    fn = click.option("--json", "as_json", is_flag=True,
                      help="Print a machine-readable summary (JSON) on stdout.")(fn)
    fn = click.option("--seed", type=int, default=None, help="Random seed [default: 0].")(fn)
    return fn


def _load_model(model, device, dtype):
    import torch

    import retouch

    if device is not None:
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise BadInput(f"--device {device!r} is not a device: {e}") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BadInput(f"--device {device}: CUDA is not available on this machine")
    _quiet_libraries()
    t0 = time.perf_counter()
    bundle = retouch.load(model, device=device, dtype=dtype)
    return bundle, time.perf_counter() - t0


def _quiet_libraries() -> None:
    """No weight-loading bars or tokenizer warnings from diffusers/transformers: stderr carries
    our progress bars and errors only."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.disable_progress_bar()
        lib.utils.logging.set_verbosity_error()


def _seed_kw(seed) -> dict:
    from retouch.methods.common import check_seed

    return {} if seed is None else {"seed": check_seed(seed)}


def _report(summary: dict, as_json: bool, quiet: bool, line: str) -> None:
    if as_json:
        click.echo(json.dumps(summary, default=str))
    elif not quiet:
        click.echo(line)


def _check_config(config_cls, method: str, given: dict):
    from retouch.methods.common import with_settings

    names = {f.name for f in dataclasses.fields(config_cls)}
    for name in given:
        if name not in names:
            raise BadInput(f"--{name.replace('_', '-')} is not a {method} setting")
    cfg = with_settings(config_cls(), given)
    cfg.check()
    return cfg


def _texts(values: Sequence[str], name: str) -> list[str]:
    for v in values:
        if not v.strip():
            raise BadInput(f"{name} is empty")
    return [v.strip() for v in values]


def _read_mask(mask: str | None, image, label: str = "image"):
    """None, "infer", or the mask file read and checked against the image's size."""
    from retouch.latents import load_image

    if mask is None or mask == "infer":
        return mask
    m = load_image(mask, "mask")
    if m.size != image.size:
        raise BadInput(f"mask {mask} is {m.width}x{m.height}, the {label} is {image.width}x{image.height}")
    return m


@main.command(cls=SettingsCommand, settings=_edit_settings, context_settings=CONTEXT)
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The edited image.")
@click.option("--method", type=click.Choice(["diffedit", "ledits"]), default="diffedit", show_default=True)
@click.option("--query", help="diffedit: the text the edited image should fit.")
@click.option("--reference", help="diffedit: the text of what to change [default: empty].")
@click.option("--prompt", help="ledits: target prompt [default: none].")
@click.option("--source", help="ledits: the image's caption, used while inverting [default: empty].")
@click.option("--add", multiple=True, metavar="CONCEPT", help="ledits: a concept to add (repeatable).")
@click.option("--remove", multiple=True, metavar="CONCEPT", help="ledits: a concept to remove (repeatable).")
@click.option("--preset", type=click.Choice(["style", "face", "object"]),
              help="ledits: the reference demo's concept settings; explicit flags override it.")
@click.option("--mask", metavar="FILE|infer",
              help="A mask image (nonzero = edit) instead of inferring one; ledits: 'infer' "
              "confines the edit to DiffEdit's mask [default: diffedit infers, ledits uses none].")
@click.option("--inversion", type=click.Path(dir_okay=False, path_type=Path),
              help="ledits: edit from an inversion saved by `retouch invert`, without inverting.")
@_model_options
@_run_options
def edit(image, output, method, query, reference, prompt, source, add, remove, preset, mask, inversion,
         model, device, dtype, seed, as_json, quiet, no_progress, **settings):
    """Edit IMAGE with text; write the result to OUTPUT (a PNG carries its parameters)."""
    from retouch.latents import load_image

    given = given_settings(settings)
    kw = _seed_kw(seed)
    img = load_image(image)
    inputs = _diffedit_inputs if method == "diffedit" else _ledits_inputs
    run, cfg_text = inputs(img, given, query=query, reference=reference, prompt=prompt, source=source,
                           add=add, remove=remove, preset=preset, inversion=inversion)
    user_mask = _read_mask(mask, img)
    check_output(output, [image, mask if mask not in (None, "infer") else None, inversion])
    bundle, t_load = _load_model(model, device, dtype)
    progress = not (quiet or no_progress)
    result = run(bundle, user_mask, progress, kw)
    timings = {"load": t_load, **result.timings}
    params = {"model": bundle.model_id, "fingerprint": bundle.fingerprint, "method": method,
              "settings": result.settings, "seed": result.seed, "retouch": __version__}
    t0 = time.perf_counter()
    save_image(result.image, output, params)
    timings["write"] = time.perf_counter() - t0
    summary = {"output": str(output), "method": method, "model": bundle.model_id,
               "settings": result.settings, "seed": result.seed, "unet_evals": result.unet_evals,
               "mask_area": None if result.mask is None else result.mask.area,
               "timings": timings, "message": result.message}
    _report(summary, as_json, quiet, f"wrote {output} ({method}{cfg_text}, {result.unet_evals} UNet "
            f"evaluations, {sum(timings.values()):.1f} s){' — ' + result.message if result.message else ''}")


def _not_for(method: str, **flags) -> None:
    for name, value in flags.items():
        if value:
            raise BadInput(f"--{name} is not used by --method {method}")


def _diffedit_inputs(img, given, query, reference, **unused):
    """Check a diffedit edit's inputs; return run(bundle, mask, progress, seed_kw) and a label."""
    from retouch.methods.diffedit import DiffEditConfig, diffedit

    _not_for("diffedit", **unused)
    if query is None:
        raise BadInput("--method diffedit needs --query TEXT")
    query, = _texts([query], "query")
    _check_config(DiffEditConfig, "diffedit", given)

    def run(bundle, mask, progress, kw):
        return diffedit(bundle, img, query, reference or "", mask=None if mask == "infer" else mask,
                        progress=progress, **kw, **given)

    return run, ""


def _ledits_inputs(img, given, prompt, source, add, remove, preset, inversion, **unused):
    """Check a ledits edit's inputs (and its saved inversion); return run(...) and a label."""
    from retouch.methods.ledits import LEditsConfig, ledits

    _not_for("ledits", **unused)
    add, remove = _texts(add, "concept to add"), _texts(remove, "concept to remove")
    if prompt is not None and not prompt.strip():
        raise BadInput("prompt is empty")
    if not (prompt or add or remove):
        raise BadInput("--method ledits needs --prompt TEXT or at least one --add/--remove CONCEPT")
    inv = None if inversion is None else _read_inversion(inversion, img, source, given)
    _check_config(LEditsConfig, "ledits", given)
    for s in settings_fields(LEditsConfig):
        if s.kind == "per_concept":
            _check_finite(s.name, given.get(s.name))

    def run(bundle, mask, progress, kw):
        return ledits(bundle, img if inv is None else inv, add=add, remove=remove, prompt=prompt or "",
                      source=source or "", preset=preset, mask=mask, image=img, progress=progress,
                      **kw, **given)

    return run, f", preset {preset}" if preset else ""


def _check_finite(name: str, value) -> None:
    """NaN and infinities in a per-concept setting, before the model loads (ledits checks the
    ranges once it knows the concepts)."""
    from retouch.methods.common import check_number

    for v in value if isinstance(value, list) else [value]:
        if v is not None:
            check_number(name, v)


def _read_inversion(path: Path, img, source, given: dict):
    """Load a saved inversion, check it against the image, and take its step settings unless
    given (so an edit need not repeat them)."""
    from retouch.latents import image_hash
    from retouch.types import Inversion

    try:
        inv = Inversion.load(path)
    except ValueError as e:
        raise BadInput(str(e)) from e
    if inv.image_hash != image_hash(img):
        raise BadInput(f"inversion {path} was made from another image")
    if source is not None and source.strip() != inv.source:
        raise BadInput(f"--source differs from the inversion's source {inv.source!r}")
    given.setdefault("num_inference_steps", inv.num_inference_steps)
    given.setdefault("skip", inv.skip)
    return inv


@main.command(cls=SettingsCommand, settings=_mask_settings, context_settings=CONTEXT)
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The mask (PNG, white = edit); an overlay is written beside it as NAME.overlay.png.")
@click.option("--query", required=True, help="The text the edited image should fit.")
@click.option("--reference", default="", help="The text of what to change [default: empty].")
@_model_options
@_run_options
def mask(image, output, query, reference, model, device, dtype, seed, as_json, quiet, no_progress,
         **settings):
    """DiffEdit's mask of IMAGE alone: where QUERY and REFERENCE disagree."""
    from retouch.latents import load_image
    from retouch.methods.diffedit import DiffEditConfig, diffedit_mask

    given = given_settings(settings)
    query, = _texts([query], "query")
    cfg = _check_config(DiffEditConfig, "diffedit", given)
    kw = _seed_kw(seed)
    img = load_image(image)
    overlay_path = output.with_name(f"{output.stem}.overlay{output.suffix}")
    check_output(output, [image])
    check_output(overlay_path, [image])
    bundle, t_load = _load_model(model, device, dtype)
    t0 = time.perf_counter()
    m = diffedit_mask(bundle, img, query, reference, **kw, **given)
    timings = {"load": t_load, "mask": time.perf_counter() - t0}
    settings_out = {"method": "diffedit_mask", "query": query, "reference": reference,
                    **dataclasses.asdict(cfg), "model": bundle.model_id}
    params = {"model": bundle.model_id, "fingerprint": bundle.fingerprint, "method": "diffedit_mask",
              "settings": settings_out, "seed": kw.get("seed", 0), "retouch": __version__}
    save_image(m.image(), output, params)
    save_image(mask_overlay(img, m), overlay_path, params)
    summary = {"output": str(output), "overlay": str(overlay_path), "method": "diffedit_mask",
               "model": bundle.model_id, "settings": settings_out, "seed": params["seed"],
               "unet_evals": m.unet_evals, "mask_area": m.area, "timings": timings}
    _report(summary, as_json, quiet, f"wrote {output} and {overlay_path} (mask area {m.area:.1%}, "
            f"{m.unet_evals} UNet evaluations)")


@main.command(cls=SettingsCommand, settings=_invert_settings, context_settings=CONTEXT)
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The inversion (.safetensors), for `retouch edit --method ledits --inversion`.")
@click.option("--source", default="", help="The image's caption [default: empty].")
@_model_options
@_run_options
def invert(image, output, source, model, device, dtype, seed, as_json, quiet, no_progress, **settings):
    """Invert IMAGE once (edit-friendly DDPM inversion), to edit it many times with ledits."""
    from retouch.latents import load_image
    from retouch.methods.ledits import LEditsConfig
    from retouch.methods.ledits import invert as invert_image

    given = given_settings(settings)
    _check_config(LEditsConfig, "ledits", given)
    kw = _seed_kw(seed)
    img = load_image(image)
    check_output(output, [image], image=False)
    bundle, t_load = _load_model(model, device, dtype)
    t0 = time.perf_counter()
    inv = invert_image(bundle, img, source, progress=not (quiet or no_progress), **kw, **given)
    timings = {"load": t_load, "invert": time.perf_counter() - t0}
    try:
        inv.save(output)
    except OSError as e:
        raise BadInput(f"cannot write {output}: {e.strerror or e}") from e
    summary = {"output": str(output), "method": "invert", "model": bundle.model_id, "source": inv.source,
               "settings": {**given, "num_inference_steps": inv.num_inference_steps, "skip": inv.skip},
               "seed": inv.seed, "unet_evals": inv.unet_evals, "timings": timings}
    _report(summary, as_json, quiet, f"wrote {output} ({len(inv.timesteps)} steps, {inv.unet_evals} UNet "
            f"evaluations, {sum(timings.values()):.1f} s)")


# ---------------------------------------------------------------------------------------------
# Training, benchmarks, the web app


@main.group(context_settings=CONTEXT)
def train():
    """Train the mini Stable Diffusion on ShapesWorld: vae, then unet, then export."""


def _train_config(settings):
    from retouch.train import TrainConfig

    return TrainConfig(**given_settings(settings))


def _ckpt(folder: Path, name: str, what: str) -> None:
    if not (folder / "ckpt" / name).is_file():
        raise BadInput(f"{folder} has no {what} checkpoint (ckpt/{name})")


_folder = click.Path(file_okay=False, path_type=Path)


@train.command("vae", cls=SettingsCommand, settings=_train_settings, context_settings=CONTEXT)
@click.argument("work", type=_folder)
@click.option("--init", type=_folder, help="Start from this folder's vae.safetensors.")
def train_vae_command(work, init, **settings):
    """Stage 1: the autoencoder, checkpointed (and resumed) in WORK."""
    from retouch.train import train_vae

    if init is not None and not (init / "vae.safetensors").is_file():
        raise BadInput(f"--init {init} has no vae.safetensors")
    train_vae(work, _train_config(settings), init=init)


@train.command("unet", cls=SettingsCommand, settings=_train_settings, context_settings=CONTEXT)
@click.argument("work", type=_folder)
@click.option("--vae-work", type=_folder, required=True, help="The autoencoder's work folder.")
def train_unet_command(work, vae_work, **settings):
    """Stage 2: UNet and text encoder on the trained autoencoder's latents, in WORK."""
    from retouch.train import train_unet

    _ckpt(vae_work, "vae.safetensors", "autoencoder")
    train_unet(work, vae_work, _train_config(settings))


@train.command("export", context_settings=CONTEXT)
@click.argument("out", type=_folder)
@click.option("--vae-work", type=_folder, required=True, help="The autoencoder's work folder.")
@click.option("--unet-work", type=_folder, required=True, help="The UNet's work folder.")
@click.option("--decoder-work", type=_folder, help="A decoder fine-tuned with the encoder frozen.")
def train_export_command(out, vae_work, unet_work, decoder_work):
    """Assemble the trained parts into a diffusers model folder OUT."""
    from retouch.train import export

    _ckpt(vae_work, "vae.safetensors", "autoencoder")
    _ckpt(unet_work, "ema_unet.safetensors", "UNet")
    if decoder_work is not None:
        _ckpt(decoder_work, "vae.safetensors", "decoder")
    click.echo(f"wrote {export(out, vae_work, unet_work, decoder_work)}")


@main.group(cls=_Group, context_settings=CONTEXT,
            lazy={"model": "retouch.bench.model:model_command", "edits": "retouch.bench.edits:edits_command"})
def bench():
    """Benchmarks: the model alone, and the methods' edits."""


@main.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@_model_options
def ui(host, port, model, device, dtype):
    """Serve the web app: upload an image, edit it, download the result."""
    try:
        from retouch.ui import launch
    except ImportError as e:
        raise click.ClickException(f"the web app needs gradio: pip install 'retouch[ui]' ({e})") from e
    bundle, _ = _load_model(model, device, dtype)
    launch(bundle, host=host, port=port)


if __name__ == "__main__":
    main()
