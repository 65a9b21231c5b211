"""Time per edit: each retouch method beside its diffusers counterpart, matched, in one run.

    python benchmarks/speed.py                         # the shipped model, 3 edits
    python benchmarks/speed.py --random-mini DIR       # untrained weights of the shipped architecture
    python benchmarks/speed.py --full-size             # Stable Diffusion 1.5's architecture, random
                                                       # weights, 512x512 (float16 + peak memory on GPU;
                                                       # on the CPU 5 steps, 2 mask samples, and a
                                                       # light warm-up: an edit takes minutes there)
    python benchmarks/speed.py --full-size --construct-only    # build it, print parameter counts, exit
    python benchmarks/speed.py --fast                  # retouch's named fast settings against each
                                                       # diffusers pipeline at ITS defaults (DiffEdit:
                                                       # N=50, mask with CFG 7.5; LEDITS++: 30
                                                       # inversion steps, skip 0.15)

Pairs (retouch.bench.methods.COUNTERPARTS), run by the same code as `retouch bench edits`:
  * diffedit ↔ diffusers_diffedit (StableDiffusionDiffEditPipeline): N steps, encoding ratio r,
    n mask samples, the same mask noises, no CFG for the mask or the encoding, CFG w decoding;
  * ledits_concepts ↔ diffusers_ledits (LEditsPPPipelineStableDiffusion, its DPM-Solver++ SDE and
    implicit masks): the same N total / K edited steps, concepts, scale, warm-up and threshold;
    source ∅ and retouch's momentum off (LEDITS++ has none), so both spend 1 + k evaluations a step.

Per pair and edit, in alternating order: the first edit (inversion/encoding included) and a second
edit reusing it, wall seconds after a warm-up (CUDA synchronised), UNet evaluations (batch elements,
counted by wrapping unet.forward) and, on a GPU, peak memory. Printed: medians and the ratio
diffusers / retouch of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from retouch.bench.cases import make_cases
from retouch.bench.diffusers_pipelines import random_model_folder
from retouch.bench.edits import warm_up
from retouch.bench.methods import COUNTERPARTS, METHODS, Context, Settings, run_method
from retouch.denoiser import UNetCalls
from retouch.models import SHIPPED
from retouch.shapes.world import HELD_OUT_SEED


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=SHIPPED, help="diffusers model folder (default: shipped)")
    p.add_argument("--random-mini", type=Path, metavar="DIR", help="untrained 'mini' weights in DIR")
    p.add_argument("--full-size", action="store_true", help="SD 1.5's architecture, random weights, 512x512")
    p.add_argument("--construct-only", action="store_true", help="with --full-size: build, count, exit")
    p.add_argument("--edits", type=int, default=3, help="timed edits per method (after one warm-up)")
    p.add_argument("--first-seed", type=int, default=HELD_OUT_SEED)
    p.add_argument("--kind", default="recolor", help="ShapesWorld edit kind")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="N for both methods [default: theirs (50 DiffEdit, 100 LEDITS); 5 full-size on CPU]",
    )
    p.add_argument(
        "--mask-samples", type=int, default=None, help="DiffEdit's n [default 10; 2 full-size on CPU]"
    )
    p.add_argument(
        "--warmup",
        choices=["edit", "light"],
        default=None,
        help="before timing: one whole edit per method, or one VAE round trip and one UNet call "
        "[default: light full-size on CPU, where an edit takes minutes; else edit]",
    )
    p.add_argument("--pairs", default=",".join(COUNTERPARTS), help="retouch methods to time, comma list")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: float16 on GPU, float32 on CPU")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--fast", action="store_true", help="ours at FAST, theirs at the pipelines' defaults")
    return p.parse_args(argv)


# --- Stable Diffusion 1.5's architecture, built in code ------------------------------------------


def sd15_components(tokenizer_dir: Path) -> dict:
    """Untrained components with Stable Diffusion 1.5's configs (v1-inference.yaml / the diffusers
    folder's config.json files), and an offline tokenizer of the ShapesWorld words. The text
    encoder keeps CLIP's 49408-token embedding so that its size is SD's."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from retouch.shapes.architecture import SD1_SCHEDULER, build_tokenizer

    tokenizer = build_tokenizer(tokenizer_dir)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=max(49408, len(tokenizer)),
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(**SD1_SCHEDULER)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def param_counts(parts: dict) -> dict[str, int]:
    return {k: sum(p.numel() for p in parts[k].parameters()) for k in ("unet", "vae", "text_encoder")}


def load_model(args):
    """The ModelBundle to time: full-size random SD 1.5, or a diffusers folder."""
    import retouch
    from retouch.models import from_components

    if args.full_size:
        with torch.device(args.device):  # initialise the weights where they will run
            parts = sd15_components(Path(tempfile.mkdtemp(prefix="retouch-sd15-tok-")))
        print("parameters:", json.dumps(param_counts(parts)))
        dtype = args.dtype or ("float16" if torch.device(args.device).type == "cuda" else "float32")
        return from_components(**parts, model_id="sd15-random", device=args.device, dtype=dtype)
    folder = args.model if args.random_mini is None else random_model_folder(args.random_mini)
    if not (Path(folder) / "model_index.json").is_file():
        raise SystemExit(f"no model at {folder}: train it, or pass --model DIR or --random-mini DIR")
    return retouch.load(folder, device=args.device, dtype=args.dtype or "float32")


