"""retouch's LEDITS beside diffusers' LEditsPPPipelineStableDiffusion, on held-out ShapesWorld edits.

    python benchmarks/compare_ledits.py                      # the shipped model, 6 held-out edits
    python benchmarks/compare_ledits.py --model DIR          # another diffusers folder
    python benchmarks/compare_ledits.py --random-mini DIR    # untrained weights of the shipped
                                                             # architecture, written to DIR if absent

diffusers runs with its DEFAULT scheduler, the one its constructor swaps in for any scheduler it does
not take: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2) (LEDITS++'s
DPM-Solver++ 2M SDE inversion). With a DDIMScheduler (the edit-friendly DDPM inversion retouch
implements) diffusers 0.42.1's invert() crashes: float timesteps reach add_noise. retouch runs its
own edit-friendly DDPM inversion (docs/ledits.md, step 1) on the model's DDIM schedule.

Matched settings (printed): N total steps and the same K = N − skip edited steps (diffusers: its
num_inversion_steps = K, skip = skip/K so that its int(K·(1+skip)) = N); the concepts, their
direction, scale s, warm-up δ and threshold λ; no momentum (diffusers' LEDITS++ has none, so retouch
runs with momentum_scale 0 unless --momentum-scale); source text ∅ (LEDITS++'s default) or, with
--source caption, the scene's caption at w_src = 3.5 for both inversions.

diffusers runs twice per edit after ONE inversion: with its masks on (its default,
use_intersect_mask=True: the top-λ of |ψ| summed over channels intersected with a cross-attention
mask, the attention mask alone for t > 800) and off (use_intersect_mask=False and
use_cross_attn_mask=False: then λ thresholds |ψ| summed over channels, no mask). retouch thresholds ψ
per channel (SEGA) and uses no mask here.

Printed per edit:
  * reconstruction with no concepts, PSNR against the model's VAE round trip of the input (each
    side's own round trip; inf = identical pixels): retouch through its sampler (sega_ddpm_sample,
    no concepts; retouch.ledits itself returns the round trip without sampling), diffusers with masks
    on and off (no concept: the flags change nothing), and diffusers with final_sigmas_type=
    "sigma_min" ("fixed"): its default scheduler ends on σ = 0, where its inversion can keep no noise
    map (z = 0) and its sampler takes a first-order last step where the inversion took a second-order
    one, so its default cannot reconstruct exactly; "sigma_min" makes it exact. With a source
    caption diffusers cannot be exact at all: its edit guides with ∅ only, not with the source.
  * UNet evaluations (batch elements, counted by wrapping unet.forward, for both) and wall time
    (time.perf_counter after a warm-up edit; CUDA synchronised) of the inversion and of one edit
    after it, separately. diffusers' invert() also decodes the VAE round trip; each edit decodes.
  * the edit: PSNR against the input outside the dilated changed region (how much of the rest is
    kept) and, when the judge's weights exist, whether the judge reads the edited object as the
    target ("ok").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import retouch
from retouch.bench import diffusers_pipelines as dp
from retouch.denoiser import UNetCalls
from retouch.metrics import psnr
from retouch.models import SHIPPED
from retouch.shapes.world import EDIT_KINDS, HELD_OUT_SEED, masks, render, sample_edit
from retouch.timing import timed

W_SRC = 3.5  # source guidance scale, both sides (docs/ledits.md, step 1)


def parse_args(argv=None) -> argparse.Namespace:
    d = retouch.LEditsConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=SHIPPED, help="diffusers model folder (default: shipped)")
    p.add_argument(
        "--random-mini",
        type=Path,
        metavar="DIR",
        help="use untrained 'mini' weights saved in DIR (written there if absent)",
    )
    p.add_argument("--edits", type=int, default=6, help="number of edits")
    p.add_argument("--kind", choices=EDIT_KINDS, default="recolor", help="ShapesWorld edit kind")
    p.add_argument("--first-seed", type=int, default=HELD_OUT_SEED, help="scene seed of the first edit")
    p.add_argument("--num-inference-steps", type=int, default=50, help="N, total steps")
    p.add_argument("--skip", type=float, default=0.2, help="steps not edited: a count, or a fraction of N")
    p.add_argument("--source", choices=["empty", "caption"], default="empty", help="source text")
    p.add_argument("--edit-scale", type=float, default=d.edit_scale, help="s, each concept")
    p.add_argument("--edit-warmup", type=int, default=d.edit_warmup, help="δ, each concept")
    p.add_argument("--edit-threshold", type=float, default=d.edit_threshold, help="λ, each concept")
    p.add_argument("--momentum-scale", type=float, default=0.0, help="retouch only (diffusers has none)")
    p.add_argument("--save", type=Path, metavar="DIR", help="write input | retouch | diffusers on | off")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p.parse_args(argv)


def model_folder(args) -> Path:
    """The folder to compare on; with --random-mini, untrained mini weights written there once."""
    return args.model if args.random_mini is None else dp.random_model_folder(args.random_mini)


def steps(args) -> tuple[int, int]:
    """(N, K): total steps and the K = N − skip steps both sides edit."""
    n = args.num_inference_steps
    skip = retouch.LEditsConfig(num_inference_steps=n, skip=args.skip).skip_steps
    return n, n - skip


def settings(args) -> dict:
    n, k = steps(args)
    return dict(
        N=n,
        edited_steps=k,
        source=args.source,
        w_src=W_SRC,
        s=args.edit_scale,
        warmup=args.edit_warmup,
        threshold=args.edit_threshold,
        momentum_scale_retouch=args.momentum_scale,
        device=args.device,
    )


# --- one side each ------------------------------------------------------------------------------


def reconstruct_ours(model, inv) -> Image.Image:
    """retouch's DDPM sampler with the inversion's own text and scale and no concepts."""
    from retouch.denoiser import EvalCounter, unet_eps
    from retouch.latents import decode, to_image
    from retouch.methods.ledits import LEditsConfig, sega_ddpm_sample
    from retouch.schedule import Schedule
    from retouch.text import encode_text

    schedule = Schedule.from_scheduler(model.scheduler)
    uncond, cond = encode_text(model, ["", inv.source]).split(1)
    x = sega_ddpm_sample(
        unet_eps(model, schedule, EvalCounter()),
        schedule,
        inv,
        uncond,
        cond if inv.source else None,
        inv.source_guidance_scale,
        [],
        [],
        LEditsConfig(),
    )
    return to_image(decode(model, x), inv.height, inv.width)


def run_ours(model, count: UNetCalls, image: np.ndarray, edit, source: str, seed: int, args) -> dict:
    from retouch.latents import decode, to_image

    kw = dict(num_inference_steps=args.num_inference_steps, skip=args.skip)
    inv, t_inv, n_inv = timed(
        lambda: retouch.invert(model, image, source=source, seed=seed, **kw), model.device, count
    )
    vae = to_image(decode(model, inv.x0), inv.height, inv.width)
    rec = reconstruct_ours(model, inv)
    out, t_edit, n_edit = timed(
        lambda: retouch.ledits(
            model,
            inv,
            add=list(edit.add),
            remove=list(edit.remove),
            seed=seed,
            edit_scale=args.edit_scale,
            edit_warmup=args.edit_warmup,
            edit_threshold=args.edit_threshold,
            momentum_scale=args.momentum_scale,
            **kw,
        ),
        model.device,
        count,
    )
    assert n_edit == out.unet_evals and n_inv == inv.unet_evals  # retouch's own count agrees
    return dict(vae=vae, rec=rec, edit=out.image, t_inv=t_inv, n_inv=n_inv, t_edit=t_edit, n_edit=n_edit)


def their_edit(pipe, edit, masks_on: bool, args, concepts: bool = True) -> Image.Image:
    add, remove = (edit.add, edit.remove) if concepts else ((), ())
    return dp.ledits_edit(pipe, add, remove, args.edit_scale, args.edit_warmup, args.edit_threshold, masks_on)


def run_theirs(pipe, count: UNetCalls, image: np.ndarray, edit, source: str, seed: int, args) -> dict:
    n, k = steps(args)
    inv, t_inv, n_inv = timed(
        lambda: dp.ledits_invert(pipe, Image.fromarray(image), source, W_SRC, n, k, seed), pipe.device, count
    )
    r = dict(vae=inv.vae_reconstruction_images[0], t_inv=t_inv, n_inv=n_inv)
    for name, on in (("on", True), ("off", False)):
        r[f"rec_{name}"] = their_edit(pipe, edit, on, args, concepts=False)
        r[f"edit_{name}"], r[f"t_edit_{name}"], r[f"n_edit_{name}"] = timed(
            lambda on=on: their_edit(pipe, edit, on, args), pipe.device, count
        )
    return r


def reconstruct_theirs(pipe, image: np.ndarray, source: str, seed: int, args) -> tuple:
    """(reconstruction, VAE round trip) of a diffusers pipeline, no concepts."""
    n, k = steps(args)
    inv = dp.ledits_invert(pipe, Image.fromarray(image), source, W_SRC, n, k, seed)
    return dp.ledits_edit(pipe, (), (), 0.0, 0, 0.9, masks=False), inv.vae_reconstruction_images[0]


# --- metrics --------------------------------------------------------------------------------------


def edit_ok(judge, image, edit) -> bool | None:
    """Whether the judge reads the edited object as the target's (None without a judge or index)."""
    if judge is None or edit.index is None:
        return None
    from retouch.shapes.judge import read_region

    o = edit.target.objects[edit.index]
    region = masks(edit.target)[edit.index] | masks(edit.source)[edit.index]
    return read_region(judge, image, region) == (o.shape, o.color)


