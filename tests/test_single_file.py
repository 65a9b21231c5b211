"""Single-file checkpoints: a model written in the original (CompVis/SGM) layout, one `.safetensors`
file as model sites share them, loads with `retouch.load(path, config=folder)` to the same weights;
pickled files only when asked by name; every refusal is one line naming the way that works.

The original layout is written here from the diffusers components (the reverse of what diffusers'
`from_single_file` reads), so the test checks retouch's loading against diffusers' conversion.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file

import retouch
from retouch.errors import ModelError
from retouch.models import SHIPPED
from retouch.shapes.world import render, sample_scene

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1"}
RESNET |= {"norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _renamed(rest: str, names: dict[str, str]) -> str:
    """`rest` with its leading module name replaced by its original name."""
    for new, old in names.items():
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_key(key: str, per_block: int, up_attention: set[int]) -> str:
    """A diffusers UNet2DConditionModel key → its name under `model.diffusion_model.`: down and up
    blocks become numbered input_blocks/output_blocks, resnets' layers their Sequential indices."""
    fixed = {
        **DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"],
        **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"],
    }
    if key in fixed:
        return fixed[key]
    part = key.split(".")
    if part[0] == "mid_block":
        slot = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{part[1]}.{part[2]}"]
        rest = ".".join(part[3:])
        return f"middle_block.{slot}." + (_renamed(rest, RESNET) if part[1] == "resnets" else rest)
    i, kind, j, rest = int(part[1]), part[2], int(part[3]), ".".join(part[4:])
    first = 1 + i * (per_block + 1) if part[0] == "down_blocks" else i * (per_block + 1)
    stage = "input_blocks" if part[0] == "down_blocks" else "output_blocks"
    if kind == "downsamplers":
        return f"input_blocks.{first + per_block}.0.op." + rest.removeprefix("conv.")
    if kind == "upsamplers":
        return f"output_blocks.{first + per_block}.{2 if i in up_attention else 1}.{rest}"
    if kind == "resnets":
        return f"{stage}.{first + j}.0." + _renamed(rest, RESNET)
    return f"{stage}.{first + j}.1.{rest}"


def vae_key(key: str, n_up: int) -> str:
    """A diffusers AutoencoderKL key → its name under `first_stage_model.`."""
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in fixed:
        return fixed[key]
    coder, block, *part = key.split(".")
    if block == "mid_block":
        kind, j, rest = part[0], int(part[1]), ".".join(part[2:])
        if kind == "attentions":
            return f"{coder}.mid.attn_1." + _renamed(rest, VAE_ATTENTION)
        return f"{coder}.mid.block_{j + 1}." + _renamed(rest, {"conv_shortcut": "nin_shortcut"})
    i, kind, rest = int(part[0]), part[1], ".".join(part[3:])
    level = i if block == "down_blocks" else n_up - 1 - i
    stage = "down" if block == "down_blocks" else "up"
    if kind in ("downsamplers", "upsamplers"):
        return f"{coder}.{stage}.{level}.{stage}sample.{rest}"
    return f"{coder}.{stage}.{level}.block.{part[2]}." + _renamed(rest, {"conv_shortcut": "nin_shortcut"})


