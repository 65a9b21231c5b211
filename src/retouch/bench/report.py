"""ShapesBench's outputs from its rows: the markdown summary, image grids and trade-off plots.

Everything here reads rows (dicts, one per case × method × sweep point, as in cases.jsonl) and
images saved beside them; nothing runs a model. Drawing uses PIL only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# (row key, column header, format); shown in this order
COLUMNS = [
    ("success", "success", "{:.0%}"),
    ("preserved", "preserved", "{:.0%}"),
    ("psnr_bg", "PSNR bg", "{:.2f}"),
    ("ssim_bg", "SSIM bg", "{:.4f}"),
    ("psnr_target", "PSNR tgt", "{:.2f}"),
    ("mask_iou", "mask IoU", "{:.3f}"),
    ("unet_evals", "UNet evals", "{:.0f}"),
    ("seconds", "s / edit", "{:.3f}"),
    ("unet_evals_second", "evals 2nd", "{:.0f}"),
    ("seconds_second", "s 2nd", "{:.3f}"),
]
PSNR_CAP = 99.0  # identical pixels count as 99 dB in means (bench.model.psnr caps them at ~168)


def _values(rows: list[dict], key: str) -> list[float]:
    """The rows' values of key, None left out, PSNRs capped at PSNR_CAP."""
    vals = [float(r[key]) for r in rows if r.get(key) is not None]
    return [min(v, PSNR_CAP) for v in vals] if key.startswith("psnr") else vals


def _mean(rows: list[dict], key: str) -> float | None:
    vals = _values(rows, key)
    return float(np.mean(vals)) if vals else None


