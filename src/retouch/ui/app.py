"""The web app (Gradio): upload an image, pick a method, write the texts, edit, download.

The methods offered are those the loaded model runs (`methods_for`: DiffEdit and LEDITS on Stable
Diffusion; FlowEdit, DiffEdit and LEDITS on SD3; FlowEdit on FLUX). The settings form is derived
from the methods' config dataclasses (one field per setting, the dataclass default pre-filled;
FlowEdit's, the published values of the model's family). Work is bounded for every visitor: uploads
in file size (MAX_FILE_SIZE) and in pixels (retouch.latents' limits, checked from the header before
decoding; larger than the app's pixel budget, the model's native area by default, they are resized
down with a message), each edit by a time limit, and a visitor can stop their edit; `concurrency`
edits run at once and the rest wait in the queue. Each visitor's inversions live in their own
gr.State. The app only reads files Gradio received as uploads and only writes its own result files.
"""

from __future__ import annotations

import functools
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from retouch.errors import InputError, SettingError
from retouch.files import save_image
from retouch.latents import MAX_SIDE, MIN_SIDE
from retouch.methods.diffedit import DiffEditConfig
from retouch.methods.flowedit import PUBLISHED as FLOWEDIT_PUBLISHED
from retouch.methods.flowedit import FlowEditConfig
from retouch.methods.ledits import LEditsConfig
from retouch.models import check_budget
from retouch.presets import BY_METHOD, aims, on_model
from retouch.settings import Setting, check_number, parse_numbers, settings_fields
from retouch.types import ModelBundle
from retouch.ui.session import MASK_CHOICES, Cache, EditRequest, guarded, run

MAX_FILE_SIZE = "10mb"
TIME_LIMIT_S = 120.0  # per edit; the edit stops at its next step past it
CONCURRENCY = 2  # edits at once (a long one does not hold everyone); the rest are queued
_STOPS: set[str] = set()  # sessions whose visitor pressed Stop during their edit
CONFIGS = {"diffedit": DiffEditConfig, "ledits": LEditsConfig, "flowedit": FlowEditConfig}
LABELS = {"diffedit": "DiffEdit", "ledits": "LEDITS", "flowedit": "FlowEdit"}
PRESETS = BY_METHOD  # each method's named settings (retouch.presets)
# the fields a method's presets set: a preset fills them (its values, the defaults for those it leaves)
PRESET_FIELDS = {
    m: tuple(dict.fromkeys(k for p in presets.values() for k in p)) for m, presets in PRESETS.items()
}
RESULTS = Path(tempfile.gettempdir()) / "retouch-ui"  # the app's own result files
KEEP_RESULTS_S = 3600
# Small images (ShapesWorld's are 64x64) are shown scaled up, pixels kept sharp.
CSS = (
    "#image img, #overlay img, #result img {image-rendering: pixelated; width: 100%; height: 100%; "
    "object-fit: contain;}"
)


def shown(s: Setting, value=None):
    """A setting's value (its default if None) as the form shows it (per-concept fields are text)."""
    value = s.default if value is None else value
    if s.kind == "per_concept" or (s.kind in ("int", "float") and value is None):
        return "" if value is None else str(value)  # text fields, empty = none
    return value


def methods_for(model) -> list[str]:
    """The methods the app offers on `model`, the first chosen at start: FlowEdit, DiffEdit and
    LEDITS on SD3; FlowEdit alone on FLUX (a distilled model has no ∅ branch: the library refuses
    the others there); DiffEdit and LEDITS on Stable Diffusion."""
    family = getattr(model, "family", "sd")
    if family == "flux":
        return ["flowedit"]
    return ["flowedit", "diffedit", "ledits"] if family == "sd3" else ["diffedit", "ledits"]


def form_defaults(method: str, family: str | None = None) -> dict:
    """The settings form's initial values for a method: its config's defaults (FlowEdit's: the
    published values of the model's family, when given)."""
    published = FLOWEDIT_PUBLISHED.get(family, {}) if method == "flowedit" else {}
    return {s.name: shown(s, published.get(s.name)) for s in settings_fields(CONFIGS[method])}


