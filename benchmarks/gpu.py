"""GPU figures: seconds per edit and per re-edit, peak memory, and the share of wall time inside the
UNet, for each method at its defaults and its fast setting, at Stable Diffusion 1.5's size.

    python benchmarks/gpu.py                           # CUDA, float16, SD 1.5's architecture with
                                                       # random weights, 512x512
    python benchmarks/gpu.py --model runwayml/stable-diffusion-v1-5   # real weights (a folder or
                                                       # a cached hub id)
    python benchmarks/gpu.py --compile                 # also the compiled path (torch.compile,
                                                       # channels-last), its warm-up reported apart
    python benchmarks/gpu.py --device cpu --size 64 --steps 4 --edits 1   # a dry run anywhere

Per method: a warm-up edit, then --edits timed first edits (mask/encoding/inversion included) and
re-edits (reusing them, another query or concept), CUDA-synchronised; peak memory of the timed
edits (torch.cuda.max_memory_allocated); UNet time measured with CUDA events around every UNet
call (no synchronisation inside the loops), as a share of the edit's wall time. Prints a table;
--json writes the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import retouch
from retouch.denoiser import UNetCalls
from retouch.methods.diffedit import FAST as DIFFEDIT_FAST
from retouch.methods.ledits import FAST as LEDITS_FAST
from retouch.timing import sync

QUERY, REFERENCE = "a green circle on a white background", "a red circle on a white background"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="diffusers folder or hub id [default: random SD 1.5]")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default=None, help="[default: float16 on CUDA, float32 elsewhere]")
    p.add_argument("--size", type=int, default=512, help="image side")
    p.add_argument("--steps", type=int, default=None, help="N for every method [default: each one's own]")
    p.add_argument("--edits", type=int, default=3, help="timed edits per method")
    p.add_argument("--compile", action="store_true", help="also time the compiled path")
    p.add_argument("--json", type=Path, help="also write the rows here")
    return p.parse_args(argv)


class UNetClock(UNetCalls):
    """UNetCalls that also times every UNet forward: CUDA events on CUDA, wall time elsewhere."""

    def __init__(self, unet, device: torch.device):
        super().__init__(unet)
        self.device, self.events, self.cpu_seconds = device, [], 0.0

    def _counted(self, *args, **kwargs):
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            out = super()._counted(*args, **kwargs)
            self.cpu_seconds += time.perf_counter() - t0
            return out
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = super()._counted(*args, **kwargs)
        end.record()
        self.events.append((start, end))
        return out

    def seconds(self) -> float:
        """Seconds inside the UNet since the last call, and reset."""
        sync(self.device)
        total = self.cpu_seconds + sum(s.elapsed_time(e) for s, e in self.events) / 1000
        self.events, self.cpu_seconds = [], 0.0
        self.reset()
        return total


def load(args):
    dtype = args.dtype or ("float16" if torch.device(args.device).type == "cuda" else "float32")
    if args.model:
        return retouch.load(args.model, device=args.device, dtype=dtype)
    sys.path.insert(0, str(Path(__file__).parent))
    from speed import sd15_components

    from retouch.models import from_components

    with torch.device(args.device):
        parts = sd15_components(Path(tempfile.mkdtemp(prefix="retouch-sd15-tok-")))
    return from_components(**parts, model_id="sd15-random", device=args.device, dtype=dtype)


def methods(args) -> dict:
    """name → (first edit(model, image, i), re-edit(model, image, prepared, i), prepare(model, image))."""
    steps = {} if args.steps is None else {"num_inference_steps": args.steps}
    d_default, d_fast = dict(steps), {**DIFFEDIT_FAST, **steps}
    skip = {} if args.steps is None else {"skip": 0.36}
    l_default, l_fast = {**steps, **skip}, {**LEDITS_FAST, **steps}

    def diffedit(cfg):
        def prepare(m, img):
            return retouch.diffedit_mask(m, img, QUERY, REFERENCE, **cfg), retouch.ddim_encoding(
                m, img, **cfg
            )

        def edit(m, img, prep, i):
            mask, enc = prep
            return retouch.diffedit(m, img, QUERY, REFERENCE, mask=mask, encoding=enc, seed=i, **cfg)

        return prepare, edit

    def ledits(cfg):
        def prepare(m, img):
            return retouch.invert(m, img, **cfg)

        def edit(m, img, inv, i):
            return retouch.ledits(m, inv, add=["green circle"], remove=["red circle"], seed=i, **cfg)

        return prepare, edit

    return {
        "diffedit": diffedit(d_default),
        "diffedit fast": diffedit(d_fast),
        "ledits": ledits(l_default),
        "ledits fast": ledits(l_fast),
    }


def measure(model, name: str, prepare, edit, image, args) -> dict:
    dev = model.device
    clock = UNetClock(model.unet, dev)
    try:
        edit(model, image, prepare(model, image), 0)  # warm-up (and, compiled, the compilation)
        clock.seconds()
        firsts, reedits, shares = [], [], []
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        for i in range(args.edits):
            sync(dev)
            t0 = time.perf_counter()
            prep = prepare(model, image)
            edit(model, image, prep, i)
            sync(dev)
            firsts.append(time.perf_counter() - t0)
            shares.append(clock.seconds() / firsts[-1])
            t0 = time.perf_counter()
            edit(model, image, prep, i + 100)
            sync(dev)
            reedits.append(time.perf_counter() - t0)
            clock.seconds()
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    finally:
        clock.unwrap()
    return dict(
        method=name,
        first_s=statistics.median(firsts),
        reedit_s=statistics.median(reedits),
        peak_gib=peak,
        unet_share=statistics.median(shares),
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: this script measures GPU figures (--device cpu for a dry run)")
    model = load(args)
    image = np.zeros((args.size, args.size, 3), np.uint8)
    image[args.size // 4 : 3 * args.size // 4, args.size // 4 : 3 * args.size // 4] = (200, 30, 30)
    variants = [("", model)]
    if args.compile:
        from retouch.models import compiled

        variants.append((" compiled", compiled(model)))
    rows = []
    print(f"{model.model_id} {model.device} {model.dtype}, {args.size}x{args.size}, {args.edits} edits each")
    print(f"{'method':26} {'edit s':>8} {'re-edit s':>9} {'peak GiB':>8} {'in UNet':>7} {'warm-up s':>9}")
    for suffix, m in variants:
        for name, (prepare, edit) in methods(args).items():
            t0 = time.perf_counter()
            edit(m, image, prepare(m, image), 0)
            sync(m.device)
            warm = time.perf_counter() - t0
            row = {**measure(m, name + suffix, prepare, edit, image, args), "warmup_s": warm}
            rows.append(row)
            print(
                f"{row['method']:26} {row['first_s']:8.3f} {row['reedit_s']:9.3f} {row['peak_gib']:8.2f} "
                f"{row['unet_share']:7.0%} {warm:9.1f}"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
