"""ShapesBench: cases, metrics on known inputs, and a 1-case run of `retouch bench edits` on a tiny model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from retouch.bench.cases import make_case, make_cases
from retouch.bench.edits import make_settings
from retouch.bench.metrics import pixel_mask
from retouch.shapes.world import EDIT_KINDS, HELD_OUT_SEED


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- cases ------------------------------------------------------------------------------------------


def test_cases_are_deterministic_per_seed():
    a, b = make_cases(HELD_OUT_SEED, 10), make_cases(HELD_OUT_SEED, 10)
    assert [c.id for c in a] == [c.id for c in b]
    assert [c.kind for c in a[:5]] == list(EDIT_KINDS)
    for x, y in zip(a, b):
        assert x.edit == y.edit
        assert np.array_equal(x.source_image, y.source_image) and np.array_equal(x.region, y.region)
    assert make_cases(HELD_OUT_SEED + 1, 1)[0].edit != a[0].edit or a[0].kind != "recolor"


@pytest.mark.parametrize("kind", EDIT_KINDS)
@pytest.mark.parametrize("seed", [0, 7, HELD_OUT_SEED, 2**40 + 3])
def test_every_seed_gives_a_consistent_case(kind, seed):
    case = make_case(seed, kind)
    assert case.source_image.shape == case.target_image.shape == (64, 64, 3)
    assert case.region.any()
    # outside the changed region the ground truth is the input
    assert np.array_equal(case.source_image[~case.region], case.target_image[~case.region])
    assert case.add or case.remove
    assert case.source_caption != case.target_caption
    if kind == "background":
        with pytest.raises(ValueError, match="judged on the background"):
            case.judged_region()
        assert len(case.untouched()) == len(case.edit.source.objects)
    else:
        region, expected, source = case.judged_region()
        assert region.any() and expected != source
        assert len(case.untouched()) == len(case.edit.source.objects) - (kind != "add")


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_a_case_for_a_larger_model_feeds_its_size_and_is_measured_at_64(kind):
    """size 96: the input is the scene rendered at 96 px; the ground truth stays at 64, the input's
    render box-resized, so that the perfect edit (the target rendered at 96) succeeds and keeps
    every untouched object, and a mask of the latent cells the change touches covers the changed
    region at 64 px."""
    from retouch.bench.edits import evaluate
    from retouch.bench.methods import METHODS, Output, Timed
    from retouch.shapes import world
    from retouch.shapes.judge import load_judge

    case = make_case(HELD_OUT_SEED + 3, kind, size=96)
    assert case.input_image.shape == (96, 96, 3) and case.source_image.shape == (64, 64, 3)
    assert case.region.shape == (64, 64) and case.target_image.shape == (64, 64, 3)
    small = make_case(HELD_OUT_SEED + 3, kind)
    assert np.abs(case.source_image.astype(int) - small.source_image).mean() < 3  # the same scene
    perfect = Output(world.render(case.edit.target, 96), None)
    method, edit = METHODS["diffedit"], Timed(None, 0.0, 0)
    row, mask = evaluate(case, method, None, perfect, None, edit, load_judge(), 4)
    assert row["success"] and row["preserved"] in (True, None) and mask is None
    assert row["psnr_target"] > 99 and row["psnr_bg"] > 40  # edge pixels: the region is drawn at 64 px
    region_96 = world.render(case.edit.target, 96) != world.render(case.edit.source, 96)
    latent = region_96.any(-1).reshape(24, 4, 24, 4).any(axis=(1, 3))  # (24, 24): cells it touches
    row, mask = evaluate(case, method, None, Output(perfect.image, latent), None, edit, None, 4)
    assert mask.shape == (64, 64) and mask[case.region].mean() > 0.9  # in place, at 64 px
    assert row["mask_iou"] == pytest.approx((mask & case.region).sum() / (mask | case.region).sum())


def test_bad_seed_and_kind_are_refused():
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        make_case(-1, "recolor")
    with pytest.raises(ValueError, match="recolour"):
        make_cases(0, 2, ["recolour"])


def test_pixel_mask_upsamples_and_binarises():
    latent = np.zeros((8, 8), np.float32)
    latent[2:4, 2:6] = 1
    m = pixel_mask(latent, 8, 64, 64)
    assert m.shape == (64, 64) and m.dtype == bool
    assert m[20, 30] and not m[0, 0]
    assert m.mean() == pytest.approx(latent.mean(), abs=0.02)


# --- the command ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from retouch.shapes.architecture import build_components, save_pipeline

    folder = tmp_path_factory.mktemp("bench-tiny")
    return save_pipeline(folder / "model", build_components("tiny", tokenizer_dir=folder / "tok", seed=0))


@pytest.fixture(scope="module")
def judge_path(tmp_path_factory):
    """Untrained judge weights: the verdicts mean nothing, the code paths run."""
    from retouch.shapes.judge import Judge, save_judge

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("judge") / "judge.safetensors"
    save_judge(Judge().eval(), path)
    return path


def _bench(args: list[str], out: Path) -> list[dict]:
    """Run `retouch bench edits` with args (its --out is out) and return the rows of cases.jsonl."""
    from retouch.bench.edits import edits_command

    result = CliRunner().invoke(edits_command, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]


def test_edits_command_writes_and_resumes(tiny_folder, judge_path, tmp_path):
    from retouch.bench.edits import edits_command

    out = tmp_path / "run"
    args = [
        "--out",
        str(out),
        "--cases",
        "1",
        "--kinds",
        "reshape",
        "--methods",
        "diffedit,ledits_masked",
        "--steps",
        "3",
        "--mask-samples",
        "1",
        "--model",
        str(tiny_folder),
        "--judge",
        str(judge_path),
        "--device",
        "cpu",
        "--no-progress",
        "--grid-cases",
        "1",
    ]
    rows = _bench(args, out)
    assert [r["method"] for r in rows] == ["autoencoder", "diffedit", "ledits_masked"]
    by = {r["method"]: r for r in rows}
    assert by["autoencoder"]["unet_evals"] == 0 and by["autoencoder"]["mask_iou"] is None
    for name in ("diffedit", "ledits_masked"):
        r = by[name]
        assert r["unet_evals_reported"] == r["unet_evals_edit"]  # the method's count is the UNet's
        assert r["unet_evals_second"] == r["unet_evals_edit"] < r["unet_evals"]
        assert 0 <= r["mask_iou"] <= 1 and r["seconds"] > r["seconds_second"] > 0
        assert isinstance(r["success"], bool) and 0 < r["ssim_bg"] <= 1
        assert (out / "images" / r["case"] / f"{name}.mask.png").is_file()
    # DiffEdit at N=3, r=0.8 (2 steps), n=1: encode 2, mask 2, decode 2·2 = 8
    assert by["diffedit"]["unet_evals"] == 8
    summary = (out / "summary.md").read_text()
    assert "| **diffedit** | all | 1 |" in summary and "ledits_masked" in summary
    assert (out / "grid_reshape.png").is_file()
    for record in (summary, (out / "run.json").read_text()):  # names and digests, not install paths
        assert str(judge_path.parent) not in record and str(tiny_folder) not in record
        assert f"{judge_path.name} (blake2b " in record

    # a second run with one more method runs only that one
    first = (out / "cases.jsonl").read_text()
    again = args.copy()
    again[again.index("diffedit,ledits_masked")] = "diffedit,sdedit"
    result = CliRunner().invoke(edits_command, again)
    assert result.exit_code == 0, result.output + repr(result.exception)
    text = (out / "cases.jsonl").read_text()
    assert text.startswith(first)
    assert [json.loads(line)["method"] for line in text[len(first) :].splitlines()] == ["sdedit"]

    # other settings in the same folder are refused
    other = [*args, "--encode-ratio", "0.5"]
    result = CliRunner().invoke(edits_command, other)
    assert result.exit_code != 0 and "other settings" in result.output

    # a folder written before a settings field existed resumes with that field at its default only
    run = json.loads((out / "run.json").read_text())
    del run["settings"]["ledits"]["paste_back"], run["settings"]["diffedit"]["feather"]
    (out / "run.json").write_text(json.dumps(run))
    assert CliRunner().invoke(edits_command, args).exit_code == 0
    (out / "run.json").write_text(json.dumps(run))
    result = CliRunner().invoke(edits_command, [*args, "--paste-back"])
    assert result.exit_code != 0 and "other settings" in result.output


def test_sweep_rows_and_plot(tiny_folder, tmp_path):

    out = tmp_path / "sweep"
    args = [
        "--out",
        str(out),
        "--cases",
        "1",
        "--kinds",
        "recolor",
        "--methods",
        "sdedit",
        "--steps",
        "2",
        "--model",
        str(tiny_folder),
        "--judge",
        "none",
        "--device",
        "cpu",
        "--no-progress",
        "--sweep",
        "--ratios",
        "0.5,1.0",
        "--grid-cases",
        "0",
    ]
    rows = _bench(args, out)
    sweeps = [r["sweep"] for r in rows if r["method"] == "sdedit"]
    assert sweeps == [None, {"encode_ratio": 0.5}, {"encode_ratio": 1.0}]
    assert all(r["success"] is None for r in rows)  # no judge
    assert (out / "tradeoff_diffedit.png").is_file()


def test_diffusers_diffedit_matches_retouch_cost(tiny_eps):
    """diffusers' DiffEdit on the same modules, matched settings: the same UNet evaluations as
    retouch's (N=3, r=0.8: encode 2, mask 2n = 2, decode 2·2 = 4), a mask of the latent size, and
    the shared UNet left as it was (its forward unwrapped)."""
    from retouch.bench.methods import METHODS, Context, Settings, run_method
    from retouch.denoiser import UNetCalls
    from retouch.methods.diffedit import DiffEditConfig

    s = Settings(diffedit=DiffEditConfig(num_inference_steps=3, mask_samples=1))
    case = make_case(HELD_OUT_SEED, "recolor")
    ctx = Context(tiny_eps)
    calls = UNetCalls(tiny_eps.unet)
    try:
        names = ("diffedit", "diffusers_diffedit")
        runs = {m: run_method(ctx, calls, METHODS[m], case, s, {}) for m in names}
    finally:
        calls.unwrap()
    assert "forward" not in vars(tiny_eps.unet)
    for out, prep, edit in runs.values():
        assert (prep.evals, edit.evals) == (2, 6)
        assert out.image.shape == case.source_image.shape and out.mask.shape == (32, 32)


def test_diffusers_diffedit_steers_from_the_reference_when_retouch_does(tiny_eps):
    """guide_from_reference gives diffusers' decoding the reference as its negative prompt: its
    image moves, and lands nearer retouch's image under the same setting than its own without it."""
    from retouch.bench.methods import METHODS, Context, Settings, run_method
    from retouch.denoiser import UNetCalls
    from retouch.methods.diffedit import DiffEditConfig

    case, ctx, calls, out = (
        make_case(HELD_OUT_SEED, "recolor"),
        Context(tiny_eps),
        UNetCalls(tiny_eps.unet),
        {},
    )
    try:
        for steer in (False, True):
            s = Settings(
                diffedit=DiffEditConfig(num_inference_steps=3, mask_samples=1, guide_from_reference=steer)
            )
            for m in ("diffedit", "diffusers_diffedit"):
                out[m, steer] = run_method(ctx, calls, METHODS[m], case, s, {})[0].image.astype(float)
    finally:
        calls.unwrap()
    moved = np.abs(out["diffusers_diffedit", True] - out["diffusers_diffedit", False]).mean()
    apart = np.abs(out["diffusers_diffedit", True] - out["diffedit", True]).mean()
    assert moved > 1.0 and apart < moved / 4, (moved, apart)


