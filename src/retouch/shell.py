"""What every command-line shell of retouch shares: the root group's one-line errors, flags derived
from config dataclasses, the model options, quiet loading, and progress bars.

The library itself draws nothing and prints nothing; the shells (`retouch.cli`, `retouch.ui`,
`retouch.bench`) build their commands from these pieces. Importing this module is light (click
only): settings flags are built when the command that has them is used.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click

from retouch.errors import InputError
from retouch.settings import Setting, parse_numbers, settings_fields

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_INPUT = 2  # bad input or usage: one line on stderr


def one_line(message) -> str:
    return " ".join(str(message).split())


# --- the root group ------------------------------------------------------------------------------


class Group(click.Group):
    """A group whose errors are one line (input errors and usage: exit 2), and whose `lazy`
    subcommands (name → "module:attribute") are imported only when used."""

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
            click.echo(f"Error: {one_line(e.format_message())}{hint}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except InputError as e:
            click.echo(f"Error: {one_line(e)}", err=True)
            sys.exit(EXIT_INPUT)
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

        @click.command(
            name, help=f"(unavailable: {reason})", context_settings={"ignore_unknown_options": True}
        )
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def unavailable(args):
            path = click.get_current_context().command_path
            raise click.ClickException(f"{path} is unavailable: {reason}")

        return unavailable


# --- settings flags --------------------------------------------------------------------------------

_NONE = object()  # "none" given explicitly, as opposed to a flag not given (None)


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


class Option(click.Option):
    """A click option that a MethodCommand lists under a section of its help: "inputs" (what to
    edit, and how: texts, presets), "settings" (the paper's), None (the other options) or
    "advanced" (our additions and what is rarely changed: listed by --help-all only)."""

    def __init__(self, *args, section: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.section = section


def setting_options(
    configs: dict[str, type],
    keep: Callable[[str], bool] = lambda name: True,
    shown: dict[str, str] | None = None,
):
    """click Options for the fields of the config classes ({label: class}); a field several
    classes share is one flag whose help gives each class's default. Every option defaults to
    None (not given): the library's own defaults apply unless a flag is given. A setting of ours
    says so in its help and, with the paper's rarely changed ones, is in the "advanced" section.
    `shown`: {name: the default to print} where the command's own default differs from the
    classes' (a field's own `shown` metadata says the same from its config)."""
    merged: dict[str, tuple[Setting, dict[str, Any]]] = {}
    choices: dict[str, list] = {}
    for label, cls in configs.items():
        for s in settings_fields(cls):
            if keep(s.name):
                merged.setdefault(s.name, (s, {}))[1][label] = s.default
                choices.setdefault(s.name, []).extend(c for c in s.choices if c not in choices[s.name])
    options = []
    for s, defaults in merged.values():
        each = {k: _shown(v) for k, v in defaults.items()}
        if s.name in (shown or {}):
            default = shown[s.name]
        elif s.shown:
            default = s.shown
        elif len(configs) == 1 or len(set(map(str, each.values()))) == 1:
            default = str(next(iter(each.values())))
        else:
            default = ", ".join(f"{v} for {k}" for k, v in each.items())
        only = "" if len(defaults) == len(configs) else f" ({', '.join(defaults)} only)"
        help_text = f"{s.description}{only} [default: {default}]"
        section = "advanced" if s.advanced else "settings"
        if s.kind == "bool":
            decl = f"{s.flag}/--no-{s.flag[2:]}"
            options.append(Option([decl, s.name], default=None, help=help_text, section=section))
        else:
            kind = click.Choice(choices[s.name]) if choices[s.name] else _click_type(s)
            options.append(Option([s.flag, s.name], type=kind, default=None, help=help_text, section=section))
    return options


def _shown(value):
    """A default as help shows it: 'none', and a float to four significant digits (1/6 → 0.1667)."""
    if value is None:
        return "none"
    return float(f"{value:.4g}") if isinstance(value, float) else value


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


_HELP_ALL = "help_all"


def _show_all_help(ctx: click.Context, param, value) -> None:
    if value and not ctx.resilient_parsing:
        ctx.meta[_HELP_ALL] = True
        click.echo(ctx.get_help(), color=ctx.color)
        ctx.exit()


class MethodCommand(SettingsCommand):
    """A method's command: its help lists what to edit and the presets, then the paper's settings,
    then the other options; the advanced ones (our additions, the paper's rarely changed
    settings, the pixel budget) only with --help-all, so that the default help stays short."""

    TITLES = {
        "inputs": "What to edit",
        "settings": "The paper's settings",
        None: "Options",
        "advanced": "Advanced: our additions and the paper's rarely changed settings",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._params.append(
            click.Option(
                ["--help-all"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=_show_all_help,
                help="Show every option, the advanced ones too, and exit.",
            )
        )

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str | None, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                sections.setdefault(getattr(param, "section", None), []).append(record)
        show_all = ctx.meta.get(_HELP_ALL, False)
        for key, title in self.TITLES.items():
            if sections.get(key) and (show_all or key != "advanced"):
                with formatter.section(title):
                    formatter.write_dl(sections[key])
        hidden = len(sections.get("advanced", []))
        if hidden and not show_all:
            formatter.write_paragraph()
            formatter.write_text(
                f"{hidden} advanced options (ours, and the paper's rarely changed): --help-all"
            )


# --- the model, quietly ------------------------------------------------------------------------------


FILE_OPTIONS = "model_file_options"  # ctx.meta key: --model-config and --allow-pickle, for load_model


def _remember(ctx: click.Context, param: click.Parameter, value):
    """Keep a single-file option in the context (shared by its subcommands) for `load_model`, so
    every command that loads a model takes it without a parameter of its own."""
    ctx.meta.setdefault(FILE_OPTIONS, {})[param.name] = value
    return value


def file_option(name: str, default=None):
    """The value of --model-config or --allow-pickle in the running command (default outside one)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(FILE_OPTIONS, {}).get(name, default) if ctx is not None else default


