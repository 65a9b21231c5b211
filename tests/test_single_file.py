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
        (
            "sd3.safetensors",
            None,
            "config stabilityai/stable-diffusion-3-medium-diffusers is not in the local",
        ),
        ("refiner.safetensors", None, "diffusers' 'xl_refiner' family; retouch reads single files of Stable"),
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
    elif name == "refiner.safetensors":  # the key diffusers reads an SDXL refiner by
        save_file(
            {"conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(1)},
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


# --- Stable Diffusion 3: the original (SD3) layout ---------------------------------------------------

SD3_FIXED = {  # diffusers module → its original name, outside the joint blocks
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
SD3_BLOCK = {  # diffusers module → its original name, inside joint block i
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
SD3_FUSED = {"attn.to_{}": "x_block.attn.qkv", "attn.add_{}_proj": "context_block.attn.qkv"}
SD3_FUSED |= {"attn2.to_{}": "x_block.attn2.qkv"}


def _swapped(v: torch.Tensor) -> torch.Tensor:
    """(scale, shift) halves ↔ (shift, scale): the original modulation's order is diffusers' reversed."""
    return torch.cat(v.chunk(2)[::-1])


def sd3_transformer_state(transformer) -> dict[str, torch.Tensor]:
    """An SD3Transformer2DModel's weights in the original MMDiT names: each joint block's q, k, v fused
    into one qkv per stream; the final modulations' halves swapped."""
    sd, out = dict(transformer.state_dict()), {"pos_embed": None}
    out["pos_embed"] = sd.pop("pos_embed.pos_embed")
    last = transformer.config.num_layers - 1
    for i in range(transformer.config.num_layers):
        pre = f"transformer_blocks.{i}."
        for split, fused in SD3_FUSED.items():
            for kind in ("weight", "bias"):
                names = [f"{pre}{split.format(p)}.{kind}" for p in "qkv"]
                if names[0] in sd:
                    out[f"joint_blocks.{i}.{fused}.{kind}"] = torch.cat([sd.pop(n) for n in names])
        for k in [k for k in sd if k.startswith(pre)]:
            module, kind = k[len(pre) :].rsplit(".", 1)
            v = sd.pop(k)
            out[f"joint_blocks.{i}.{SD3_BLOCK[module]}.{kind}"] = (
                _swapped(v) if i == last and module == "norm1_context.linear" else v
            )
    for k in list(sd):
        module, kind = k.rsplit(".", 1)
        v = sd.pop(k)
        out[f"{SD3_FIXED[module]}.{kind}"] = _swapped(v) if module == "norm_out.linear" else v
    return out


SD3_ENCODERS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"}


def sd3_original_layout(parts: dict) -> dict[str, torch.Tensor]:
    """An SD3's weights as one state dict in the original layout: the MMDiT under
    `model.diffusion_model.`, the VAE under `first_stage_model.`, each text encoder in transformers'
    names under `text_encoders.{clip_l,clip_g,t5xxl}.transformer.` (T5 only when the model has one)."""
    vae = parts["vae"]
    out = {f"model.diffusion_model.{k}": v for k, v in sd3_transformer_state(parts["transformer"]).items()}
    n_up = len(vae.config.up_block_types)
    for k, v in vae.state_dict().items():
        if "mid_block.attentions" in k and v.ndim == 2:
            v = v[:, :, None, None]
        out[f"first_stage_model.{vae_key(k, n_up)}"] = v
    for name, short in SD3_ENCODERS.items():
        if parts.get(name) is not None:
            state = parts[name].state_dict()
            state.pop("encoder.embed_tokens.weight", None)  # T5's alias of shared.weight: written once
            out |= {f"text_encoders.{short}.transformer.{k}": v for k, v in state.items()}
    return out


def write_sd3_file(parts: dict, path: Path, drop: tuple[str, ...] = ()) -> Path:
    """`parts` in the original SD3 layout as one `.safetensors` file, leaving out the keys that start
    with any of `drop`."""
    state = {k: v.detach().contiguous() for k, v in sd3_original_layout(parts).items()}
    save_file({k: v for k, v in state.items() if not k.startswith(drop)}, str(path))
    return path


def assert_same_flow_weights(loaded, parts: dict) -> None:
    """Every weight of every network of a flow model as the components had it."""
    names = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    for name in [n for n in names if parts.get(n) is not None]:
        want, got = parts[name].state_dict(), getattr(loaded, name).state_dict()
        assert sorted(got) == sorted(want), name
        for k, v in want.items():
            assert torch.equal(got[k], v), f"{name}.{k}"


@pytest.fixture(scope="module")
def shipped_sd3():
    """The shipped mini SD3 (two CLIPs of one width, no T5) as its folder loads it, and its parts."""
    from retouch.models import SHIPPED_SD3

    model = retouch.load(SHIPPED_SD3, device="cpu")
    names = ("transformer", "vae", "text_encoder", "text_encoder_2")
    return {n: getattr(model, n) for n in names}, model


def test_the_sd3_layout_written_here_is_the_one_diffusers_reads(shipped_sd3):
    """diffusers' own conversions of the written state give back every tensor of every part."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    parts, _ = shipped_sd3
    state = sd3_original_layout(parts)
    back = {
        "transformer": convert_sd3_transformer_checkpoint_to_diffusers(dict(state)),
        "vae": convert_ldm_vae_checkpoint(state, parts["vae"].config),
        "text_encoder": convert_ldm_clip_checkpoint(state, "text_encoders.clip_l.transformer."),
        "text_encoder_2": convert_ldm_clip_checkpoint(state, "text_encoders.clip_g.transformer."),
    }
    for name, got in back.items():
        want = parts[name].state_dict()
        assert sorted(got) == sorted(want), name
        for k, v in want.items():
            assert torch.equal(got[k], v), f"{name}.{k}"


def test_the_shipped_sd3_as_one_file_loads_to_the_same_flow_model(shipped_sd3, tmp_path):
    from retouch.flows import FlowBundle
    from retouch.models import SHIPPED_SD3
    from retouch.shapes.world import HELD_OUT_SEED

    parts, folder_model = shipped_sd3
    path = write_sd3_file(parts, tmp_path / "shapes-sd3.safetensors")
    model = retouch.load(path, device="cpu", config=SHIPPED_SD3)
    assert isinstance(model, FlowBundle) and model.family == "sd3" and model.model_id == path.name
    assert model.text_encoder_3 is None and model.tokenizer_3 is None  # the file has no T5
    assert_same_flow_weights(model, parts)
    assert model.fingerprint == folder_model.fingerprint
    assert model.tokenizer_2.get_vocab() == folder_model.tokenizer_2.get_vocab()
    image = render(sample_scene(HELD_OUT_SEED + 7))
    texts = dict(source="", target="a green circle on a white background", num_inference_steps=8, n_max=6)
    a, b = retouch.flowedit(model, image, **texts), retouch.flowedit(folder_model, image, **texts)
    assert torch.equal(a.latents, b.latents)


def test_a_changed_sd3_weight_changes_the_fingerprint(shipped_sd3, tmp_path):
    """The comparison above fails when the file's weights differ from the folder's."""
    from retouch.models import SHIPPED_SD3

    parts, folder_model = shipped_sd3
    state = sd3_original_layout(parts)
    key = "text_encoders.clip_g.transformer.text_projection.weight"
    state[key] = state[key] + 1
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "changed.safetensors"))
    model = retouch.load(tmp_path / "changed.safetensors", device="cpu", config=SHIPPED_SD3)
    assert model.fingerprint != folder_model.fingerprint
    with pytest.raises(AssertionError, match="text_encoder_2.text_projection.weight"):
        assert_same_flow_weights(model, parts)


@pytest.fixture(scope="module")
def tiny_sd3_with_t5(tmp_path_factory):
    """A tiny SD3 with a T5, built in code, and its diffusers folder."""
    from diffusers import StableDiffusion3Pipeline

    from flow_tiny import sd3_parts

    parts = sd3_parts(t5=True, seed=3)
    folder = tmp_path_factory.mktemp("tiny-sd3") / "tiny-sd3"
    StableDiffusion3Pipeline(**parts).save_pretrained(folder)
    return parts, folder


def test_t5_comes_from_the_file_or_not_at_all(tiny_sd3_with_t5, tmp_path):
    """The file's T5 loads with the config's T5 config; a file without one gives a model without T5,
    whatever the config folder holds."""
    parts, folder = tiny_sd3_with_t5
    with_t5 = retouch.load(write_sd3_file(parts, tmp_path / "t5.safetensors"), device="cpu", config=folder)
    assert_same_flow_weights(with_t5, parts)
    assert with_t5.tokenizer_3 is not None
    assert with_t5.fingerprint == retouch.load(folder, device="cpu").fingerprint
    no_t5 = write_sd3_file(parts, tmp_path / "no-t5.safetensors", drop=("text_encoders.t5xxl.",))
    without = retouch.load(no_t5, device="cpu", config=folder)
    assert without.text_encoder_3 is None and without.tokenizer_3 is None
    assert_same_flow_weights(without, {**parts, "text_encoder_3": None})


def test_an_sd3_file_of_the_transformer_alone_takes_the_rest_from_its_config(shipped_sd3, tmp_path):
    from retouch.models import SHIPPED_SD3

    parts, folder_model = shipped_sd3
    path = write_sd3_file(
        parts, tmp_path / "mmdit.safetensors", drop=("first_stage_model.", "text_encoders.")
    )
    model = retouch.load(path, device="cpu", config=SHIPPED_SD3)
    assert_same_flow_weights(model, parts)
    assert model.fingerprint == folder_model.fingerprint


def _flux_file(path: Path) -> Path:
    """The key diffusers reads a FLUX checkpoint by, in the original layout."""
    key = "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"
    save_file({key: torch.zeros(8)}, str(path))
    return path


@pytest.mark.parametrize(
    "case, says",
    [
        ("flux file", "a FLUX single-file checkpoint; retouch loads FLUX from a diffusers folder or hub id"),
        ("flux config", "is FLUX's; retouch loads FLUX from a diffusers folder or hub id"),
        ("sd3 file, sd config", "its weights are a Stable Diffusion 3 model's and its config shapes-sd is"),
        ("sd file, sd3 config", "its weights are a Stable Diffusion 1.x/2.x or SDXL model's and its config"),
        ("t5 file, config without t5", "it has a t5xxl text encoder and its config shapes-sd3 has no"),
        ("clip without a layer", "its text_encoders.clip_g.transformer lacks 16 of the weights"),
    ],
)
def test_a_flow_file_not_read_is_one_line_naming_the_way_that_works(
    shipped_sd3, shipped_parts, tiny_sd3_with_t5, tmp_path, case, says
):
    from retouch.models import SHIPPED_SD3

    config = SHIPPED_SD3
    if case == "flux file":
        path = _flux_file(tmp_path / "flux1-dev.safetensors")
    elif case == "flux config":
        from diffusers import FluxPipeline

        from flow_tiny import flux_parts

        path, config = write_sd3_file(shipped_sd3[0], tmp_path / "sd3.safetensors"), tmp_path / "tiny-flux"
        FluxPipeline(**flux_parts()).save_pretrained(config)
    elif case == "sd3 file, sd config":
        path, config = write_sd3_file(shipped_sd3[0], tmp_path / "sd3.safetensors"), SHIPPED
    elif case == "sd file, sd3 config":
        path = write_single_file(shipped_parts[0], tmp_path / "sd.safetensors")
    elif case == "t5 file, config without t5":
        parts = {**shipped_sd3[0], "text_encoder_3": tiny_sd3_with_t5[0]["text_encoder_3"]}
        path = write_sd3_file(parts, tmp_path / "sd3-t5.safetensors")
    else:
        layer = "text_encoders.clip_g.transformer.text_model.encoder.layers.1."
        path = write_sd3_file(shipped_sd3[0], tmp_path / "sd3.safetensors", drop=(layer,))
    with pytest.raises(ModelError, match=re.escape(says)) as e:
        retouch.load(path, device="cpu", config=config)
    assert "\n" not in str(e.value)


def test_the_command_line_takes_an_sd3_file_with_its_config(shipped_sd3, tmp_path):
    """edit flowedit --model FILE --model-config FOLDER: the same image as the folder gives."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from retouch.main import main
    from retouch.models import SHIPPED_SD3
    from retouch.shapes.world import HELD_OUT_SEED

    path = write_sd3_file(shipped_sd3[0], tmp_path / "shapes-sd3.safetensors")
    image = tmp_path / "in.png"
    Image.fromarray(render(sample_scene(HELD_OUT_SEED + 3))).save(image)
    edit = ["edit", "flowedit", str(image), "--target", "a blue square on a white background"]
    edit += ["--num-inference-steps", "6", "--n-max", "4", "--device", "cpu"]
    folder = CliRunner().invoke(main, [*edit, "-o", str(tmp_path / "a.png"), "--model", str(SHIPPED_SD3)])
    single = CliRunner().invoke(
        main, [*edit, "-o", str(tmp_path / "b.png"), "--model", str(path), "--model-config", str(SHIPPED_SD3)]
    )
    assert folder.exit_code == single.exit_code == 0, single.output
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert np.array_equal(a, b)


def test_a_pickled_sd3_checkpoint_loads_only_when_asked_by_name(shipped_sd3, tmp_path):
    from retouch.models import SHIPPED_SD3

    parts, folder_model = shipped_sd3
    path = tmp_path / "shapes-sd3.ckpt"
    torch.save({"state_dict": sd3_original_layout(parts)}, path)
    with pytest.raises(ModelError, match="pickled checkpoint.*allow_pickle=True") as e:
        retouch.load(path, device="cpu", config=SHIPPED_SD3)
    assert "\n" not in str(e.value)
    model = retouch.load(path, device="cpu", config=SHIPPED_SD3, allow_pickle=True)
    assert model.family == "sd3" and model.fingerprint == folder_model.fingerprint
