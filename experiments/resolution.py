"""Does a model trained at one size work at another, before any fine-tuning?

    python experiments/resolution.py                         # the shipped model at 64, 96 and 128 px
    python experiments/resolution.py --model runs/model-v6 --sizes 64,96

Printed per size: the autoencoder's reconstruction PSNR on held-out ShapesWorld renders at that
size (`world.render(scene, size)`), and the share of images generated at that size from held-out
whole captions (diffusers' StableDiffusionPipeline, DDIM, 50 steps, guidance 5, as `retouch bench
model`) that the judge reads as faithful after a box resize to 64 px, the size it was trained at.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import retouch
from retouch.bench.model import _pipeline, autoencoder_psnr, generate
from retouch.shapes import world
from retouch.shapes.judge import faithful_batch, load_judge

SEED = 10_000_000


def faithful_share(model, judge, size: int, n: int) -> float:
    captions = [world.caption(world.sample_scene(SEED + 100_000 + i)) for i in range(n)]
    images = generate(_pipeline(model), model, captions, 50, 5.0, SEED, 50, size=size)
    return float(np.mean([r.faithful for r in faithful_batch(judge, images, captions)]))  # read at 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder [default: the shipped model]")
    ap.add_argument("--sizes", default="64,96,128")
    ap.add_argument("--renders", type=int, default=128)
    ap.add_argument("--captions", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, judge = retouch.load(args.model, device="cpu"), load_judge()
    for size in map(int, args.sizes.split(",")):
        ae = autoencoder_psnr(model, args.renders, SEED, size)
        share = faithful_share(model, judge, size, args.captions)
        print(f"{size} px: autoencoder {ae:.2f} dB, text-to-image faithful {share:.0%}", flush=True)


if __name__ == "__main__":
    main()
