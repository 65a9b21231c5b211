"""ShapesBench's outputs from its rows: the markdown summary, image grids and trade-off plots.

Everything here reads rows (dicts, one per case × method × sweep point, as in cases.jsonl) and
images saved beside them; nothing runs a model. Grids are PIL mosaics; plots are matplotlib.
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
PSNR_CAP = 99.0  # identical pixels count as 99 dB in means (retouch.metrics.psnr caps them at ~168)


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
    lines += _failures(rows, methods, kinds)
    lines += _additions(rows, methods)
    lines += _masked_others(rows, methods, kinds)
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


def _failures(rows: list[dict], methods: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """Per method and kind, the share of edits that failed each way (metrics.FAILURES), of the rows
    that record why (a judged run; rows written before the field existed are left out)."""
    from retouch.bench.metrics import FAILURES

    judged = [r for r in rows if "failure" in r and r.get("success") is not None]
    if not judged:
        return []
    lines = [
        "",
        "## Why edits failed (share of the edits of each kind)",
        "",
        "; ".join(f"{k}: {v}" for k, v in FAILURES.items()) + ".",
        "",
        "| method | kind | n | failed | " + " | ".join(FAILURES) + " |",
        "|" + "---|" * (4 + len(FAILURES)),
    ]
    for m in methods:
        for kind in kinds:
            sel = [r for r in judged if r["method"] == m and r["kind"] == kind]
            if not sel:
                continue
            shares = [sum(r["failure"] == f for r in sel) / len(sel) for f in FAILURES]
            failed = sum(not r["success"] for r in sel) / len(sel)
            cells = [f"{x:.0%}" for x in (failed, *shares)]
            lines.append(f"| {m} | {kind} | {len(sel)} | " + " | ".join(cells) + " |")
    return lines


def _additions(rows: list[dict], methods: Sequence[str]) -> list[str]:
    """Per method, the additions that drew the new object where the ground truth did (success)
    and anywhere (added_anywhere), each also with every untouched object kept; of the rows that
    record it (a judged run; rows written before the field existed are left out)."""
    judged = [r for r in rows if r["kind"] == "add" and r.get("added_anywhere") is not None]
    if not judged:
        return []
    lines = [
        "",
        "## Additions, the new object where the ground truth drew it and anywhere",
        "",
        "The caption names no place: an addition drawn elsewhere does what it says.",
        "",
        "| method | n | at its place | anywhere | anywhere, the rest kept |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        sel = [r for r in judged if r["method"] == m]
        if sel:
            kept = [r["added_anywhere"] and r["preserved"] is not False for r in sel]
            shares = [_fmt(_mean(sel, "success"), "{:.0%}"), _fmt(_mean(sel, "added_anywhere"), "{:.0%}")]
            lines.append(f"| {m} | {len(sel)} | " + " | ".join([*shares, f"{np.mean(kept):.0%}"]) + " |")
    return lines


def _masked_others(rows: list[dict], methods: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """Per method and kind with a mask, how often the mask holds an object the edit keeps
    (mask_others > 0), and the success with and without one; of the judged rows that record it."""
    judged = [r for r in rows if r.get("mask_others") is not None and r.get("success") is not None]
    if not judged:
        return []
    lines = [
        "",
        "## Masks over the objects the edit keeps",
        "",
        "An object the edit keeps at least half inside the mask may be redrawn with the edit.",
        "",
        "| method | kind | n | masks holding one | success, holding one | success, holding none |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        for kind in kinds:
            sel = [r for r in judged if r["method"] == m and r["kind"] == kind]
            if not sel:
                continue
            held = [r for r in sel if r["mask_others"] > 0]
            free = [r for r in sel if r["mask_others"] == 0]
            cells = [
                f"{len(held) / len(sel):.0%}",
                _fmt(_mean(held, "success"), "{:.0%}"),
                _fmt(_mean(free, "success"), "{:.0%}"),
            ]
            lines.append(f"| {m} | {kind} | {len(sel)} | " + " | ".join(cells) + " |")
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


def _tint(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The image with `mask` (bool (H, W)) tinted, as retouch shows every mask (Mask.overlay)."""
    import torch

    from retouch.types import Mask

    m = torch.from_numpy(np.asarray(mask, np.float32))
    return Mask(m, m).overlay(Image.fromarray(image))


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


def tradeoff_plot(
    series: dict[str, list[tuple[float, float, float]]],
    path: Path,
    title: str,
    sweep_label: str,
    y_label: str,
) -> None:
    """Edit success (y) against background PSNR (x), one line per method through its sweep
    points, each point labelled with its sweep value (as the DiffEdit paper's Fig. 4). Drawn with
    matplotlib (the `bench` extra)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=100)
    try:
        for name, pts in series.items():
            xs, ys = [p[1] for p in pts], [p[2] for p in pts]
            (line,) = ax.plot(xs, ys, marker="o", label=name)
            for v, x, y in pts:
                ax.annotate(
                    f"{v:g}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                    color=line.get_color(),
                )
        if y_label.startswith("edit success"):
            ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("background PSNR (dB) to the input, outside the changed region")
        ax.set_ylabel(y_label)
        ax.set_title(f"{title} (labels: {sweep_label})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
