"""retouch's DiffEdit beside diffusers' StableDiffusionDiffEditPipeline, on ShapesWorld recolour edits.

    python benchmarks/compare_diffedit.py                      # the shipped model, 8 held-out edits
    python benchmarks/compare_diffedit.py --model DIR          # another diffusers folder
    python benchmarks/compare_diffedit.py --random-mini DIR    # untrained weights of the shipped
                                                               # architecture, written to DIR if absent

Both sides run the same settings: N steps, encoding ratio r, n mask samples at the same mask strength,
the same clamp k and threshold 0.5, CFG w while decoding, no CFG while encoding (∅, the paper's choice)
and, unless --mask-guidance-scale is given, no CFG for the mask (generate_mask's guidance_scale=1, the
paper's conditional predictions; see the bug below).

The same mask noises. diffusers' generate_mask draws from its generator, in order, (1) a posterior
sample of the VAE for each of the n copies of the image (when given pixels) and (2) the n noises
[n, C, h, w] with one `torch.randn` call. retouch draws the n noises [n, C, h, w] with one
`torch.randn` call as the first draw of a generator seeded with the edit's seed. Giving diffusers the
VAE posterior MEAN as latents (a 4-channel tensor is taken as latents as they are) skips draw (1), so
the same seed gives both sides the same noises. Both VAEs encode the same pixel tensor (diffusers'
image processor computes x/255·2−1, retouch x/127.5−1: a float rounding apart, ~1e-5 in the latents,
not a difference of method). The script checks the noises on the UNet's first input,
x_t = √ᾱ·x0 + √(1−ᾱ)·ε ("noise Δ" = max |x_t ours − x_t theirs|): 0, or ~2e-7 at some timesteps (retouch
takes √ᾱ in float64, diffusers in float32); other noises would give O(1). --vae-sample gives diffusers
the PIL image instead: it then samples the posterior (for the mask and again for the inversion) and its
mask noises are the generator's second draw, not the first.

A bug of diffusers 0.42 worked around here: generate_mask unpacks encode_prompt's (prompt, negative)
pair as (negative, prompt). With guidance_scale=1 (no CFG) it then crashes (the "prompt" is None); with
CFG w it guides with the texts swapped, i.e. with scale 1 − w. Harmless there: swapped or not, ε(∅)
cancels in ε̃(T) − ε̃(S) = (1 − w)·(ε(T) − ε(S)) (w·(…) unswapped) and the k·mean normalisation removes
the factor, so a CFG mask is the no-CFG mask (checked: identical) at twice the cost (4n evaluations).
`retouch.bench.diffusers_pipelines.mask_prompts_in_order` swaps the pair back while generate_mask runs.

Differences of diffusers' deprecated pipeline from docs/diffedit.md (which retouch follows):
  * its decoding blends one level off: after the step t → s it mixes in the encoded latent of level
    t, not s, and its last blend uses x_{t_1} (the least noisy encoded latent) instead of the clean
    x0, so its background latents are not the input's ("bg err", retouch's is 0 by construction);
  * fed pixels, it encodes a posterior SAMPLE of the VAE, not the mean (avoided here unless
    --vae-sample);
  * its defaults cost 200 UNet evaluations per edit (mask "CFG" 7.5: 4n = 40, inversion with CFG 7.5:
    80, decoding 80) against retouch's 140; with the settings matched as here both spend 140;
  * it converts a v-prediction output to ε at the level the latent is at during inversion, retouch
    at the level the UNet is told (the same for epsilon models such as the shipped one);
  * it takes int(r·N) encoding steps, retouch round(r·N) (equal for the defaults).

Printed per edit: mask IoU (latent resolution), mask areas, UNet evaluations (retouch's own count;
diffusers' counted by wrapping unet.forward and summing batch sizes, retouch's checked the same way),
wall time per edit (time.perf_counter after a warm-up edit, CUDA synchronised), the PSNR between the
two output images, the background latent error and the mask noise difference; then the means.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import retouch
from retouch.bench import diffusers_pipelines as dp
from retouch.denoiser import UNetCalls
from retouch.latents import load_image, to_image, to_pixels
from retouch.metrics import iou, psnr
from retouch.models import SHIPPED
from retouch.shapes.world import HELD_OUT_SEED, sample_edit
from retouch.timing import sync


def parse_args(argv=None) -> argparse.Namespace:
    d = retouch.DiffEditConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=SHIPPED, help="diffusers model folder (default: shipped)")
    p.add_argument(
        "--random-mini",
        type=Path,
        metavar="DIR",
        help="use untrained 'mini' weights saved in DIR (written there if absent)",
    )
    p.add_argument("--edits", type=int, default=8, help="number of recolour edits")
    p.add_argument("--first-seed", type=int, default=HELD_OUT_SEED, help="scene seed of the first edit")
    p.add_argument("--num-inference-steps", type=int, default=d.num_inference_steps)
    p.add_argument("--encode-ratio", type=float, default=d.encode_ratio)
    p.add_argument("--guidance-scale", type=float, default=d.guidance_scale)
    p.add_argument("--mask-samples", type=int, default=d.mask_samples)
    p.add_argument("--mask-strength", type=float, default=d.mask_strength)
    p.add_argument("--mask-clamp", type=float, default=d.mask_clamp)
    p.add_argument(
        "--mask-guidance-scale",
        type=float,
        default=d.mask_guidance_scale,
        help="CFG on both mask sides, on both pipelines (default: none, as in the paper)",
    )
    p.add_argument(
        "--vae-sample",
        action="store_true",
        help="give diffusers pixels: it samples the VAE posterior (noises then differ)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p.parse_args(argv)


def model_folder(args) -> Path:
    """The folder to compare on; with --random-mini, untrained mini weights written there once."""
    return args.model if args.random_mini is None else dp.random_model_folder(args.random_mini)


def settings(args) -> dict:
    """retouch's DiffEditConfig fields for the shared settings."""
    return dict(
        num_inference_steps=args.num_inference_steps,
        encode_ratio=args.encode_ratio,
        guidance_scale=args.guidance_scale,
        mask_samples=args.mask_samples,
        mask_strength=args.mask_strength,
        mask_clamp=args.mask_clamp,
        mask_threshold=0.5,
        mask_guidance_scale=args.mask_guidance_scale,
    )


