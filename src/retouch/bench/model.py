"""`retouch bench model`: how good is a ShapesWorld model, on held-out seeds never used in training.

Prints and returns: the autoencoder's reconstruction PSNR, the judge's held-out accuracy,
text-to-image faithfulness (judged), and the DDIM inversion round trip's PSNR. Everything runs at
the model's native size; the judge reads generated images at its own (world.SIZE, box-resized).
"""

from __future__ import annotations

import json
import time

import click
import numpy as np
import torch

from retouch.metrics import psnr
from retouch.shapes import world
from retouch.shapes.world import HELD_OUT_SEED


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] → uint8 (B, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _renders(seeds, size: int = world.SIZE) -> tuple[np.ndarray, torch.Tensor, list[world.Scene]]:
    scenes = [world.sample_scene(int(s)) for s in seeds]
    imgs = np.stack([world.render(s, size) for s in scenes])  # (B, size, size, 3)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1  # [B, 3, size, size]
    return imgs, x, scenes


@torch.no_grad()
def autoencoder_psnr(model, n: int = 512, seed: int = HELD_OUT_SEED, size: int = world.SIZE) -> float:
    from retouch.latents import decode, encode

    imgs, x, _ = _renders(range(seed, seed + n), size)
    out = torch.cat([decode(model, encode(model, b.to(model.device))) for b in x.split(64)])
    return psnr(imgs, _to_uint8(out))


@torch.no_grad()
def ddim_round_trip_psnr(model, n: int = 64, steps: int = 50, seed: int = HELD_OUT_SEED + 50_000):
    """DDIM inversion with the empty prompt, then DDIM sampling back: PSNR to the input and to
    the autoencoder's own round trip."""
    from retouch.denoiser import EvalCounter, guided_eps, unet_eps
    from retouch.inversion import ddim_encode
    from retouch.latents import decode, encode
    from retouch.sampling import ddim_sample
    from retouch.schedule import Schedule
    from retouch.text import encode_text

    imgs, x, _ = _renders(range(seed, seed + n), model.native_size)
    schedule = Schedule.from_scheduler(model.scheduler)
    ts = schedule.timesteps(steps)
    eps = guided_eps(unet_eps(model, schedule, EvalCounter()), encode_text(model, [""]), None, 1.0)
    x0 = torch.cat([encode(model, b.to(model.device)) for b in x.split(64)])
    xt = ddim_encode(eps, schedule, x0, ts[::-1])[-1]
    back = ddim_sample(eps, schedule, xt, ts)
    out = _to_uint8(torch.cat([decode(model, b) for b in back.split(64)]))
    vae = _to_uint8(torch.cat([decode(model, b) for b in x0.split(64)]))
    return psnr(imgs, out), psnr(vae, out)


@torch.no_grad()
def text_to_image(
    model, n: int = 200, steps: int = 50, guidance: float = 5.0, seed: int = HELD_OUT_SEED, batch: int = 50
):
    """Generate from n held-out captions with diffusers' StableDiffusionPipeline (DDIM)."""
    pipe = _pipeline(model)
    scenes = [world.sample_scene(seed + 100_000 + i) for i in range(n)]
    captions = [world.caption(s) for s in scenes]
    return captions, generate(pipe, model, captions, steps, guidance, seed, batch)


def _pipeline(model):
    """diffusers' StableDiffusionPipeline over the bundle's parts (DDIM), quiet; a flow model's own
    StableDiffusion3Pipeline (its Euler scheduler)."""
    from diffusers import DDIMScheduler, StableDiffusion3Pipeline, StableDiffusionPipeline

    from retouch.bench.diffusers_pipelines import pipeline_on

    if model.family == "sd3":
        return pipeline_on(model, StableDiffusion3Pipeline)
    return pipeline_on(
        model, StableDiffusionPipeline, scheduler=DDIMScheduler.from_config(model.scheduler.config)
    )


def generate(
    pipe,
    model,
    captions: list[str],
    steps: int,
    guidance: float,
    seed: int,
    batch: int,
    size: int | None = None,
):
    """Images (uint8 (H, W, 3)) generated from the captions, image i with seed + i, at `size`
    pixels a side (default: the model's native size)."""
    from retouch.flows import is_flow, one_for_many, zero_tokens

    size = size or model.native_size
    n = len(captions)
    images = []
    copies = zero_tokens(model) if is_flow(model) else 1  # SD3 without T5: its zero rows given once
    fewer = {"max_sequence_length": 1} if copies > 1 else {}  # (the same images: docs/flow.md, "Speed")
    for i in range(0, n, batch):
        gens = [
            torch.Generator(model.device).manual_seed(seed + i + j)
            for j in range(len(captions[i : i + batch]))
        ]
        with one_for_many(model.unet, copies):
            out = pipe(
                captions[i : i + batch],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
                output_type="np",
                height=size,
                width=size,
                **fewer,
            )
        images.extend((out.images * 255).round().astype(np.uint8))
    return images


@torch.no_grad()
def concept_draws(
    model, judge, n: int = 200, steps: int = 50, guidance: float = 5.0, seed: int = HELD_OUT_SEED + 200_000
) -> dict:
    """Images generated from a bare concept, n held-out draws each: from an object's ("red circle":
    no article, no background), the share that holds that object (the judge finds an object of
    that colour and shape); from a background's ("black background"), the share whose background
    the judge reads as that colour."""
    from retouch.shapes.judge import read_backgrounds, read_images

    pipe = _pipeline(model)
    scenes = [world.sample_scene(seed + i) for i in range(n)]
    concepts = [s.objects[0].phrase for s in scenes]
    images = generate(pipe, model, concepts, steps, guidance, seed, 50)
    hits = [
        (s.objects[0].color, s.objects[0].shape) in objs
        for s, (_, objs) in zip(scenes, read_images(judge, images))
    ]
    names = list(world.BACKGROUNDS)
    backgrounds = [names[i % len(names)] for i in range(n)]  # each background in turn
    bg_images = generate(pipe, model, [f"{b} background" for b in backgrounds], steps, guidance, seed, 50)
    bg_hits = [a == b for a, b in zip(read_backgrounds(judge, bg_images), backgrounds)]
    return {
        "concept_contains": float(np.mean(hits)),
        "background_concept_holds": float(np.mean(bg_hits)),
        "concept_samples": list(zip(concepts, images))[:24],
    }


@torch.no_grad()
def word_grounding(model, n: int = 128, seed: int = HELD_OUT_SEED + 60_000) -> dict:
    """Where an object's words attend (TokenCompose's measure, Wang et al. 2024): held-out scenes
    noised to levels spread over the schedule, one UNet call under their whole captions; per
    colour and shape word, the share of its cross-attention (over pixels, averaged over heads and
    layers) inside its object. Returns that share's mean and the objects' mean area: a model
    whose words do not localise gives a share near the area."""
    from retouch.attention import CrossAttentionMaps, attention_processor, region_shares
    from retouch.latents import encode
    from retouch.shapes.train import token_regions
    from retouch.text import encode_text

    _, x, scenes = _renders(range(seed, seed + n), model.native_size)
    texts = [world.caption(s) for s in scenes]
    shares, areas = [], []
    for i in range(0, n, 32):
        x0 = encode(model, x[i : i + 32].to(model.device))  # [b, 4, h, w]
        b, size = x0.shape[0], x0.shape[-1]
        t = torch.linspace(50, 950, b).long().to(model.device)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + i)).to(x0)
        x_t = model.scheduler.add_noise(x0, noise, t)
        regions, named = token_regions(model.tokenizer, scenes[i : i + b], texts[i : i + b], size)
        area = regions.flatten(2).mean(-1)  # [b, L]
        objects = named & (area < 0.5)  # the colour and shape words, not the background's
        with attention_processor(model.unet, CrossAttentionMaps()) as rec:
            model.unet(x_t, t, encode_text(model, texts[i : i + b]))
        shares.append(
            torch.stack([region_shares(a.float().cpu(), regions) for a in rec.maps]).mean(0)[objects]
        )
        areas.append(area[objects])
    return {
        "word_attention_inside": float(torch.cat(shares).mean()),
        "word_region_area": float(torch.cat(areas).mean()),
    }