def load_judge_if_any():
    from retouch.shapes.judge import DEFAULT_WEIGHTS, load_judge

    return load_judge() if DEFAULT_WEIGHTS.is_file() else None


# --- the comparison -------------------------------------------------------------------------------


def compare(model, pipe, pipe_fixed, counts, seed: int, args, judge) -> dict:
    from scipy.ndimage import binary_dilation

    edit = sample_edit(seed, args.kind)
    image = render(edit.source)
    source = edit.source_caption if args.source == "caption" else ""
    ours = run_ours(model, counts[0], image, edit, source, seed, args)
    theirs = run_theirs(pipe, counts[1], image, edit, source, seed, args)
    fixed_rec, fixed_vae = reconstruct_theirs(pipe_fixed, image, source, seed, args)
    keep = ~binary_dilation(edit.changed_region(), iterations=3)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        strip = [image, ours["edit"], theirs["edit_on"], theirs["edit_off"]]
        Image.fromarray(np.concatenate([np.asarray(im) for im in strip], 1)).save(args.save / f"{seed}.png")
    return dict(
        seed=seed,
        edit=" ".join([*(f"+{c}" for c in edit.add), *(f"-{c}" for c in edit.remove)]),
        rec_ours=psnr(ours["rec"], ours["vae"]),
        rec_on=psnr(theirs["rec_on"], theirs["vae"]),
        rec_off=psnr(theirs["rec_off"], theirs["vae"]),
        rec_fixed=psnr(fixed_rec, fixed_vae),
        n_inv_ours=ours["n_inv"],
        t_inv_ours=ours["t_inv"],
        n_inv_theirs=theirs["n_inv"],
        t_inv_theirs=theirs["t_inv"],
        n_edit_ours=ours["n_edit"],
        t_edit_ours=ours["t_edit"],
        n_edit_on=theirs["n_edit_on"],
        t_edit_on=theirs["t_edit_on"],
        n_edit_off=theirs["n_edit_off"],
        t_edit_off=theirs["t_edit_off"],
        keep_ours=psnr(ours["edit"], image, keep),
        keep_on=psnr(theirs["edit_on"], image, keep),
        keep_off=psnr(theirs["edit_off"], image, keep),
        ok_ours=edit_ok(judge, ours["edit"], edit),
        ok_on=edit_ok(judge, theirs["edit_on"], edit),
        ok_off=edit_ok(judge, theirs["edit_off"], edit),
    )