def run_ours(model, img: np.ndarray, query: str, reference: str, seed: int, args) -> dict:
    """One retouch edit. Returns its image (uint8 [H, W, 3]), mask {0,1} [h, w], latents, x0, cost."""
    from retouch.methods.common import prepare

    sync(model.device)
    t0 = time.perf_counter()
    out = retouch.diffedit(model, img, query, reference, seed=seed, **settings(args))
    sync(model.device)
    seconds = time.perf_counter() - t0
    x0 = prepare(model, img).x0  # outside the timing: for the background error only
    return dict(
        image=np.asarray(out.image),
        mask=out.mask.latent.cpu().numpy() > 0,
        latents=out.latents,
        x0=x0,
        evals=out.unet_evals,
        seconds=seconds,
    )


@torch.no_grad()
def run_theirs(pipe, img: np.ndarray, pixels, query: str, reference: str, seed: int, args) -> dict:
    """One diffusers edit: generate_mask, invert (∅, no CFG), __call__. Same returns as run_ours.
    pixels: retouch's [1, 3, H, W] in [-1, 1] for the image (see the module's docstring)."""
    device = torch.device(args.device)
    cfg = retouch.DiffEditConfig(**settings(args))
    sync(device)
    t0 = time.perf_counter()
    x0 = dp.vae_mean_latents(pipe, pixels)  # [1, C, h, w]
    source = Image.fromarray(img) if args.vae_sample else x0
    mask = dp.diffedit_mask(pipe, source, query, reference, cfg, seed)  # [1, h, w]
    encoded = dp.diffedit_encode(pipe, source, cfg, seed)  # [1, r·N, C, h, w], noisiest first
    z = dp.diffedit_decode(pipe, query, reference, mask, encoded, cfg)  # [1, C, h, w]
    image = dp.decode_latents(pipe, z)
    sync(device)
    seconds = time.perf_counter() - t0
    return dict(
        image=np.asarray(to_image(image, *img.shape[:2])), mask=mask[0] > 0, latents=z, x0=x0, seconds=seconds
    )


def background_error(run: dict) -> float:
    """max |z − x0| over the latent cells outside the run's mask (0: the background is kept)."""
    outside = torch.from_numpy(~run["mask"]).to(run["latents"].device)
    diff = (run["latents"].float() - run["x0"].float()).abs()[..., outside]
    return float(diff.max()) if diff.numel() else 0.0


