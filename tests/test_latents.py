"""retouch.latents: every image mode read correctly or refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retouch.errors import ImageError
from retouch.latents import load_image


def _gray(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 32)).astype(np.uint8)


def test_a_float_tiff_in_unit_range_reads_as_its_8_bit_image(tmp_path):
    g = _gray()
    path = tmp_path / "f.tif"
    Image.fromarray((g / 255).astype(np.float32), mode="F").save(path)
    got = np.asarray(load_image(path))[..., 0].astype(int)
    assert np.abs(got - g).max() <= 1


def test_a_float_tiff_with_nan_or_out_of_range_values_is_refused(tmp_path):
    arr = (_gray() / 255).astype(np.float32)
    arr[2, 2] = np.nan
    Image.fromarray(arr, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageError, match="NaN or infinite pixel values"):
        load_image(tmp_path / "nan.tif")
    Image.fromarray(np.full((24, 32), -3.0, np.float32), mode="F").save(tmp_path / "neg.tif")
    with pytest.raises(ImageError, match="outside"):
        load_image(tmp_path / "neg.tif")


def test_a_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="it is a folder"):
        load_image(tmp_path)


def test_a_refused_file_is_closed(tmp_path):
    """Refusing a truncated file leaves no open handle (pytest turns ResourceWarning into an error)."""
    buf = tmp_path / "t.png"
    Image.fromarray(_gray()).save(buf)
    buf.write_bytes(buf.read_bytes()[:60])
    with pytest.raises(ImageError, match="truncated or corrupt|not an image"):
        load_image(buf)


@pytest.mark.parametrize(
    "size, budget", [((300, 200), 16384), ((4096, 16), 4096), ((64, 64), 4096), ((1000, 999), 250_000)]
)
def test_an_image_over_the_budget_is_resized_to_fit_it_keeping_its_aspect(size, budget):
    from retouch.latents import MIN_SIDE, fit_budget

    img = Image.new("RGB", size, (200, 10, 10))
    out, note = fit_budget(img, budget)
    w, h = out.size
    if size[0] * size[1] <= budget:
        assert out is img and note == ""
        return
    assert w * h <= budget and min(w, h) >= MIN_SIDE
    assert (w + 1) * (h + 1) > budget  # as large as fits
    if min(w, h) > MIN_SIDE:  # the aspect kept, to a pixel (a thin strip keeps its short side instead)
        assert abs(w / h - size[0] / size[1]) <= (1 / h + 1 / w) * size[0] / size[1]
    assert (
        note
        == f"image is {size[0]}x{size[1]}, over this model's budget of {budget} pixels: edited at {w}x{h}"
    )
    with pytest.raises(
        ImageError, match=rf"^image is {size[0]}x{size[1]} \(\d+ pixels\), over this model's budget"
    ):
        fit_budget(img, budget, resize=False)


def test_the_budget_bounds_every_method_and_a_saved_inversion_matches_the_resized_image(tiny_eps):
    """Default budget: four times the native area. A 2x-native-side square image fits exactly; one
    pixel more a side and it is edited at the budget (message says so); refused when asked."""
    import dataclasses

    import retouch

    n = tiny_eps.native_size
    assert tiny_eps.pixel_budget == 4 * n * n
    fits = np.zeros((2 * n, 2 * n, 3), np.uint8)
    assert retouch.diffedit(tiny_eps, fits, "a red circle", num_inference_steps=4).image.size == (
        2 * n,
        2 * n,
    )
    over = np.zeros((2 * n + 8, 2 * n + 8, 3), np.uint8)
    result = retouch.diffedit(tiny_eps, over, "a red circle", num_inference_steps=4)
    assert result.image.size == (2 * n, 2 * n) and "edited at" in result.message
    inv = retouch.invert(tiny_eps, over, num_inference_steps=4, skip=0)
    assert (inv.width, inv.height) == (2 * n, 2 * n)
    edited = retouch.ledits(tiny_eps, inv, add=["red circle"], image=over, num_inference_steps=4, skip=0)
    assert edited.image.size == (2 * n, 2 * n) and "edited at" in edited.message
    strict = dataclasses.replace(tiny_eps, resize=False)
    with pytest.raises(ImageError, match="over this model's budget"):
        retouch.diffedit(strict, over, "a red circle", num_inference_steps=4)
    with pytest.raises(ImageError, match="over this model's budget"):
        retouch.invert(strict, over, num_inference_steps=4, skip=0)


@pytest.mark.parametrize("bad", [0, 63, -5, 1.5, "many", True])
def test_a_pixel_budget_must_be_a_whole_number_of_at_least_min_side_squared(bad):
    import retouch
    from retouch.errors import SettingError

    with pytest.raises(SettingError, match="^max_pixels must be a whole number"):
        retouch.load(max_pixels=bad)
