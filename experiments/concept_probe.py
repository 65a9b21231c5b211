"""Where SEGA's concept terms fall: the share of each thresholded term inside the edited object.

    python experiments/concept_probe.py --kind recolor --cases 20            # the shipped model
    python experiments/concept_probe.py --kind remove --cases 20 --model runs/model-v11

For each held-out ShapesBench case of the kind: LEDITS' inversion (the source caption, N steps,
skip 0.36), then at every latent of its trajectory one UNet call over [∅, added concepts, removed
concepts]; each concept's term ψ = ε(e) − ε(∅) thresholded as SEGA does (the paper's λ = 0.95 per
channel), its magnitude summed over channels, and the share of that mass inside the case's
changed region (averaged down to the latent). Printed: the region's mean area and each term's
mean share. A term that lands on the object has a share well above the area; if it does and the
edit still fails, the term's direction (what it turns the object into) is the cause, not its place.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

import retouch
from retouch.bench.cases import make_cases
from retouch.denoiser import EvalCounter, unet_eps
from retouch.guidance import threshold_per_channel
from retouch.methods.ledits import invert
from retouch.schedule import Schedule
from retouch.shapes.world import HELD_OUT_SEED
from retouch.text import encode_text


def term_shares(model, case, steps: int, threshold: float) -> tuple[float, dict[str, list[float]]]:
    """(the changed region's area at the latent's resolution, {"add"/"remove": the share of each
    thresholded term inside it, one per concept and step})."""
    inv = invert(
        model, case.input_image, case.source_caption, num_inference_steps=steps, skip=0.36, seed=case.seed
    )
    region = torch.from_numpy(case.region.astype(np.float32))[None, None]  # [1, 1, 64, 64]
    region = F.adaptive_avg_pool2d(region, inv.x0.shape[-2:])[0, 0]  # [h, w]
    eps = unet_eps(model, Schedule.from_scheduler(model.scheduler), EvalCounter(), (inv.height, inv.width))
    texts = ["", *case.add, *case.remove]
    conds = encode_text(model, texts)  # [1 + k, L, D]
    shares: dict[str, list[float]] = {"add": [], "remove": []}
    for x, t in zip(inv.trajectory, inv.timesteps):
        e = eps(x[None].expand(len(texts), -1, -1, -1), t, conds)  # [1 + k, C, h, w]
        for j in range(1, len(texts)):
            mass = threshold_per_channel(e[j : j + 1] - e[:1], threshold).abs().sum(1)[0]  # [h, w]
            side = "add" if j <= len(case.add) else "remove"
            shares[side].append(float((mass * region).sum() / mass.sum().clamp_min(1e-12)))
    return float(region.mean()), shares


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", default="recolor", choices=["recolor", "reshape", "remove", "add"])
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED + 70_000_000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threshold", type=float, default=0.95, help="SEGA's λ")
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = retouch.load(args.model, device="cpu")
    areas, shares = [], {"add": [], "remove": []}
    for case in make_cases(args.seed, args.cases, [args.kind]):
        area, s = term_shares(model, case, args.steps, args.threshold)
        areas.append(area)
        for side in shares:
            shares[side] += s[side]
    terms = "  ".join(f"{side} term inside {np.mean(v):.3f}" for side, v in shares.items() if v)
    print(f"{args.kind}, {args.cases} cases: changed region's area {np.mean(areas):.3f}  {terms}")


if __name__ == "__main__":
    main()
