"""Why the failed edits of a ShapesBench run failed, for runs written before rows recorded it.

    python benchmarks/why_failed.py runs/bench500-v11                     # every method
    python benchmarks/why_failed.py runs/bench500-v11 --methods diffedit,sdedit

Reads the run's cases.jsonl, gives each judged row that has no `failure` the one ShapesBench now
records (retouch.bench.metrics.why_failed, from what the judge read there, the case's
`read_before` and `others`; no model and no judge run), and prints the summary's "Why edits failed"
section: per method and kind, the share of edits left unchanged, drawn as a copy of another object
of the scene, with nothing drawn, or otherwise wrong.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retouch.bench.cases import make_case
from retouch.bench.metrics import why_failed
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a `retouch bench edits --out` folder")
    parser.add_argument("--methods", help="comma list [default: every method of the run]")
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.run / "cases.jsonl").read_text().splitlines() if line]
    methods = args.methods.split(",") if args.methods else ()
    rows = [r for r in with_failures(rows) if not methods or r["method"] in methods]
    text = summary_markdown(rows, {}, methods, EDIT_KINDS)
    print(text[text.index("## Why edits failed") :].split("\n## ")[0].rstrip())


if __name__ == "__main__":
    main()