def fast_settings() -> tuple[Settings, Settings]:
    """(retouch at its named fast settings, diffusers' pipelines at their own defaults)."""
    from retouch.methods.diffedit import FAST as DF
    from retouch.methods.ledits import FAST as LF

    s = Settings(source="empty")
    ours = replace(s, diffedit=replace(s.diffedit, **DF), ledits=replace(s.ledits, **LF))
    theirs = replace(
        s,
        diffedit=replace(s.diffedit, mask_guidance_scale=7.5),
        ledits=replace(s.ledits, num_inference_steps=30, skip=0.15, momentum_scale=0.0),
    )
    return ours, theirs


def settings(args, device: torch.device) -> Settings:
    """Both methods' configs, matched (see the module's docstring)."""
    small = args.full_size and device.type == "cpu"
    steps = args.steps or (5 if small else None)
    n = args.mask_samples or (2 if small else None)
    s = Settings(source="empty")
    d = s.diffedit if steps is None else replace(s.diffedit, num_inference_steps=steps)
    d = d if n is None else replace(d, mask_samples=n)
    c = replace(s.ledits, momentum_scale=0.0)
    c = c if steps is None else replace(c, num_inference_steps=steps)
    return replace(s, diffedit=d, ledits=c)


# --- timing -------------------------------------------------------------------------------------------


def time_one(ctx: Context, calls: UNetCalls, name: str, case, s: Settings) -> dict:
    """One method on one case: first edit (with its preparation) and second edit, seconds, evals,
    peak memory (GPU)."""
    cuda = ctx.model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(ctx.model.device)
    _, prep, edit = run_method(ctx, calls, METHODS[name], case, s, {})
    return dict(
        method=name,
        case=case.id,
        seconds=(prep.seconds if prep else 0.0) + edit.seconds,
        seconds_second=edit.seconds,
        evals=(prep.evals if prep else 0) + edit.evals,
        evals_second=edit.evals,
        peak_gib=torch.cuda.max_memory_allocated(ctx.model.device) / 2**30 if cuda else None,
    )


def median(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r[key] is not None]
    return statistics.median(vals) if vals else None


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.construct_only:
        if not args.full_size:
            raise SystemExit("--construct-only goes with --full-size")
        with torch.device("meta"):  # shapes and parameter counts only: nothing allocated
            parts = sd15_components(Path(tempfile.mkdtemp(prefix="retouch-sd15-tok-")))
        print("parameters:", json.dumps(param_counts(parts)))
        return
    model = load_model(args)
    ctx, calls = Context(model), UNetCalls(model.unet)
    s = settings(args, model.device)
    s_ours, s_theirs = fast_settings() if args.fast else (s, s)
    cases = make_cases(args.first_seed, args.edits + 1, [args.kind], size=model.native_size)
    pairs = [(ours, COUNTERPARTS[ours]) for ours in args.pairs.split(",")]
    warmup = args.warmup or ("light" if args.full_size and model.device.type == "cpu" else "edit")
    print(
        f"model {model.model_id} on {model.device} ({model.dtype}), {cases[0].input_image.shape[0]}px, "
        f"threads {args.threads}; DiffEdit N={s.diffedit.num_inference_steps} r={s.diffedit.encode_ratio} "
        f"n={s.diffedit.mask_samples}; LEDITS N={s.ledits.num_inference_steps} skip={s.ledits.skip_steps}; "
        f"warm-up: {warmup}" + ("; --fast: ours at FAST, theirs at their defaults" if args.fast else "")
    )
    if warmup == "light":  # kernels, allocator, the diffusers pipelines: what a first call pays
        warm_up(ctx, [name for pair in pairs for name in pair])
    else:
        for ours, theirs in pairs:  # the first case, not reported
            time_one(ctx, calls, ours, cases[0], s_ours)
            time_one(ctx, calls, theirs, cases[0], s_theirs)
    rows = []
    for i, case in enumerate(cases[1:]):
        for ours, theirs in pairs:
            order = [(ours, s_ours), (theirs, s_theirs)]
            rows += [
                time_one(ctx, calls, name, case, st) for name, st in (order if i % 2 == 0 else order[::-1])
            ]
    print(
        f"{'retouch':<16} {'diffusers':<19} {'s/edit o|t':>17} {'ratio':>6} {'2nd s o|t':>17} {'ratio':>6} "
        f"{'evals o|t':>10} {'2nd evals':>10} {'peak GiB o|t':>13}"
    )
    for ours, theirs in pairs:
        o = [r for r in rows if r["method"] == ours]
        t = [r for r in rows if r["method"] == theirs]
        so, so2, st, st2 = (median(x, k) for x in (o, t) for k in ("seconds", "seconds_second"))
        peak = (
            f"{median(o, 'peak_gib'):.2f}|{median(t, 'peak_gib'):.2f}"
            if median(o, "peak_gib") is not None
            else "-"
        )
        print(
            f"{ours:<16} {theirs:<19} {so:8.3f}|{st:<8.3f} {st / so:6.2f} "
            f"{so2:8.3f}|{st2:<8.3f} {st2 / so2:6.2f} "
            f"{median(o, 'evals'):>4.0f}|{median(t, 'evals'):<5.0f} {median(o, 'evals_second'):>4.0f}|"
            f"{median(t, 'evals_second'):<5.0f} {peak:>13}"
        )
    calls.unwrap()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