def test_diffedit_presets_edits_each_kind_under_the_preset_a_user_picks_for_it(tiny_eps):
    """diffedit_presets: a removal encodes to pure noise steering away from the reference (N=3:
    encode 3, decode 3·3 = 9, mask 2), a recolour encodes to pure noise (decode 2·3 = 6) within a
    mask fitted to the image's edges (its own mask so set), a background from r = 0.9 (encode 3)
    with no mask (decode 2·3 = 6, no mask's 2), an addition as a removal (steered away: 3 + 9 + 2), a
    reshape is diffedit's edit exactly."""
    from retouch.bench.methods import KIND_PRESETS, METHODS, Context, Settings, run_method
    from retouch.denoiser import UNetCalls
    from retouch.methods.diffedit import PRESETS, DiffEditConfig, diffedit_mask

    assert set(KIND_PRESETS["diffedit"].values()) <= set(PRESETS)
    s = Settings(diffedit=DiffEditConfig(num_inference_steps=3, mask_samples=1))
    ctx = Context(tiny_eps)
    calls = UNetCalls(tiny_eps.unet)
    runs = {}
    try:
        for kind in ("remove", "recolor", "reshape", "background", "add"):
            case = make_case(HELD_OUT_SEED, kind)
            for m in ("diffedit", "diffedit_presets"):
                runs[kind, m] = run_method(ctx, calls, METHODS[m], case, s, {})
    finally:
        calls.unwrap()
    evals = {k: (prep.evals, edit.evals) for k, (_, prep, edit) in runs.items()}
    assert evals["remove", "diffedit_presets"] == (3, 11) and evals["remove", "diffedit"] == (2, 6)
    assert evals["add", "diffedit_presets"] == (3, 11) and evals["add", "diffedit"] == (2, 6)
    assert evals["recolor", "diffedit_presets"] == (3, 8) and evals["recolor", "diffedit"] == (2, 6)
    assert evals["background", "diffedit_presets"] == (3, 6) and evals["background", "diffedit"] == (2, 6)
    assert runs["background", "diffedit_presets"][0].mask is None
    assert runs["background", "diffedit"][0].mask is not None
    fitted, paper = runs["recolor", "diffedit_presets"][0].mask, runs["recolor", "diffedit"][0].mask
    recolor = make_case(HELD_OUT_SEED, "recolor")
    own = diffedit_mask(
        tiny_eps, recolor.input_image, recolor.target_caption, recolor.source_caption, seed=recolor.seed,
        num_inference_steps=3, mask_samples=1, mask_refine_radius=3.0, mask_keep_ratio=0.8,
    )  # fmt: skip
    assert np.array_equal(fitted, own.latent.numpy() > 0.5) and not np.array_equal(fitted, paper)
    same = [runs["reshape", m][0] for m in ("diffedit", "diffedit_presets")]
    assert np.array_equal(same[0].image, same[1].image) and np.array_equal(same[0].mask, same[1].mask)
    # a setting the run was given overrides the preset (as a flag does over --preset): no w_R branch
    given = make_settings({"reference_guidance_scale": 0.0, "mask_samples": 1}, 3, "caption")
    assert given.given == ("mask_samples", "num_inference_steps", "reference_guidance_scale")
    try:
        calls = UNetCalls(tiny_eps.unet)
        _, prep, edit = run_method(
            ctx, calls, METHODS["diffedit_presets"], make_case(HELD_OUT_SEED, "remove"), given, {}
        )
    finally:
        calls.unwrap()
    assert (prep.evals, edit.evals) == (3, 8)


