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