def _field(method: str, s: Setting, value=None):
    """The form component of one config field (its value: the default's, or `value`)."""
    kw = dict(label=s.label, info=s.description or None, elem_id=f"{method}-{s.name}")
    if value is not None:
        return gr.Number(value=value, precision=0 if s.kind == "int" else None, **kw)
    if s.kind == "bool":
        return gr.Checkbox(value=s.default, **kw)
    if s.kind == "str" and s.choices:
        return gr.Dropdown(list(s.choices), value=s.default, **kw)
    if s.kind == "str":
        return gr.Textbox(value=s.default, **kw)
    if s.kind == "per_concept":
        kw["info"] = f"{s.description} — one value, or one per concept separated by commas".lstrip(" —")
        return gr.Textbox(value=shown(s), **kw)
    if s.default is None:  # a browser's empty number field sends 0, not "none": text, empty = none
        kw["info"] = f"{s.description} — empty: none".lstrip(" —")
        return gr.Textbox(value="", **kw)
    return gr.Number(value=s.default, precision=0 if s.kind == "int" else None, **kw)


def form_settings(method: str, values: dict) -> dict:
    """The form's values of a method's settings as config fields ({name: value})."""
    out = {}
    for s in settings_fields(CONFIGS[method]):
        v = values[s.name]
        if s.kind == "per_concept":
            text = str(v).strip()
            try:
                v = parse_numbers(text, s.optional) if text else None
            except ValueError:
                raise InputError(f"{s.label}: {text!r} is not a number or a comma list of numbers") from None
            if v is None and not s.optional:
                raise InputError(f"{s.label} is empty")
        elif s.kind in ("int", "float") and isinstance(v, str):  # an optional number's text field
            v = _optional_number(s, v)
        elif s.kind in ("int", "float") and v is None and not s.optional:
            raise InputError(f"{s.label} is empty")
        out[s.name] = v
    return out


def _optional_number(s: Setting, text: str):
    """An optional number's text as its value: empty or "none" → None, else the number (one-line
    InputError if it is not one)."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return None
    try:
        return int(text) if s.kind == "int" else float(text)
    except ValueError:
        raise InputError(f"{s.label}: {text!r} is not a number (empty: none)") from None


def _seed(value) -> int:
    """The form's seed as a whole number (Gradio sends floats), or a SettingError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingError(f"Seed must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise SettingError(f"Seed must be a whole number, got {value!r}")
    return int(number)


def _text(value, label: str) -> str:
    """A text field's value; anything but text (or nothing) is refused in one line."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SettingError(f"{label} must be text, got {type(value).__name__}")
    return value


def _concepts(text: str | None) -> tuple[str, ...]:
    """Concepts typed one per line or separated by commas."""
    return tuple(c.strip() for line in (text or "").splitlines() for c in line.split(",") if c.strip())


def _uploaded(image):
    """The image to edit. From the page: Gradio's payload for the uploaded file, whose path Gradio
    has checked is in its upload folder (the event skips Gradio's decoding, so retouch.latents
    reads and checks the file: size from the header first, truncation, modes). A path is accepted
    only inside that folder: a visitor never names a server path. Tests give PIL images or arrays."""
    if image is None:
        raise InputError("upload an image first")
    if isinstance(image, (Image.Image, np.ndarray)):
        return image
    if isinstance(image, dict):
        if not image.get("path"):
            raise InputError("upload the image as a file")
        image = image["path"]
    path = Path(str(image)).resolve()
    if not path.is_relative_to(Path(gr.utils.get_upload_folder()).resolve()):
        raise InputError("the image must be uploaded")
    return path


def _result_file(outcome) -> str:
    """The result as a PNG carrying its parameters, in the app's own folder (old ones removed)."""
    RESULTS.mkdir(exist_ok=True)
    now = time.time()
    for old in RESULTS.glob("retouch-*.png"):
        if now - old.stat().st_mtime > KEEP_RESULTS_S:
            old.unlink(missing_ok=True)
    path = RESULTS / f"retouch-{outcome.params['method']}-{uuid.uuid4().hex[:12]}.png"
    save_image(outcome.result.image, path, outcome.params)
    return str(path)


