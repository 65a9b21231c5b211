"""The `retouch` command, in process (click's CliRunner), on the shipped model with few steps."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fuzz import CAPTION, QUERY, build_corpus, held_out_scene, scene
from retouch.files import PNG_KEY, read_params
from retouch.main import main
from retouch.settings import settings_fields

torch.set_num_threads(1)

FAST = {  # few steps: every command runs in about a second on the shipped model
    "diffedit": ["--num-inference-steps", "10", "--mask-samples", "2"],
    "ledits": ["--num-inference-steps", "10", "--skip", "2"],
}
REFERENCE = CAPTION


@pytest.fixture(scope="session")
def model_args(tmp_path_factory) -> list[str]:
    """No flag: the shipped model (the default) when it is installed. RETOUCH_TEST_MODEL=FOLDER
    uses another one; without either (or with RETOUCH_TEST_TINY=1), a tiny random model folder."""
    from retouch.models import SHIPPED

    if os.environ.get("RETOUCH_TEST_MODEL"):
        return ["--model", os.environ["RETOUCH_TEST_MODEL"]]
    if (SHIPPED / "model_index.json").is_file() and not os.environ.get("RETOUCH_TEST_TINY"):
        return []
    return ["--model", str(tiny_folder(tmp_path_factory))]


def tiny_folder(tmp_path_factory) -> Path:
    from retouch.shapes.architecture import build_components, save_pipeline

    folder = tmp_path_factory.mktemp("tiny-model")
    return save_pipeline(folder / "model", build_components("tiny", tokenizer_dir=folder / "tok"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return {case.name: case for case in build_corpus(tmp_path_factory.mktemp("corpus"))}


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "scene.png"
    Image.fromarray(scene()).save(path)
    return path


def run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def edit(image, out, model_args, method="diffedit", *args):
    texts = ["--query", QUERY, "--reference", REFERENCE] if method == "diffedit" else []
    return run(
        "edit",
        method,
        image,
        "-o",
        out,
        *texts,
        *FAST[method],
        *model_args,
        "--no-progress",
        *args,
    )


def test_the_test_scene_is_what_the_texts_say():
    from retouch.shapes.world import caption

    assert caption(held_out_scene()) == CAPTION


def test_importing_the_cli_and_help_stay_light():
    code = (
        "import sys; from click.testing import CliRunner; from retouch.main import main; "
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0; "
        "assert not {'torch', 'gradio'} & set(sys.modules), 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    result = run("--help")
    assert result.exit_code == 0
    for command in ("edit", "mask", "invert", "train", "bench", "ui"):
        assert command in result.output


def listed(help_text: str) -> set[str]:
    """The long flags a help text lists (each option's first column)."""
    lines = [line.strip().split("  ")[0] for line in help_text.splitlines() if line.startswith("  -")]
    return {flag for line in lines for flag in re.findall(r"--[\w-]+", line)}


def count_options(help_text: str) -> int:
    return sum(line.startswith("  -") for line in help_text.splitlines())


@pytest.mark.parametrize(
    "command",
    [["edit", "diffedit"], ["edit", "ledits"], ["edit", "flowedit"], ["invert"], ["mask"], ["batch"], ["ui"]],
)
def test_every_commands_model_help_names_the_families_and_the_shipped_models(command):
    """--model takes SD 1.x/2.x, SDXL, SD3 and FLUX, and the shipped names; flowedit's default is the
    shipped flow model (the shipped SD model is no flow model)."""
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    model = text[text.index("--model FOLDER|HUB_ID|FILE") :]
    model = model[: model.index("]") + 1]
    assert all(word in model for word in ("SDXL", "SD3", "FLUX", "shapes-sd ", "shapes-sd3")), model
    default = "shapes-sd3" if command == ["edit", "flowedit"] else "shapes-sd"
    assert model.endswith(f"[default: {default}]"), model


@pytest.mark.parametrize("method", ["diffedit", "ledits"])
def test_each_method_lists_its_own_settings_the_papers_by_default(method):
    """`retouch edit METHOD --help`: at most 25 options, the paper's settings, none of ours and none
    of the other method's; --help-all lists every field of the method's config too."""
    from retouch.methods.diffedit import DiffEditConfig
    from retouch.methods.ledits import LEditsConfig

    configs = {"diffedit": DiffEditConfig, "ledits": LEditsConfig}
    short, full = (run("edit", method, flag).output for flag in ("--help", "--help-all"))
    assert count_options(short) <= 25 < count_options(full)
    own = settings_fields(configs[method])
    for s in own:
        assert s.flag in listed(full)
        assert (s.flag in listed(short)) == (not s.advanced), s.name
        assert not s.ours or s.advanced  # every one of ours is advanced
    assert {s.flag for s in own if s.ours} and {s.flag for s in own if not s.advanced}
    others = {s.flag for c in configs.values() for s in settings_fields(c)} - {s.flag for s in own}
    assert not others & listed(full)
    assert {"--max-pixels", "--no-progress", "--model-config", "--allow-pickle"} <= listed(full) - listed(
        short
    )
    assert {"--model", "--device", "--dtype", "--threads", "--seed", "--preset"} <= listed(short)
    assert short.index("The paper's settings:") < short.index("Options:")
    assert "Advanced" not in short and "--help-all" in short and "Advanced" in full


def test_every_config_field_is_a_flag():
    from retouch.methods import diffedit, ledits
    from retouch.presets import MASK_FIELDS
    from retouch.shapes.train import TrainConfig

    def params(*path):
        command = main
        for name in path:
            command = command.get_command(None, name)
        return {p.name: p for p in command.params}

    options = params("edit", "diffedit")
    assert list(options["preset"].type.choices) == list(diffedit.PRESETS)
    assert list(params("edit", "ledits")["preset"].type.choices) == list(ledits.PRESETS)
    assert list(params("edit", "flowedit")["preset"].type.choices) == ["stronger", "background"]
    mask_presets = {
        n for n, p in diffedit.PRESETS.items() if all(k in MASK_FIELDS or "mask_" in k for k in p)
    }
    assert set(params("mask")["preset"].type.choices) == mask_presets == {"tight-mask"}
    shown = " ".join(options["preset"].help.split())  # each preset's values, from the presets themselves
    assert "tight-mask (mask_threshold=0.8)" in shown
    assert "object (edit_scale=15," in " ".join(params("edit", "ledits")["preset"].help.split())
    assert "background (mode=no_mask, encode_ratio=0.9)" in shown  # a text setting as it is
    assert (
        "recolor (mask_refine_radius=3, mask_keep_ratio=0.8, encode_ratio=1, changed_word_scale=3," in shown
    )
    assert options["num_inference_steps"].help.endswith("[default: 50]")
    assert params("edit", "ledits")["num_inference_steps"].help.endswith("[default: 100]")
    assert options["changed_word_scale"].help.startswith("ours: inside the mask")
    train_help = run("train", "vae", "--help").output + run("train", "unet", "--help").output
    for s in settings_fields(TrainConfig):
        assert s.flag in train_help
    assert params("train", "unet")["bare_background_share"].help.endswith("[default: 0.1667]")  # 1/6
    assert params("train", "vae")["kl_weight"].help.endswith("[default: 1e-06]")  # small floats kept


@pytest.mark.parametrize(
    "stage, flag, value, says",
    [
        ("flow", "--bare-background-share", "1.5", "bare_background_share must be <= 1"),
        ("vae", "--lr", "nan", "lr must be finite"),
        ("vae", "--steps", "0", "steps must be >= 1"),
        ("flow", "--caption-dropout", "-0.1", "caption_dropout must be >= 0"),
    ],
)
def test_train_refuses_a_bad_setting_before_writing_anything(tmp_path, stage, flag, value, says):
    work = tmp_path / "work"
    result = run("train", stage, str(work), flag, value)
    assert result.exit_code == 2 and says in result.output, result.output
    assert not work.exists()


def test_edit_diffedit_writes_png_with_parameters_and_json(image, tmp_path, model_args):
    out = tmp_path / "out.png"
    result = edit(image, out, model_args, "diffedit", "--json", "--seed", "3", "--guidance-scale", "5")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["output"] == str(out) and summary["method"] == "diffedit" and summary["seed"] == 3
    assert summary["settings"]["guidance_scale"] == 5 and summary["settings"]["num_inference_steps"] == 10
    assert summary["settings"]["encode_ratio"] == 0.8  # the config's default, untouched
    assert summary["unet_evals"] > 0 and 0 <= summary["mask_area"] <= 1
    assert {"load", "mask", "encode", "decode", "write"} <= set(summary["timings"])
    with Image.open(out) as img:
        assert img.size == (64, 64) and img.format == "PNG"
        params = json.loads(img.text[PNG_KEY])
    assert params["method"] == "diffedit" and params["seed"] == 3 and params["model"]
    assert params["settings"]["query"] == QUERY and params["settings"]["guidance_scale"] == 5
    assert sorted(os.listdir(tmp_path)) == ["out.png", "scene.png"]  # no temporary file left


def test_edit_ledits_concepts_preset_and_per_concept_settings(image, tmp_path, model_args):
    out = tmp_path / "out.png"
    result = edit(
        image,
        out,
        model_args,
        "ledits",
        "--add",
        "red circle",
        "--remove",
        "purple circle",
        "--preset",
        "object",
        "--edit-scale",
        "9,4",
        "--json",
    )
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)["settings"]
    assert s["add"] == ["red circle"] and s["remove"] == ["purple circle"]
    assert s["edit_scale"] == [9, 4]  # the flag beats the preset
    assert s["edit_warmup"] == 5 and s["preset"] == "object"  # the preset beats the default
    assert read_params(out)["method"] == "ledits" and read_params(out)["family"] == "sd"


