"""Edits per minute of `retouch batch` on this machine: 1 and 2 local workers and Ray, on the same
100-row manifest, side by side in one run; and the saving from sharing an encoding/inversion
across the rows that edit one image (5 edits per image against 1).

    python benchmarks/batch_throughput.py [--rows 100] [--steps 20] [--out runs/batch-bench]

Rows alternate DiffEdit (recolour, N=steps) and LEDITS (concepts, N=steps, skip 0.36·N) on
held-out ShapesWorld scenes; the shipped model; each run in a fresh output folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from retouch.shapes.world import HELD_OUT_SEED, caption, render, sample_scene


def manifest(folder: Path, rows: int, per_image: int, steps: int) -> Path:
    """`rows` edits, `per_image` of them on each image (alternating methods, varying targets)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    colors = ["red", "green", "blue", "yellow", "purple", "orange"]
    for i in range(rows):
        k = i // per_image
        scene = sample_scene(HELD_OUT_SEED + 300_000 + k, n_objects=1)
        name = f"img{k}.png"
        if not (folder / name).exists():
            Image.fromarray(render(scene)).save(folder / name)
        obj, text = scene.objects[0], caption(scene)
        new = [c for c in colors if c != obj.color][i % 5]
        target = f"{new} {obj.shape}"
        if i % 2 == 0:
            row = dict(
                image=name,
                method="diffedit",
                query=text.replace(obj.phrase, target).replace("an ", "a "),
                reference=text,
                num_inference_steps=steps,
            )
        else:
            row = dict(
                image=name,
                method="ledits",
                add=[target],
                remove=[obj.phrase],
                num_inference_steps=steps,
                skip=round(0.36 * steps),
            )
        lines.append(json.dumps(row))
    path = folder / "edits.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def timed_run(path: Path, out: Path, *args: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "retouch",
        "batch",
        str(path),
        "--out",
        str(out),
        "--json",
        "--no-progress",
        *args,
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    evals = sum(r["unet_evals"] for r in results)
    return dict(seconds=seconds, per_minute=60 * summary["ok"] / seconds, ok=summary["ok"], evals=evals)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("runs/batch-bench"))
    args = p.parse_args()
    five = manifest(args.out / "five", args.rows, 5, args.steps)
    one = manifest(args.out / "one", args.rows, 1, args.steps)
    runs = {
        "1 worker, 5 edits per image": timed_run(five, args.out / "o1", "--workers", "1"),
        "2 workers, 5 edits per image": timed_run(five, args.out / "o2", "--workers", "2"),
        "Ray local (2 actors), 5 edits per image": timed_run(
            five, args.out / "oray", "--ray", "local", "--workers", "2"
        ),
        "1 worker, 1 edit per image": timed_run(one, args.out / "o1one", "--workers", "1"),
    }
    base = runs["1 worker, 5 edits per image"]["per_minute"]
    print(f"{args.rows} rows, N={args.steps}, shipped model, wall time including start-up")
    print(f"{'run':<42} {'s':>7} {'edits/min':>10} {'× 1 worker':>11} {'UNet evals':>11}")
    for name, r in runs.items():
        print(
            f"{name:<42} {r['seconds']:7.1f} {r['per_minute']:10.1f} "
            f"{r['per_minute'] / base:11.2f} {r['evals']:11d}"
        )


if __name__ == "__main__":
    main()