def run_edit(
    model: ModelBundle,
    cache: Cache | None,
    image,
    method: str,
    texts: dict,
    seed,
    diffedit_values: dict,
    ledits_values: dict,
    progress=None,
    time_limit: float = TIME_LIMIT_S,
    stopped: Callable[[], bool] = lambda: False,
    flowedit_values: dict | None = None,
):
    """The Edit button: returns (mask over the image, result, download file, status, cache).
    Each method's values: its settings' form fields and its "preset" (the edit's record names it).
    FlowEdit's texts: "flowedit_source", "target" and "flowedit_mask". Bad input, a method the model
    does not run (`methods_for`), the time limit or stopped() give a warning and the reason in the
    status box; the server keeps serving."""
    cache = cache if cache is not None else Cache()
    steps = guarded(_stage_progress(progress), time.monotonic() + time_limit, time_limit, stopped)
    try:
        offered = methods_for(model)
        if method not in offered:
            raise SettingError(f"method must be one of {', '.join(offered)} on this model, got {method!r}")
        image = _uploaded(image)
        values = {"diffedit": diffedit_values, "ledits": ledits_values}.get(method, flowedit_values or {})
        flow = method == "flowedit"
        req = EditRequest(
            image=image,
            method=method,
            settings=form_settings(method, values),
            seed=_seed(seed),
            query=_text(texts.get("query"), "Query"),
            reference=_text(texts.get("reference"), "Reference"),
            prompt=_text(texts.get("prompt"), "Prompt"),
            source=_text(texts.get("flowedit_source" if flow else "source"), "Source"),
            target=_text(texts.get("target"), "Target"),
            add=_concepts(_text(texts.get("add"), "Add")),
            remove=_concepts(_text(texts.get("remove"), "Remove")),
            mask=_text(texts.get("flowedit_mask" if flow else "mask"), "Mask") or "none",
            preset=None if values.get("preset") in (None, "", "none") else str(values["preset"]),
        )
        outcome = run(model, cache, req, steps)
    except InputError as e:
        message = " ".join(str(e).split())
        if isinstance(image, Path):  # name the file as the visitor knows it, not where the server keeps it
            message = message.replace(str(image), image.name)
        gr.Warning(message)
        return None, None, None, f"Error: {message}", cache
    return outcome.overlay, outcome.result.image, _result_file(outcome), outcome.status, cache


def _stage_progress(progress):
    """The library's progress(stage, done, total) as Gradio's progress bar."""
    if progress is None:
        return None
    return lambda stage, done, total: progress((done, total), desc=stage)


def _example_images(size: int) -> list[list]:
    """A few held-out ShapesWorld scenes (what the shipped model knows) with their captions,
    rendered at `size` pixels a side (the model's native size)."""
    from retouch.shapes.world import HELD_OUT_SEED, caption, render, sample_scene

    RESULTS.mkdir(exist_ok=True)
    rows = []
    for i in (3, 7, 12):
        scene = sample_scene(HELD_OUT_SEED + i, n_objects=1)
        path = RESULTS / f"example-{i}-{size}px.png"
        if not path.exists():
            Image.fromarray(render(scene, size)).save(path)
        text = caption(scene)
        rows.append([str(path), text, text])
    return rows


def size_limits(pixel_budget: int) -> str:
    """What the page says of an upload's size: each side's bounds, the file's, and the area over
    which an image is edited resized down."""
    side = int(pixel_budget**0.5)
    return (
        f"Each side of an image from {MIN_SIDE} to {MAX_SIDE} pixels, the file up to {MAX_FILE_SIZE}; "
        f"an image of more than {pixel_budget} pixels in all ({side}x{side}) is edited resized down "
        "to that area."
    )


def app_model(model: ModelBundle, max_pixels: int | None = None) -> ModelBundle:
    """The model as the app uses it: uploads over `max_pixels` (default the model's native area,
    a quarter of the library's budget) resized down to it."""
    check_budget(max_pixels)
    return replace(model, max_pixels=max_pixels or model.native_size**2, resize=True)