def model_options(fn=None, *, shipped: str | None = None):
    """--model, --device and --dtype; --model-config and --allow-pickle for a single-file checkpoint
    (advanced: a method's --help-all lists them). shipped: the command's default model, a shipped
    name (None: the library's default, shapes-sd)."""
    if fn is None:
        return lambda f: model_options(f, shipped=shipped)
    fn = click.option(
        "--allow-pickle",
        is_flag=True,
        expose_value=False,
        callback=_remember,
        cls=Option,
        section="advanced",
        help="Also load pickled weights (.ckpt, .bin): unpickling can run code; only for a file you trust.",
    )(fn)
    fn = click.option(
        "--model-config",
        default=None,
        metavar="FOLDER|HUB_ID",
        expose_value=False,
        callback=_remember,
        cls=Option,
        section="advanced",
        help="For a single-file checkpoint: a diffusers folder (or cached hub id) of its family, whose "
        "configs and tokenizers go with its weights [default: the family's cached default].",
    )(fn)
    fn = click.option(
        "--dtype", default=None, help="float32, float16 or bfloat16 [default: float16 on GPU, float32 on CPU]"
    )(fn)
    fn = click.option("--device", default=None, help="cpu, cuda, cuda:1... [default: cuda if available]")(fn)
    fn = click.option(
        "--model",
        default=shipped,
        metavar="FOLDER|HUB_ID|FILE",
        help="SD 1.x/2.x, SDXL, SD3 or FLUX: a diffusers folder or hub id, a single-file .safetensors "
        f"checkpoint, or a shipped model, shapes-sd or shapes-sd3 [default: {shipped or 'shapes-sd'}]",
    )(fn)
    return fn


def budget_options(fn):
    """--max-pixels and --resize/--no-resize: the pixel budget of the input image (advanced)."""
    fn = click.option(
        "--resize/--no-resize",
        default=True,
        show_default=True,
        cls=Option,
        section="advanced",
        help="Resize an image over the pixel budget down to it (--no-resize: refuse it).",
    )(fn)
    fn = click.option(
        "--max-pixels",
        type=click.IntRange(min=64),
        default=None,
        cls=Option,
        section="advanced",
        help="Pixel budget of the input image [default: four times the model's native area, "
        "e.g. 1024x1024 for SD 1.5, 128x128 for the shipped model].",
    )(fn)
    return fn


