"""Does a larger edit scale move the image further? LEDITS' claim (SEGA's monotonicity, kept inside
LEDITS), measured on ShapesBench cases for LEDITS (concepts, target prompt, both) and LEDITS++.

    python benchmarks/monotonicity.py --cases 20 --out runs/monotonicity --plot docs/bench/monotonicity.png

Each method edits each case at its default scales times each factor (LEDITS: edit_scale 7 and
target_guidance_scale 15, at the named fast setting N = 20; LEDITS++: the "ledits++" preset, edit
scale 10), from one inversion per case and method family (no caption), all factors of a method as
one batch. Edit strength, per edit, at the judge's 64 pixels:

- towards = 1 − ‖out − target‖ / ‖source − target‖ inside the ground-truth changed region
  (0: unchanged, 1: the ground truth there);
- rest = the RMS change outside it (0 to 1 of the pixel range).

A case is monotone for a method when `towards` never falls by more than 0.01 from one factor to the
next larger one. Prints per method the mean towards and rest per factor and the share of monotone
cases (with its 95 % interval); writes rows.jsonl to --out and the plot to --plot.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from retouch.bench.cases import make_cases
from retouch.bench.report import wilson
from retouch.shapes.judge import at_judge_size

TOLERANCE = 0.01
METHODS = ("ledits_concepts", "ledits_prompt", "ledits_both", "ledits++")


def strength(image: np.ndarray, case) -> tuple[float, float]:
    """(towards, rest) of one edited image (uint8, any size) against the case's ground truth."""
    out = at_judge_size(image).astype(np.float64)
    src, tgt = case.source_image.astype(np.float64), case.target_image.astype(np.float64)
    r = case.region
    gap = np.linalg.norm((src - tgt)[r])
    towards = 1.0 - np.linalg.norm((out - tgt)[r]) / max(gap, 1e-9)
    rest = float(np.sqrt(np.mean(((out - src)[~r] / 255.0) ** 2))) if (~r).any() else 0.0
    return float(towards), rest


def edits_of(method: str, case, factors: list[float]) -> list[dict]:
    """One edit per factor: the method's texts and its scales times the factor."""
    concepts = dict(add=list(case.add), remove=list(case.remove))
    out = []
    for f in factors:
        if method == "ledits_concepts":
            out.append(dict(**concepts, edit_scale=7.0 * f))
        elif method == "ledits_prompt":
            out.append(dict(prompt=case.target_caption, target_guidance_scale=15.0 * f))
        elif method == "ledits_both":
            out.append(
                dict(
                    **concepts, prompt=case.target_caption, edit_scale=7.0 * f, target_guidance_scale=15.0 * f
                )
            )
        else:
            out.append(dict(**concepts, edit_scale=10.0 * f))
    return out


def run(model, cases, factors: list[float], out_dir: Path) -> list[dict]:
    from retouch.methods.ledits import FAST, PRESETS, LEditsConfig, invert, ledits_many
    from retouch.settings import configured

    configs = {
        "ledits": configured(LEditsConfig(), PRESETS, None, FAST),
        "ledits++": configured(LEditsConfig(), PRESETS, "ledits++", {}),
    }
    rows, path = [], out_dir / "rows.jsonl"
    done = (
        {(r["case"], r["method"]) for r in map(json.loads, path.read_text().splitlines())}
        if path.exists()
        else set()
    )
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    for case in cases:
        if all((case.id, m) in done for m in METHODS):
            continue
        invs = {k: invert(model, case.input_image, "", config=c, seed=case.seed) for k, c in configs.items()}
        for method in METHODS:
            if (case.id, method) in done:
                continue
            family = "ledits++" if method == "ledits++" else "ledits"
            t0 = time.perf_counter()
            results = ledits_many(
                model, invs[family], edits_of(method, case, factors), config=configs[family]
            )
            for f, r in zip(factors, results):
                towards, rest = strength(np.asarray(r.image), case)
                row = dict(case=case.id, kind=case.kind, method=method, factor=f, towards=towards, rest=rest)
                rows.append(row)
                with path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            print(f"{case.id} {method}: {time.perf_counter() - t0:.1f} s", flush=True)
    return rows


