"""FlowEdit of one image toward K targets: K separate `flowedit` calls against one `flowedit_many`
(one transformer call a step, the source branch shared), side by side.

    python benchmarks/flowedit_many.py                          # the shipped mini SD3, K = 3, published
    python benchmarks/flowedit_many.py --model path/to/sd3 --device cuda --dtype float16

Alternating (separate, many) --repeats times after one warm-up round of each; printed: median
seconds, transformer calls and batch elements of each way, the speed-up (separate ÷ many) and the
largest difference between the two ways' latents and pixels.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import retouch
from retouch.denoiser import UNetCalls
from retouch.shapes.world import HELD_OUT_SEED, caption, render, sample_scene
from retouch.timing import sync

TARGETS = ["green", "blue", "yellow", "purple", "orange", "white"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-sd3")
    p.add_argument("--targets", type=int, default=3, help="K, target texts")
    p.add_argument("--steps", type=int, default=None, help="T [default: the family's published]")
    p.add_argument("--n-max", type=int, default=None, help="n_max [default: the family's published]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--size", type=int, default=None, help="image side [default: the model's native]")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = retouch.load(args.model, device=args.device, dtype=args.dtype)
    side = args.size or model.native_size
    scene = sample_scene(HELD_OUT_SEED + 3, n_objects=1)
    image = np.asarray(render(scene, side))
    source = caption(scene)
    color = source.split()[1]
    targets = [source.replace(color, c, 1) for c in TARGETS if c != color][: args.targets]
    kw = dict(seed=0)
    kw.update({k: v for k, v in (("num_inference_steps", args.steps), ("n_max", args.n_max)) if v})
    ways = {
        "separate": lambda: [retouch.flowedit(model, image, source, t, **kw) for t in targets],
        "many": lambda: retouch.flowedit_many(model, image, source, targets, **kw),
    }
    calls = UNetCalls(model.transformer)
    seconds, counted, out = {w: [] for w in ways}, {}, {}
    for round_ in range(args.repeats + 1):
        for name, fn in ways.items():
            calls.reset()
            sync(model.device)
            t0 = time.perf_counter()
            out[name] = fn()
            sync(model.device)
            if round_:  # the first round warms up
                seconds[name].append(time.perf_counter() - t0)
            counted[name] = (len(calls.sizes), calls.evals)
    calls.unwrap()
    s = out["separate"][0].settings
    print(f"{model.model_id} ({model.family}), {side}x{side}, {model.device} {model.dtype}, "
          f"{args.threads} threads, K={len(targets)}, T={s['num_inference_steps']}, n_max={s['n_max']}, "
          f"{args.repeats} rounds")  # fmt: skip
    print(f"{'way':9} {'median s':>9} {'calls':>6} {'batch elements':>15}")
    for name in ways:
        print(
            f"{name:9} {statistics.median(seconds[name]):9.2f} {counted[name][0]:6d} {counted[name][1]:15d}"
        )
    speed = statistics.median(seconds["separate"]) / statistics.median(seconds["many"])
    lat = max((a.latents - b.latents).abs().max().item() for a, b in zip(out["separate"], out["many"]))
    px = max(
        int(np.abs(np.asarray(a.image, int) - np.asarray(b.image, int)).max())
        for a, b in zip(out["separate"], out["many"])
    )
    print(f"speed-up {speed:.2f}x; max latent difference {lat:.1e}; max pixel difference {px}")


if __name__ == "__main__":
    main()
