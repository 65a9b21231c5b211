"""A corpus of bad (and awkward but valid) inputs for `retouch edit`, built into a folder.

    python tests/fuzz.py OUT_DIR      # write the files and list the cases

Each case says what the CLI must do with it: "error" (exit code 2 and one line on stderr) or
"edit" (exit code 0 and a correct edit, of the size given). tests/test_cli.py runs them all.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CAPTION = "a purple circle on a white background"  # scene()'s caption
QUERY = "a red circle on a white background"  # the edit the tests ask for
LONG_PROMPT = " ".join(["a red circle on a white background"] * 20)  # ~140 tokens > 77


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    args: tuple[str, ...] = ("--query", QUERY)  # the edit's arguments besides METHOD, IMAGE and -o
    expect: str = "error"  # "error": exit 2 and one line; "edit": exit 0 and a correct edit
    size: tuple[int, int] | None = None  # (width, height) of a correct edit's output
    method: str = "diffedit"


def scene(width: int = 64, height: int = 64) -> np.ndarray:
    """A held-out ShapesWorld render (see CAPTION), cropped to width x height: (height, width, 3)."""
    from retouch.shapes.world import render

    return render(held_out_scene())[:height, :width]


def held_out_scene():
    from retouch.shapes.world import HELD_OUT_SEED, sample_scene

    return sample_scene(HELD_OUT_SEED + 2, n_objects=1)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_header_png(width: int = 20000, height: int = 20000) -> bytes:
    """A small PNG whose header claims width x height RGB pixels (one row of data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x80" * (3 * min(width, 64)))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def exif_rotated_jpeg(arr: np.ndarray) -> bytes:
    """A JPEG whose EXIF orientation (6: rotate 90° clockwise to display) turns it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())


def build_corpus(folder) -> list[Case]:
    """Write every input into `folder` and return the cases."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = scene()
    rgb = Image.fromarray(arr)
    png, jpeg = _encoded(rgb, "PNG"), _encoded(rgb, "JPEG", quality=95)
    gray16 = (arr.astype(np.float64) @ [0.299, 0.587, 0.114] * 257).round().astype(np.uint16)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    background = palette.getpixel((0, 0))  # the background's palette index: made transparent
    gray_unit = (arr.astype(np.float64) @ [0.299, 0.587, 0.114] / 255).astype(np.float32)  # in [0, 1]
    gray_nan = gray_unit.copy()
    gray_nan[3, 3] = np.nan
    files = {
        "float_unit.tif": _encoded(Image.fromarray(gray_unit, mode="F"), "TIFF"),
        "float_nan.tif": _encoded(Image.fromarray(gray_nan, mode="F"), "TIFF"),
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "empty.png": b"",
        "text.png": b"this is not an image, only a text file named .png\n",
        "one_pixel.png": _encoded(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"),
        "huge_header.png": huge_header_png(),
        "cmyk.jpg": _encoded(rgb.convert("CMYK"), "JPEG", quality=95),
        "gray16.png": _encoded(Image.fromarray(gray16), "PNG"),
        "palette_transparent.png": _encoded(palette, "PNG", transparency=background),
        "exif_rotated.jpg": exif_rotated_jpeg(scene(64, 48)),
        "good.png": png,
        "large.png": _encoded(rgb.resize((256, 256), Image.NEAREST), "PNG"),  # 4x the pixels of 64x64
    }
    frames = [rgb, Image.fromarray(255 - arr)]
    files["animated.gif"] = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=90)
    files["animated.webp"] = _encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=90)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    f = {name: folder / name for name in files}
    (folder / "a_folder.png").mkdir(exist_ok=True)
    fifo = folder / "fifo.safetensors"
    if hasattr(os, "mkfifo") and not fifo.exists():
        os.mkfifo(fifo)
    ledits = ("--add", "red circle", "--remove", "purple circle")
    return [
        Case("truncated PNG", f["truncated.png"]),
        Case("truncated JPEG", f["truncated.jpg"]),
        Case("zero-byte file", f["empty.png"]),
        Case("text file named .png", f["text.png"]),
        Case("1x1 image", f["one_pixel.png"]),
        Case("PNG header claiming 20000x20000", f["huge_header.png"]),
        Case("CMYK JPEG", f["cmyk.jpg"], expect="edit", size=(64, 64)),
        Case("16-bit grayscale PNG", f["gray16.png"], expect="edit", size=(64, 64)),
        Case("palette PNG with transparent pixels", f["palette_transparent.png"]),
        Case("EXIF-rotated JPEG photo", f["exif_rotated.jpg"], expect="edit", size=(48, 64)),
        Case("over-long prompt", f["good.png"], ("--query", LONG_PROMPT)),
        Case("NaN guidance scale", f["good.png"], ("--query", QUERY, "--guidance-scale", "nan")),
        Case("NaN step count", f["good.png"], ("--query", QUERY, "--num-inference-steps", "nan")),
        Case("negative step count", f["good.png"], ("--query", QUERY, "--num-inference-steps", "-5")),
        Case("negative mask threshold", f["good.png"], ("--query", QUERY, "--mask-threshold", "-0.5")),
        Case("infinite encode ratio", f["good.png"], ("--query", QUERY, "--encode-ratio", "inf")),
        Case("negative seed", f["good.png"], ("--query", QUERY, "--seed", "-1")),
        Case("NaN concept scale", f["good.png"], (*ledits, "--edit-scale", "nan"), method="ledits"),
        Case("negative concept scale", f["good.png"], (*ledits, "--edit-scale", "-3"), method="ledits"),
        Case("negative skip", f["good.png"], (*ledits, "--skip", "-1"), method="ledits"),
        Case("empty concept", f["good.png"], ("--add", " "), method="ledits"),
        Case("empty query", f["good.png"], ("--query", "")),
        Case("float TIFF in [0, 1]", f["float_unit.tif"], expect="edit", size=(64, 64)),
        Case("float TIFF with NaN", f["float_nan.tif"]),
        Case("a folder as the image", folder / "a_folder.png"),
        Case("guidance scale 1e308", f["good.png"], ("--query", QUERY, "--guidance-scale", "1e308")),
        Case("concept scale 1e308", f["good.png"], (*ledits, "--edit-scale", "1e308"), method="ledits"),
        Case(
            "target scale 1e308",
            f["good.png"],
            ("--prompt", QUERY, "--target-guidance-scale", "1e308"),
            method="ledits",
        ),
        Case("seed past 2^64", f["good.png"], ("--query", QUERY, "--seed", str(2**64))),
        Case("device meta", f["good.png"], ("--query", QUERY, "--device", "meta")),
        Case(
            "image over the pixel budget",
            f["large.png"],
            ("--query", QUERY, "--max-pixels", "4096"),
            expect="edit",
            size=(64, 64),
        ),
        Case(
            "image over the pixel budget, --no-resize",
            f["large.png"],
            ("--query", QUERY, "--max-pixels", "4096", "--no-resize"),
        ),
        Case("NaN pixel budget", f["good.png"], ("--query", QUERY, "--max-pixels", "nan")),
        Case("animated GIF", f["animated.gif"]),
        Case("animated WebP", f["animated.webp"]),
        Case(
            "1000 steps, skip 0",
            f["good.png"],
            (*ledits, "--num-inference-steps", "1000", "--skip", "0"),
            method="ledits",
        ),
        Case(
            "65 concepts",
            f["good.png"],
            tuple(a for i in range(65) for a in ("--add", f"circle {i}")),
            method="ledits",
        ),
        *(
            [
                Case(
                    "a FIFO as the inversion",
                    f["good.png"],
                    (*ledits, "--inversion", str(fifo)),
                    method="ledits",
                )
            ]
            if fifo.exists()
            else []
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/fuzz.py OUT_DIR")
    for case in build_corpus(sys.argv[1]):
        print(f"{case.expect:5}  {case.name:38} {case.image.name} {' '.join(case.args)[:60]}")