def test_diffedit_presets_on_a_flow_model_run_each_preset_less_its_word_weights():
    """On SD3 a recolour runs the recolor preset less its word weights (which weigh a UNet's
    cross-attention): to pure noise inside the fitted mask (N=3: encode 3, decode 2·3, mask 2), the
    same image as DiffEdit given the rest of the preset by hand."""
    from flow_tiny import bundle
    from retouch.bench.methods import METHODS, Context, Settings, run_method
    from retouch.denoiser import UNetCalls
    from retouch.methods.diffedit import DiffEditConfig, diffedit

    model = bundle("sd3")
    s = Settings(diffedit=DiffEditConfig(num_inference_steps=3, mask_samples=1))
    case = make_case(HELD_OUT_SEED, "recolor")
    calls = UNetCalls(model.unet)
    try:
        out, prep, edit = run_method(Context(model), calls, METHODS["diffedit_presets"], case, s, {})
    finally:
        calls.unwrap()
    assert (prep.evals, edit.evals) == (3, 8)
    by_hand = diffedit(
        model, case.input_image, case.target_caption, case.source_caption, seed=case.seed,
        num_inference_steps=3, mask_samples=1, encode_ratio=1.0, mask_refine_radius=3.0,
        mask_keep_ratio=0.8,
    )  # fmt: skip
    assert np.array_equal(out.image, np.asarray(by_hand.image.convert("RGB")))