def fit_image(bundle, img, quiet: bool = False):
    """The image within the model's pixel budget, saying on stderr when it was resized (an
    ImageError when over it and resizing is off)."""
    from retouch.latents import fitted

    img, note = fitted(bundle, img)
    if note and not quiet:
        click.echo(f"note: {note}", err=True)
    return img


def quiet_libraries() -> None:
    """No weight-loading bars or tokenizer warnings from diffusers/transformers: stderr carries
    our progress bars and errors only."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.disable_progress_bar()
        lib.utils.logging.set_verbosity_error()


@dataclass(frozen=True)
class ModelLoader:
    """What a worker loads once (a pool's `init`): the model (folder, hub id or single file; None: the
    shipped one), device, dtype, its torch CPU threads, the pixel budget of an input image and, for a
    single file, its config and whether pickles may load (by default the command's --model-config
    and --allow-pickle)."""

    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    threads: int = 1
    max_pixels: int | None = None
    resize: bool = True
    config: str | None = field(default_factory=lambda: file_option("model_config"))
    allow_pickle: bool = field(default_factory=lambda: file_option("allow_pickle", False))

    def __call__(self):
        """The loaded ModelBundle, with this process's torch threads set."""
        import torch

        torch.set_num_threads(self.threads)
        return load_model(
            self.model, self.device, self.dtype, self.max_pixels, self.resize, self.config, self.allow_pickle
        )[0]


def load_model(model, device, dtype, max_pixels=None, resize=True, config=None, allow_pickle=None):
    """(the loaded ModelBundle, seconds): the device checked first, the libraries quiet. `config` and
    `allow_pickle` default to the running command's --model-config and --allow-pickle."""
    import torch

    from retouch.models import load

    if device is not None:
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise InputError(f"--device {device!r} is not a device: {e}") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise InputError(f"--device {device}: MPS is not available on this machine")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise InputError(f"--device {device}: retouch runs on cpu, cuda or mps")
    quiet_libraries()
    t0 = time.perf_counter()
    config = config if config is not None else file_option("model_config")
    allow_pickle = allow_pickle if allow_pickle is not None else file_option("allow_pickle", False)
    bundle = load(model, device, dtype, allow_pickle, max_pixels=max_pixels, resize=resize, config=config)
    return bundle, time.perf_counter() - t0


# --- CPU threads ---------------------------------------------------------------------------------------


def threads_option(fn):
    """--threads: torch's CPU threads for this command (default_threads when not given)."""
    return click.option(
        "--threads",
        type=click.IntRange(1),
        default=None,
        help="torch CPU threads [default: torch's own count (OMP_NUM_THREADS if set) less the cores "
        "busy now, at least 1].",
    )(fn)


def default_threads() -> int:
    """torch's own thread count (the physical cores, or OMP_NUM_THREADS), less the cores other
    processes keep busy now (the one-minute load average), and at least 1.

    On a busy machine more threads than idle cores make every step wait for the slowest thread: a
    DiffEdit edit (--fast, the shipped model) took 137 s with torch's two threads against 25 s with
    one on a two-core machine at a load of about 8 (docs/cli.md). An idle machine gets all of
    torch's threads. The thread count does not change the result."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
        busy = math.floor(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):  # no affinity or load average on this system
        return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), cores - busy))


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads (default_threads() when None); return the count set."""
    import torch

    count = default_threads() if threads is None else threads
    torch.set_num_threads(count)
    return count


# --- progress bars -----------------------------------------------------------------------------------


def on_terminal() -> bool:
    """Whether stderr is a terminal: progress bars are drawn there only, never into a pipe or a file."""
    return sys.stderr.isatty()


@contextmanager
def progress_bars(enabled: bool = True):
    """A library progress callback progress(stage, done, total) drawn as one tqdm bar per stage on
    stderr (None when disabled or when stderr is not a terminal); the bars close when the block ends."""
    if not (enabled and on_terminal()):
        yield None
        return
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, leave=False, file=sys.stderr)
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        for bar in bars.values():
            bar.close()