def build_app(
    model: ModelBundle,
    max_pixels: int | None = None,
    time_limit: float = TIME_LIMIT_S,
    concurrency: int = CONCURRENCY,
) -> gr.Blocks:
    """The app for one loaded model: uploads over `max_pixels` resized down, each edit stopped
    after `time_limit` seconds, `concurrency` edits at once."""
    check_number("time_limit", time_limit, low=0, low_open=True)
    check_number("concurrency", concurrency, low=1, integer=True)
    model = app_model(model, max_pixels)
    offered = methods_for(model)
    with gr.Blocks(title="retouch", delete_cache=(3600, 3600), analytics_enabled=False) as demo:
        gr.Markdown(
            f"# retouch\nEdit an image with text: {_intro(offered)} {size_limits(model.pixel_budget)} "
            f"An edit stops after {time_limit:g} s."
        )
        cache = gr.State(None, time_to_live=3600)
        with gr.Row():  # the three images side by side, one width: the same image shown alike
            image = gr.Image(
                label="Image",
                type="filepath",
                image_mode=None,
                height=360,  # its upload bar below it: the image itself as large as the other two
                sources=["upload", "clipboard"],
                elem_id="image",
            )
            overlay = gr.Image(
                label="Mask over the image",
                type="pil",
                format="png",
                height=320,
                interactive=False,
                elem_id="overlay",
            )
            result = gr.Image(
                label="Result",
                type="pil",
                format="png",
                height=320,
                interactive=False,
                elem_id="result",
            )
        with gr.Row():
            with gr.Column(scale=1):
                method = gr.Radio(offered, value=offered[0], label="Method", elem_id="method")
                with gr.Group(visible=offered[0] == "flowedit") as flowedit_box:
                    flowedit_source = gr.Textbox(
                        label="Source", info="What the image shows now (optional)", elem_id="flowedit-source"
                    )
                    target = gr.Textbox(
                        label="Target", info="What the edited image should show", elem_id="target"
                    )
                    flowedit_presets = on_model("flowedit", model.family)  # its family's (SD3's)
                    flowedit_preset = gr.Dropdown(
                        ["none", *flowedit_presets],
                        value="none",
                        label="Preset",
                        info=aims("flowedit", list(flowedit_presets)) if flowedit_presets else None,
                        visible=bool(flowedit_presets),
                        elem_id="flowedit-preset",
                    )
                    flowedit_mask = gr.Radio(
                        list(MASK_CHOICES),
                        value="none",
                        label="Mask",
                        info="infer (ours): edit only inside DiffEdit's mask of target against source",
                        elem_id="flowedit-mask",
                    )
                with gr.Group(visible=offered[0] == "diffedit") as diffedit_box:
                    query = gr.Textbox(
                        label="Query", info="What the edited image should show", elem_id="query"
                    )
                    reference = gr.Textbox(
                        label="Reference", info="What the image shows now (optional)", elem_id="reference"
                    )
                    diffedit_preset = gr.Dropdown(
                        ["none", *PRESETS["diffedit"]],
                        value="none",
                        label="Preset",
                        info=aims("diffedit"),
                        elem_id="diffedit-preset",
                    )
                with gr.Group(visible=False) as ledits_box:
                    source = gr.Textbox(
                        label="Source", info="The image's caption (optional)", elem_id="source"
                    )
                    add = gr.Textbox(label="Add", info="Concepts to add, comma-separated", elem_id="add")
                    remove = gr.Textbox(
                        label="Remove", info="Concepts to remove, comma-separated", elem_id="remove"
                    )
                    prompt = gr.Textbox(label="Target prompt", info="Optional", elem_id="prompt")
                    with gr.Row():
                        preset = gr.Dropdown(
                            ["none", *PRESETS["ledits"]],
                            value="none",
                            label="Preset",
                            info=aims("ledits"),
                            elem_id="preset",
                        )
                        mask = gr.Radio(
                            list(MASK_CHOICES),
                            value="none",
                            label="Mask",
                            info="infer: edit only inside DiffEdit's mask",
                            elem_id="mask",
                        )
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                with gr.Row():
                    edit_button = gr.Button("Edit", variant="primary", elem_id="edit")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                fields = {}
                for name, cls in CONFIGS.items():
                    published = name == "flowedit" and model.family in FLOWEDIT_PUBLISHED
                    start = form_defaults(name, model.family) if published else {}
                    with gr.Accordion(
                        f"{LABELS[name]} settings"
                        + (f" (published for {model.family})" if published else ""),
                        open=False,
                        visible=name == offered[0],
                    ) as box:
                        fields[name] = {
                            s.name: _field(name, s, start.get(s.name)) for s in settings_fields(cls)
                        }
                    fields[name]["_box"] = box
            with gr.Column(scale=1):
                download = gr.File(label="Download (PNG with its parameters)", elem_id="download")
                status = gr.Textbox(label="Status", lines=5, interactive=False, elem_id="status")
        gr.Examples(
            _example_images(model.native_size),
            inputs=[image, reference, source, flowedit_source],
            label="ShapesWorld examples",
        )

        boxes = [diffedit_box, ledits_box, flowedit_box, *(fields[m]["_box"] for m in CONFIGS)]
        method.change(_show_method, inputs=method, outputs=boxes, queue=False)
        for name, dropdown in (
            ("ledits", preset),
            ("diffedit", diffedit_preset),
            ("flowedit", flowedit_preset),
        ):
            targets = [fields[name][n] for n in PRESET_FIELDS[name]]
            fill = functools.partial(_preset_values, name, family=model.family)
            dropdown.change(fill, inputs=dropdown, outputs=targets, queue=False)

        form = {name: {k: c for k, c in f.items() if k != "_box"} for name, f in fields.items()}
        texts = {
            "query": query,
            "reference": reference,
            "prompt": prompt,
            "source": source,
            "add": add,
            "remove": remove,
            "mask": mask,
            "flowedit_source": flowedit_source,
            "target": target,
            "flowedit_mask": flowedit_mask,
        }

        def on_edit(data, request: gr.Request, progress=gr.Progress()):  # noqa: B008 (Gradio injects these)
            visitor = request.session_hash
            _STOPS.discard(visitor)
            return run_edit(
                model,
                data[cache],
                data[image],
                data[method],
                {k: data[c] for k, c in texts.items()},
                data[seed],
                {k: data[c] for k, c in form["diffedit"].items()} | {"preset": data[diffedit_preset]},
                {k: data[c] for k, c in form["ledits"].items()} | {"preset": data[preset]},
                progress,
                time_limit,
                lambda: visitor in _STOPS,
                {k: data[c] for k, c in form["flowedit"].items()} | {"preset": data[flowedit_preset]},
            )

        def on_stop(request: gr.Request):
            _STOPS.add(request.session_hash)  # the running edit ends at its next step

        inputs = {
            cache,
            image,
            method,
            seed,
            diffedit_preset,
            preset,
            flowedit_preset,
            *texts.values(),
            *form["diffedit"].values(),
            *form["ledits"].values(),
            *form["flowedit"].values(),
        }
        # preprocess=False: the handler gets the upload's payload, not Gradio's decoding of it
        editing = edit_button.click(
            on_edit,
            inputs=inputs,
            outputs=[overlay, result, download, status, cache],
            concurrency_limit=concurrency,
            preprocess=False,
        )
        stop_button.click(on_stop, cancels=[editing], queue=False)
    return demo