def _fmt(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def default_rows(rows: list[dict]) -> list[dict]:
    """The rows at the default settings (not sweep points)."""
    return [r for r in rows if not r.get("sweep")]


def _order(rows: list[dict], key: str, first: Sequence[str] = ()) -> list[str]:
    seen = list(dict.fromkeys([*first, *(r[key] for r in rows)]))
    return [v for v in seen if any(r[key] == v for r in rows)]


def summary_markdown(
    rows: list[dict],
    run: dict,
    methods: Sequence[str] = (),
    kinds: Sequence[str] = (),
    pairs: dict[str, str] | None = None,
) -> str:
    """The summary: per method over all kinds and per kind, success and background PSNR by kind,
    95 % intervals over all kinds, and each {retouch method: diffusers counterpart} of `pairs`
    paired by case."""
    rows = default_rows(rows)
    methods = _order(rows, "method", methods)
    kinds = _order(rows, "kind", kinds)
    lines = ["# ShapesBench", ""]
    lines += [
        f"- model: `{run.get('model')}` (fingerprint {run.get('fingerprint')})",
        f"- judge: {run.get('judge') or 'none (judge metrics left out)'}",
        f"- settings: {run.get('settings_line', '')}",
        f"- {len({r['case'] for r in rows})} cases, {len(rows)} rows at the default settings; PSNR/SSIM bg: "
        "to the input outside "
        "the changed region; PSNR tgt: to the ground truth inside it; mask IoU at pixel resolution; "
        "s / edit and evals: a first edit (inversion included), 2nd: a second edit reusing it.",
        "",
    ]
    header = "| method | kind | n | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    rule = "|" + "---|" * (3 + len(COLUMNS))
    lines += ["## Per method and kind", "", header, rule]
    for m in methods:
        for kind in ["all", *kinds]:
            sel = [r for r in rows if r["method"] == m and (kind == "all" or r["kind"] == kind)]
            if not sel:
                continue
            cells = [_fmt(_mean(sel, k), f) for k, _, f in COLUMNS]
            name = f"**{m}**" if kind == "all" else ""
            lines.append(f"| {name} | {kind} | {len(sel)} | " + " | ".join(cells) + " |")
    for key, title, fmt in [
        ("success", "Edit success by kind", "{:.0%}"),
        ("psnr_bg", "Background PSNR (dB) by kind", "{:.2f}"),
    ]:
        lines += [
            "",
            f"## {title}",
            "",
            "| method | " + " | ".join([*kinds, "all"]) + " |",
            "|" + "---|" * (2 + len(kinds)),
        ]
        for m in methods:
            mine = [r for r in rows if r["method"] == m]
            cells = [_fmt(_mean([r for r in mine if r["kind"] == k], key), fmt) for k in kinds]
            lines.append(f"| {m} | " + " | ".join([*cells, _fmt(_mean(mine, key), fmt)]) + " |")
    lines += _intervals(rows, methods)
    lines += _paired(rows, pairs or {})
    return "\n".join(lines) + "\n"


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_ci(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """(mean, half-width of its normal 95 % interval)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(z * v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan


def _intervals(rows: list[dict], methods: Sequence[str]) -> list[str]:
    """Per method over all kinds, with 95 % intervals: Wilson for rates, normal for means."""
    lines = [
        "",
        "## All kinds, with 95 % intervals",
        "",
        "| method | n | success | preserved | PSNR bg | PSNR tgt | mask IoU |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        cells = []
        for key in ("success", "preserved"):
            got = [bool(r[key]) for r in mine if r.get(key) is not None]
            lo, hi = wilson(sum(got), len(got))
            cells.append(f"{sum(got) / len(got):.0%} [{lo:.0%}, {hi:.0%}]" if got else "–")
        for key, fmt in (
            ("psnr_bg", "{:.2f} ± {:.2f}"),
            ("psnr_target", "{:.2f} ± {:.2f}"),
            ("mask_iou", "{:.3f} ± {:.3f}"),
        ):
            vals = _values(mine, key)
            cells.append(fmt.format(*mean_ci(vals)) if len(vals) > 1 else "–")
        lines.append(f"| {m} | {len(mine)} | " + " | ".join(cells) + " |")
    return lines


def _paired(rows: list[dict], pairs: dict[str, str]) -> list[str]:
    """retouch against its diffusers counterpart on the cases both ran: success counts (and the
    cases only one of them got right), background PSNR difference, time per edit ratio."""
    out = []
    for ours, theirs in pairs.items():
        a = {r["case"]: r for r in rows if r["method"] == ours}
        b = {r["case"]: r for r in rows if r["method"] == theirs}
        both = sorted(set(a) & set(b))
        if not both:
            continue
        if not out:
            out = [
                "",
                "## retouch against diffusers, paired by case",
                "",
                "| retouch | diffusers | cases | success r / d | only r / only d | PSNR bg r − d | "
                "s / edit d ÷ r | s 2nd d ÷ r |",
                "|---|---|---|---|---|---|---|---|",
            ]
        judged = [c for c in both if a[c].get("success") is not None and b[c].get("success") is not None]
        sa, sb = sum(bool(a[c]["success"]) for c in judged), sum(bool(b[c]["success"]) for c in judged)
        only_a = sum(bool(a[c]["success"]) and not b[c]["success"] for c in judged)
        only_b = sum(bool(b[c]["success"]) and not a[c]["success"] for c in judged)
        diff = [min(a[c]["psnr_bg"], PSNR_CAP) - min(b[c]["psnr_bg"], PSNR_CAP) for c in both]
        d, h = mean_ci(diff)

        success = f"{sa} / {sb}" if judged else "–"
        only = f"{only_a} / {only_b}" if judged else "–"
        out.append(
            f"| {ours} | {theirs} | {len(both)} | {success} | {only} | {d:+.2f} ± {h:.2f} | "
            f"{_ratio(a, b, both, 'seconds')} | {_ratio(a, b, both, 'seconds_second')} |"
        )
    return out


def _ratio(a: dict, b: dict, cases: list, key: str) -> str:
    """mean of b's key ÷ mean of a's, over the cases."""
    ta, tb = _values([a[c] for c in cases], key), _values([b[c] for c in cases], key)
    return f"{np.mean(tb) / np.mean(ta):.2f}" if ta and tb else "–"


# --- drawing helpers --------------------------------------------------------------------------------


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _tint(image: np.ndarray, mask: np.ndarray, color=(255, 0, 80), opacity: float = 0.55) -> Image.Image:
    """The image with `mask` (bool (H, W)) tinted."""
    img = image.astype(np.float32)
    a = mask[..., None].astype(np.float32) * opacity
    return Image.fromarray((img * (1 - a) + np.asarray(color, np.float32) * a).round().astype(np.uint8))


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text.replace("_", " "), width) or [""]


def grid(cases: list, methods: Sequence[str], images_dir: Path, path: Path, cell: int = 96) -> None:
    """A PNG: per case, a row of images (source | ground truth | each method) and below it a row
    of masks (the ground-truth region, each method's mask tinted on the input; blank without)."""
    font, pad, head, label = _font(11), 4, 34, 26
    cols = 2 + len(methods)
    w = cols * (cell + pad) + pad
    h = head + len(cases) * (2 * cell + label + 2 * pad)
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(["source", "ground truth", *methods]):
        x = pad + j * (cell + pad)
        draw.multiline_text((x, 2), "\n".join(_wrap(name, cell // 6)[:2]), fill="black", font=font, spacing=1)
    for i, case in enumerate(cases):
        y = head + i * (2 * cell + label + 2 * pad)
        edit = " ".join([*(f"+{c}" for c in case.add), *(f"-{c}" for c in case.remove)])
        draw.text((pad, y), f"{case.id}: {edit}", fill="black", font=font)
        draw.text((pad, y + 12), f"{case.source_caption} -> {case.target_caption}", fill="gray", font=font)
        y += label
        tiles = [
            (Image.fromarray(case.source_image), None),
            (Image.fromarray(case.target_image), _tint(case.source_image, case.region)),
        ]
        for m in methods:
            out = images_dir / case.id / f"{m}.png"
            mask = images_dir / case.id / f"{m}.mask.png"
            img = Image.open(out).convert("RGB") if out.is_file() else None
            tint = _tint(case.source_image, np.asarray(Image.open(mask)) > 127) if mask.is_file() else None
            tiles.append((img, tint))
        for j, (img, tint) in enumerate(tiles):
            x = pad + j * (cell + pad)
            for k, tile in enumerate((img, tint)):
                if tile is not None:
                    canvas.paste(tile.resize((cell, cell), Image.NEAREST), (x, y + k * (cell + pad)))
                else:
                    draw.rectangle(
                        [x, y + k * (cell + pad), x + cell - 1, y + k * (cell + pad) + cell - 1],
                        outline=(220, 220, 220),
                    )
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# --- trade-off plots --------------------------------------------------------------------------------

PALETTE = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
]


def tradeoff_points(
    rows: list[dict], family_methods: Sequence[str], sweep_name: str, default: float, y_key: str
) -> dict[str, list[tuple[float, float, float]]]:
    """{method: [(sweep value, mean background PSNR, mean y), ...]} sorted by sweep value; the
    rows at the default settings are the point at `default`. Only the cases a method was swept on
    count, so that a sweep over fewer cases than the default rows compares like with like."""
    out = {}
    for m in family_methods:
        swept = {r["case"] for r in rows if r["method"] == m and r.get("sweep")}  # every point: same cases
        by_value: dict[float, list[dict]] = {}
        for r in rows:
            if r["method"] != m or r["case"] not in swept:
                continue
            value = (r.get("sweep") or {}).get(sweep_name, default if not r.get("sweep") else None)
            if value is not None:
                by_value.setdefault(float(value), []).append(r)
        pts = [(v, _mean(rs, "psnr_bg"), _mean(rs, y_key)) for v, rs in sorted(by_value.items())]
        pts = [p for p in pts if p[1] is not None and p[2] is not None]
        if len(pts) >= 2:
            out[m] = pts
    return out


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / n)) if span > 0 else 1.0
    for mult in (1, 2, 2.5, 5, 10):
        if span / (step * mult) <= n:
            step *= mult
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def tradeoff_plot(
    series: dict[str, list[tuple[float, float, float]]],
    path: Path,
    title: str,
    sweep_label: str,
    y_label: str,
    size=(640, 440),
) -> None:
    """Edit success (y) against background PSNR (x), one polyline per method through its sweep
    points, each point labelled with its sweep value (as the DiffEdit paper's Fig. 4)."""
    font = _font(11)
    w, h = size
    left, right, top, bottom = 60, 170, 30, 45
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    xs = [p[1] for pts in series.values() for p in pts]
    ys = [p[2] for pts in series.values() for p in pts]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = (0.0, 1.0) if y_label.startswith("edit success") else (min(ys), max(ys))
    if x_hi - x_lo < 1e-6:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi - y_lo < 1e-6:
        y_lo, y_hi = y_lo - 1, y_hi + 1
    x_lo, x_hi = x_lo - 0.05 * (x_hi - x_lo), x_hi + 0.05 * (x_hi - x_lo)
    y_lo, y_hi = y_lo - 0.05 * (y_hi - y_lo), y_hi + 0.05 * (y_hi - y_lo)

    def to_px(x, y):
        return (
            left + (x - x_lo) / (x_hi - x_lo) * (w - left - right),
            h - bottom - (y - y_lo) / (y_hi - y_lo) * (h - top - bottom),
        )

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for t in _ticks(x_lo, x_hi):
        px, _ = to_px(t, y_lo)
        draw.line([px, h - bottom, px, h - bottom + 4], fill="black")
        draw.text((px - 10, h - bottom + 6), f"{t:g}", fill="black", font=font)
    for t in _ticks(y_lo, y_hi):
        _, py = to_px(x_lo, t)
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((6, py - 6), f"{t:.2g}", fill="black", font=font)
    draw.text(
        (left + 4, h - 18),
        "background PSNR (dB) to the input, outside the changed region",
        fill="black",
        font=font,
    )
    draw.text((left, 8), f"{title}   (y: {y_label}; labels: {sweep_label})", fill="black", font=font)
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = [to_px(x, y) for _, x, y in pts]
        draw.line(coords, fill=color, width=2)
        for (v, _, _), (px, py) in zip(pts, coords):
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
            draw.text((px + 4, py - 12), f"{v:g}", fill=color, font=font)
        ly = top + 14 * i
        draw.line([w - right + 10, ly + 6, w - right + 28, ly + 6], fill=color, width=3)
        draw.text((w - right + 32, ly), name, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