def test_flowedit_presets_edits_each_kind_under_the_preset_a_user_picks_for_it():
    """flowedit_presets: a background under "background" (n_max 45 of 50: 4·45 evaluations), the
    other kinds under "stronger" (4·40), each the library's edit under that preset; a setting the
    run was given lays over it."""
    from flow_tiny import bundle
    from retouch.bench.methods import KIND_PRESETS, METHODS, Context, Settings, run_method
    from retouch.denoiser import UNetCalls
    from retouch.methods.flowedit import PRESETS, flowedit

    assert set(KIND_PRESETS["flowedit"].values()) <= set(PRESETS)
    model = bundle("sd3")
    ctx, method, calls = Context(model), METHODS["flowedit_presets"], UNetCalls(model.unet)
    try:
        runs = {
            kind: run_method(ctx, calls, method, make_case(HELD_OUT_SEED, kind), Settings(), {})
            for kind in ("background", "recolor")
        }
        given = make_settings({"n_max": 3}, None, "caption")
        small = run_method(ctx, calls, method, make_case(HELD_OUT_SEED, "add"), given, {})
    finally:
        calls.unwrap()
    assert runs["background"][2].evals == 4 * 45 and runs["recolor"][2].evals == 4 * 40
    assert small[2].evals == 4 * 3
    case = make_case(HELD_OUT_SEED, "recolor")
    by_hand = flowedit(model, case.input_image, case.source_caption, case.target_caption, seed=case.seed,
                       preset="stronger")  # fmt: skip
    assert np.array_equal(runs["recolor"][0].image, np.asarray(by_hand.image.convert("RGB")))


