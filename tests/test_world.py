import numpy as np
import pytest

from retouch.shapes import world


def test_rendering_is_deterministic_per_seed():
    for seed in range(20):
        a, b = world.sample_scene(seed), world.sample_scene(seed)
        assert a == b
        assert np.array_equal(world.render(a), world.render(b))
    assert any(world.sample_scene(s) != world.sample_scene(s + 1) for s in range(5))


def test_scene_contents_use_the_published_words_and_do_not_overlap():
    for seed in range(200):
        s = world.sample_scene(seed)
        assert 1 <= len(s.objects) <= 3
        assert s.background in ("white", "black", "gray")
        for o in s.objects:
            assert o.shape in world.SHAPES and o.color in world.COLORS
        m = world.masks(s)
        assert m.sum(axis=0).max() <= 1, "objects overlap"


def test_render_is_anti_aliased_and_rgb():
    img = world.render(world.sample_scene(1))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    # edge pixels are blends: more distinct colours than objects + background
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > len(world.sample_scene(1).objects) + 1


def test_masks_agree_with_caption_and_pixels():
    for seed in range(100):
        s = world.sample_scene(seed)
        img, m = world.render(s), world.masks(s)
        cap = world.caption(s)
        assert cap.endswith(f"on a {s.background} background")
        assert cap.count(" a ") + cap.startswith("a ") == len(s.objects) + 1
        for o, mask in zip(s.objects, m):
            assert o.phrase in cap
            assert mask.sum() > 20
            median = np.median(img[mask].astype(float), axis=0)  # edge pixels are blends
            assert np.abs(median - world.COLORS[o.color]).max() < 2
        bg = ~m.any(axis=0)
        assert np.abs(np.median(img[bg].astype(float), axis=0) - world.BACKGROUNDS[s.background]).max() < 2


def test_caption_lists_objects_left_to_right():
    s = world.sample_scene(0, n_objects=3)
    cap = world.caption(s)
    positions = [cap.index(o.phrase) for o in s.objects]
    assert positions == sorted(positions)
    assert ", " in cap and " and " in cap


@pytest.mark.parametrize("kind", world.EDIT_KINDS)
def test_edits_give_ground_truth_target_and_region(kind):
    for seed in range(30):
        e = world.sample_edit(seed, kind)
        assert e == world.sample_edit(seed, kind)
        region = e.changed_region()
        src, tgt = world.render(e.source), world.render(e.target)
        assert region.any()
        assert np.array_equal(src[~region], tgt[~region])
        assert e.source_caption != e.target_caption
        assert e.add or e.remove
        if kind == "remove":
            assert len(e.target.objects) == len(e.source.objects) - 1
        if kind == "add":
            assert len(e.target.objects) == len(e.source.objects) + 1
        if kind == "background":
            assert region.mean() > 0.3


def test_unknown_edit_kind_is_refused():
    with pytest.raises(ValueError, match="unknown edit kind"):
        world.sample_edit(0, "explode")