def _intro(offered: list[str]) -> str:
    """The page's first line: what each offered method does."""
    what = {
        "flowedit": "**FlowEdit** moves the image from the source text's flow to the target's, with no "
        "inversion;",
        "diffedit": "**DiffEdit** changes only where the query and the reference disagree;",
        "ledits": "**LEDITS** inverts the image once and then adds or removes concepts;",
    }
    return " ".join(what[m] for m in offered).rstrip(";") + "."


def _show_method(method: str):
    """Visibility of [diffedit texts, ledits texts, flowedit texts, then each method's settings]."""
    shown_ = [method == m for m in ("diffedit", "ledits", "flowedit", *CONFIGS)]
    return [gr.update(visible=v) for v in shown_]


def _preset_values(method: str, preset: str, family: str = "sd") -> list:
    """The form's values of the fields `method`'s presets set (PRESET_FIELDS), for a preset as it
    applies to a model of `family` (retouch.presets.on_model): its values, the form's start values
    for the fields it leaves ("none": the start values; FlowEdit's: the family's published)."""
    fields = {s.name: s for s in settings_fields(CONFIGS[method])}
    chosen = {k: shown(fields[k], v) for k, v in on_model(method, family).get(preset, {}).items()}
    values = {**form_defaults(method, family), **chosen}  # both as the form shows them
    return [values[n] for n in PRESET_FIELDS[method]]


def launch(
    model: ModelBundle,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    max_pixels: int | None = None,
    time_limit: float = TIME_LIMIT_S,
    concurrency: int = CONCURRENCY,
) -> gr.Blocks:
    """Serve the app: `concurrency` edits at once, the others queued (build_app for the limits)."""
    demo = build_app(model, max_pixels, time_limit, concurrency)
    demo.queue(default_concurrency_limit=1, max_size=64)
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=MAX_FILE_SIZE,
        show_error=True,
        prevent_thread_lock=not block,
        css=CSS,
    )
    return demo
