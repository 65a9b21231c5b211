"""The absent T5's zero tokens given once (`retouch.flows.ZeroRunAttention`) against the whole
context, side by side in one run: seconds per edit, their ratio, and how far the edits differ.

    python benchmarks/zero_tokens.py [--model src/retouch/weights/shapes-sd3] [--edits 3] [--threads 1]

Each method (FlowEdit, DiffEdit and LEDITS on the flow, at their published settings) edits the same
held-out ShapesWorld scenes twice, with the same seed: once as `retouch` runs it, once with the context
given whole (diffusers' stock attention over T5's 256 zero rows).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import numpy as np
import torch

import retouch
from retouch import flows
from retouch.shapes.world import HELD_OUT_SEED, caption, render, sample_scene

RECOLOR = {
    "red": "green",
    "green": "blue",
    "blue": "yellow",
    "yellow": "purple",
    "purple": "orange",
    "orange": "red",
}


def texts(method: str, scene, source: str, target: str) -> tuple[str, str]:
    """FlowEdit takes whole captions; DiffEdit and LEDITS the object's words."""
    if method == "flowedit":
        return caption(scene), caption(scene).replace(source, target)
    return source, target


def edit(model, method: str, image, source: str, target: str):
    if method == "flowedit":
        return retouch.flowedit(model, image, source=source, target=target, seed=0)
    if method == "diffedit":
        return retouch.diffedit(model, image, query=target, reference=source, seed=0)
    return retouch.ledits(model, image, add=[target], remove=[source], seed=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="src/retouch/weights/shapes-sd3")
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = retouch.load(args.model)
    scenes = [sample_scene(HELD_OUT_SEED + 400_000 + k, n_objects=1) for k in range(args.edits)]
    print(f"{args.model}, {args.edits} edits a method, {args.threads} thread(s)")
    print("| method | once (s / edit) | whole (s / edit) | speed-up | max pixel difference (0–255) |")
    print("|---|---|---|---|---|")
    for method in ("flowedit", "diffedit", "ledits"):
        times, images = {"once": 0.0, "whole": 0.0}, {"once": [], "whole": []}
        for scene in scenes:
            obj = scene.objects[0]
            source, target = f"{obj.color} {obj.shape}", f"{RECOLOR[obj.color]} {obj.shape}"
            for way in ("once", "whole"):
                whole = mock.patch.object(flows, "_zero_run", return_value=1)
                with whole if way == "whole" else contextlib.nullcontext():
                    start = time.perf_counter()
                    out = edit(model, method, render(scene), *texts(method, scene, source, target))
                    times[way] += time.perf_counter() - start
                images[way].append(torch.tensor(np.array(out.image), dtype=torch.float32))
        diff = max((a - b).abs().max().item() for a, b in zip(images["once"], images["whole"]))
        once, whole = times["once"] / len(scenes), times["whole"] / len(scenes)
        print(f"| {method} | {once:.2f} | {whole:.2f} | {whole / once:.2f}× | {diff:.0f} |")


if __name__ == "__main__":
    main()
