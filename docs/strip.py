"""Images side by side, upscaled (nearest), a label under each: `python docs/strip.py OUT LABEL=PATH...`."""

import sys

from PIL import Image, ImageDraw


def strip(out: str, items: list[tuple[str, str]], scale: int = 3) -> None:
    imgs = [Image.open(p).convert("RGB") for _, p in items]
    w, h = imgs[0].width * scale, imgs[0].height * scale
    canvas = Image.new("RGB", (len(imgs) * (w + 8), h + 22), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((label, _), img) in enumerate(zip(items, imgs)):
        canvas.paste(img.resize((w, h), Image.NEAREST), (i * (w + 8), 0))
        draw.text((i * (w + 8) + 2, h + 5), label, fill="black")
    canvas.save(out)


if __name__ == "__main__":
    strip(sys.argv[1], [tuple(a.split("=", 1)) for a in sys.argv[2:]])