def test_flowedit_masked_is_the_presets_edit_inside_the_inferred_mask_but_for_additions_and_backgrounds():
    """flowedit_masked: the library's FlowEdit under the kind's preset with mask="infer" (its 2·10
    mask evaluations in the edit's), the mask reported for the mask IoU; an addition and a new
    background have no mask (DiffEdit's mask cannot place or hold them): flowedit_presets' edit."""
    from flow_tiny import bundle
    from retouch.bench.methods import METHODS, Context, Settings, run_method
    from retouch.denoiser import UNetCalls
    from retouch.methods.flowedit import flowedit

    model, case = bundle("sd3"), make_case(HELD_OUT_SEED, "recolor")
    unmasked = [make_case(HELD_OUT_SEED, kind) for kind in ("add", "background")]
    ctx, calls = Context(model), UNetCalls(model.unet)
    try:
        out, _, edit = run_method(ctx, calls, METHODS["flowedit_masked"], case, Settings(), {})
        plain = [{m: run_method(ctx, calls, METHODS[m], c, Settings(), {})[0]
                  for m in ("flowedit_masked", "flowedit_presets")} for c in unmasked]  # fmt: skip
    finally:
        calls.unwrap()
    assert edit.evals == 4 * 40 + 2 * 10 and METHODS["flowedit_masked"].has_mask
    by_hand = flowedit(model, case.input_image, case.source_caption, case.target_caption, seed=case.seed,
                       preset="stronger", mask="infer")  # fmt: skip
    assert np.array_equal(out.image, np.asarray(by_hand.image.convert("RGB")))
    assert np.array_equal(out.mask, by_hand.mask.latent.numpy() > 0.5)
    for bg in plain:
        assert bg["flowedit_masked"].mask is None
        assert np.array_equal(bg["flowedit_masked"].image, bg["flowedit_presets"].image)


def test_diffedit_concepts_edits_with_the_edits_own_phrases_where_it_has_them(tiny_eps):
    """diffedit_concepts: a recolour is DiffEdit given "green circle" against "red circle" (the
    library's own edit with those texts, not the captions'); a removal has no phrase to add, so it
    is diffedit's edit exactly."""
    from retouch.bench.methods import METHODS, Context, Settings, run_method
    from retouch.denoiser import UNetCalls
    from retouch.methods.diffedit import DiffEditConfig, diffedit

    cfg = DiffEditConfig(num_inference_steps=3, mask_samples=1)
    s, ctx, calls, runs = Settings(diffedit=cfg), Context(tiny_eps), UNetCalls(tiny_eps.unet), {}
    try:
        for kind in ("recolor", "remove"):
            case = make_case(HELD_OUT_SEED, kind)
            for m in ("diffedit", "diffedit_concepts"):
                runs[kind, m] = run_method(ctx, calls, METHODS[m], case, s, {})[0]
    finally:
        calls.unwrap()
    recolor = make_case(HELD_OUT_SEED, "recolor")
    own = diffedit(tiny_eps, recolor.input_image, recolor.add[0], recolor.remove[0], cfg, seed=recolor.seed)
    assert np.array_equal(runs["recolor", "diffedit_concepts"].image, np.asarray(own.image))
    assert not np.array_equal(runs["recolor", "diffedit_concepts"].image, runs["recolor", "diffedit"].image)
    assert np.array_equal(runs["remove", "diffedit_concepts"].image, runs["remove", "diffedit"].image)


def test_ledits_presets_edits_each_kind_under_the_preset_a_user_picks_for_it(tiny_eps):
    """ledits_presets: a recolour (a background) is LEDITS with concepts under its kind's preset (the image
    ledits_concepts makes given the preset's settings, not the one it makes at the paper's); an
    addition, which has no preset, is ledits_concepts' edit exactly; all share one inversion."""
    from retouch.bench.methods import KIND_PRESETS, METHODS, Context, Settings, run_method
    from retouch.denoiser import UNetCalls
    from retouch.methods.ledits import PRESETS, LEditsConfig

    assert set(KIND_PRESETS["ledits"].values()) <= set(PRESETS) and "add" not in KIND_PRESETS["ledits"]
    s = Settings(ledits=LEditsConfig(num_inference_steps=4, skip=1))
    ctx = Context(tiny_eps)
    calls = UNetCalls(tiny_eps.unet)
    try:
        for kind in ("recolor", "add", "background"):
            case, preps = make_case(HELD_OUT_SEED, kind), {}
            name = KIND_PRESETS["ledits"].get(kind)
            given = replace(s, ledits=replace(s.ledits, **PRESETS[name])) if name else s
            ours, prep, _ = run_method(ctx, calls, METHODS["ledits_presets"], case, s, preps)
            paper, again, _ = run_method(ctx, calls, METHODS["ledits_concepts"], case, s, preps)
            same, _, _ = run_method(ctx, calls, METHODS["ledits_concepts"], case, given, {})
            assert again is prep and prep.evals > 0  # one inversion, shared
            assert np.array_equal(ours.image, same.image)
            assert np.array_equal(ours.image, paper.image) == (name is None), kind
    finally:
        calls.unwrap()


