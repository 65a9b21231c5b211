"""retouch on SDXL beside diffusers' LEditsPPPipelineStableDiffusionXL, on the same model.

    python benchmarks/compare_sdxl.py                        # a tiny SDXL built in code, 64x64
    python benchmarks/compare_sdxl.py --full-size --size 512 --steps 4   # SDXL base's architecture,
                                                             # random weights (slow on a CPU)

The model is built from the real classes (retouch.shapes.architecture.build_sdxl_components); the tiny one
is saved as a diffusers folder and loaded with retouch.load, the full-size one kept in memory.
diffusers' LEditsPPPipelineStableDiffusionXL runs on the same modules (one copy of the weights) with
its own scheduler (DPMSolverMultistepScheduler, sde-dpmsolver++, its defaults). Per method, after one
warm-up: the inversion (or encoding) and one edit, wall seconds, UNet evaluations (batch elements,
counted by wrapping unet.forward), the process's peak resident memory so far (ru_maxrss: on a CPU
the whole process; on CUDA torch.cuda.max_memory_allocated of that method), and the reconstruction
with no concept: PSNR of the result against each side's own VAE round trip of the input (inf:
identical pixels) and, for retouch, the max latent error.
"""

from __future__ import annotations

import argparse
import math
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import retouch
from retouch.bench import diffusers_pipelines as dp
from retouch.denoiser import UNetCalls
from retouch.latents import decode, encode, to_image, to_pixels
from retouch.shapes.architecture import build_sdxl_components, save_pipeline
from retouch.timing import sync

SOURCE = "a red circle on a white background"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full-size", action="store_true", help="SDXL base's architecture (random weights)")
    p.add_argument("--size", type=int, default=None, help="image side [default: 64 tiny, 512 full]")
    p.add_argument("--steps", type=int, default=20, help="N for every method")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="[default: float16 on CUDA, float32 on CPU]")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--no-warmup", action="store_true", help="no warm-up edit (full size on a CPU: minutes each)"
    )
    return p.parse_args(argv)


def psnr(a, b) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def peak_gib(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    size = args.size or (512 if args.full_size else 64)
    dtype = args.dtype or ("float16" if torch.device(args.device).type == "cuda" else "float32")
    work = Path(tempfile.mkdtemp(prefix="retouch-sdxl-"))
    t0 = time.perf_counter()
    if args.full_size:  # in memory: its folder would be 14 GB
        from retouch.models import from_components

        with torch.device(args.device):
            parts = build_sdxl_components("full", work / "tok")
        model = from_components(**parts, model_id="sdxl-random", device=args.device, dtype=dtype)
    else:
        folder = save_pipeline(work / "model", build_sdxl_components("tiny", work / "tok"))
        model = retouch.load(str(folder), device=args.device, dtype=dtype)
    pipe = dp.ledits_pipeline(model)  # its SDXL pipeline on the bundle's modules, its default scheduler
    n_params = sum(p.numel() for p in model.unet.parameters())
    kind = "base architecture" if args.full_size else "tiny"
    built = time.perf_counter() - t0
    print(
        f"SDXL {kind}: UNet {n_params / 1e6:.1f} M parameters, {size}x{size}, {model.device} {model.dtype}, "
    )
    print(f"N={args.steps}, built and saved in {built:.0f} s")
    img = np.zeros((size, size, 3), np.uint8) + 255
    img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (200, 30, 30)
    ours_rt = to_image(decode(model, encode(model, to_pixels(model, img).tensor)), size, size)
    calls = UNetCalls(model.unet)
    n, skip = args.steps, max(1, round(0.15 * args.steps))
    rows = []

    def run(name, prepare, edit, recon=None):
        if not args.no_warmup:
            edit(prepare())
        sync(model.device)
        if torch.device(args.device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        calls.reset()
        t1 = time.perf_counter()
        prep = prepare()
        sync(model.device)
        t2 = time.perf_counter()
        e_prep = calls.take()
        edit(prep)
        sync(model.device)
        t3 = time.perf_counter()
        rows.append(
            (
                name,
                t2 - t1,
                e_prep,
                t3 - t2,
                calls.take(),
                peak_gib(args.device),
                recon(prep) if recon else "",
            )
        )

    def our_recon(inv):
        r = retouch.ledits(model, inv, prompt=SOURCE, target_guidance_scale=inv.source_guidance_scale,
                           num_inference_steps=n, skip=skip, solver=inv.solver)  # fmt: skip
        return f"{psnr(r.image, ours_rt):.1f} dB, latent err {float((r.latents - inv.x0).abs().max()):.1e}"

    for solver in ("ddpm",) if args.full_size else ("ddpm", "dpmsolver++"):
        run(
            f"retouch ledits ({solver})",
            lambda s=solver: retouch.invert(
                model, img, source=SOURCE, num_inference_steps=n, skip=skip, solver=s
            ),
            lambda inv: retouch.ledits(
                model,
                inv,
                add=["green circle"],
                remove=["red circle"],
                num_inference_steps=n,
                skip=skip,
                solver=inv.solver,
            ),  # fmt: skip
            our_recon,
        )
    mask = retouch.diffedit_mask(model, img, "a green circle", SOURCE, num_inference_steps=n, mask_samples=2)
    run(
        "retouch diffedit",
        lambda: retouch.ddim_encoding(model, img, num_inference_steps=n),
        lambda enc: retouch.diffedit(
            model, img, "a green circle", SOURCE, mask=mask, encoding=enc, num_inference_steps=n
        ),
    )
    from PIL import Image

    def their_invert():
        return pipe.invert(
            image=Image.fromarray(img),
            source_prompt=SOURCE,
            num_inversion_steps=n - skip,
            skip=skip / (n - skip),
            generator=torch.Generator(args.device).manual_seed(0),
        )

    def their_recon(out):
        rec = pipe(editing_prompt=None, generator=torch.Generator(args.device).manual_seed(0)).images[0]
        return f"{psnr(rec, out.vae_reconstruction_images[0]):.1f} dB"

    run(
        "diffusers LEDITS++ XL",
        their_invert,
        lambda out: pipe(
            editing_prompt=["green circle", "red circle"],
            reverse_editing_direction=[False, True],
            edit_guidance_scale=[7.0, 7.0],
            edit_threshold=[0.95, 0.95],
        ).images[0],  # fmt: skip
        their_recon,
    )
    calls.unwrap()
    head = f"{'method':28} {'invert s':>8} {'evals':>6} {'edit s':>7} {'evals':>6} {'peak GiB':>8}"
    print(head + "  reconstruction (no concept)")
    for name, s1, e1, s2, e2, mem, rec in rows:
        print(f"{name:28} {s1:8.2f} {e1:6d} {s2:7.2f} {e2:6d} {mem:8.2f}  {rec}")


if __name__ == "__main__":
    main()
