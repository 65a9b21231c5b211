"""Throughput of batched edits: K edits one by one against the same K as one UNet batch per step.

    python benchmarks/batched.py                       # the shipped model, 8 edits, published steps
    python benchmarks/batched.py --full-size --steps 3 # Stable Diffusion 1.5's architecture,
                                                       # random weights, 512x512 (slow on a CPU)

Workloads, each in both ways, in one run, alternating (one-by-one, batched) --repeats times:
  * diffedit: K queries on one image, its mask and DDIM encoding made once and given to every
    edit (so both ways spend only the decodings: the part batching changes);
  * ledits: K concept edits of one inversion;
  * diffedit-images: K different images of one size, one query each (masks, encodings and
    decodings all in the batch).
Printed per workload: median seconds one by one and batched, edits per second, the speed-up
(one-by-one ÷ batched), UNet evaluations (equal both ways) and the largest pixel difference
between the two ways' images (batched arithmetic rounds differently).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import retouch
from retouch.denoiser import UNetCalls
from retouch.shapes.world import HELD_OUT_SEED, caption, render, sample_scene
from retouch.timing import sync

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full-size", action="store_true", help="SD 1.5's architecture, random weights, 512x512")
    p.add_argument("--edits", type=int, default=8, help="K, edits per workload")
    p.add_argument("--steps", type=int, default=None, help="N [default: 50 DiffEdit, 100 LEDITS]")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (medians); one warm-up first")
    p.add_argument("--workloads", default="diffedit,ledits,diffedit-images")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-warmup", action="store_true", help="no warm-up round (full size on a CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def load(args):
    if not args.full_size:
        return retouch.load(device=args.device, dtype="float32")
    sys.path.insert(0, str(Path(__file__).parent))
    from speed import sd15_components

    from retouch.models import from_components

    with torch.device(args.device):
        parts = sd15_components(Path(tempfile.mkdtemp(prefix="retouch-sd15-tok-")))
    dtype = "float16" if torch.device(args.device).type == "cuda" else "float32"
    return from_components(**parts, model_id="sd15-random", device=args.device, dtype=dtype)


def scene(i: int, side: int) -> tuple[np.ndarray, str]:
    s = sample_scene(HELD_OUT_SEED + i, n_objects=1)
    img = render(s)
    if side != img.shape[0]:
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((side, side), Image.NEAREST))
    return img, caption(s)


def workloads(model, args) -> dict:
    """name → (one_by_one(), batched()), each returning a list of EditResults."""
    k, side = args.edits, model.native_size
    d_steps, l_steps = args.steps or 50, args.steps or 100
    d_cfg = dict(num_inference_steps=d_steps, mask_samples=2 if args.full_size else 10)
    l_cfg = dict(num_inference_steps=l_steps, skip=max(1, round(0.36 * l_steps)) if l_steps > 2 else 0)
    image, text = scene(0, side)
    color = text.split()[1]
    queries = [text.replace(color, c, 1) for c in COLORS if c != color][:k]
    queries += [queries[i % len(queries)] for i in range(len(queries), k)]
    wanted = args.workloads.split(",")
    mask = retouch.diffedit_mask(model, image, queries[0], text, **d_cfg) if "diffedit" in wanted else None
    enc = retouch.ddim_encoding(model, image, **d_cfg) if "diffedit" in wanted else None
    d_edits = [dict(query=q, reference=text, seed=i, mask=mask, encoding=enc) for i, q in enumerate(queries)]
    inv = retouch.invert(model, image, **l_cfg) if "ledits" in wanted else None
    shape = text.split()[2]
    l_edits = [
        dict(add=[f"{c} {shape}"], remove=[f"{color} {shape}"], seed=i) for i, c in enumerate(COLORS[:k])
    ]
    l_edits += [l_edits[i % len(l_edits)] for i in range(len(l_edits), k)]
    imgs, texts = zip(*(scene(i, side) for i in range(k)))
    recolour = [t.replace(t.split()[1], "green" if "green" not in t else "red", 1) for t in texts]
    i_edits = [dict(query=q, reference=t, seed=i) for i, (q, t) in enumerate(zip(recolour, texts))]
    return {
        "diffedit": (
            lambda: [retouch.diffedit(model, image, **e, **d_cfg) for e in d_edits],
            lambda: retouch.diffedit_many(model, image, d_edits, **d_cfg),
        ),
        "ledits": (
            lambda: [retouch.ledits(model, inv, **e, **l_cfg) for e in l_edits],
            lambda: retouch.ledits_many(model, inv, l_edits, **l_cfg),
        ),
        "diffedit-images": (
            lambda: [retouch.diffedit(model, im, **e, **d_cfg) for im, e in zip(imgs, i_edits)],
            lambda: retouch.diffedit_many(model, list(imgs), i_edits, **d_cfg),
        ),
    }


def timed(fn, model, calls: UNetCalls):
    calls.reset()
    sync(model.device)
    t0 = time.perf_counter()
    out = fn()
    sync(model.device)
    return time.perf_counter() - t0, out, calls.take()


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load(args)
    calls = UNetCalls(model.unet)
    work = workloads(model, args)
    print(
        f"model {model.model_id}, {model.native_size}x{model.native_size}, {model.device} {model.dtype}, "
        f"{args.threads} threads, K={args.edits}, steps {args.steps or 'published'}, {args.repeats} rounds"
    )
    print(f"{'workload':16} {'one-by-one s':>12} {'batched s':>10} {'edits/s 1×1':>11} {'edits/s batch':>13} "
          f"{'speed-up':>8} {'evals':>7} {'max px diff':>11}")  # fmt: skip
    for name in args.workloads.split(","):
        one, many = work[name]
        if not args.no_warmup:
            timed(one, model, calls), timed(many, model, calls)
        t_one, t_many = [], []
        for _ in range(args.repeats):
            s1, r1, e1 = timed(one, model, calls)
            s2, r2, e2 = timed(many, model, calls)
            t_one.append(s1)
            t_many.append(s2)
        diff = max(
            int(np.abs(np.asarray(a.image, int) - np.asarray(b.image, int)).max()) for a, b in zip(r1, r2)
        )
        m1, m2 = statistics.median(t_one), statistics.median(t_many)
        k = args.edits
        print(f"{name:16} {m1:12.2f} {m2:10.2f} {k / m1:11.2f} {k / m2:13.2f} {m1 / m2:8.2f} "
              f"{e1:>3}|{e2:<3} {diff:11d}")  # fmt: skip
    calls.unwrap()


if __name__ == "__main__":
    main()
