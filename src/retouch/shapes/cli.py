"""`retouch train`: train the mini Stable Diffusion on ShapesWorld, stage by stage.

    retouch train vae work/vae
    retouch train unet work/unet --vae-work work/vae
    retouch train export model/ --vae-work work/vae --unet-work work/unet
    retouch train judge

Every training setting is a flag derived from `retouch.shapes.train.TrainConfig`. Exit codes as
every retouch command: 0 done, 2 bad input (one line on stderr), 1 anything else.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from retouch.errors import InputError
from retouch.shell import CONTEXT, SettingsCommand, given_settings, set_threads, setting_options


def _stage_settings(skip):
    """The settings one training stage offers: every `TrainConfig` setting but those `skip(setting)`."""

    def options():
        from retouch.settings import settings_fields
        from retouch.shapes.train import TrainConfig

        hidden = {s.name for s in settings_fields(TrainConfig) if skip(s)}
        return setting_options({"train": TrainConfig}, keep=lambda name: name not in hidden)

    return options


# what the flow model's training does not read: the autoencoder's and the UNet's own settings
NOT_FLOW = (
    "kl_weight",
    "decoder_only",
    "min_snr_gamma",
    "architecture",
    "grown_lr_scale",
    "grounding_weight",
    "image_size",
)
_VAE_SETTINGS = _stage_settings(lambda s: s.help.startswith("unet:"))
_UNET_SETTINGS = _stage_settings(lambda s: s.help.startswith("autoencoder:"))
_FLOW_SETTINGS = _stage_settings(lambda s: s.name in NOT_FLOW)


@click.group(context_settings=CONTEXT)
def train():
    """Train the mini Stable Diffusion on ShapesWorld: vae, then unet, then export; its flow-matching
    sibling (a mini SD3): flow, then export-flow."""


def _train_config(settings, work: Path | None = None, init: Path | None = None):
    """The training settings given; for a UNet run (`work`), its architecture and image size
    where they are not given (`retouch.shapes.train.run_settings`)."""
    from retouch.shapes.train import TrainConfig, run_settings

    given = given_settings(settings)
    return TrainConfig(**(given if work is None else run_settings(work, init, given)))


def _train_logging(threads: int | None) -> None:
    """Training's log lines on stderr; torch's CPU threads as asked (else torch's own)."""
    lib = logging.getLogger("retouch")
    if not any(getattr(h, "retouch_cli", False) for h in lib.handlers):
        handler = logging.StreamHandler()  # stderr, as the command runs it
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        handler.retouch_cli = True
        lib.addHandler(handler)
    lib.setLevel(logging.INFO)
    if threads is not None:
        set_threads(threads)


def _ckpt(folder: Path, name: str, what: str) -> None:
    if not (folder / "ckpt" / name).is_file():
        raise InputError(f"{folder} has no {what} checkpoint (ckpt/{name})")


_folder = click.Path(file_okay=False, path_type=Path)
_threads = click.option(
    "--threads", type=click.IntRange(1), default=None, help="torch CPU threads [default: torch's own]."
)


@train.command("vae", cls=SettingsCommand, settings=_VAE_SETTINGS, context_settings=CONTEXT)
@click.argument("work", type=_folder)
@click.option("--init", type=_folder, help="Start from this folder's vae.safetensors.")
@_threads
def train_vae_command(work, init, threads, **settings):
    """Stage 1: the autoencoder, checkpointed (and resumed) in WORK."""
    from retouch.shapes.train import train_vae

    if init is not None and not (init / "vae.safetensors").is_file():
        raise InputError(f"--init {init} has no vae.safetensors")
    cfg = _train_config(settings)
    _train_logging(threads)
    train_vae(work, cfg, init=init)


@train.command("unet", cls=SettingsCommand, settings=_UNET_SETTINGS, context_settings=CONTEXT)
@click.argument("work", type=_folder)
@click.option("--vae-work", type=_folder, required=True, help="The autoencoder's work folder.")
@click.option("--init", type=_folder, help="Fine-tune from this trained model folder (diffusers format).")
@_threads
def train_unet_command(work, vae_work, init, threads, **settings):
    """Stage 2: UNet and text encoder on the trained autoencoder's latents, in WORK."""
    from retouch.shapes.train import train_unet

    _ckpt(vae_work, "vae.safetensors", "autoencoder")
    if init is not None and not (init / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        raise InputError(f"--init {init} is not a diffusers model folder with a UNet")
    cfg = _train_config(settings, work, init)
    _train_logging(threads)
    train_unet(work, vae_work, cfg, init=init)


@train.command("flow", cls=SettingsCommand, settings=_FLOW_SETTINGS, context_settings=CONTEXT)
@click.argument("work", type=_folder)
@click.option("--init", type=_folder, help="Go on from this trained mini-SD3 folder (diffusers format).")
@_threads
def train_flow_command(work, init, threads, **settings):
    """The mini Stable Diffusion 3: transformer and two text encoders with the rectified-flow loss, on
    the shipped autoencoder's latents, in WORK (checkpointed; rerun to resume)."""
    from retouch.shapes.train_flow import train_flow

    if init is not None and not (init / "transformer" / "diffusion_pytorch_model.safetensors").is_file():
        raise InputError(f"--init {init} is not a diffusers model folder with an SD3 transformer")
    cfg = _train_config(settings)
    _train_logging(threads)
    train_flow(work, cfg, init=init)


@train.command("export-flow", context_settings=CONTEXT)
@click.argument("out", type=_folder)
@click.option("--flow-work", type=_folder, required=True, help="The flow model's work folder.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float16",
    show_default=True,
    help="Precision of the stored transformer weights (they load in the dtype asked for).",
)
def train_export_flow_command(out, flow_work, dtype):
    """Assemble the flow model's EMA weights into a StableDiffusion3Pipeline folder OUT."""
    import torch

    from retouch.shapes.train_flow import export_flow

    _ckpt(flow_work, "ema_transformer.safetensors", "transformer")
    click.echo(f"wrote {export_flow(out, flow_work, getattr(torch, dtype))}")


@train.command("export", context_settings=CONTEXT)
@click.argument("out", type=_folder)
@click.option("--vae-work", type=_folder, required=True, help="The autoencoder's work folder.")
@click.option("--unet-work", type=_folder, required=True, help="The UNet's work folder.")
@click.option("--decoder-work", type=_folder, help="A decoder fine-tuned with the encoder frozen.")
@click.option(
    "--unet-dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Precision of the stored UNet weights (float16 halves them; they load as float32).",
)
def train_export_command(out, vae_work, unet_work, decoder_work, unet_dtype):
    """Assemble the trained parts into a diffusers model folder OUT."""
    import torch

    from retouch.shapes.train import export

    _ckpt(vae_work, "vae.safetensors", "autoencoder")
    _ckpt(unet_work, "ema_unet.safetensors", "UNet")
    if decoder_work is not None:
        _ckpt(decoder_work, "vae.safetensors", "decoder")
    dtype = getattr(torch, unet_dtype)
    click.echo(f"wrote {export(out, vae_work, unet_work, decoder_work, dtype)}")


@train.command("judge", context_settings=CONTEXT)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Weights file [default: the shipped judge's].",
)
@click.option("--steps", type=click.IntRange(1), default=800, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@_threads
def train_judge_command(output, steps, seed, threads):
    """The ShapesWorld judge: train on renders, save with its held-out accuracies beside it."""
    from retouch.shapes.judge import DEFAULT_WEIGHTS, train_and_export

    _train_logging(threads or 1)
    meta = train_and_export(output or DEFAULT_WEIGHTS, steps, seed)
    click.echo(json.dumps(meta, indent=2))
