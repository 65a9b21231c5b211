"""What the word weights inside the mask cost: DiffEdit with and without them, side by side, in one run.

    python experiments/word_weights.py                  # the shipped model, 8 edits each, one thread
    python experiments/word_weights.py --edits 20 --threads 2 --steps 50

The same held-out recolours are edited under the `recolor` preset (which weighs the words) and
under the same preset with both scales at 1 (no processor installed: the paper's attention), in
alternating order after one warm-up edit each. Each edit is whole: mask, encoding and decoding.
Printed: the median seconds of each, their ratio, and the UNet evaluations (the same: the weights
add no network call).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import retouch
from retouch.bench.cases import make_cases
from retouch.denoiser import unet_calls
from retouch.shapes.world import HELD_OUT_SEED


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="a model folder or hub id [default: the shipped model]")
    p.add_argument("--edits", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = retouch.load(args.model) if args.model else retouch.load()
    cases = make_cases(HELD_OUT_SEED + 500_000, args.edits + 1, ["recolor"], size=model.native_size)
    variants = {"weighed": {}, "unweighed": dict(changed_word_scale=1.0, shared_word_scale=1.0)}
    seconds = {name: [] for name in variants}
    evals = {}
    for i, case in enumerate(cases):
        order = list(variants) if i % 2 == 0 else list(variants)[::-1]
        for name in order:
            with unet_calls(model) as sizes:
                start = time.perf_counter()
                retouch.diffedit(
                    model,
                    case.input_image,
                    case.target_caption,
                    case.source_caption,
                    preset="recolor",
                    num_inference_steps=args.steps,
                    seed=case.seed,
                    **variants[name],
                )
                took = time.perf_counter() - start
            if i > 0:  # the first case warms up
                seconds[name].append(took)
                evals[name] = sum(sizes)
    w, u = (statistics.median(seconds[n]) for n in ("weighed", "unweighed"))
    print(
        f"model {model.model_id}, {args.edits} recolours under --preset recolor, N={args.steps}, "
        f"threads {args.threads}"
    )
    print(f"{'':<12} {'s/edit':>8} {'UNet evals':>11}")
    print(f"{'weighed':<12} {w:8.3f} {evals['weighed']:>11}")
    print(f"{'unweighed':<12} {u:8.3f} {evals['unweighed']:>11}")
    print(f"ratio weighed / unweighed: {w / u:.3f}")


if __name__ == "__main__":
    main()