@pytest.mark.slow
def test_workers_give_the_rows_one_process_gives(tiny_folder, judge_path, tmp_path):
    """Two worker processes share the cases; every row but the clocks is what one process writes."""

    def run(out, workers):
        args = [
            "--out", str(out), "--cases", "3", "--kinds", "recolor,remove",
            "--methods", "diffedit,ledits_both", "--steps", "3", "--mask-samples", "1",
            "--model", str(tiny_folder), "--judge", str(judge_path), "--device", "cpu", "--threads", "1",
            "--no-progress", "--grid-cases", "0", "--workers", str(workers),
        ]  # fmt: skip
        rows = _bench(args, out)
        clocks = ("seconds", "seconds_second", "seconds_prepare")
        return sorted(
            json.dumps({k: v for k, v in r.items() if k not in clocks}, sort_keys=True) for r in rows
        )

    one, two = run(tmp_path / "one", 1), run(tmp_path / "two", 2)
    assert len(one) == 3 * 3 and one == two
    assert len({json.loads(r)["case"] for r in two}) == 3
    images = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two" / "images").rglob("*.png"))
    assert images == sorted(
        p.relative_to(tmp_path / "one") for p in (tmp_path / "one" / "images").rglob("*.png")
    )


def test_wilson_interval_known_values():
    from retouch.bench.report import wilson

    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)