def compare(model, pipe, seed: int, args, ours_unet: UNetCalls, theirs_unet: UNetCalls) -> dict:
    """Both pipelines on the recolour edit of `seed`; the row of the table."""
    from retouch.shapes.world import render

    edit = sample_edit(seed, "recolor")
    img, query, reference = render(edit.source), edit.target_caption, edit.source_caption
    ours_unet.reset()
    ours = run_ours(model, img, query, reference, seed, args)
    theirs_unet.reset()
    pixels = to_pixels(model, load_image(img)).tensor  # [1, 3, H, W] in [-1, 1]
    theirs = run_theirs(pipe, img, pixels, query, reference, seed, args)
    n = args.mask_samples
    noise_diff = float((ours_unet.first[:n].float() - theirs_unet.first[:n].float()).abs().max())
    src, tgt = edit.remove[0], edit.add[0]
    return dict(
        seed=seed,
        edit=f"{src} → {tgt.split()[0]}",
        iou=iou(ours["mask"], theirs["mask"]),
        area_ours=ours["mask"].mean(),
        area_theirs=theirs["mask"].mean(),
        evals_ours=ours["evals"],
        evals_ours_counted=ours_unet.evals,
        evals_theirs=theirs_unet.evals,
        time_ours=ours["seconds"],
        time_theirs=theirs["seconds"],
        psnr=psnr(ours["image"], theirs["image"]),
        bg_ours=background_error(ours),
        bg_theirs=background_error(theirs),
        noise_diff=noise_diff,
    )


HEADER = (
    f"{'seed':>9} {'edit':<22} {'IoU':>5} {'area o/t':>11} {'evals o/t':>9} {'time o/t (s)':>13} "
    f"{'PSNR dB':>7} {'bg err o/t':>12} {'noise Δ':>8}"
)


def row(r: dict) -> str:
    return (
        f"{r['seed']:>9} {r['edit']:<22} {r['iou']:5.3f} {r['area_ours']:5.3f}/{r['area_theirs']:5.3f} "
        f"{r['evals_ours']:>4}/{r['evals_theirs']:<4} {r['time_ours']:6.2f}/{r['time_theirs']:<6.2f} "
        f"{r['psnr']:7.2f} {r['bg_ours']:5.3f}/{r['bg_theirs']:<6.3f} {r['noise_diff']:8.1e}"
    )


def means(rows: list[dict]) -> dict:
    keys = (
        "iou",
        "area_ours",
        "area_theirs",
        "evals_ours",
        "evals_theirs",
        "time_ours",
        "time_theirs",
        "psnr",
        "bg_ours",
        "bg_theirs",
        "noise_diff",
    )
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = model_folder(args)
    model = retouch.load(folder, device=args.device, dtype="float32")
    pipe = dp.diffedit_pipeline(folder, args.device)
    ours_unet, theirs_unet = UNetCalls(model.unet), UNetCalls(pipe.unet)
    print(
        f"model {folder}  device {args.device}  threads {args.threads}  N={args.num_inference_steps} "
        f"r={args.encode_ratio} n={args.mask_samples} w={args.guidance_scale} "
        f"mask w={args.mask_guidance_scale} strength={args.mask_strength} k={args.mask_clamp} "
        f"diffusers input: {'pixels (posterior sample)' if args.vae_sample else 'VAE mean latents'}"
    )
    compare(model, pipe, args.first_seed, args, ours_unet, theirs_unet)  # warm-up, not reported
    print(HEADER)
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.edits):
        rows.append(compare(model, pipe, seed, args, ours_unet, theirs_unet))
        if rows[-1]["evals_ours"] != rows[-1]["evals_ours_counted"]:
            raise RuntimeError(
                f"retouch reported {rows[-1]['evals_ours']} UNet evaluations, "
                f"its UNet ran {rows[-1]['evals_ours_counted']}"
            )
        print(row(rows[-1]), flush=True)
    m = means(rows)
    print(
        f"{'mean':>9} {'':<22} {m['iou']:5.3f} {m['area_ours']:5.3f}/{m['area_theirs']:5.3f} "
        f"{m['evals_ours']:>4.0f}/{m['evals_theirs']:<4.0f} {m['time_ours']:6.2f}/{m['time_theirs']:<6.2f} "
        f"{m['psnr']:7.2f} {m['bg_ours']:5.3f}/{m['bg_theirs']:<6.3f} {m['noise_diff']:8.1e}"
    )


if __name__ == "__main__":
    main()