COLUMNS = [  # (key, header, format)
    ("seed", "seed", "{:>9}"),
    ("edit", "edit", "{:<32}"),
    ("rec_ours", "rec ours", "{:>8.2f}"),
    ("rec_on", "rec on", "{:>7.2f}"),
    ("rec_off", "rec off", "{:>7.2f}"),
    ("rec_fixed", "rec fix", "{:>7.2f}"),
    ("n_inv_ours", "inv n ours", "{:>10}"),
    ("t_inv_ours", "s", "{:>6.3f}"),
    ("n_inv_theirs", "inv n theirs", "{:>12}"),
    ("t_inv_theirs", "s", "{:>6.3f}"),
    ("n_edit_ours", "edit n ours", "{:>11}"),
    ("t_edit_ours", "s", "{:>6.3f}"),
    ("n_edit_on", "n on", "{:>5}"),
    ("t_edit_on", "s", "{:>6.3f}"),
    ("n_edit_off", "n off", "{:>5}"),
    ("t_edit_off", "s", "{:>6.3f}"),
    ("keep_ours", "keep ours", "{:>9.2f}"),
    ("keep_on", "on", "{:>6.2f}"),
    ("keep_off", "off", "{:>6.2f}"),
    ("ok_ours", "ok ours", "{:>7}"),
    ("ok_on", "on", "{:>5}"),
    ("ok_off", "off", "{:>5}"),
]