def open_clip_state(text_model) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection's weights in OpenCLIP's names (SDXL's second text encoder):
    fused in_proj for q, k, v; the projection transposed."""
    sd = {k.removeprefix("text_model."): v for k, v in text_model.state_dict().items()}
    out = {
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
        "text_projection": sd.pop("text_projection.weight").T.contiguous(),
    }
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    names |= {"self_attn.out_proj": "attn.out_proj"}
    for layer in range(text_model.config.num_hidden_layers):
        pre = f"encoder.layers.{layer}."
        for kind in ("weight", "bias"):
            qkv = [sd.pop(f"{pre}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(qkv)
        for k in [k for k in sd if k.startswith(pre)]:
            out[f"transformer.resblocks.{layer}." + _renamed(k[len(pre) :], names)] = sd.pop(k)
    assert not sd, sorted(sd)  # every weight written
    return out


def original_layout(parts: dict) -> dict[str, torch.Tensor]:
    """The components' weights as one state dict in the original layout: SD 1.x (CompVis) or, with a
    second text encoder, SDXL (SGM's `conditioner.embedders`)."""
    unet, vae = parts["unet"], parts["vae"]
    up_attention = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    per_block = unet.config.layers_per_block
    out = {
        f"model.diffusion_model.{unet_key(k, per_block, up_attention)}": v
        for k, v in unet.state_dict().items()
    }
    n_up = len(vae.config.up_block_types)
    for k, v in vae.state_dict().items():
        if "mid_block.attentions" in k and v.ndim == 2:
            v = v[:, :, None, None]  # the original VAE's attention projections are 1x1 convolutions
        out[f"first_stage_model.{vae_key(k, n_up)}"] = v
    clip = {
        "text_model." + k.removeprefix("text_model."): v
        for k, v in parts["text_encoder"].state_dict().items()
    }
    if "text_encoder_2" not in parts:
        return out | {f"cond_stage_model.transformer.{k}": v for k, v in clip.items()}
    out |= {f"conditioner.embedders.0.transformer.{k}": v for k, v in clip.items()}
    second = open_clip_state(parts["text_encoder_2"])
    return out | {f"conditioner.embedders.1.model.{k}": v for k, v in second.items()}


def write_single_file(parts: dict, path: Path) -> Path:
    save_file({k: v.detach().contiguous() for k, v in original_layout(parts).items()}, str(path))
    return path


def assert_same_weights(loaded, parts: dict) -> None:
    """Every weight of every network as the components had it."""
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name not in parts:
            continue
        want, got = parts[name].state_dict(), getattr(loaded, name).state_dict()
        assert sorted(got) == sorted(want), name
        for k, v in want.items():
            assert torch.equal(got[k], v), f"{name}.{k}"


@pytest.fixture(scope="module")
def shipped_parts():
    """The shipped model's networks (4 latent channels, a VAE that downsamples 4 times, a tokenizer
    of ShapesWorld's words) as a diffusers folder holds them."""
    model = retouch.load(SHIPPED, device="cpu")
    return dict(unet=model.unet, vae=model.vae, text_encoder=model.text_encoder), model


def test_the_shipped_model_as_one_file_loads_to_the_same_model(shipped_parts, tmp_path):
    parts, folder_model = shipped_parts
    path = write_single_file(parts, tmp_path / "shapes-sd.safetensors")
    model = retouch.load(path, device="cpu", config=SHIPPED)
    assert_same_weights(model, parts)
    assert model.fingerprint == folder_model.fingerprint and model.model_id == "shapes-sd.safetensors"
    assert model.tokenizer.get_vocab() == folder_model.tokenizer.get_vocab()
    image = render(sample_scene(10_000_001))
    steps = dict(num_inference_steps=4, mask_samples=2)
    a = retouch.diffedit(model, image, query="a green circle", reference="a red circle", **steps)
    b = retouch.diffedit(folder_model, image, query="a green circle", reference="a red circle", **steps)
    assert torch.equal(a.latents, b.latents)


def test_a_tiny_sdxl_in_sgm_layout_loads_with_its_folder_as_config(tmp_path):
    from retouch.shapes.architecture import build_sdxl_components, save_pipeline

    parts = build_sdxl_components("tiny", tokenizer_dir=tmp_path / "tok", seed=0)
    folder = save_pipeline(tmp_path / "tiny-sdxl", parts)
    path = write_single_file(parts, tmp_path / "tiny-sdxl.safetensors")
    model = retouch.load(path, device="cpu", config=folder)
    assert model.text_encoder_2 is not None and model.tokenizer_2 is not None
    assert_same_weights(model, parts)
    assert model.fingerprint == retouch.load(folder, device="cpu").fingerprint


def test_a_wrong_weight_would_be_seen(shipped_parts, tmp_path):
    """The comparison above fails when the file's weights differ from the folder's."""
    parts, _ = shipped_parts
    state = original_layout(parts)
    key = "model.diffusion_model.out.2.weight"
    state[key] = state[key] + 1
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "changed.safetensors"))
    model = retouch.load(tmp_path / "changed.safetensors", device="cpu", config=SHIPPED)
    with pytest.raises(AssertionError, match="unet.conv_out.weight"):
        assert_same_weights(model, parts)


