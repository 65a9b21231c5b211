"""Quality against cost: success and background PSNR against UNet evaluations per edit, from
several `retouch bench edits` runs on the same cases (each run one step count and solver).

    python benchmarks/frontier.py runs/frontier/*/ --out docs/bench/frontier

Each run folder holds cases.jsonl and run.json (its settings). A point is (method, solver, N):
mean UNet evaluations of a first edit (inversion or encoding included), success rate and mean
background PSNR over the cases. Prints a table (and the 95 % interval of each success rate);
writes frontier_<family>.png, one per method family: success and background PSNR against
evaluations, each point labelled with its solver and N, the points no other beats on both cost
and success joined (the frontier).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from retouch.bench.report import wilson
from retouch.files import read_jsonl

FAMILY = {"diffedit": "diffedit", "diffusers_diffedit": "diffedit"}  # the rest: ledits


def points(run_dirs: list[Path]) -> list[dict]:
    """One point per (run, method): settings, cases, evals per edit, success, PSNR bg."""
    out = []
    for run in run_dirs:
        settings = json.loads((run / "run.json").read_text())["settings"]
        rows = [r for r in read_jsonl(run / "cases.jsonl") if r.get("sweep") is None]
        by_method = defaultdict(list)
        for r in rows:
            by_method[r["method"]].append(r)
        for method, rs in by_method.items():
            if method == "autoencoder":
                continue
            family = FAMILY.get(method, "ledits")
            cfg = settings[family]
            judged = [r for r in rs if r["success"] is not None]
            ok = sum(bool(r["success"]) for r in judged)
            lo, hi = wilson(ok, len(judged))
            diffusers = method.startswith("diffusers")
            out.append(
                dict(
                    run=run.name,
                    method=method,
                    family=family,
                    solver="theirs"
                    if diffusers
                    else cfg.get("solver", "ddim" if family == "diffedit" else "ddpm"),
                    steps=cfg["num_inference_steps"],
                    cases=len(rs),
                    evals=sum(r["unet_evals"] for r in rs) / len(rs),
                    success=ok / max(1, len(judged)),
                    success_ci=(lo, hi),
                    psnr_bg=sum(r["psnr_bg"] for r in rs) / len(rs),
                    seconds=sum(r["seconds"] for r in rs) / len(rs),
                )
            )
    return sorted(out, key=lambda p: (p["family"], p["method"], p["solver"], p["evals"]))


def frontier(pts: list[dict]) -> list[dict]:
    """The points no other point beats: at most its evaluations with at least its success."""
    best, out = -1.0, []
    for p in sorted(pts, key=lambda p: (p["evals"], -p["success"])):
        if p["success"] > best:
            out.append(p)
            best = p["success"]
    return out


def plot(pts: list[dict], family: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = defaultdict(list)
    for p in pts:
        series[(p["method"], p["solver"])].append(p)
    for (method, solver), ps in sorted(series.items()):
        ps.sort(key=lambda p: p["evals"])
        for ax, key in zip(axes, ("success", "psnr_bg")):
            ax.plot([p["evals"] for p in ps], [p[key] for p in ps], "o-", label=f"{method} ({solver})")
            for p in ps:
                ax.annotate(
                    f"N={p['steps']}",
                    (p["evals"], p[key]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    front = frontier(pts)
    axes[0].plot([p["evals"] for p in front], [p["success"] for p in front], "k--", lw=1, label="frontier")
    axes[0].set_ylabel("edit success")
    axes[1].set_ylabel("background PSNR (dB)")
    for ax in axes:
        ax.set_xlabel("UNet evaluations per edit (first edit)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{family}: quality against cost, {pts[0]['cases']} held-out ShapesBench cases")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pts = points(args.runs)
    print("| method | solver | N | cases | evals / edit | success [95 %] | PSNR bg | s / edit |")
    print("|---|---|---|---|---|---|---|---|")
    for q in pts:
        lo, hi = q["success_ci"]
        print(
            f"| {q['method']} | {q['solver']} | {q['steps']} | {q['cases']} | {q['evals']:.0f} | "
            f"{q['success']:.0%} [{lo:.0%}, {hi:.0%}] | {q['psnr_bg']:.2f} | {q['seconds']:.2f} |"
        )
    for family in sorted({q["family"] for q in pts}):
        plot([q for q in pts if q["family"] == family], family, args.out / f"frontier_{family}.png")
    (args.out / "points.json").write_text(json.dumps(pts, indent=1))


if __name__ == "__main__":
    main()