def model_report(
    model=None, judge=None, n_recon: int = 512, n_t2i: int = 200, n_inv: int = 64, n_ground: int = 128
) -> dict:
    """Every figure of the model card, measured now on held-out seeds."""
    import retouch
    from retouch.shapes.grammar import parse_caption
    from retouch.shapes.judge import faithful, held_out_accuracy, load_judge

    model = model if model is not None else retouch.load(device="cpu")
    judge = judge if judge is not None else load_judge()
    t0 = time.perf_counter()
    report = {"autoencoder_psnr_db": autoencoder_psnr(model, n_recon, size=model.native_size)}
    report["judge"] = held_out_accuracy(judge)
    captions, images = text_to_image(model, n_t2i)
    ok = [bool(faithful(judge, img, cap)) for img, cap in zip(images, captions)]
    report["t2i_faithful"] = float(np.mean(ok))
    by_n = {}
    for cap, good in zip(captions, ok):
        by_n.setdefault(len(parse_caption(cap)[1]), []).append(good)
    report["t2i_faithful_by_objects"] = {k: float(np.mean(v)) for k, v in sorted(by_n.items())}
    report.update(concept_draws(model, judge, n_t2i))
    if model.family in ("sd", "sdxl"):  # the UNet's cross-attention; a transformer's is joint attention
        report.update(word_grounding(model, n_ground))
    to_input, to_vae = ddim_round_trip_psnr(model, n_inv)
    report["ddim_round_trip_psnr_db"] = to_input
    report["ddim_round_trip_vs_autoencoder_psnr_db"] = to_vae
    report["seconds"] = time.perf_counter() - t0
    report["samples"] = list(zip(captions, images))
    return report