def test_a_pickled_checkpoint_loads_only_when_asked_by_name(shipped_parts, tmp_path):
    parts, folder_model = shipped_parts
    path = tmp_path / "shapes-sd.ckpt"
    torch.save({"state_dict": original_layout(parts)}, path)
    with pytest.raises(ModelError, match="pickled checkpoint.*allow_pickle=True") as e:
        retouch.load(path, device="cpu", config=SHIPPED)
    assert "\n" not in str(e.value)
    model = retouch.load(path, device="cpu", config=SHIPPED, allow_pickle=True)
    assert model.fingerprint == folder_model.fingerprint


@pytest.mark.parametrize(
    "name, config, says",
    [
        ("model.gguf", "shipped", "a single-file checkpoint (.safetensors"),
        ("missing.safetensors", "shipped", "no such file"),
        ("model.safetensors", None, "give config= (--model-config) a local diffusers folder"),
        ("model.safetensors", "no-such/model-id", "not in the local cache; give config="),
        ("model.safetensors", "./no-such-folder", "no such folder"),
        ("folder", "shipped", "config= is for a single-file checkpoint"),
        ("sd3.safetensors", None, "diffusers' 'sd3' family; retouch edits Stable Diffusion 1.x/2.x and SDXL"),
    ],
)
def test_what_is_not_read_is_one_line_naming_the_way_that_works(tmp_path, monkeypatch, name, config, says):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
    elif name == "sd3.safetensors":  # the two keys diffusers reads an SD3 medium checkpoint by
        sd3 = {"joint_blocks.0.context_block.adaLN_modulation.1.bias": torch.zeros(9216)}
        save_file(
            {"model.diffusion_model." + k: v for k, v in sd3.items()}
            | {"pos_embed": torch.zeros(1, 36864, 1)},
            str(path),
        )
    elif name != "missing.safetensors":
        save_file({"model.diffusion_model.nothing": torch.zeros(1)}, str(path))
    with pytest.raises(ModelError, match=re.escape(says)) as e:
        retouch.load(path, device="cpu", config=SHIPPED if config == "shipped" else config)
    assert "\n" not in str(e.value)


def _mask(tmp_path, name: str, *model: str):
    from click.testing import CliRunner
    from PIL import Image

    from retouch.main import main

    image, out = tmp_path / "in.png", tmp_path / f"{name}.png"
    Image.fromarray(render(sample_scene(10_000_002))).save(image)
    texts = ["--query", "a green circle", "--reference", "a red circle", "--mask-samples", "2"]
    args = ["mask", str(image), "-o", str(out), *texts, "--device", "cpu", *model]
    return CliRunner().invoke(main, args), out


def test_the_command_line_takes_a_single_file_with_its_config(shipped_parts, tmp_path):
    """--model FILE --model-config FOLDER: the same mask as the folder gives; a pickled file is
    refused in one line naming --allow-pickle, and loads with it."""
    import numpy as np
    from PIL import Image

    parts, _ = shipped_parts
    path = write_single_file(parts, tmp_path / "shapes-sd.safetensors")
    folder, want = _mask(tmp_path, "folder")
    single, got = _mask(tmp_path, "single", "--model", str(path), "--model-config", str(SHIPPED))
    assert folder.exit_code == single.exit_code == 0, single.output
    assert np.array_equal(np.asarray(Image.open(got)), np.asarray(Image.open(want)))
    torch.save(original_layout(parts), tmp_path / "shapes-sd.ckpt")
    pickled = ["--model", str(tmp_path / "shapes-sd.ckpt"), "--model-config", str(SHIPPED)]
    refused, out = _mask(tmp_path, "refused", *pickled)
    lines = refused.stderr.strip().splitlines()
    assert refused.exit_code == 2 and len(lines) == 1 and "--allow-pickle" in lines[0], refused.stderr
    assert not out.exists()
    allowed, out = _mask(tmp_path, "allowed", *pickled, "--allow-pickle")
    assert allowed.exit_code == 0, allowed.output
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(want)))