def test_summary_pairs_retouch_with_its_diffusers_counterpart_case_by_case():
    from retouch.bench.report import summary_markdown

    def row(method, case, success, psnr_bg, seconds):
        return dict(method=method, case=case, kind="recolor", sweep=None, success=success, preserved=True,
                    psnr_bg=psnr_bg, seconds=seconds, seconds_second=seconds / 2)  # fmt: skip

    ours = [row("diffedit", f"c{i}", s, 30.0, 1.0) for i, s in enumerate([True, True, True, False])]
    theirs = [
        row("diffusers_diffedit", f"c{i}", s, 28.0 + i, 3.0) for i, s in enumerate([True, False, False, True])
    ]
    extra = [row("diffusers_diffedit", "c9", True, 10.0, 9.0)]  # no retouch row: not paired
    text = summary_markdown(ours + theirs + extra, {}, pairs={"diffedit": "diffusers_diffedit"})
    line = next(x for x in text.splitlines() if x.startswith("| diffedit | diffusers_diffedit |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:5] == ["4", "3 / 2", "2 / 1"]  # cases, successes, successes only one side has
    assert cells[5].startswith("+0.50 ± ")  # 30 − mean(28, 29, 30, 31)
    assert cells[6:] == ["3.00", "3.00"]
    assert "| diffedit | 4 | 75% [30%, 95%] |" in text


@pytest.mark.slow
def test_a_failing_worker_stops_the_run_with_its_error(tiny_folder, tmp_path):
    from retouch.bench.cases import make_cases
    from retouch.bench.edits import Loader, run_bench
    from retouch.bench.methods import Settings

    cases = make_cases(10_000_000, 2, ["recolor"])
    loader = Loader(model=str(tiny_folder), fingerprint="not-this-model", device="cpu")
    with pytest.raises(RuntimeError, match="worker failed: RuntimeError: worker loaded another model"):
        run_bench(None, cases, ["autoencoder"], Settings(), tmp_path, workers=2, loader=loader)
    assert (tmp_path / "cases.jsonl").read_text() == ""


@pytest.mark.slow
def test_bench_model_measures_every_figure_including_bare_concepts():
    from click.testing import CliRunner

    from retouch.main import main

    result = CliRunner().invoke(
        main,
        ["bench", "model", "--recon", "8", "--t2i", "4", "--inversions", "2", "--grounding", "6", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["autoencoder_psnr_db"] > 25 and report["ddim_round_trip_psnr_db"] > 15
    for share in ("t2i_faithful", "concept_contains", "background_concept_holds"):
        # a share of the 4 draws, and the shipped model draws most of them right
        assert report[share] * 4 == round(report[share] * 4) and report[share] >= 0.5, (share, report[share])
    assert set(report["t2i_faithful_by_objects"]) <= {"1", "2", "3"}
    assert 0 < report["word_region_area"] < 0.5 and 0 < report["word_attention_inside"] < 1


@pytest.mark.parametrize("kind", ["recolor", "remove", "add"])
def test_the_judge_says_why_an_edit_failed(kind):
    """Rendered results of known kinds: the ground truth succeeds (no failure), the input unchanged
    is 'unchanged', and the edited object drawn as another object of the scene is a 'copy'; the
    summary counts them by method and kind."""
    from dataclasses import replace

    from retouch.bench.cases import make_case
    from retouch.bench.metrics import judge_case, why_failed
    from retouch.bench.report import summary_markdown
    from retouch.shapes import world
    from retouch.shapes.judge import load_judge

    judge = load_judge()
    case = next(c for s in range(10_000_000, 10_000_200) if len((c := make_case(s, kind)).untouched()) >= 1)
    region, _, _ = case.judged_region()
    assert judge_case(judge, case.target_image, case)["failure"] is None
    got = judge_case(judge, case.source_image, case)
    assert not got["success"] and got["failure"] == "unchanged"
    # the edited object (the new one for an addition) drawn as a copy of an untouched one
    other = case.untouched()[0][0]
    target = case.edit.target
    i = (
        case.edit.index
        if kind != "add"
        else next(j for j, o in enumerate(target.objects) if o not in case.edit.source.objects)
    )
    if kind == "remove":  # the removed object is only in the source
        target, i = case.edit.source, case.edit.index
    objects = list(target.objects)
    objects[i] = replace(objects[i], shape=other.shape, color=other.color)
    copy = world.render(replace(target, objects=tuple(objects)))
    row = judge_case(judge, copy, case)
    assert row["failure"] == "copy" and tuple(row["read"]) == (other.shape, other.color)
    assert why_failed(("circle", None), ("square", "red"), {("circle", "red")}) == "other"
    assert why_failed((None, None), ("square", "red"), set()) == "nothing"
    rows = [
        dict(case=case.id, seed=case.seed, kind=kind, method="m", sweep=None, **judge_case(judge, im, case))
        for im in (case.target_image, case.source_image, copy, copy)
    ]
    line = next(x for x in summary_markdown(rows, {}).splitlines() if x.startswith(f"| m | {kind} |"))
    assert [c.strip() for c in line.strip("|").split("|")][2:] == ["4", "75%", "25%", "50%", "0%", "0%"]


def test_an_addition_drawn_elsewhere_is_added_anywhere_not_at_its_place():
    """The new object drawn where no object was, away from where the ground truth drew it:
    `success` (read at the ground truth's place) fails, `added_anywhere` holds; the input holds
    neither, the ground truth both; an object drawn over an untouched one does not count; the
    summary's additions table counts them."""
    from retouch.bench.metrics import judge_case
    from retouch.bench.report import summary_markdown
    from retouch.shapes import world
    from retouch.shapes.judge import load_judge

    judge = load_judge()
    rng = np.random.default_rng(0)
    for seed in range(10_000_000, 10_000_200):
        case = make_case(seed, "add")
        new = next(o for o in case.edit.target.objects if o not in case.edit.source.objects)
        fixed = dict(shape=new.shape, color=new.color, r=new.r)
        moved = world.sample_object(rng, case.edit.target.objects, **fixed)
        if moved is not None and case.untouched():
            break
    elsewhere = world.render(world.add(case.edit.source, moved))
    kept_obj = case.untouched()[0][0]
    over = world.render(
        replace(
            case.edit.source, objects=(*case.edit.source.objects, replace(moved, x=kept_obj.x, y=kept_obj.y))
        )
    )
    rows = {}
    for name, image in [
        ("truth", case.target_image),
        ("input", case.source_image),
        ("elsewhere", elsewhere),
        ("over", over),
    ]:
        rows[name] = dict(
            case=case.id, seed=seed, kind="add", method=name, sweep=None, **judge_case(judge, image, case)
        )
    assert (rows["truth"]["success"], rows["truth"]["added_anywhere"]) == (True, True)
    assert (rows["input"]["success"], rows["input"]["added_anywhere"]) == (False, False)
    assert (rows["elsewhere"]["success"], rows["elsewhere"]["added_anywhere"]) == (False, True)
    assert rows["over"]["added_anywhere"] is False
    recolour = make_case(seed, "recolor")
    assert judge_case(judge, recolour.target_image, recolour)["added_anywhere"] is None
    lines = summary_markdown(list(rows.values()), {}).splitlines()
    start = lines.index("## Additions, the new object where the ground truth drew it and anywhere")
    table = {x.split("|")[1].strip(): [c.strip() for c in x.split("|")[2:-1]] for x in lines[start + 6 :]}
    assert table["elsewhere"] == ["1", "0%", "100%", "100%"] and table["truth"] == [
        "1",
        "100%",
        "100%",
        "100%",
    ]
    assert table["input"] == ["1", "0%", "0%", "0%"]


def test_a_mask_over_an_object_the_edit_keeps_is_counted_and_the_summary_splits_success_by_it():
    """mask_others: the objects the edit keeps at least half inside a method's mask; the summary's
    table gives the share of masks holding one and the success with and without."""
    from retouch.bench.metrics import mask_metrics
    from retouch.bench.report import summary_markdown

    case = next(c for c in make_cases(10_000_000, 40, ["recolor"]) if len(c.untouched()) >= 2)
    (_, first), (_, second) = case.untouched()[:2]
    assert mask_metrics(None, case)["mask_others"] is None
    assert mask_metrics(case.region & ~first & ~second, case)["mask_others"] == 0
    half = first.copy()
    rows_, cols_ = np.nonzero(first)
    half[rows_[: len(rows_) // 3], cols_[: len(cols_) // 3]] = False  # a third of it out: still held
    assert mask_metrics(case.region | half, case)["mask_others"] == 1
    assert mask_metrics(case.region | first | second, case)["mask_others"] == 2
    assert mask_metrics(np.zeros_like(first), case)["mask_others"] == 0
    rows = [
        dict(case=f"c{i}", kind="recolor", method="m", sweep=None, success=ok, failure=None, mask_others=n)
        for i, (ok, n) in enumerate([(True, 0), (True, 0), (False, 0), (False, 1), (True, 2)])
    ]
    lines = summary_markdown(rows, {}).splitlines()
    start = lines.index("## Masks over the objects the edit keeps")
    line = next(x for x in lines[start:] if x.startswith("| m | recolor |"))
    assert [c.strip() for c in line.strip("|").split("|")][2:] == ["5", "40%", "50%", "67%"]


def test_ledits_pp_row_is_the_preset_under_the_runs_settings(tiny_eps):
    """ledits++: the "ledits++" preset with the run's given settings laid over it (here N = 12 of
    which the preset's top 5 are skipped: 7 steps), the inversion with the source caption (two
    branches), the edit over [∅, caption, added, removed] (the caption under w_src as the inversion
    had it), and the implicit masks' union as its mask."""
    from retouch.bench.methods import METHODS, Context, Settings, run_method
    from retouch.denoiser import UNetCalls
    from retouch.methods.ledits import LEditsConfig

    s = Settings(ledits=LEditsConfig(num_inference_steps=12), given=("num_inference_steps",))
    case = make_case(HELD_OUT_SEED, "recolor")
    calls = UNetCalls(tiny_eps.unet)
    try:
        out, prep, edit = run_method(Context(tiny_eps), calls, METHODS["ledits++"], case, s, {})
    finally:
        calls.unwrap()
    assert (prep.evals, edit.evals) == (14, 28)
    assert out.image.shape == case.source_image.shape and out.mask.shape == (32, 32) and out.mask.any()


def test_flowedit_settings_given_to_the_bench_reach_its_rows(judge_path, tmp_path):
    """A FlowEdit flag lays over the family's published values (FlowEdit on the shipped mini SD3
    at n_max = 4: 4·n_max = 16 transformer evaluations, not the published 132); --steps leaves
    FlowEdit's T alone while setting DiffEdit's and LEDITS'."""
    s = make_settings({"target_guidance_scale": 5.0, "n_max": 4}, 10, "caption")
    assert (s.flowedit.target_guidance_scale, s.flowedit.n_max, s.flowedit.num_inference_steps) == (
        5.0,
        4,
        None,
    )
    assert (s.ledits.target_guidance_scale, s.diffedit.num_inference_steps) == (5.0, 10)
    out = tmp_path / "flow"
    common = ["--cases", "1", "--kinds", "recolor", "--methods", "flowedit", "--model", "shapes-sd3"]
    common += ["--judge", str(judge_path), "--device", "cpu", "--no-progress", "--grid-cases", "0"]
    rows = _bench(["--out", str(out), *common, "--n-max", "4", "--target-guidance-scale", "5"], out)
    (row,) = [r for r in rows if r["method"] == "flowedit"]
    assert row["unet_evals"] == 16
    assert "FlowEdit n_max=4 target_guidance_scale=5.0" in (out / "summary.md").read_text()


def test_bench_model_draws_sd3_without_t5_as_diffusers_does_with_its_zero_rows_given_once():
    """`bench model` hands diffusers' StableDiffusion3Pipeline one zero row weighed as 256
    (flows.ZeroRunAttention): the same images as the pipeline's own 256 zero rows."""
    from unittest import mock

    from flow_tiny import bundle
    from retouch import flows
    from retouch.bench.model import _pipeline, generate

    model = bundle("sd3")
    pipe = _pipeline(model)
    seen = []
    hook = model.transformer.context_embedder.register_forward_hook(
        lambda m, i, o: seen.append(i[0].shape[1])
    )
    kw = dict(captions=["a red circle", "a blue square"], steps=3, guidance=5.0, seed=7, batch=2, size=32)
    try:
        once = generate(pipe, model, **kw)
        with mock.patch.object(flows, "zero_tokens", return_value=1):
            whole = generate(pipe, model, **kw)
    finally:
        hook.remove()
    assert set(seen[:3]) == {77 + 1} and set(seen[3:]) == {77 + 256}
    assert max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(once, whole)) <= 1