def sample_grid(samples, path, cols: int = 6, rows: int = 4) -> None:
    """A PNG grid of generated images with their captions below each."""
    from PIL import Image, ImageDraw

    cell, text_h = 128, 44
    grid = Image.new("RGB", (cols * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (cap, img) in enumerate(samples[: cols * rows]):
        x, y = (i % cols) * cell, (i // cols) * (cell + text_h)
        grid.paste(Image.fromarray(img).resize((cell, cell), Image.NEAREST), (x, y))
        objects, on, background = cap.rpartition(" on ")  # the background starts its own line
        lines = [""]
        for part in (objects, on.strip() + " " + background) if on else (cap,):
            for w in part.split(" "):
                if len(lines[-1]) + len(w) > 24:
                    lines.append("")
                lines[-1] += ("" if not lines[-1] else " ") + w
            lines.append("")
        draw.multiline_text((x + 2, y + cell + 1), "\n".join(lines[:4]), fill="black", spacing=0)
    grid.save(path)


@click.command("model")
@click.option("--model", "model_path", default=None, help="Model folder (default: the shipped model).")
@click.option("--recon", default=512, show_default=True, help="Renders for the autoencoder PSNR.")
@click.option("--t2i", default=200, show_default=True, help="Held-out captions for text-to-image.")
@click.option("--inversions", default=64, show_default=True, help="Images for the DDIM round trip.")
@click.option("--grounding", default=128, show_default=True, help="Captions for where object words attend.")
@click.option("--grid", type=click.Path(dir_okay=False), default=None, help="Write a sample grid PNG here.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def model_command(model_path, recon, t2i, inversions, grounding, grid, as_json):
    """Measure a ShapesWorld model on held-out seeds (autoencoder, judge, text-to-image, DDIM)."""
    import retouch
    from retouch.shell import quiet_libraries

    quiet_libraries()
    model = retouch.load(model_path, device="cpu")
    report = model_report(model, n_recon=recon, n_t2i=t2i, n_inv=inversions, n_ground=grounding)
    if grid:
        sample_grid(report["samples"], grid)
    report.pop("samples")
    report.pop("concept_samples")
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    j = report["judge"]
    click.echo(f"autoencoder PSNR ({recon} held-out renders):       {report['autoencoder_psnr_db']:.2f} dB")
    click.echo(f"judge held-out accuracy:                           {json.dumps(j)}")
    click.echo(
        f"text-to-image faithful ({t2i} captions, 50 steps, w=5): {report['t2i_faithful']:.1%}  "
        f"by object count {report['t2i_faithful_by_objects']}"
    )
    click.echo(
        f"bare concepts ({t2i} draws, 'red circle', no background): {report['concept_contains']:.1%} hold it"
    )
    click.echo(
        f"bare background concepts ({t2i} draws, 'black background'): "
        f"{report['background_concept_holds']:.1%} have that background"
    )
    if "word_attention_inside" in report:
        click.echo(
            f"object words' cross-attention inside their object ({grounding} captions): "
            f"{report['word_attention_inside']:.1%} (the objects' area: {report['word_region_area']:.1%})"
        )
    click.echo(
        f"ODE (DDIM / Euler) round trip ({inversions} images, 50 steps): "
        f"{report['ddim_round_trip_psnr_db']:.2f} dB to the input, "
        f"{report['ddim_round_trip_vs_autoencoder_psnr_db']:.2f} dB to the autoencoder's"
    )
    click.echo(f"({report['seconds']:.0f} s)")