def summarise(rows: list[dict], factors: list[float]) -> dict:
    """Per method: mean towards and rest per factor, and the monotone cases."""
    out = {}
    for method in METHODS:
        by_case: dict[str, dict[float, dict]] = {}
        for r in rows:
            if r["method"] == method:
                by_case.setdefault(r["case"], {})[r["factor"]] = r
        full = [c for c in by_case.values() if all(f in c for f in factors)]
        if not full:
            continue
        towards = np.array([[c[f]["towards"] for f in factors] for c in full])  # [cases, factors]
        rest = np.array([[c[f]["rest"] for f in factors] for c in full])
        monotone = int(np.all(np.diff(towards, axis=1) >= -TOLERANCE, axis=1).sum())
        lo, hi = wilson(monotone, len(full))
        out[method] = dict(
            cases=len(full),
            towards=towards.mean(0).tolist(),
            towards_sem=(towards.std(0, ddof=1) / np.sqrt(len(full))).tolist()
            if len(full) > 1
            else [0.0] * len(factors),
            rest=rest.mean(0).tolist(),
            monotone=monotone,
            monotone_ci=(lo, hi),
            first_drop=_first_drop(towards, factors),
        )
    return out


def _first_drop(towards: np.ndarray, factors: list[float]) -> dict:
    """How many cases first fall between each factor and the next."""
    counts: dict[str, int] = {}
    for row in towards:
        drops = np.nonzero(np.diff(row) < -TOLERANCE)[0]
        if len(drops):
            key = f"{factors[drops[0]]:g}→{factors[drops[0] + 1]:g}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def plot(summary: dict, factors: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for method, s in summary.items():
        a.errorbar(
            factors, s["towards"], yerr=1.96 * np.array(s["towards_sem"]), marker="o", capsize=3, label=method
        )
        b.plot(factors, s["rest"], marker="o", label=method)
    a.set(
        xscale="log",
        xlabel="edit scale (× the method's default)",
        ylabel="towards the target (changed region)",
    )
    b.set(xscale="log", xlabel="edit scale (× the method's default)", ylabel="RMS change elsewhere")
    for ax in (a, b):
        ax.minorticks_off()
        ax.set_xticks(factors, [f"{f:g}" for f in factors])
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--seed", type=int, default=10_000_000, help="first held-out case's seed")
    p.add_argument("--factors", default="0.25,0.5,1,2,4")
    p.add_argument("--model", default=None, help="model folder [default: the shipped model]")
    p.add_argument("--out", type=Path, required=True, help="folder for rows.jsonl (a run there resumes)")
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import retouch

    factors = [float(f) for f in args.factors.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    model = retouch.load(args.model, device="cpu") if args.model else retouch.load(device="cpu")
    rows = run(model, make_cases(args.seed, args.cases), factors, args.out)
    summary = summarise(rows, factors)
    print(f"model {model.model_id} ({model.fingerprint}), {args.cases} cases from seed {args.seed}")
    for method, s in summary.items():
        lo, hi = s["monotone_ci"]
        print(
            f"{method:16s} monotone {s['monotone']}/{s['cases']} [{lo:.0%}, {hi:.0%}]  towards "
            + " ".join(f"{v:.3f}" for v in s["towards"])
            + "  rest "
            + " ".join(f"{v:.3f}" for v in s["rest"])
            + f"  first drops {s['first_drop']}"
        )
    (args.out / "summary.json").write_text(json.dumps(dict(factors=factors, methods=summary), indent=1))
    if args.plot:
        plot(summary, factors, args.plot)


if __name__ == "__main__":
    main()