def fmt(key_fmt: str, value) -> str:
    if value is None:
        return key_fmt.replace(".2f", "").replace(".3f", "").format("-")
    return key_fmt.format(value)


def means(rows: list[dict]) -> dict:
    """Column means; PSNRs that are inf (identical) count as 99 dB; judge verdicts as a rate."""
    out = {"seed": "mean", "edit": f"{len(rows)} edits"}
    for key, _, _ in COLUMNS[2:]:
        vals = [r[key] for r in rows if r[key] is not None]
        is_psnr = key.startswith(("rec_", "keep_"))
        out[key] = (
            float(np.mean([min(float(v), 99.0) if is_psnr else float(v) for v in vals])) if vals else None
        )
    return out


def print_table(rows: list[dict]) -> None:
    widths = [len(fmt(f, rows[0][k])) for k, _, f in COLUMNS]
    print(
        "  ".join(
            h.rjust(w) if i > 1 else h.ljust(w) for i, ((_, h, _), w) in enumerate(zip(COLUMNS, widths))
        )
    )
    for r in [*rows, means(rows)]:
        print("  ".join(fmt(f, r[k]) for k, _, f in COLUMNS))


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = model_folder(args)
    if not (folder / "model_index.json").is_file():
        raise SystemExit(f"no model at {folder}: train it, or pass --model DIR or --random-mini DIR")
    model = retouch.load(folder, device=args.device, dtype="float32")
    pipe = dp.ledits_pipeline(folder, args.device)
    pipe_fixed = dp.ledits_pipeline(folder, args.device, final_sigmas_type="sigma_min")
    counts = (UNetCalls(model.unet), UNetCalls(pipe.unet))
    judge = load_judge_if_any()
    print(
        f"model {folder}; diffusers scheduler: {type(pipe.scheduler).__name__}"
        f"(algorithm_type={pipe.scheduler.config.algorithm_type}, solver_order=2); judge: {judge is not None}"
    )
    print("settings:", settings(args))
    compare(model, pipe, pipe_fixed, counts, args.first_seed + args.edits, args, judge)  # warm-up
    rows = [
        compare(model, pipe, pipe_fixed, counts, args.first_seed + i, args, judge) for i in range(args.edits)
    ]
    print_table(rows)


if __name__ == "__main__":
    main()
