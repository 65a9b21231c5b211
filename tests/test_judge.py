"""Tests of the caption grammar and the shipped judge, on held-out ShapesWorld scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from retouch.shapes import world
from retouch.shapes.grammar import parse_caption
from retouch.shapes.judge import (
    DEFAULT_WEIGHTS,
    faithful,
    faithful_batch,
    find_objects,
    load_judge,
    read_background,
    read_region,
    read_regions,
)
from retouch.shapes.world import HELD_OUT_SEED

torch.set_num_threads(1)
SEEDS = range(HELD_OUT_SEED + 5_000, HELD_OUT_SEED + 5_150)


@pytest.fixture(scope="module")
def judge():
    return load_judge()


def _other(options, current: str) -> str:
    return next(o for o in options if o != current)


def _caption(background: str, objects: list[tuple[str, str]]) -> str:
    scene = world.Scene(background, tuple(world.Obj(s, c, 0, 0, 1) for c, s in objects))
    return world.caption(scene)


# --- grammar -----------------------------------------------------------------------------------


def test_parse_caption_round_trips_world_captions():
    for seed in range(300):
        scene = world.sample_scene(seed)
        background, objects = parse_caption(world.caption(scene))
        assert background == scene.background
        assert objects == [(o.color, o.shape) for o in scene.objects]


def test_parse_caption_concepts_and_empty_scene():
    assert parse_caption("green circle") == (None, [("green", "circle")])
    assert parse_caption("white background") == ("white", [])
    assert parse_caption("a gray background") == ("gray", [])
    assert parse_caption(world.caption(world.Scene("black", ()))) == ("black", [])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a pink circle",
        "a red blob on a white background",
        "a red circle on a blue background",
        "red",
        "a red circle,",
        "on a white background",
    ],
)
def test_parse_caption_rejects_text_outside_the_grammar(text):
    with pytest.raises(ValueError, match="cannot parse"):
        parse_caption(text)


# --- the shipped judge -------------------------------------------------------------------------


def test_shipped_weights_are_small():
    assert DEFAULT_WEIGHTS.exists()
    assert DEFAULT_WEIGHTS.stat().st_size < 2_000_000


def test_judge_reads_held_out_regions(judge):
    images, regions, expected = [], [], []
    for seed in SEEDS:
        scene = world.sample_scene(seed)
        img = world.render(scene)
        for obj, mask in zip(scene.objects, world.masks(scene)):
            images.append(img), regions.append(mask), expected.append((obj.shape, obj.color))
    assert len(expected) >= 200
    got = read_regions(judge, images, regions)
    assert np.mean([g == e for g, e in zip(got, expected)]) >= 0.98


def test_judge_reads_held_out_backgrounds(judge):
    scenes = [world.sample_scene(s) for s in SEEDS[:60]]
    got = [read_background(judge, world.render(s)) for s in scenes]
    assert np.mean([g == s.background for g, s in zip(got, scenes)]) >= 0.98
    assert {s.background for s in scenes} == set(world.BACKGROUNDS)


def test_empty_region_reads_none(judge):
    rng = np.random.default_rng(0)
    hits = 0
    for seed in SEEDS[:40]:
        scene = world.sample_scene(seed, n_objects=1)
        blob = world.sample_object(rng, scene.objects)
        region = world.masks(world.Scene(scene.background, (blob,)))[0]
        hits += read_region(judge, world.render(scene), region) == (None, None)
    assert hits >= 38


def test_removed_object_region_reads_none_and_recolor_reads_new_colour(judge):
    for seed in SEEDS[:20]:
        e = world.sample_edit(seed, "remove")
        assert read_region(judge, world.render(e.target), e.changed_region()) == (None, None)
        e = world.sample_edit(seed, "recolor")
        new = e.target.objects[e.index]
        img = Image.fromarray(world.render(e.target))  # PIL input is accepted too
        assert read_region(judge, img, e.changed_region()) == (new.shape, new.color)


def test_find_objects_matches_ground_truth_masks():
    for seed in SEEDS[:50]:
        scene = world.sample_scene(seed)
        found = find_objects(world.render(scene))
        assert len(found) == len(scene.objects)
        for true in world.masks(scene):
            assert min((m ^ true).sum() for m in found) <= 0.25 * true.sum()


def test_find_objects_splits_touching_objects(judge):
    """Generated images can hold touching objects (ShapesWorld no longer samples them: spacing
    counts a square's corners); the judge still reads them as two."""
    a = world.Obj("square", "red", 20.0, 20.0, 10.0)
    b = world.Obj("square", "green", 36.6, 36.6, 10.0)
    scene = world.Scene("white", (a, b))
    image = world.render(scene)
    assert not world._fits(b, [a])  # too close for ShapesWorld's spacing
    assert len(find_objects(image)) == 2
    assert faithful(judge, image, world.caption(scene))


def test_faithful_on_clean_held_out_renders(judge):
    scenes = [world.sample_scene(s) for s in SEEDS[:100]]
    readings = faithful_batch(judge, [world.render(s) for s in scenes], [world.caption(s) for s in scenes])
    assert np.mean([r.faithful for r in readings]) >= 0.98


@pytest.mark.parametrize("size", [96, 128])
def test_the_judge_reads_renders_of_another_size_at_its_own(judge, size):
    """Images and regions of another size are box-resized to 64 px first: renders at 96 and 128 px
    read as their captions say, and an object's region at that size reads as that object."""
    from retouch.shapes.judge import at_judge_size, read_regions

    scenes = [world.sample_scene(s) for s in SEEDS[:50]]
    images = [world.render(s, size) for s in scenes]
    assert at_judge_size(images[0]).shape == (64, 64, 3)
    readings = faithful_batch(judge, images, [world.caption(s) for s in scenes])
    assert np.mean([r.faithful for r in readings]) >= 0.96
    regions = [world.masks(s, size)[0] for s in scenes]
    assert at_judge_size(regions[0]).shape == (64, 64) and at_judge_size(regions[0]).dtype == bool
    reads = read_regions(judge, images, regions)
    assert np.mean([r == (s.objects[0].shape, s.objects[0].color) for r, s in zip(reads, scenes)]) >= 0.96


def _wrong_captions(scene: world.Scene) -> dict[str, str]:
    objs = [(o.color, o.shape) for o in scene.objects]
    c, s = objs[0]
    return {
        "colour": _caption(scene.background, [(_other(world.COLORS, c), s), *objs[1:]]),
        "shape": _caption(scene.background, [(c, _other(world.SHAPES, s)), *objs[1:]]),
        "missing": _caption(scene.background, objs[1:]),
        "extra": _caption(scene.background, [*objs, ("red", "circle")]),
        "background": _caption(_other(world.BACKGROUNDS, scene.background), objs),
    }


def test_faithful_rejects_wrong_captions(judge):
    scenes = [world.sample_scene(seed) for seed in SEEDS[:20]]
    images = [world.render(s) for s in scenes]
    right = faithful_batch(judge, images, [world.caption(s) for s in scenes])
    kept = [(s, im) for s, im, r in zip(scenes, images, right) if r.faithful]
    assert len(kept) >= 18  # the few misreads are counted by test_faithful_on_clean_held_out_renders
    cases = [(what, text, im) for s, im in kept for what, text in _wrong_captions(s).items()]
    readings = faithful_batch(judge, [im for *_, im in cases], [text for _, text, _ in cases])
    wrongly_accepted = [(what, text) for (what, text, _), r in zip(cases, readings) if r.faithful]
    assert not wrongly_accepted


def test_faithful_sees_a_missing_edit(judge):
    """An image left unedited is not faithful to the edit's target caption."""
    edits = [world.sample_edit(seed, kind) for seed in SEEDS[:20] for kind in world.EDIT_KINDS]
    readings = faithful_batch(
        judge, [world.render(e.source) for e in edits], [e.target_caption for e in edits]
    )
    assert not [(e.kind, e.target_caption) for e, r in zip(edits, readings) if r.faithful]