def test_edit_flowedit_with_a_preset_under_an_explicit_flag_on_the_shipped_sd3(image, tmp_path):
    out = tmp_path / "out.png"
    args = ["edit", "flowedit", str(image), "-o", str(out), "--model", "shapes-sd3", "--target", QUERY,
            "--source", CAPTION, "--preset", "stronger", "--n-min", "38", "--json"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)["settings"]
    assert (s["preset"], s["n_max"], s["target_guidance_scale"], s["n_min"]) == ("stronger", 40, 7.0, 38)
    assert read_params(out)["settings"]["preset"] == "stronger"


def test_edit_flowedit_inside_a_mask_on_the_shipped_sd3(image, tmp_path):
    """--mask infer --save-mask: the edit inside DiffEdit's mask of target against source, the mask
    written beside it, the edit's settings say so; a mask file of another size, or --save-mask with
    no mask: one line, nothing written."""
    from PIL import Image

    out, saved = tmp_path / "out.png", tmp_path / "mask.png"
    base = ["edit", "flowedit", str(image), "--model", "shapes-sd3", "--target", QUERY, "--source", CAPTION,
            "--num-inference-steps", "10", "--n-max", "6"]  # fmt: skip
    result = CliRunner().invoke(
        main, [*base, "-o", str(out), "--mask", "infer", "--save-mask", str(saved), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["settings"]["mask"] == "infer" and 0 < summary["mask_area"] < 1
    with Image.open(saved) as m, Image.open(image) as src:
        assert m.size == src.size and m.getextrema()[1] == 255
    small = tmp_path / "small.png"
    Image.new("L", (8, 8), 255).save(small)
    for extra, word in (
        (["--mask", str(small)], "mask"),
        (["--save-mask", str(tmp_path / "m2.png")], "--save-mask"),
    ):
        bad = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "bad.png"), *extra])
        assert bad.exit_code != 0 and word in one_error_line(bad)
        assert not (tmp_path / "bad.png").exists() and not (tmp_path / "m2.png").exists()


def test_diffedit_presets_set_their_settings_under_explicit_flags(image, tmp_path, model_args):
    """--preset remove/tight-mask give diffedit their settings (recorded in the PNG), an explicit flag
    beats the preset, the mask command takes tight-mask; a preset of the other method: one line."""
    fast = ["--num-inference-steps", "10", "--json"]
    result = edit(image, tmp_path / "a.png", model_args, "diffedit", "--preset", "remove", *fast)
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)["settings"]
    assert s["encode_ratio"] == 1.0 and s["mask_threshold"] == 0.5 and s["preset"] == "remove"
    assert read_params(tmp_path / "a.png")["settings"] == s
    flags = ["--preset", "tight-mask", "--mask-threshold", "0.7", *fast]
    s = json.loads(edit(image, tmp_path / "b.png", model_args, "diffedit", *flags).stdout)["settings"]
    assert s["mask_threshold"] == 0.7 and s["encode_ratio"] == 0.8 and s["preset"] == "tight-mask"
    masks = {}
    for name, extra in (("paper", []), ("tight", ["--preset", "tight-mask"])):
        out = tmp_path / f"{name}.png"
        texts = ["--query", QUERY, "--reference", REFERENCE]
        result = run("mask", image, "-o", out, *texts, *model_args, *extra, "--json")
        assert result.exit_code == 0, result.output
        masks[name] = np.asarray(Image.open(out)) > 0
    assert masks["tight"].sum() < masks["paper"].sum()
    s = json.loads(result.stdout)["settings"]
    assert s["mask_threshold"] == 0.8 and s["preset"] == "tight-mask"
    line = one_error_line(edit(image, tmp_path / "c.png", model_args, "diffedit", "--preset", "object"))
    assert "Invalid value for '--preset': 'object' is not one of 'tight-mask', 'remove', 'recolor'" in line
    line = one_error_line(
        edit(image, tmp_path / "d.png", model_args, "ledits", "--add", "x", "--preset", "remove")
    )
    assert "preset" in line and "remove" in line
    written = ["a.png", "b.png", "paper.overlay.png", "paper.png", "tight.overlay.png", "tight.png"]
    assert sorted(os.listdir(tmp_path)) == sorted(["scene.png", *written])


