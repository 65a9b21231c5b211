"""The web app: its functions called directly, and the page driven in headless Chromium."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from browser.chromium import free_port, in_ci, page, pages, require, require_chromium
from fuzz import CAPTION, QUERY, build_corpus, scene

gr = importlib.import_module("gradio") if in_ci() else pytest.importorskip("gradio")

from retouch.errors import InputError  # noqa: E402
from retouch.files import PNG_KEY  # noqa: E402
from retouch.ui.app import (  # noqa: E402
    PRESET_FIELDS,
    PRESETS,
    _preset_values,
    build_app,
    form_defaults,
    launch,
    run_edit,
)
from retouch.ui.session import Cache  # noqa: E402

torch.set_num_threads(1)

FAST = {
    "diffedit": dict(num_inference_steps=10, mask_samples=2),
    "ledits": dict(num_inference_steps=10, skip=2),
}
SCREENSHOT = Path(__file__).parents[1] / "docs" / "ui.png"


@pytest.fixture(scope="session")
def ui_model(request):
    """The shipped model when installed (RETOUCH_TEST_MODEL, RETOUCH_TEST_TINY: see test_cli.py)."""
    import retouch
    from retouch.models import SHIPPED

    if os.environ.get("RETOUCH_TEST_MODEL"):
        return retouch.load(os.environ["RETOUCH_TEST_MODEL"], device="cpu")
    if (SHIPPED / "model_index.json").is_file() and not os.environ.get("RETOUCH_TEST_TINY"):
        return retouch.load(device="cpu")
    return request.getfixturevalue("tiny_eps")


@pytest.fixture()
def image() -> np.ndarray:
    return scene()


def edit(model, cache, image, method="ledits", texts=None, seed=0, **settings):
    forms = {m: {**form_defaults(m), **FAST[m]} for m in FAST}
    forms[method].update(settings)
    texts = texts or (
        {"query": QUERY, "reference": CAPTION}
        if method == "diffedit"
        else {"add": "red circle", "remove": "purple circle", "source": CAPTION}
    )
    return dict(
        zip(
            ["overlay", "result", "file", "status", "cache"],
            run_edit(model, cache, image, method, texts, seed, forms["diffedit"], forms["ledits"]),
        )
    )


def test_second_edit_of_the_same_image_skips_the_inversion(ui_model, image):
    first = edit(ui_model, None, image)
    assert re.search(r"^inversion: \d+\.\d s$", first["status"], re.M), first["status"]
    assert re.search(r"^edit: \d+\.\d s$", first["status"], re.M)
    second = edit(ui_model, first["cache"], image, texts={"add": "blue circle", "source": CAPTION})
    assert "inversion: skipped (reused)" in second["status"]
    again = edit(ui_model, second["cache"], image)  # same inputs, reused inversion: same result
    assert np.array_equal(np.asarray(first["result"]), np.asarray(again["result"]))
    evals = [int(re.search(r"UNet evaluations: (\d+)", r["status"])[1]) for r in (first, again)]
    assert evals[1] < evals[0]
    with Image.open(first["file"]) as png:
        params = json.loads(png.text[PNG_KEY])
    assert params["method"] == "ledits" and params["settings"]["add"] == ["red circle"]
    changed = edit(ui_model, again["cache"], image, skip=3)  # another inversion is needed
    assert "skipped" not in changed["status"]


def test_diffedit_reuses_its_mask_and_encoding(ui_model, image):
    first = edit(ui_model, None, image, "diffedit")
    assert "mask: skipped" not in first["status"] and "mask area" in first["status"]
    assert first["overlay"].size == first["result"].size == (64, 64)
    second = edit(ui_model, first["cache"], image, "diffedit", guidance_scale=3.0)
    assert "mask: skipped (reused)" in second["status"] and "encoding: skipped (reused)" in second["status"]
    third = edit(ui_model, second["cache"], image, "diffedit", texts={"query": "a blue circle"})
    assert "mask: skipped" not in third["status"] and "encoding: skipped (reused)" in third["status"]


def test_each_visitor_has_their_own_cache(ui_model, image):
    alice = edit(ui_model, None, image)
    bob = edit(ui_model, None, image)
    assert "skipped" not in bob["status"] and bob["cache"] is not alice["cache"]
    assert len(alice["cache"].entries) == 1
    cache = Cache(size=2)
    for skip in (2, 3, 4):
        cache = edit(ui_model, cache, image, skip=skip)["cache"]
    assert len(cache.entries) == 2  # bounded


def _uploaded_copy(path: Path, data: bytes | None = None) -> Path:
    """A file (path's, or data named like path) where Gradio keeps uploads: the app reads nothing else."""
    folder = Path(gr.utils.get_upload_folder()) / f"retouch-test-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / path.name).write_bytes(path.read_bytes() if data is None else data)
    return folder / path.name


@pytest.mark.parametrize(
    "case",
    [
        "no image",
        "server path",
        "1x1 array",
        "transparent",
        "empty query",
        "over-long prompt",
        "NaN setting",
        "bad per-concept text",
        "negative seed",
        "unknown mode",
    ],
)
def test_bad_input_gives_a_message_not_a_crash(ui_model, image, case):
    bad = {
        "no image": dict(image=None),
        "server path": dict(image="/etc/hostname"),
        "1x1 array": dict(image=image[:1, :1]),
        "transparent": dict(image=np.dstack([image, np.zeros(image.shape[:2], np.uint8)])),
        "empty query": dict(method="diffedit", texts={"query": "  "}),
        "over-long prompt": dict(method="diffedit", texts={"query": "red " * 100}),
        "NaN setting": dict(method="diffedit", guidance_scale=math.nan),
        "bad per-concept text": dict(edit_scale="7,x"),
        "negative seed": dict(seed=-1),
        "unknown mode": dict(method="diffedit", mode="magic"),
    }[case]
    args = {"image": image, **bad}
    with pytest.warns(UserWarning):  # gr.Warning outside a request: a Python warning
        out = edit(ui_model, None, args.pop("image"), **args)
    assert out["status"].startswith("Error: ") and "\n" not in out["status"]
    assert out["result"] is None and isinstance(out["cache"], Cache)


def test_corpus_through_the_app(ui_model, tmp_path):
    """The bad-input corpus's image files, as uploads: a message each, or an edit (at most the
    app's pixel budget)."""
    from retouch.latents import fitted_size
    from retouch.ui.app import app_model

    model = app_model(ui_model)
    for case in build_corpus(tmp_path):
        if "--no-resize" in case.args:  # a CLI choice; the app always resizes
            continue
        if case.image.name == "good.png" or case.image.is_dir():  # a folder cannot be uploaded
            continue
        path = _uploaded_copy(case.image)
        try:
            with pytest.warns(UserWarning) if case.expect == "error" else contextlib.nullcontext():
                out = edit(model, None, str(path), "diffedit")
        finally:
            shutil.rmtree(path.parent)
        if case.expect == "error":
            assert out["status"].startswith("Error: "), (case.name, out["status"])
        else:
            with Image.open(case.image) as img:  # the CLI's budget flag is not the app's
                size = img.size if "--max-pixels" in case.args else case.size
            assert out["result"].size == fitted_size(*size, model.pixel_budget), case.name


def test_uploads_reach_retouch_undecoded(ui_model, tmp_path):
    """The page's payload names a file in Gradio's upload folder; anything else is refused."""
    not_an_image = _uploaded_copy(tmp_path.joinpath("text.png"), b"not an image")
    payload = {"path": str(not_an_image), "orig_name": "text.png"}
    with pytest.warns(UserWarning):
        out = edit(ui_model, None, payload)
    shutil.rmtree(not_an_image.parent)
    assert out["status"] == "Error: cannot read image text.png: not an image Pillow can decode"
    with pytest.warns(UserWarning):
        out = edit(ui_model, None, {"path": "/etc/hostname"})
    assert out["status"] == "Error: the image must be uploaded"


def test_ui_command_serves_the_loaded_model(monkeypatch):
    """`retouch ui` loads the model once and serves it (launch replaced here)."""
    from click.testing import CliRunner

    import retouch.ui.app
    import retouch.ui.command
    from retouch.main import main

    served = {}

    def launch(model, host, port, block, max_pixels, time_limit, concurrency):
        served.update(model=model, host=host, port=port, max_pixels=max_pixels, time_limit=time_limit)
        served.update(concurrency=concurrency)

    monkeypatch.setattr(retouch.ui.app, "launch", launch)
    monkeypatch.setattr(retouch.ui.command, "load_model", lambda model, device, dtype: ("the model", 0.0))
    args = ["ui", "--port", "7999", "--max-pixels", "1024", "--time-limit", "30", "--threads", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert served == dict(
        model="the model", host="127.0.0.1", port=7999, max_pixels=1024, time_limit=30.0, concurrency=2
    )
    assert torch.get_num_threads() == 3
    torch.set_num_threads(1)
    for args, message in [
        (["--port", "0"], "Invalid value for '--port'"),
        (["--time-limit", "nan"], "--time-limit must be finite"),
        (["--time-limit", "0"], "--time-limit must be > 0"),
        (["--max-pixels", "10"], "Invalid value for '--max-pixels'"),
    ]:
        result = CliRunner().invoke(main, ["ui", *args])
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)


def test_presets_fill_the_form():
    defaults = form_defaults("ledits")
    obj = dict(zip(PRESET_FIELDS["ledits"], _preset_values("ledits", "object")))
    assert obj == {
        **{k: defaults[k] for k in obj},
        "edit_scale": "15.0",
        "edit_warmup": "5",
        "edit_threshold": "0.95",
    }
    assert _preset_values("ledits", "none") == [defaults[n] for n in PRESET_FIELDS["ledits"]]
    pp = dict(zip(PRESET_FIELDS["ledits"], _preset_values("ledits", "ledits++")))
    assert (pp["implicit_mask"], pp["solver"], pp["num_inference_steps"]) == ("intersect", "dpmsolver++", 55)
    paper = form_defaults("diffedit")
    fields = (
        "mask_threshold",
        "encode_ratio",
        "reference_guidance_scale",
        "shared_word_scale",
        "mask_refine_radius",
        "mask_keep_ratio",
        "changed_word_scale",
        "mode",
    )
    assert PRESET_FIELDS["diffedit"] == fields

    def filled(**values):
        return [values.get(f, paper[f]) for f in fields]

    assert _preset_values("diffedit", "tight-mask") == filled(mask_threshold=0.8)
    assert _preset_values("diffedit", "remove") == filled(
        encode_ratio=1.0,
        reference_guidance_scale=5.0,
        shared_word_scale=0.5,
        mask_refine_radius=3.0,
        mask_keep_ratio=0.8,
    )
    assert _preset_values("diffedit", "background") == filled(mode="no_mask", encode_ratio=0.9)
    assert _preset_values("diffedit", "none") == filled()
    # on a flow model the word weights stay at 1 (they weigh a UNet's cross-attention)
    assert _preset_values("diffedit", "recolor", family="sd3") == filled(
        mask_refine_radius=3.0, mask_keep_ratio=0.8, encode_ratio=1.0
    )


@pytest.mark.parametrize(
    "method, preset", [("diffedit", "recolor"), ("ledits", "object"), ("ledits", "ledits++")]
)
def test_the_chosen_preset_is_in_the_edit_record(ui_model, image, method, preset):
    shown = dict(zip(PRESET_FIELDS[method], _preset_values(method, preset)))  # what choosing it fills
    out = edit(ui_model, None, image, method, preset=preset, **shown)
    with Image.open(out["file"]) as png:
        settings = json.loads(png.text[PNG_KEY])["settings"]
    assert settings["preset"] == preset
    assert all(settings[k] == v for k, v in PRESETS[method][preset].items())
    if preset == "ledits++":  # the mask panel shows the implicit masks' union over the input
        assert not np.array_equal(np.asarray(out["overlay"]), np.asarray(Image.fromarray(image)))
    plain = edit(ui_model, out["cache"], image, method)
    with Image.open(plain["file"]) as png:
        assert json.loads(png.text[PNG_KEY])["settings"]["preset"] is None
    with pytest.warns(UserWarning):  # gr.Warning outside a request
        wrong = edit(ui_model, None, image, method, preset="no-such-preset")
    assert wrong["result"] is None and "preset must be one of" in wrong["status"]


def test_the_form_is_derived_and_edits_run_two_at_a_time_the_rest_queued(ui_model):
    from retouch.methods.diffedit import DiffEditConfig
    from retouch.methods.ledits import LEditsConfig
    from retouch.settings import settings_fields

    demo = build_app(ui_model)
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    for method, cls in (("diffedit", DiffEditConfig), ("ledits", LEditsConfig)):
        assert {f"{method}-{s.name}" for s in settings_fields(cls)} <= ids
    edits = [fn for fn in demo.fns.values() if fn.name == "on_edit"]
    assert len(edits) == 1 and edits[0].concurrency_limit == 2
    assert [fn.name for fn in demo.fns.values()].count("on_stop") == 1  # Stop: ends the running edit
    assert any(fn.cancels == [edits[0]._id] for fn in demo.fns.values())  # and a queued one
    # each preset menu says what every one of its presets is for
    menus = {
        b.elem_id: b
        for b in demo.blocks.values()
        if getattr(b, "elem_id", None) in ("diffedit-preset", "preset")
    }
    for method, elem in (("diffedit", "diffedit-preset"), ("ledits", "preset")):
        names = [c[0] if isinstance(c, tuple) else c for c in menus[elem].choices][1:]
        assert names == list(PRESETS[method]) and all(f"{n}: " in menus[elem].info for n in names)


def test_an_upload_over_the_app_budget_is_edited_resized_and_the_page_says_so(ui_model):
    from retouch.ui.app import app_model

    n = ui_model.native_size
    big = np.asarray(Image.fromarray(scene()).resize((2 * n, 2 * n), Image.NEAREST))
    assert app_model(ui_model).pixel_budget == n * n < ui_model.pixel_budget  # lower than the library's
    out = edit(app_model(ui_model), None, big, "diffedit")
    assert out["result"].size == out["overlay"].size == (n, n)
    assert out["status"].startswith(f"image is {2 * n}x{2 * n}, over this model's budget of {n * n} pixels")


def test_an_edit_past_the_time_limit_or_stopped_ends_with_a_message(ui_model):
    import time as _time

    forms = {m: {**form_defaults(m), **FAST[m]} for m in FAST}
    texts = {"add": "red circle", "source": CAPTION}
    for kw, message in [
        (dict(time_limit=1e-3), "the edit ran past this server's time limit of 0.001 s"),
        (dict(stopped=lambda: True), "stopped"),
    ]:
        t0 = _time.perf_counter()
        with pytest.warns(UserWarning):
            out = run_edit(
                ui_model, None, scene(), "ledits", texts, 0, forms["diffedit"], forms["ledits"], **kw
            )
        assert out[3] == f"Error: {message}" or out[3].startswith(f"Error: {message}:"), out[3]
        assert out[1] is None and _time.perf_counter() - t0 < 5  # at the first step, not the end


@pytest.mark.slow
def test_in_the_browser(ui_model, tmp_path):
    """Upload a ShapesWorld image, edit it with LEDITS, see the result; edit again: the page says
    the inversion was reused. Leaves a screenshot (RETOUCH_UI_SCREENSHOT=1 updates docs/ui.png)."""
    require_chromium()
    expect = require("playwright.sync_api").expect
    photo = tmp_path / "scene.png"
    Image.fromarray(scene()).save(photo)
    broken = tmp_path / "broken.png"
    broken.write_bytes(photo.read_bytes()[:200])
    port = free_port()
    demo = launch(ui_model, port=port, block=False)
    url = f"http://127.0.0.1:{port}/"
    try:
        with page() as p:
            p.goto(url)
            status = p.locator("#status").get_by_role("textbox")
            # a broken upload: a message on the page, and the server goes on serving
            p.locator("#image input[type=file]").set_input_files(broken)
            p.locator("#query").get_by_role("textbox").fill(QUERY)
            p.locator("#edit").click()
            message = r"^Error: cannot read image broken.png: the file is truncated"
            expect(status).to_have_value(re.compile(message), timeout=60_000)
            p.locator("#image").get_by_label("Remove Image").click()
            p.locator("#image input[type=file]").set_input_files(photo)
            expect(p.locator("#image img")).to_have_count(1, timeout=20_000)
            p.locator("#method").get_by_label("ledits").check()
            p.locator("#source").get_by_role("textbox").fill(CAPTION)
            p.locator("#add").get_by_role("textbox").fill("red circle")
            p.locator("#remove").get_by_role("textbox").fill("purple circle")
            p.locator("#mask").get_by_label("infer").check()
            p.get_by_text("LEDITS settings").click()
            p.locator("#ledits-num_inference_steps").get_by_role("spinbutton").fill("20")
            p.locator("#ledits-skip").get_by_role("spinbutton").fill("4")
            p.locator("#edit").click()
            expect(status).to_have_value(re.compile(r"^inversion: \d"), timeout=120_000)
            expect(p.locator("#result img")).to_have_count(1)
            expect(p.locator("#overlay img")).to_have_count(1)
            assert p.locator("#result img").get_attribute("src")
            first = status.input_value()
            p.locator("#add").get_by_role("textbox").fill("green circle")
            p.locator("#edit").click()
            expect(status).to_have_value(re.compile("inversion: skipped \\(reused\\)"), timeout=120_000)
            assert "edit: " in status.input_value() and first != status.input_value()
            p.locator(".toast-close").evaluate_all("buttons => buttons.forEach(b => b.click())")
            expect(p.locator(".toast-item")).to_have_count(0)  # the screenshot shows this edit only
            p.locator("#status").scroll_into_view_if_needed()
            p.evaluate("window.scrollTo(0, 0)")
            p.screenshot(path=str(tmp_path / "ui.png"))
            _check_upload_limit(url)
    finally:
        demo.close()
    if os.environ.get("RETOUCH_UI_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "ui.png", SCREENSHOT)


def _check_upload_limit(url: str) -> None:
    """An upload over the app's size limit is refused by the server (HTTP 413)."""
    import httpx

    too_big = b"\0" * (11 * 1024 * 1024)
    r = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.png", too_big, "image/png")}, timeout=30)
    assert r.status_code == 413, r.status_code


def test_form_values_of_the_wrong_type_give_a_message_not_a_traceback(ui_model):
    for seed, texts, message in [
        ("abc", None, "Seed must be a whole number"),
        (1.5, None, "Seed must be a whole number"),
        (0, {"query": 5, "reference": CAPTION}, "Query must be text"),
        (0, {"query": QUERY, "reference": ["a"]}, "Reference must be text"),
    ]:
        with pytest.warns(UserWarning):
            out = edit(ui_model, None, scene(), "diffedit", texts, seed)
        assert out["status"].startswith(f"Error: {message}"), out["status"]


@pytest.mark.slow
def test_a_second_visitor_is_served_while_an_over_budget_edit_runs_and_stop_ends_an_edit(
    ui_model, tmp_path, monkeypatch
):
    """Visitor A uploads an image over the app's budget with many steps; visitor B's normal edit
    completes while A's runs; A's page then says the image was resized. A starts an endless edit
    and presses Stop: the edit ends on the server (not only on the page)."""
    import queue

    import retouch.ui.app as app

    require_chromium()
    expect = require("playwright.sync_api").expect
    ended: queue.Queue = queue.Queue()

    def watched(*args):
        try:
            return run(*args)
        except Exception as e:
            ended.put(type(e).__name__)
            raise

    run = app.run
    monkeypatch.setattr(app, "run", watched)
    n = ui_model.native_size
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.fromarray(scene()).resize((3 * n, 3 * n), Image.NEAREST).save(big)
    Image.fromarray(scene()).save(small)
    port = free_port()
    demo = launch(ui_model, port=port, block=False)
    try:
        with pages(2) as (a, b):
            for p, photo, steps in ((a, big, "300"), (b, small, "10")):
                p.goto(f"http://127.0.0.1:{port}/")
                p.locator("#image input[type=file]").set_input_files(photo)
                expect(p.locator("#image img")).to_have_count(1, timeout=20_000)
                p.locator("#query").get_by_role("textbox").fill(QUERY)
                p.get_by_text("DiffEdit settings").click()
                p.locator("#diffedit-mask_samples").get_by_role("spinbutton").fill("2")
                p.locator("#diffedit-num_inference_steps").get_by_role("spinbutton").fill(steps)
            a_status = a.locator("#status").get_by_role("textbox")
            b_status = b.locator("#status").get_by_role("textbox")
            a.locator("#edit").click()
            a.wait_for_timeout(1000)  # A's edit is running
            b.locator("#edit").click()
            expect(b_status).to_have_value(re.compile(r"^mask: \d"), timeout=60_000)
            assert a_status.input_value() == ""  # B was served while A's edit ran
            resized = (
                f"image is {3 * n}x{3 * n}, over this model's budget of {n * n} pixels: edited at {n}x{n}"
            )
            expect(a_status).to_have_value(re.compile("^" + re.escape(resized)), timeout=180_000)
            a.locator("#diffedit-num_inference_steps").get_by_role("spinbutton").fill(
                "999"
            )  # the most SD 1.x's leading schedule has
            a.locator("#edit").click()
            a.wait_for_timeout(1500)
            assert ended.empty(), ended.get()
            a.locator("#stop").click()
            assert ended.get(timeout=20) == "Stopped"  # the server's edit ended at its next step
    finally:
        demo.close()


def test_the_page_says_sides_and_areas_apart():
    """Each side's bounds in pixels a side, the budget in pixels in all (and its square)."""
    from retouch.ui.app import size_limits

    text = size_limits(4096)
    assert "Each side of an image from 8 to 4096 pixels" in text
    assert "more than 4096 pixels in all (64x64) is edited resized down" in text


@pytest.fixture(scope="module")
def sd3_model():
    """The shipped mini Stable Diffusion 3 (a flow model)."""
    import retouch

    return retouch.load("shapes-sd3", device="cpu")


def _radio(demo, elem_id: str):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_flowedit_is_offered_on_a_flow_model_with_its_familys_published_settings(ui_model, sd3_model):
    """On the mini SD3 the method choice shows FlowEdit (first), DiffEdit and LEDITS, FlowEdit's
    settings pre-filled with SD3's published values; on FLUX FlowEdit alone (with FLUX's values);
    on Stable Diffusion no FlowEdit."""
    from types import SimpleNamespace

    from retouch.methods.flowedit import PUBLISHED, FlowEditConfig
    from retouch.settings import settings_fields
    from retouch.ui.app import methods_for

    demo = build_app(sd3_model)
    choices = [c[1] if isinstance(c, tuple) else c for c in _radio(demo, "method").choices]
    assert choices == ["flowedit", "diffedit", "ledits"] and _radio(demo, "method").value == "flowedit"
    for s in settings_fields(FlowEditConfig):
        assert _radio(demo, f"flowedit-{s.name}").value == PUBLISHED["sd3"][s.name], s.name
    assert {"target", "flowedit-source"} <= {b.elem_id for b in demo.blocks.values() if hasattr(b, "elem_id")}
    presets = [c[1] if isinstance(c, tuple) else c for c in _radio(demo, "flowedit-preset").choices]
    assert presets == ["none", "stronger", "background"]
    assert methods_for(SimpleNamespace(family="flux")) == ["flowedit"]
    assert (
        form_defaults("flowedit", "flux")["n_max"] == 24 and form_defaults("flowedit", "sd3")["n_max"] == 33
    )
    on_sd = [c[1] if isinstance(c, tuple) else c for c in _radio(build_app(ui_model), "method").choices]
    assert on_sd == ["diffedit", "ledits"]


def test_a_flowedit_through_the_app_is_the_librarys_and_the_other_methods_run_on_sd3(sd3_model, image):
    """The app's FlowEdit gives `retouch.flowedit`'s image for the same texts, seed and settings and
    records them in its PNG; DiffEdit and LEDITS run on SD3 through the app."""
    import retouch

    values = {**form_defaults("flowedit", "sd3"), "num_inference_steps": 6, "n_max": 4}
    texts = {"flowedit_source": CAPTION, "target": QUERY}
    forms = {m: {**form_defaults(m), **FAST[m]} for m in FAST}
    out = run_edit(sd3_model, None, image, "flowedit", texts, 3, forms["diffedit"], forms["ledits"],
                   flowedit_values=values)  # fmt: skip
    assert out[3].startswith("edit: ") and "transformer evaluations: 16" in out[3], out[3]
    lib = retouch.flowedit(sd3_model, image, CAPTION, QUERY, seed=3, num_inference_steps=6, n_max=4)
    assert np.array_equal(np.asarray(out[1]), np.asarray(lib.image))
    with Image.open(out[2]) as png:
        params = json.loads(png.text[PNG_KEY])
    assert params["method"] == "flowedit" and params["settings"]["target"] == QUERY
    assert params["family"] == "sd3" and params["retouch"]
    assert params["settings"]["target_guidance_scale"] == 13.5 and params["seed"] == 3
    # its preset fills the form with SD3's settings and is recorded
    fill = dict(zip(PRESET_FIELDS["flowedit"], _preset_values("flowedit", "stronger", family="sd3")))
    assert fill == {"n_max": 40, "target_guidance_scale": 7.0}
    assert _preset_values("flowedit", "none", family="sd3") == [33, 13.5]
    values = {**form_defaults("flowedit", "sd3"), **fill, "n_min": 38, "preset": "stronger"}
    pre = run_edit(sd3_model, None, image, "flowedit", texts, 3, forms["diffedit"], forms["ledits"],
                   flowedit_values=values)  # fmt: skip
    with Image.open(pre[2]) as png:
        settings = json.loads(png.text[PNG_KEY])["settings"]
    assert (settings["preset"], settings["n_max"], settings["target_guidance_scale"]) == ("stronger", 40, 7.0)
    diff = edit(sd3_model, None, image, "diffedit")
    assert diff["result"].size == (64, 64) and "mask area" in diff["status"]
    led = edit(sd3_model, None, image, "ledits")
    assert led["result"].size == (64, 64) and "inversion: " in led["status"]


def test_a_flowedit_inside_an_inferred_mask_through_the_app_is_the_librarys(sd3_model, image):
    """The FlowEdit mask choice "infer" gives `retouch.flowedit(mask="infer")`'s image, the mask over
    the input beside it; a mask that is neither none nor infer (a server path) is refused in one line."""
    import retouch

    values = {**form_defaults("flowedit", "sd3"), "num_inference_steps": 6, "n_max": 4}
    texts = {"flowedit_source": CAPTION, "target": QUERY, "flowedit_mask": "infer"}
    forms = {m: {**form_defaults(m), **FAST[m]} for m in FAST}
    out = run_edit(sd3_model, None, image, "flowedit", texts, 3, forms["diffedit"], forms["ledits"],
                   flowedit_values=values)  # fmt: skip
    lib = retouch.flowedit(
        sd3_model, image, CAPTION, QUERY, seed=3, num_inference_steps=6, n_max=4, mask="infer"
    )
    assert np.array_equal(np.asarray(out[1]), np.asarray(lib.image))
    assert not np.array_equal(np.asarray(out[0].convert("RGB")), image)  # the mask over the input
    bad = {**texts, "flowedit_mask": "/etc/hostname"}
    with pytest.warns(UserWarning):
        out = run_edit(sd3_model, None, image, "flowedit", bad, 3, forms["diffedit"], forms["ledits"],
                       flowedit_values=values)  # fmt: skip
    assert out[1] is None and out[3] == "Error: mask must be none or infer, got '/etc/hostname'"


def test_a_mask_guidance_scale_of_0_is_refused_in_one_line(ui_model, image):
    """At 0 both sides of the mask are ε(∅): the app says so instead of an empty mask's unchanged image."""
    with pytest.warns(UserWarning):
        out = edit(ui_model, None, image, "diffedit", mask_guidance_scale=0)
    assert out["result"] is None and out["status"] == "Error: mask_guidance_scale must be > 0, got 0"


def test_an_optional_number_left_empty_is_none_as_a_browser_sends_it(ui_model, image):
    """An optional number with no default (DiffEdit's mask_guidance_scale) is a text field: a browser's
    empty number field would send 0 (an empty mask); empty text is none, a number is that number."""
    from retouch.ui.app import form_settings

    assert form_defaults("diffedit")["mask_guidance_scale"] == ""
    values = {**form_defaults("diffedit"), **FAST["diffedit"]}
    assert form_settings("diffedit", values)["mask_guidance_scale"] is None
    assert form_settings("diffedit", {**values, "mask_guidance_scale": " 2.5 "})["mask_guidance_scale"] == 2.5
    with pytest.raises(InputError, match="not a number"):
        form_settings("diffedit", {**values, "mask_guidance_scale": "two"})
    out = edit(ui_model, None, image, "diffedit")
    area = float(out["status"].split("mask area: ")[1].split("%")[0])
    assert out["result"] is not None and area > 0


def test_flowedit_on_a_stable_diffusion_model_is_a_message(ui_model, image):
    """A method the model does not run (the page does not offer it) is refused in one line."""
    forms = {m: {**form_defaults(m), **FAST[m]} for m in FAST}
    with pytest.warns(UserWarning):
        out = run_edit(ui_model, None, image, "flowedit", {"target": QUERY}, 0, forms["diffedit"],
                       forms["ledits"], flowedit_values=form_defaults("flowedit"))  # fmt: skip
    assert (
        out[1] is None
        and out[3] == "Error: method must be one of diffedit, ledits on this model, got 'flowedit'"
    )
