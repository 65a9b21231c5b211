"""Does a model trained at one size work at another, before any fine-tuning?

    python benchmarks/resolution.py                         # the shipped model at 64, 96 and 128 px
    python benchmarks/resolution.py --model runs/model-v6 --sizes 64,96

Printed per size: the autoencoder's reconstruction PSNR on held-out ShapesWorld renders at that
size (`world.render(scene, size)`), and the share of images generated at that size from held-out
whole captions (diffusers' StableDiffusionPipeline, DDIM, 50 steps, guidance 5, as `retouch bench
model`) that the judge reads as faithful after a box resize to 64 px, the size it was trained at.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

import retouch
from retouch.bench.model import _pipeline
from retouch.metrics import psnr
from retouch.shapes import world
from retouch.shapes.judge import faithful_batch, load_judge

SEED = 10_000_000


@torch.no_grad()
def autoencoder_psnr(model, size: int, n: int) -> float:
    x = np.stack([world.render(world.sample_scene(SEED + i), size) for i in range(n)])  # (n, size, size, 3)
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1  # [n, 3, size, size]
    back = torch.cat(
        [model.vae.decode(model.vae.encode(b).latent_dist.mean).sample for b in pixels.split(32)]
    )
    y = ((back.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    return psnr(x, y)


def faithful_share(model, judge, size: int, n: int) -> float:
    captions = [world.caption(world.sample_scene(SEED + 100_000 + i)) for i in range(n)]
    pipe = _pipeline(model)
    images = []
    for i in range(0, n, 50):  # as bench.model.generate, but at `size`
        gens = [torch.Generator().manual_seed(SEED + i + j) for j in range(len(captions[i : i + 50]))]
        out = pipe(captions[i : i + 50], num_inference_steps=50, guidance_scale=5.0, generator=gens,
                   output_type="np", height=size, width=size)  # fmt: skip
        images += [(im * 255).round().astype(np.uint8) for im in out.images]
    small = [np.asarray(Image.fromarray(im).resize((64, 64), Image.BOX)) for im in images]
    return float(np.mean([r.faithful for r in faithful_batch(judge, small, captions)]))


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
        ae = autoencoder_psnr(model, size, args.renders)
        share = faithful_share(model, judge, size, args.captions)
        print(f"{size} px: autoencoder {ae:.2f} dB, text-to-image faithful {share:.0%}", flush=True)


if __name__ == "__main__":
    main()
