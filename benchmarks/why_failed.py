"""Why the failed edits of a ShapesBench run failed, for runs written before rows recorded it.

    python benchmarks/why_failed.py runs/bench500-v11                     # every method
    python benchmarks/why_failed.py runs/bench500-v11 --methods diffedit,sdedit
    python benchmarks/why_failed.py runs/bench500-v11 --additions        # and where additions were drawn
    python benchmarks/why_failed.py runs/bench500-v11 --masks            # and the masks over kept objects

Reads the run's cases.jsonl, gives each judged row that has no `failure` the one ShapesBench now
records (retouch.bench.metrics.why_failed, from what the judge read there, the case's
`read_before` and `others`; no model and no judge run), and prints the summary's "Why edits failed"
section: per method and kind, the share of edits left unchanged, drawn as a copy of another object
of the scene, with nothing drawn, or otherwise wrong. With --additions, each addition's row that
has no `added_anywhere` gets it from its saved image (the run's images/, read by the shipped judge:
retouch.bench.metrics.judge_case), and the summary's additions section is printed too. With
--masks, each row of a method with a mask that has no `mask_others` gets it from its saved mask
(retouch.bench.metrics.masked_others), and the summary's section on masks over the objects the
edit keeps is printed too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from retouch.bench.cases import make_case
from retouch.bench.metrics import judge_case, masked_others, why_failed
from retouch.bench.report import summary_markdown
from retouch.shapes.world import EDIT_KINDS


def with_failures(rows: list[dict]) -> list[dict]:
    """The rows, each judged one with its `failure` (computed where it is missing)."""
    cases, out = {}, []
    for r in rows:
        if r.get("success") is not None and "failure" not in r:
            case = cases.get(r["case"]) or cases.setdefault(r["case"], make_case(r["seed"], r["kind"]))
            read = r["read"] if r["kind"] == "background" else tuple(r["read"])
            r = {**r, "failure": None if r["success"] else why_failed(read, case.read_before, case.others)}
        out.append(r)
    return out


def with_added_anywhere(rows: list[dict], run: Path, judge) -> list[dict]:
    """The rows, each judged addition with its `added_anywhere` (judged again from its saved
    image where it is missing; rows without a saved image are left as they are)."""
    from retouch.shapes.judge import at_judge_size

    out = []
    for r in rows:
        path = run / "images" / r["case"] / f"{r['method']}.png"
        if (
            r["kind"] == "add"
            and r.get("success") is not None
            and "added_anywhere" not in r
            and path.exists()
        ):
            with Image.open(path) as im:
                image = at_judge_size(np.asarray(im.convert("RGB")))
            r = {
                **r,
                "added_anywhere": judge_case(judge, image, make_case(r["seed"], "add"))["added_anywhere"],
            }
        out.append(r)
    return out


def with_masked_others(rows: list[dict], run: Path) -> list[dict]:
    """The rows, each with a saved mask given its `mask_others` where it is missing (the mask was
    saved at the judge's size, as the bench reads it; rows without one are left as they are)."""
    out = []
    for r in rows:
        path = run / "images" / r["case"] / f"{r['method']}.mask.png"
        if "mask_others" not in r and path.exists():
            with Image.open(path) as im:
                mask = np.asarray(im.convert("L")) > 127
            r = {**r, "mask_others": masked_others(mask, make_case(r["seed"], r["kind"]))}
        out.append(r)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a `retouch bench edits --out` folder")
    parser.add_argument("--methods", help="comma list [default: every method of the run]")
    parser.add_argument("--additions", action="store_true", help="judge where additions were drawn too")
    parser.add_argument("--masks", action="store_true", help="count the kept objects inside the masks too")
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.run / "cases.jsonl").read_text().splitlines() if line]
    methods = args.methods.split(",") if args.methods else ()
    rows = [r for r in with_failures(rows) if not methods or r["method"] in methods]
    sections = ["## Why edits failed"]
    if args.additions:
        from retouch.shapes.judge import load_judge

        rows = with_added_anywhere(rows, args.run, load_judge())
        sections.append("## Additions")
    if args.masks:
        rows = with_masked_others(rows, args.run)
        sections.append("## Masks over")
    text = summary_markdown(rows, {}, methods, EDIT_KINDS)
    for title in sections:
        print(text[text.index(title) :].split("\n## ")[0].rstrip() + "\n")


if __name__ == "__main__":
    main()