def test_edit_ledits_target_prompt_human_summary(image, tmp_path, model_args):
    result = edit(image, tmp_path / "out.png", model_args, "ledits", "--prompt", QUERY)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {tmp_path / 'out.png'} (ledits")
    assert " UNet evaluations, " in result.stdout  # a Stable Diffusion model's network


def test_mask_writes_mask_and_overlay(image, tmp_path, model_args):
    out = tmp_path / "m.png"
    result = run(
        "mask",
        image,
        "-o",
        out,
        "--query",
        QUERY,
        "--reference",
        REFERENCE,
        "--num-inference-steps",
        "10",
        "--mask-samples",
        "2",
        *model_args,
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["overlay"] == str(tmp_path / "m.overlay.png") and summary["unet_evals"] == 4
    with Image.open(out) as m, Image.open(tmp_path / "m.overlay.png") as o:
        assert m.mode == "L" and m.size == o.size == (64, 64) and o.mode == "RGB"
    assert read_params(out)["settings"]["mask_samples"] == 2


def test_invert_once_then_edit_from_the_inversion(image, tmp_path, model_args):
    inv = tmp_path / "scene.safetensors"
    result = run("invert", image, "-o", inv, "--source", CAPTION, *FAST["ledits"], *model_args, "-q")
    assert result.exit_code == 0, result.output
    concepts = ["--add", "red circle", "--remove", "purple circle", "--seed", "0"]
    # the inversion's steps and skip are taken from the file: no need to repeat them
    reused = run(
        "edit",
        "ledits",
        image,
        "-o",
        tmp_path / "a.png",
        "--inversion",
        inv,
        *concepts,
        *model_args,
        "--json",
        "--no-progress",
    )
    assert reused.exit_code == 0, reused.output
    fresh = edit(image, tmp_path / "b.png", model_args, "ledits", "--source", CAPTION, *concepts, "--json")
    a, b = json.loads(reused.stdout), json.loads(fresh.stdout)
    assert "invert" not in a["timings"] and "invert" in b["timings"]
    assert a["unet_evals"] < b["unet_evals"]
    with Image.open(tmp_path / "a.png") as x, Image.open(tmp_path / "b.png") as y:
        assert np.array_equal(np.asarray(x), np.asarray(y))  # same seed: the very same edit


def test_invert_under_a_preset_makes_the_inversion_the_presets_edit_runs_on(image, tmp_path, model_args):
    """`retouch invert --preset ledits++` inverts on LEDITS++'s steps, skip and solver; editing from
    it under the preset gives the image a fresh edit under the preset gives."""
    from retouch.methods.ledits import PRESETS

    inv = tmp_path / "scene.safetensors"
    made = run("invert", image, "-o", inv, "--preset", "ledits++", *model_args, "--json", "--no-progress")
    assert made.exit_code == 0, made.output
    want = {k: PRESETS["ledits++"][k] for k in ("num_inference_steps", "skip", "solver")}
    got = json.loads(made.stdout)["settings"]
    assert {k: got[k] for k in want} == want and want["solver"] == "dpmsolver++"
    concepts = ["--add", "red circle", "--preset", "ledits++", "--seed", "0", *model_args, "--json"]
    reused = run(
        "edit", "ledits", image, "-o", tmp_path / "a.png", "--inversion", inv, *concepts, "--no-progress"
    )
    fresh = run("edit", "ledits", image, "-o", tmp_path / "b.png", *concepts, "--no-progress")
    assert reused.exit_code == 0, reused.output
    assert json.loads(reused.stdout)["unet_evals"] < json.loads(fresh.stdout)["unet_evals"]
    with Image.open(tmp_path / "a.png") as x, Image.open(tmp_path / "b.png") as y:
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_ledits_records_skip_as_a_step_count_however_it_was_given(image, tmp_path, model_args):
    """skip as a fraction (0.2 of 10 steps) is recorded as the 2 steps it means, by a plain edit and
    by an edit from an inversion alike, and the recorded settings give the same image."""
    steps = ["--num-inference-steps", "10", "--skip", "0.2"]
    inv = tmp_path / "scene.safetensors"
    assert run("invert", image, "-o", inv, *steps, *model_args, "-q").exit_code == 0
    common = ["--add", "red circle", *model_args, "-q"]
    for name, args in [
        ("a", steps),
        ("b", ["--inversion", inv]),
        ("c", ["--num-inference-steps", "10", "--skip", "2"]),
    ]:
        result = run("edit", "ledits", image, "-o", tmp_path / f"{name}.png", *args, *common)
        assert result.exit_code == 0, result.output
    recorded = [read_params(tmp_path / f"{n}.png")["settings"]["skip"] for n in "abc"]
    assert recorded == [2, 2, 2] and all(isinstance(v, int) for v in recorded)
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "c.png") as c:
        assert np.array_equal(np.asarray(a), np.asarray(c))


def test_inversion_of_another_image_or_other_steps_is_refused(image, tmp_path, model_args):
    inv = tmp_path / "scene.safetensors"
    assert run("invert", image, "-o", inv, *FAST["ledits"], *model_args, "-q").exit_code == 0
    other = tmp_path / "other.png"
    other_pixels = scene().copy()
    other_pixels[0, 0] = 0  # another image, by one pixel
    Image.fromarray(other_pixels).save(other)
    out = tmp_path / "out.png"
    common = ["-o", out, "--add", "red circle", *model_args, "-q"]
    assert "another image" in one_error_line(run("edit", "ledits", other, *common, "--inversion", inv))
    line = one_error_line(
        run("edit", "ledits", image, *common, "--inversion", inv, "--num-inference-steps", "12")
    )
    assert "invert again" in line
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    line = one_error_line(run("edit", "ledits", image, *common, "--inversion", bad))
    assert "not a retouch inversion file" in line
    assert not out.exists()


def test_given_mask_and_inferred_mask_for_ledits(image, tmp_path, model_args):
    mask = tmp_path / "mask.png"
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    Image.fromarray(m).save(mask)
    out = tmp_path / "out.png"
    result = edit(image, out, model_args, "diffedit", "--mask", mask, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["mask_area"] == pytest.approx(0.25, abs=0.05)
    assert "mask" not in json.loads(result.stdout)["timings"]  # given, not inferred
    result = edit(image, out, model_args, "ledits", "--add", "red circle", "--mask", "infer", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["mask_area"] is not None
    Image.fromarray(m[:32]).save(mask)
    assert "the image is 64x64" in one_error_line(edit(image, out, model_args, "diffedit", "--mask", mask))


def test_refuses_to_overwrite_the_input(image, model_args):
    before = image.read_bytes()
    spelled_otherwise = image.parent / "." / ".." / image.parent.name / image.name
    for out in (image, spelled_otherwise):
        line = one_error_line(edit(image, out, model_args))
        assert "refusing to overwrite" in line
    assert image.read_bytes() == before
    line = one_error_line(run("mask", image, "-o", image, "--query", QUERY, *model_args))
    assert "refusing to overwrite" in line


def test_write_is_atomic(image, tmp_path, model_args, monkeypatch):
    out = tmp_path / "out.png"
    out.write_bytes(b"the previous result")

    def failing_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half an image")  # the crash happens mid-write
        raise RuntimeError("disk pulled out")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    result = edit(image, out, model_args)
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    assert out.read_bytes() == b"the previous result"
    assert sorted(os.listdir(tmp_path)) == ["out.png", "scene.png"]


def test_unwritable_output_is_one_line_before_loading(image, tmp_path, model_args, monkeypatch):
    import retouch

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(retouch, "load", no_load)
    (tmp_path / "file").write_text("x")
    for out, why in [
        (tmp_path / "missing" / "out.png", "does not exist"),
        (tmp_path / "file" / "out.png", "does not exist"),
        (tmp_path, "is a folder"),
        (tmp_path / "out.xyz", "unknown image format"),
    ]:
        assert why in one_error_line(edit(image, out, model_args))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path and real_access(path, mode))
    assert "is not writable" in one_error_line(edit(image, tmp_path / "out.png", model_args))


@pytest.mark.parametrize(
    "method, args, why",
    [
        ("diffedit", [], "Missing option '--query'"),
        ("ledits", [], "ledits needs --prompt TEXT or at least one --add/--remove CONCEPT"),
        ("diffedit", ["--query", QUERY, "--add", "red circle"], "No such option '--add'"),
        ("ledits", ["--add", "red circle", "--guidance-scale", "3"], "No such option '--guidance-scale'"),
        ("ledits", ["--add", "red circle", "--prompt", "  "], "prompt is empty"),
        ("diffedit", ["--query", QUERY, "--mode", "nope"], "Invalid value for '--mode'"),
        ("diffedit", ["--query", QUERY, "--mask", "missing.png"], "no such file"),
        ("diffedit", ["--query", QUERY, "--mask-guidance-scale", "0"], "mask_guidance_scale must be > 0"),
    ],
)
def test_bad_usage_fails_fast_with_one_line(image, tmp_path, model_args, monkeypatch, method, args, why):
    import retouch

    monkeypatch.setattr(retouch, "load", lambda *a, **k: pytest.fail("loaded the model"))
    line = one_error_line(run("edit", method, image, "-o", tmp_path / "out.png", *model_args, *args))
    assert why in line


@pytest.mark.parametrize(
    "args, says",
    [
        (["IMAGE", "-o", "out.png", "--method", "ledits"], "retouch edit ledits IMAGE -o OUT"),
        (["IMAGE", "-o", "out.png", "--query", QUERY], "retouch edit diffedit|flowedit|ledits IMAGE -o OUT"),
        (["magic", "IMAGE"], "(got 'magic')"),
    ],
)
def test_the_former_edit_form_names_the_new_one(image, args, says):
    """`retouch edit IMAGE --method M` (the form before one subcommand per method): one line, exit 2."""
    line = one_error_line(run("edit", *[image if a == "IMAGE" else a for a in args]))
    assert "retouch edit takes a method, then the image" in line and says in line


def test_unloadable_model_is_one_line(image, tmp_path):
    args = ["edit", "diffedit", image, "-o", tmp_path / "o.png", "--query", QUERY]
    assert "not a diffusers model folder" in one_error_line(run(*args, "--model", tmp_path))
    assert "dtype" in one_error_line(run(*args, "--dtype", "float7"))
    if not torch.cuda.is_available():
        result = run(*args, "--device", "cuda")
        assert "CUDA is not available" in one_error_line(result)


def test_corpus(corpus, tmp_path, model_args):
    """Every bad input: exit code 2 and one line; every awkward valid one: a correct edit."""
    outcomes = {}
    for case in corpus.values():
        out = tmp_path / "out.png"
        out.unlink(missing_ok=True)
        result = run(
            "edit", case.method, case.image, "-o", out, *FAST[case.method], *model_args, "-q", *case.args
        )
        if case.expect == "error":
            outcomes[case.name] = one_error_line(result)
            assert not out.exists()
        else:
            assert result.exit_code == 0, (case.name, result.output, result.exception)
            with Image.open(out) as img:
                assert img.size == case.size and img.mode == "RGB", case.name
                assert np.asarray(img).std() > 0, case.name
            outcomes[case.name] = "edit"
    assert sum(v == "edit" for v in outcomes.values()) == 5
    assert "over this model's budget of 4096 pixels" in outcomes["image over the pixel budget, --no-resize"]


def test_an_image_over_the_budget_is_edited_resized_and_the_cli_says_so(tmp_path, model_args):
    """A 256x256 image and its 256x256 mask on a 4096-pixel budget: a 64x64 edit whose mask is
    the given one scaled; the summary line says what was done. mask and invert say so too."""
    big = tmp_path / "big.png"
    Image.fromarray(scene()).resize((256, 256), Image.NEAREST).save(big)
    user = np.zeros((256, 256), np.uint8)
    user[:128] = 255  # the top half
    Image.fromarray(user).save(tmp_path / "mask.png")
    budget = ["--max-pixels", "4096"]
    result = edit(
        big,
        tmp_path / "out.png",
        model_args,
        "diffedit",
        *budget,
        "--mask",
        tmp_path / "mask.png",
        "--paste-back",
    )
    assert result.exit_code == 0, result.output
    assert "image is 256x256, over this model's budget of 4096 pixels: edited at 64x64" in result.stdout
    with Image.open(tmp_path / "out.png") as out, Image.open(big) as original:
        assert out.size == (64, 64)
        small = np.asarray(original.resize((64, 64), Image.LANCZOS), np.float64)
        bottom = np.abs(np.asarray(out, np.float64)[40:] - small[40:]).max()  # outside the mask: pasted back
        assert bottom <= 1, bottom
    result = run(
        "mask", big, "-o", tmp_path / "m.png", "--query", QUERY, *model_args, "--no-progress", *budget
    )
    assert result.exit_code == 0 and "note: image is 256x256" in result.stderr
    with Image.open(tmp_path / "m.png") as m, Image.open(tmp_path / "m.overlay.png") as o:
        assert m.size == o.size == (64, 64)
    inv = tmp_path / "inv.safetensors"
    result = run("invert", big, "-o", inv, *FAST["ledits"], *model_args, "--no-progress", *budget)
    assert result.exit_code == 0 and "note: image is 256x256" in result.stderr
    result = run(
        "edit", "ledits", big, "-o", tmp_path / "l.png", "--inversion", inv,
        "--add", "red circle", *model_args, "--no-progress", *budget,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "l.png") as out:
        assert out.size == (64, 64)


def test_progress_goes_to_stderr(image, tmp_path, model_args, monkeypatch):
    monkeypatch.setattr("retouch.shell.on_terminal", lambda: True)
    result = edit(image, tmp_path / "out.png", model_args, "diffedit", "--json")
    assert result.exit_code == 0
    texts = ["--query", QUERY, *FAST["diffedit"], *model_args]
    loud = run("edit", "diffedit", image, "-o", tmp_path / "out.png", *texts, "--json")
    assert loud.exit_code == 0
    assert "decode" in loud.stderr and "decode" not in result.stderr
    assert json.loads(loud.stdout)["output"] == str(tmp_path / "out.png")  # stdout is the JSON alone


def test_train_commands_check_their_inputs(tmp_path):
    line = one_error_line(run("train", "unet", tmp_path / "unet", "--vae-work", tmp_path / "none"))
    assert "no autoencoder checkpoint" in line
    line = one_error_line(
        run("train", "export", tmp_path / "out", "--vae-work", tmp_path, "--unet-work", tmp_path)
    )
    assert "no autoencoder checkpoint" in line


@pytest.mark.slow
def test_train_vae_resumes_where_it_stopped(tmp_path):
    """Two steps, then resumed to four, give the same weights as four steps in one run."""
    from safetensors.torch import load_file

    def train(work, steps):
        result = run(
            "train",
            "vae",
            work,
            "--steps",
            steps,
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--log-every",
            "1",
            "--checkpoint-every",
            "2",
            "--warmup",
            "1",
        )
        assert result.exit_code == 0, result.output
        return load_file(work / "ckpt" / "vae.safetensors")

    train(tmp_path / "a", 2)
    resumed = train(tmp_path / "a", 4)
    log = (tmp_path / "a" / "train.log").read_text()
    assert "resumed at step 2" in log and "step 4/4" in log and "step 1/4" not in log
    straight = train(tmp_path / "b", 4)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    torch.set_num_threads(1)


def test_bench_commands_are_lazy_and_a_missing_one_is_a_clear_error():
    from retouch.shell import Group as _Group

    group = _Group("bench", lazy={"nope": "retouch.bench.does_not_exist:command"})
    result = CliRunner().invoke(group, ["nope"])
    assert result.exit_code == 1 and "bench nope is unavailable" in result.output
    assert "does_not_exist" in result.output
    assert run("bench", "--help").exit_code == 0


def test_png_parameters_round_trip(tmp_path):
    from retouch.files import save_image

    save_image(Image.new("RGB", (8, 8)), tmp_path / "a.png", {"seed": 1, "settings": {"x": [1, None]}})
    assert read_params(tmp_path / "a.png") == {"seed": 1, "settings": {"x": [1, None]}}


def test_edit_draws_a_progress_bar_per_stage_on_a_terminal_only(image, tmp_path, model_args, monkeypatch):
    """Bars on a terminal (one per stage), none with --no-progress; none into a pipe or a file."""
    texts = ["--query", QUERY, "--reference", REFERENCE, *FAST["diffedit"], *model_args]
    piped = run("edit", "diffedit", image, "-o", tmp_path / "p.png", *texts)
    assert piped.exit_code == 0 and piped.stderr == "", piped.stderr
    monkeypatch.setattr("retouch.shell.on_terminal", lambda: True)
    shown = run("edit", "diffedit", image, "-o", tmp_path / "a.png", *texts)
    assert shown.exit_code == 0, shown.output
    assert "encode" in shown.stderr and "decode" in shown.stderr and "it/s" in shown.stderr
    hidden = run("edit", "diffedit", image, "-o", tmp_path / "b.png", *texts, "--no-progress")
    assert hidden.exit_code == 0 and hidden.stderr == ""


# --- hardening: outputs that are not regular files, tampered inversions, both-or-neither -------------


def test_an_output_that_is_not_a_regular_file_is_never_replaced(image, tmp_path, model_args):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    result = run("invert", image, "-o", fifo, *FAST["ledits"], *model_args, "-q")
    assert "is not a regular file" in one_error_line(result)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    result = run(
        "edit", "diffedit", image, "-o", "/dev/null", "--query", QUERY, *FAST["diffedit"], *model_args, "-q"
    )
    assert "not a regular file" in one_error_line(result) or "unknown image format" in one_error_line(result)


def _tampered(path: Path, out: Path, change) -> Path:
    """A copy of the inversion file at `path` with change(meta, tensors) applied."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["retouch_inversion"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(meta, tensors)
    save_file(tensors, out, metadata={"retouch_inversion": json.dumps(meta)})
    return out


TAMPERED = {
    "NaN in the z maps": (lambda m, t: t["zs"].view(-1).__setitem__(0, float("nan")), "NaN or infinite"),
    "1e38 latents": (lambda m, t: t["trajectory"].mul_(1e38).mul_(10.0), "NaN or infinite"),
    "an extra metadata key": (lambda m, t: m.update(extra=1), "metadata keys differ"),
    "a missing metadata key": (lambda m, t: m.pop("seed"), "metadata keys differ"),
    "timesteps as text": (lambda m, t: m.update(timesteps=[str(x) for x in m["timesteps"]]), "whole numbers"),
    "fewer z maps than timesteps": (lambda m, t: t.update(zs=t["zs"][:-1].clone()), "z maps"),
    "an unknown solver": (lambda m, t: m.update(solver="euler"), "solver must be ddpm or dpmsolver"),
    "height and width 60000": (lambda m, t: m.update(height=60000, width=60000), "cannot be an image"),
    "a timestep of -5": (lambda m, t: m.update(timesteps=[*m["timesteps"][:-1], -5]), "not negative"),
    "another source, same checksum": (lambda m, t: m.update(source="a dog"), "checksum"),
    "flipped data": (lambda m, t: t["zs"].view(-1).__setitem__(5, 0.125), "checksum"),
    "latents of another size": (
        lambda m, t: t.update({k: v[..., :8, :8].clone() for k, v in t.items()}),
        "checksum",
    ),
}


@pytest.mark.parametrize("name", list(TAMPERED))
def test_tampered_inversion_files_are_refused(name, image, tmp_path, model_args):
    inv = tmp_path / "scene.safetensors"
    assert run("invert", image, "-o", inv, *FAST["ledits"], *model_args, "-q").exit_code == 0
    change, message = TAMPERED[name]
    bad = _tampered(inv, tmp_path / "bad.safetensors", change)
    out = tmp_path / "out.png"
    result = run(
        "edit",
        "ledits",
        image,
        "-o",
        out,
        "--inversion",
        bad,
        "--add",
        "red circle",
        *model_args,
        "-q",
    )
    assert message in one_error_line(result)
    assert not out.exists()


def test_a_fifo_as_the_inversion_is_refused_without_opening_it(image, tmp_path, model_args):
    fifo = tmp_path / "inv.safetensors"
    os.mkfifo(fifo)
    args = ["edit", "ledits", image, "-o", tmp_path / "o.png", "--inversion", fifo, "--add", "red circle"]
    assert "not a regular file" in one_error_line(run(*args, *model_args, "-q"))


def test_mask_writes_both_files_or_neither(image, tmp_path, model_args, monkeypatch):
    import retouch.files

    saver = retouch.files.image_saver

    def overlay_fails(img, path, params=None):
        save = saver(img, path, params)
        if ".overlay" not in str(path):
            return save

        def failing(tmp):
            save(tmp)
            raise OSError(28, "No space left on device")

        return failing

    monkeypatch.setattr("retouch.cli.image_saver", overlay_fails)
    out = tmp_path / "mask.png"
    result = run(
        "mask",
        image,
        "-o",
        out,
        "--query",
        QUERY,
        "--reference",
        REFERENCE,
        *FAST["diffedit"],
        *model_args,
        "-q",
    )
    assert "No space left on device" in one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.png"]


def test_outputs_name_the_model_not_its_install_path(image, tmp_path, model_args):
    out = tmp_path / "out.png"
    assert edit(image, out, model_args).exit_code == 0
    params = read_params(out)
    assert "/" not in params["model"] and "/" not in params["settings"]["model"]


@pytest.mark.slow
def test_train_unet_fine_tunes_a_model_folder_and_exports_it(tmp_path, mini_model):
    """--init keeps the model's weights and maps its token rows onto the new vocabulary by string."""
    import shutil

    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    from retouch.models import SHIPPED

    (tmp_path / "vae" / "ckpt").mkdir(parents=True)
    shutil.copy(
        SHIPPED / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "vae" / "ckpt" / "vae.safetensors"
    )
    args = [
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--dataset-size",
        "16",
        "--threads",
        "1",
        "--log-every",
        "1",
        "--checkpoint-every",
        "1",
        "--warmup",
        "1",
        "--lr",
        "1e-12",
    ]
    result = run(
        "train", "unet", tmp_path / "unet", "--vae-work", tmp_path / "vae", "--init", mini_model, *args,
        "--grounding-weight", "0.01",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    log = (tmp_path / "unet" / "train.log").read_text()
    assert "initialised from" in log and "step 1 grounding loss" in log
    result = run(
        "train",
        "export",
        tmp_path / "model",
        "--vae-work",
        tmp_path / "vae",
        "--unet-work",
        tmp_path / "unet",
    )
    assert result.exit_code == 0, result.output
    old_tok, new_tok = (
        CLIPTokenizer.from_pretrained(p / "tokenizer") for p in (mini_model, tmp_path / "model")
    )
    old, new = (load_file(p / "text_encoder" / "model.safetensors") for p in (mini_model, tmp_path / "model"))
    key = next(k for k in new if k.endswith("token_embedding.weight"))
    for word in ("red</w>", "circle</w>", "background</w>"):  # same rows, whatever their new ids
        assert torch.allclose(
            new[key][new_tok.get_vocab()[word]], old[key][old_tok.get_vocab()[word]], atol=1e-6
        )
    assert "an</w>" in new_tok.get_vocab()
    torch.set_num_threads(1)


@pytest.mark.slow
def test_train_unet_grows_a_model_into_cross_attention_at_every_level(tmp_path, mini_model):
    """--architecture mini-attn from a mini model: the exported model has cross-attention at its
    top level too, and (the new attention starting at zero) predicts what the mini model predicts;
    stored in float16 it takes half the bytes and loads as float32, predicting within rounding.
    --grown-lr-scale trains the new blocks alone at a higher rate.
    The grown model cannot be squeezed back into the smaller architecture: one line, exit 2; without
    --architecture a run takes its work folder's (resuming) or its --init's."""
    import shutil

    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from retouch.models import SHIPPED

    (tmp_path / "vae" / "ckpt").mkdir(parents=True)
    shutil.copy(
        SHIPPED / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "vae" / "ckpt" / "vae.safetensors"
    )
    args = ["--steps", "1", "--batch-size", "2", "--dataset-size", "8", "--threads", "1", "--warmup", "1"]
    args += ["--lr", "1e-12", "--vae-work", tmp_path / "vae"]
    result = run(
        "train", "unet", tmp_path / "unet", "--init", mini_model, "--architecture", "mini-attn", *args
    )
    assert result.exit_code == 0, result.output
    assert "grown: 3 new attention blocks" in (tmp_path / "unet" / "train.log").read_text()
    work = ["--vae-work", tmp_path / "vae", "--unet-work", tmp_path / "unet"]
    assert run("train", "export", tmp_path / "model", *work).exit_code == 0
    old, new = (UNet2DConditionModel.from_pretrained(p / "unet") for p in (mini_model, tmp_path / "model"))
    assert new.config.down_block_types[0] == "CrossAttnDownBlock2D" != old.config.down_block_types[0]
    assert sum(p.numel() for p in new.parameters()) > sum(p.numel() for p in old.parameters())
    gen = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 77, 64, generator=gen)
    with torch.no_grad():
        a, b = (m(x, torch.tensor([50, 700]), text).sample for m in (old, new))
    assert (a - b).abs().max() < 1e-4 < a.abs().max()
    assert run("train", "export", tmp_path / "half", *work, "--unet-dtype", "float16").exit_code == 0
    weights = [
        p / "unet" / "diffusion_pytorch_model.safetensors" for p in (tmp_path / "model", tmp_path / "half")
    ]
    assert weights[1].stat().st_size < 0.51 * weights[0].stat().st_size
    assert weights[1].stat().st_mode == weights[0].stat().st_mode
    half = UNet2DConditionModel.from_pretrained(tmp_path / "half" / "unet")
    assert next(half.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert 1e-6 < (half(x, torch.tensor([50, 700]), text).sample - b).abs().max() < 1e-2 * a.abs().max()
    fast = ["--grown-lr-scale", "1e9", "--init", mini_model, "--architecture", "mini-attn"]
    assert run("train", "unet", tmp_path / "fast", *fast, *args).exit_code == 0
    live = load_file(tmp_path / "fast" / "ckpt" / "unet.safetensors")  # after one step at lr 1e-12, 1e-3
    kept = load_file(mini_model / "unet" / "diffusion_pytorch_model.safetensors")
    assert live["down_blocks.0.attentions.0.proj_out.weight"].abs().min() > 1e-4  # grown: moved
    assert all((live[k] - v).abs().max() < 1e-6 for k, v in kept.items())  # the rest: kept
    mini = ["--architecture", "mini"]
    line = one_error_line(run("train", "unet", tmp_path / "unet", "--init", mini_model, *mini, *args))
    assert "holds a model of architecture mini-attn: resume it with --architecture mini-attn" in line
    line = one_error_line(run("train", "unet", tmp_path / "back", "--init", tmp_path / "model", *mini, *args))
    assert "does not fit the architecture (it has weights this architecture lacks" in line
    assert not (tmp_path / "back").exists()  # the folder it made, removed again
    assert run("train", "unet", tmp_path / "unet", "--init", mini_model, *args).exit_code == 0  # resumed
    assert run("train", "unet", tmp_path / "again", "--init", tmp_path / "model", *args).exit_code == 0
    log = (tmp_path / "again" / "train.log").read_text()
    assert "'architecture': 'mini-attn'" in log and "grown:" not in log
    line = one_error_line(run("train", "unet", tmp_path / "odd", "--architecture", "huge", *args))
    assert "huge" in line
    torch.set_num_threads(1)


@pytest.mark.slow
def test_train_unet_grows_a_model_into_two_layers_a_block(tmp_path, mini_model):
    """--architecture mini-deep from a mini model: every block gains a resnet (and an attention
    where it attends), the up blocks' old layers keep reading the skips they read, so the grown UNet
    predicts exactly what the mini one does; after a step at a high rate the new blocks have moved
    and it no longer does. Exported in float16 it is no larger than the mini float32 UNet and loads
    with StableDiffusionPipeline. A deeper model does not go back into a shallower one."""
    import shutil

    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from retouch.models import SHIPPED

    (tmp_path / "vae" / "ckpt").mkdir(parents=True)
    shutil.copy(
        SHIPPED / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "vae" / "ckpt" / "vae.safetensors"
    )
    args = ["--steps", "1", "--batch-size", "2", "--dataset-size", "8", "--threads", "1", "--warmup", "1"]
    args += ["--vae-work", tmp_path / "vae", "--init", mini_model, "--architecture", "mini-deep"]
    work = ["--vae-work", tmp_path / "vae"]
    old = UNet2DConditionModel.from_pretrained(mini_model / "unet")
    gen = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 77, 64, generator=gen)
    t = torch.tensor([50, 700])
    with torch.no_grad():
        a = old(x, t, text).sample
    for name, lr in (("kept", "1e-12"), ("moved", "1e-3")):
        result = run("train", "unet", tmp_path / name, *args, "--lr", lr, "--ema-decay", "0")
        assert result.exit_code == 0, result.output
        log = (tmp_path / name / "train.log").read_text()
        assert "grown: 4 new attention blocks, 6 new resnet blocks" in log
        out = ["--unet-work", tmp_path / name, "--unet-dtype", "float16"]
        assert run("train", "export", tmp_path / f"model-{name}", *work, *out).exit_code == 0
        new = UNet2DConditionModel.from_pretrained(tmp_path / f"model-{name}" / "unet")
        assert new.config.layers_per_block == 2 != old.config.layers_per_block
        with torch.no_grad():
            gap = (new(x, t, text).sample - a).abs().max()
        if name == "kept":  # float16 weights: within rounding
            assert gap < 1e-2 * a.abs().max()
            assert sum(p.numel() for p in new.parameters()) > 1.4 * sum(p.numel() for p in old.parameters())
            size = (tmp_path / "model-kept" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
            assert size <= (mini_model / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
            pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "model-kept", safety_checker=None)
            assert pipe.unet.config.layers_per_block == 2
        else:
            assert gap > 1e-2 * a.abs().max()
    back = ["--init", tmp_path / "model-kept", "--vae-work", tmp_path / "vae", "--architecture", "mini"]
    line = one_error_line(run("train", "unet", tmp_path / "back", *args[:8], *back))
    assert "does not fit the architecture (it has weights this architecture lacks" in line
    assert line.endswith("--init is a mini-deep model")
    torch.set_num_threads(1)


@pytest.mark.slow
def test_train_unet_grows_the_text_encoder_by_layers_that_start_as_the_identity(tmp_path, mini_model):
    """--architecture mini-deep-text from a mini model: the text encoder gains two layers after
    its two, each starting as the identity, so the grown model encodes every caption exactly as the
    mini one does; after a step at a high rate the new layers have moved and it no longer does.
    A model with the deeper text encoder does not go back into one with the shallower."""
    import shutil

    from transformers import CLIPTextModel, CLIPTokenizer

    from retouch.models import SHIPPED
    from retouch.shapes.train import _tokenize

    (tmp_path / "vae" / "ckpt").mkdir(parents=True)
    shutil.copy(
        SHIPPED / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "vae" / "ckpt" / "vae.safetensors"
    )
    args = ["--steps", "1", "--batch-size", "2", "--dataset-size", "8", "--threads", "1", "--warmup", "1"]
    args += ["--vae-work", tmp_path / "vae", "--ema-decay", "0"]
    captions = ["a red circle and a blue square on a white background", "green triangle", ""]
    old = CLIPTextModel.from_pretrained(mini_model / "text_encoder")
    with torch.no_grad():
        a = old(_tokenize(CLIPTokenizer.from_pretrained(mini_model / "tokenizer"), captions))[
            0
        ]  # [3, 77, 64]
    for name, lr in (("kept", "1e-12"), ("moved", "1e-3")):
        grow = [
            "--init",
            mini_model,
            "--architecture",
            "mini-deep-text",
            "--lr",
            lr,
            "--grown-lr-scale",
            "10",
        ]
        result = run("train", "unet", tmp_path / name, *args, *grow)
        assert result.exit_code == 0, result.output
        assert "grown: 2 new text encoder layers" in (tmp_path / name / "train.log").read_text()
        out = ["--vae-work", tmp_path / "vae", "--unet-work", tmp_path / name]
        assert run("train", "export", tmp_path / f"model-{name}", *out).exit_code == 0
        new = CLIPTextModel.from_pretrained(tmp_path / f"model-{name}" / "text_encoder")
        assert new.config.num_hidden_layers == 4 > old.config.num_hidden_layers
        tok = CLIPTokenizer.from_pretrained(tmp_path / f"model-{name}" / "tokenizer")
        with torch.no_grad():
            gap = (new(_tokenize(tok, captions))[0] - a).abs().max()
        assert (gap < 1e-5) if name == "kept" else (gap > 1e-3)
    back = ["--init", tmp_path / "model-kept", "--architecture", "mini-deep"]
    line = one_error_line(run("train", "unet", tmp_path / "back", *args, *back))
    assert "text encoder does not fit the architecture (" in line
    torch.set_num_threads(1)


@pytest.mark.slow
def test_train_unet_at_another_image_size_exports_a_model_of_that_native_size(tmp_path, mini_model):
    """--image-size 96: scenes rendered at 96 px (latents 24 x 24), the exported model's native size
    96; a work folder resumes only at its own size (its own when none is given), and a size off the
    grid is one line, exit 2."""
    import shutil

    import retouch
    from retouch.models import SHIPPED

    (tmp_path / "vae" / "ckpt").mkdir(parents=True)
    shutil.copy(
        SHIPPED / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "vae" / "ckpt" / "vae.safetensors"
    )
    args = ["--steps", "1", "--batch-size", "2", "--dataset-size", "4", "--threads", "1", "--warmup", "1"]
    args += ["--vae-work", tmp_path / "vae", "--init", mini_model]
    result = run("train", "unet", tmp_path / "unet", "--image-size", "96", *args)
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file, save_file

    cache = load_file(tmp_path / "unet" / "latents_4_96px.safetensors")
    assert cache["latents"].shape == (4, 4, 24, 24)
    other = {"latents": torch.zeros(1, 4, 16, 16), "seeds": torch.zeros(1), "scale": torch.tensor(9.0)}
    save_file(other, tmp_path / "unet" / "latents_4.safetensors")  # a 64-px cache beside it: not read
    work = ["--vae-work", tmp_path / "vae", "--unet-work", tmp_path / "unet"]
    assert run("train", "export", tmp_path / "model", *work).exit_code == 0
    model = retouch.load(tmp_path / "model", device="cpu")
    assert model.native_size == 96 and model.vae.config.sample_size == 96
    assert model.vae.config.scaling_factor == pytest.approx(float(cache["scale"]))
    line = one_error_line(run("train", "unet", tmp_path / "unet", "--image-size", "64", *args))
    assert "holds a model of image_size 96: resume it with --image-size 96" in line
    assert run("train", "unet", tmp_path / "unet", *args).exit_code == 0  # resumed at 96
    line = one_error_line(run("train", "unet", tmp_path / "odd", "--image-size", "100", *args))
    assert "image_size must be a multiple of 16, got 100" in line and not (tmp_path / "odd").exists()
    torch.set_num_threads(1)


@pytest.mark.slow
def test_a_hub_id_without_network_is_one_quick_line(image, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1"}
    cmd = [
        sys.executable,
        "-m",
        "retouch",
        "edit",
        "diffedit",
        str(image),
        "-o",
        str(tmp_path / "o.png"),
        "--query",
        QUERY,
        "--model",
        "someone/some-model",
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and time.perf_counter() - t0 < 60
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model hub is unreachable" in lines[0], done.stderr
    assert not (tmp_path / "o.png").exists()


def test_fast_applies_the_named_fast_settings_and_flags_override_them(image, tmp_path, model_args):
    from retouch.methods.diffedit import FAST

    out = tmp_path / "fast.png"
    args = ["--query", QUERY, "--reference", REFERENCE, *model_args, "--no-progress", "--json"]
    result = run("edit", "diffedit", image, "-o", out, "--fast", *args)
    assert result.exit_code == 0, result.output
    settings = read_params(out)["settings"]
    assert {k: settings[k] for k in FAST} == FAST
    n = FAST["num_inference_steps"]  # mask 2·10, encoding 0.8·N, decoding 2·0.8·N
    assert json.loads(result.stdout)["unet_evals"] == 20 + round(0.8 * n) * 3
    result = run("edit", "diffedit", image, "-o", out, "--fast", "--num-inference-steps", "10", *args)
    assert read_params(out)["settings"]["num_inference_steps"] == 10
    inv = tmp_path / "fast.safetensors"
    args = ["--fast", "--solver", "dpmsolver++", *model_args, "--no-progress"]
    assert run("invert", image, "-o", inv, *args).exit_code == 0
    result = run("edit", "ledits", image, "-o", out, "--inversion", inv, "--add", "red circle",
                 *model_args, "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    settings = read_params(out)["settings"]  # taken from the inversion
    assert (settings["num_inference_steps"], settings["solver"]) == (20, "dpmsolver++")


def test_threads_default_to_the_idle_cores_and_the_flag_sets_them(image, tmp_path, model_args, monkeypatch):
    """--threads N sets torch's threads; without it, torch's own count less the busy cores, at least 1."""
    from retouch.shell import default_threads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    for load, threads in [(0.0, 4), (2.4, 4), (3.6, 2), (5.0, 1), (40.0, 1)]:
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert default_threads() == threads, load
    monkeypatch.undo()
    result = edit(image, tmp_path / "out.png", model_args, "diffedit", "--threads", "2", "-q")
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    for command in (["edit", "ledits"], ["invert"], ["mask"], ["ui"]):
        assert "--threads" in listed(run(*command, "--help").output), command
    assert "Invalid value for '--threads'" in one_error_line(
        edit(image, tmp_path / "o.png", [], "diffedit", "--threads", "0")
    )


def test_presets_are_an_attribute_of_the_package():
    code = "import retouch; assert retouch.presets.DIFFEDIT['tight-mask'] and 'presets' in retouch.__all__"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "command",
    [["bench", "edits"], ["train", "unet"], ["train", "flow"], ["edit", "ledits"], ["edit", "flowedit"]],
)
def test_no_option_states_two_defaults(command):
    """An option's help gives one default: a help that states its own gets no second."""
    result = run(*command, "--help-all" if command[0] == "edit" else "--help")
    assert result.exit_code == 0, result.output
    options = re.split(r"\n  (?=-)", result.output)
    assert len(options) > 10
    assert [o for o in options if o.count("[default:") > 1] == []


def test_a_default_that_depends_on_other_settings_is_stated_as_such():
    """`--architecture`'s default is the resumed run's own: help says so, not a bare "mini"."""
    text = " ".join(run("train", "unet", "--help").output.split())
    arch = text[text.index("--architecture") :]
    arch = arch[: arch.index("]", arch.index("[default:")) + 1]
    assert arch.endswith("[default: a resumed run's own, else --init's, else mini]"), arch


def test_train_flow_offers_only_the_settings_it_reads():
    """`train flow` lists no autoencoder or UNet setting (it would be silently ignored): none of
    them is read by the flow training, and each is refused as no such option."""
    import inspect

    from retouch.shapes import train_flow
    from retouch.shapes.cli import NOT_FLOW

    source = inspect.getsource(train_flow)
    text = run("train", "flow", "--help").output
    for name in NOT_FLOW:
        flag = "--" + name.replace("_", "-")
        assert f"cfg.{name}" not in source and flag not in text, name
    assert "--whole-caption-share" in text and "--steps" in text
    assert run("train", "flow", "runs/x", "--architecture", "mini").exit_code == 2


def test_train_flow_goes_on_from_a_model_folder_and_refuses_one_that_does_not_fit(tmp_path):
    """--init starts the transformer and both text encoders from a trained mini SD3 and keeps its
    latent shift and scale: at a learning rate of ~0, the export is the model it started from. A
    folder with another autoencoder, or a transformer of other weights' names, is refused in one line
    and leaves no work folder."""
    import shutil

    from safetensors.torch import load_file, save_file

    from retouch.models import SHIPPED, SHIPPED_SD3

    args = ["--steps", "1", "--batch-size", "2", "--dataset-size", "8", "--threads", "1", "--warmup", "0"]
    result = run("train", "flow", tmp_path / "w", "--init", SHIPPED_SD3, *args, "--lr", "1e-12")
    assert result.exit_code == 0, result.output
    log = (tmp_path / "w" / "train.log").read_text()  # the flow stage's own lines too
    assert f"init {SHIPPED_SD3}" in log and "dataset (8, 4, 16, 16)" in log
    result = run("train", "export-flow", tmp_path / "out", "--flow-work", tmp_path / "w")
    assert result.exit_code == 0, result.output
    for part, file in [("transformer", "diffusion_pytorch_model"), ("text_encoder_2", "model")]:
        ours = load_file(tmp_path / "out" / part / f"{file}.safetensors")
        shipped = load_file(SHIPPED_SD3 / part / f"{file}.safetensors")
        assert ours.keys() == shipped.keys()
        for k in shipped:
            assert torch.allclose(ours[k].float(), shipped[k].float(), atol=1e-3), (part, k)
    config = json.loads((tmp_path / "out" / "vae" / "config.json").read_text())
    shipped_config = json.loads((SHIPPED_SD3 / "vae" / "config.json").read_text())
    for key in ("shift_factor", "scaling_factor"):
        assert config[key] == pytest.approx(shipped_config[key], rel=1e-6)

    other = tmp_path / "other"
    shutil.copytree(SHIPPED_SD3, other)
    vae = other / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(vae)
    key = next(iter(state))
    save_file({**state, key: state[key] + 1}, vae)
    result = run("train", "flow", tmp_path / "w2", "--init", other, *args)
    assert result.exit_code != 0 and "autoencoder is not the shipped" in result.output
    assert not (tmp_path / "w2").exists()
    shutil.copy(SHIPPED / "vae" / "diffusion_pytorch_model.safetensors", vae)
    weights = other / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if not k.startswith("proj_out")}, weights)
    result = run("train", "flow", tmp_path / "w3", "--init", other, *args)
    assert result.exit_code != 0 and "its transformer does not fit" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "w3").exists()
    result = run("train", "flow", tmp_path / "w4", "--init", SHIPPED, *args)
    assert result.exit_code != 0 and "SD3 transformer" in result.output
    vae.unlink()
    result = run("train", "flow", tmp_path / "w5", "--init", other, *args)
    assert result.exit_code != 0 and "no autoencoder weights" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "w5").exists()


@pytest.mark.parametrize("stage", ["vae", "unet"])
def test_each_training_stage_offers_only_the_settings_it_reads(stage):
    """`train vae` lists no UNet setting, `train unet` no autoencoder one: a setting not offered is
    not read by that stage (and is refused as no such option); one offered is read."""
    import inspect

    from retouch.settings import settings_fields
    from retouch.shapes import train
    from retouch.shapes.train import TrainConfig

    stage_fn = train.train_vae if stage == "vae" else train.train_unet
    source = inspect.getsource(stage_fn)
    if stage == "unet":  # and the helpers it calls with cfg
        source += inspect.getsource(train._latent_dataset) + inspect.getsource(train._scene_of)
    source += inspect.getsource(train._loop) + inspect.getsource(train._lr_at)
    text = run("train", stage, "--help").output
    offered = [s.name for s in settings_fields(TrainConfig) if "--" + s.name.replace("_", "-") + " " in text]
    hidden = [s.name for s in settings_fields(TrainConfig) if s.name not in offered]
    assert hidden and offered
    assert [n for n in hidden if f"cfg.{n}" in source] == []
    assert [n for n in offered if f"cfg.{n}" not in source] == []
    flag = "--" + hidden[0].replace("_", "-")
    assert run("train", stage, "runs/x", flag, "1").exit_code == 2


def test_the_benchs_skip_shows_the_benchs_default():
    """bench edits runs LEDITS at skip 0.36·N whatever --steps is; its help says so, not 36."""
    from retouch.bench.methods import Settings

    text = " ".join(run("bench", "edits", "--help").output.split())
    skip = text[text.index("--skip FLOAT") :]
    assert skip[: skip.index("]") + 1].endswith("[default: 0.36·N, 36 of LEDITS' 100 steps]"), skip[:200]
    assert Settings().ledits.skip == 0.36


def test_batch_help_lists_a_manifests_fields():
    from retouch.batch.manifest import COMMON, TEXTS

    text = " ".join(run("batch", "--help").output.split())
    for key in {*COMMON, *(k for keys in TEXTS.values() for k in keys)}:
        assert key in text.split("Keys of every row:")[1], key
    assert "any setting of the method by its config name" in text


def doc_examples(path: Path) -> list[tuple[str, str, int]]:
    """(command, its stderr, its exit code) of each example in the docs' console blocks."""
    blocks = re.findall(r"```console\n(.*?)```", path.read_text(), re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    examples = []
    for i, line in enumerate(lines):
        if line.startswith("$ retouch "):
            assert lines[i + 2] == "$ echo $?", lines[i : i + 3]
            examples.append((line[2:], lines[i + 1], int(lines[i + 3])))
    return examples


def test_the_docs_error_examples_are_what_the_commands_say(tmp_path, image, monkeypatch):
    """Each example of docs/cli.md, run in a folder holding photo.png alone: its line and exit code."""
    import shlex

    import retouch

    monkeypatch.setattr(retouch, "load", lambda *a, **k: pytest.fail("loaded the model"))
    examples = doc_examples(Path(__file__).resolve().parents[1] / "docs" / "cli.md")
    assert len(examples) >= 8
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "photo.png").write_bytes(image.read_bytes())
    monkeypatch.chdir(folder)
    for command, says, code in examples:
        result = CliRunner().invoke(main, shlex.split(command)[1:], prog_name="retouch")
        assert (result.exit_code, result.stderr.strip()) == (code, says), command
        assert sorted(os.listdir(folder)) == ["photo.png"], command  # nothing written


def test_edit_ledits_pp_saves_the_implicit_masks_union(image, tmp_path, model_args):
    """--preset ledits++ --save-mask: the edit and its mask (the union of the concepts' implicit
    masks) written together; --save-mask with no mask to save, or onto the output: one line, nothing
    written."""
    out, mask = tmp_path / "out.png", tmp_path / "mask.png"
    common = ("--add", "green circle", "--preset", "ledits++", "--num-inference-steps", "12")
    result = edit(image, out, model_args, "ledits", *common, "--save-mask", mask, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["mask"] == str(mask) and 0 < summary["mask_area"] < 1
    with Image.open(mask) as m:
        assert m.size == (64, 64) and 0 < np.asarray(m.convert("L")).mean() < 255
    assert (
        summary["settings"]["implicit_mask"] == "intersect" and summary["settings"]["solver"] == "dpmsolver++"
    )
    plain = edit(
        image, tmp_path / "p.png", model_args, "ledits", "--add", "x y", "--save-mask", tmp_path / "m.png"
    )
    assert "--save-mask needs a mask" in one_error_line(plain)
    same = edit(image, tmp_path / "s.png", model_args, "ledits", *common, "--save-mask", tmp_path / "s.png")
    assert "refusing to overwrite" in one_error_line(same)
    assert sorted(os.listdir(tmp_path)) == ["mask.png", "out.png", "scene.png"]
