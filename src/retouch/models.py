"""Loading a Stable Diffusion 1.x/2.x or SDXL model into a ModelBundle, or an SD3 or FLUX model into a
FlowBundle: a diffusers folder, a hub id, or (SD 1.x/2.x, SDXL, SD3) a single-file checkpoint in the
original (CompVis/SGM/SD3) layout, as model sites share them (docs/models.md)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from retouch.errors import ModelError, SettingError
from retouch.flows import FlowBundle
from retouch.latents import MIN_SIDE
from retouch.types import ModelBundle

SHIPPED = Path(__file__).parent / "weights" / "shapes-sd"
SINGLE_FILE = ".safetensors"
PICKLED = (".ckpt", ".pt", ".pth", ".bin")  # torch.save files: unpickling them can run code
EDITABLE_FAMILIES = ("v1", "v2", "xl_base")  # diffusers' names of the single-file families retouch edits
SHIPPED_SD3 = Path(__file__).parent / "weights" / "shapes-sd3"
SHIPPED_NAMES = {"shapes-sd": SHIPPED, "shapes-sd3": SHIPPED_SD3}
FLOW_PIPELINES = ("StableDiffusion3Pipeline", "FluxPipeline")  # diffusers' classes of flow models
SD3_FAMILIES = ("sd3", "sd35_medium", "sd35_large")  # diffusers' names of the SD3 single-file families
# where the original SD3 layout keeps each text encoder (in transformers' names under the prefix)
SD3_FILE_ENCODERS = {
    "text_encoder": "text_encoders.clip_l.transformer.",
    "text_encoder_2": "text_encoders.clip_g.transformer.",
    "text_encoder_3": "text_encoders.t5xxl.transformer.",
}
FLUX_REFUSED = (
    "retouch loads FLUX from a diffusers folder or hub id (--model FOLDER, e.g. "
    "black-forest-labs/FLUX.1-dev); its single files are not read"
)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise ModelError(f"dtype {dtype!r} is not one of {sorted(names)}")
    return names[dtype]


def load(
    model: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    max_pixels: int | None = None,
    resize: bool = True,
    compile: bool = False,  # noqa: A002 - torch's word
    config: str | Path | None = None,
) -> ModelBundle | FlowBundle:
    """Load a model once, to reuse for every edit.

    Args:
        model (`str` or `Path`, *optional*): a local diffusers folder (Stable Diffusion 1.x/2.x,
            SDXL, SD3, FLUX), a hub id, or a single-file checkpoint of SD 1.x/2.x, SDXL or SD3
            (`.safetensors` in the original layout; `load_single_file`); None or "shapes-sd" for the
            shipped ShapesWorld model,
            "shapes-sd3" for its flow-matching sibling.
        device (`str` or `torch.device`, *optional*): defaults to CUDA when available, else CPU.
        dtype (`str` or `torch.dtype`, *optional*): defaults to float16 on a GPU, float32 on a CPU.
        allow_pickle (`bool`, defaults to False): also accept .bin/.ckpt weights (unpickling runs
            code: off unless asked for).
        max_pixels (`int`, *optional*): the pixel budget of an input image (default four times the
            model's native area).
        resize (`bool`, defaults to True): an image over the budget is resized down to it (False:
            refused with an ImageError).
        compile (`bool`, defaults to False): the opt-in compiled path (`compiled`): faster steps
            after a warm-up of its own.
        config (`str` or `Path`, *optional*): for a single-file checkpoint, a local diffusers folder
            (or a cached hub id) of the model's family, whose configs, tokenizers and scheduler go
            with the file's weights.

    Returns:
        `ModelBundle` for Stable Diffusion 1.x/2.x and SDXL (a UNet), `FlowBundle` for SD3 and FLUX
        (a transformer): the model's parts (VAE, text encoders, scheduler) on its device, with its
        family, native size, pixel budget and fingerprint.
    """
    check_budget(max_pixels)
    source = str(SHIPPED if model is None else SHIPPED_NAMES.get(str(model), model))
    dev = torch.device(device) if device is not None else default_device()
    dt = _dtype(dtype, dev)
    kw = dict(use_safetensors=None if allow_pickle else True)
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
    single = Path(source).expanduser().is_file() or Path(source).suffix.lower() in (SINGLE_FILE, *PICKLED)
    if config is not None and not single:
        raise ModelError(
            f"config= is for a single-file checkpoint; {source} is not one (a folder has its own)"
        )
    if single:
        with _quietly():
            bundle = load_single_file(source, config, dev, dt, allow_pickle)
        bundle = replace(bundle, max_pixels=max_pixels, resize=bool(resize))
        return compiled(bundle) if compile else bundle
    if looks_local and not Path(source).expanduser().exists():
        raise ModelError(f"cannot load model {source}: no such folder or file")
    if Path(source).exists() and not (Path(source) / "model_index.json").is_file():
        raise ModelError(f"{source} is not a diffusers model folder (no model_index.json)")
    if not Path(source).expanduser().exists():
        _check_hub(source)
    with _quietly():
        bundle = replace(_load(source, dev, dt, kw), max_pixels=max_pixels, resize=bool(resize))
    return compiled(bundle) if compile else bundle


def compiled(bundle: ModelBundle, mode: str | None = None) -> ModelBundle:
    """The model with its UNet through torch.compile (and in channels-last memory on CUDA, where
    convolutions prefer it): the same results to float rounding, faster steps once compiled. The
    first edit at each new latent size or batch pays the compilation (its warm-up); the weights,
    and so the fingerprint, are the same."""
    unet = bundle.unet
    if bundle.device.type == "cuda":
        unet = unet.to(memory_format=torch.channels_last)
    name = "transformer" if hasattr(bundle, "transformer") else "unet"
    return replace(bundle, **{name: torch.compile(unet, mode=mode, dynamic=False)})


def check_budget(max_pixels) -> None:
    """A pixel budget is None (the model's default) or a whole number of at least MIN_SIDE²."""
    if max_pixels is None:
        return
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < MIN_SIDE**2:
        raise SettingError(f"max_pixels must be a whole number ≥ {MIN_SIDE**2}, got {max_pixels!r}")


def _load(source: str, dev: torch.device, dt: torch.dtype, kw: dict) -> ModelBundle | FlowBundle:
    from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    try:
        index = DiffusionPipeline.load_config(source)  # model_index.json: which parts, which family
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model {source}: {first}") from e
    if index.get("_class_name") in FLOW_PIPELINES:
        return load_flow(source, index, dev, dt, kw)
    try:
        xl = "text_encoder_2" in index
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dt, **kw)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dt, **kw)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dt, **kw)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler")
        second = {}
        if xl:
            second = dict(
                text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
                    source, subfolder="text_encoder_2", torch_dtype=dt, **kw
                ),
                tokenizer_2=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2"),
                empty_is_zeros=bool(index.get("force_zeros_for_empty_prompt", True)),
            )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model {source}: {first}") from e
    return _bundle(vae, text_encoder, tokenizer, unet, scheduler, model_name(source), dev, dt, **second)


def load_single_file(
    path: str | Path,
    config: str | Path | None,
    dev: torch.device,
    dt: torch.dtype,
    allow_pickle: bool = False,
):
    """A single-file checkpoint in the original (CompVis/SGM/SD3) layout, offline: the weights from the
    file, everything else (configs, tokenizers, scheduler) from `config`, a local diffusers folder or
    cached hub id of the same family; without one, from the cached default of the family diffusers
    infers from the file's keys. SD 1.x/2.x and SDXL through diffusers' `from_single_file` (a
    ModelBundle); SD3 part by part (`load_sd3_single_file`, a FlowBundle); FLUX refused."""
    path = Path(path).expanduser()
    _check_single_file(path, allow_pickle)
    layout = _file_layout(path)
    if layout == "flux":
        raise ModelError(f"cannot load model {path.name}: a FLUX single-file checkpoint; {FLUX_REFUSED}")
    folder = _config_folder(path, config)
    index = _model_index(folder)
    _check_same_family(path, layout, folder, index)
    if layout == "sd3":
        return load_sd3_single_file(path, folder, index, dev, dt)
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    xl = "text_encoder_2" in index
    extra = {} if xl else dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    try:
        pipe = cls.from_single_file(
            str(path), config=str(folder), local_files_only=True, torch_dtype=dt, **extra
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(
            f"cannot load model {path.name} with the config of {folder.name}: {_first(e)}"
        ) from e
    second = {}
    if xl:
        second = dict(
            text_encoder_2=pipe.text_encoder_2,
            tokenizer_2=pipe.tokenizer_2,
            empty_is_zeros=bool(index.get("force_zeros_for_empty_prompt", True)),
        )
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    parts = (pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, sched)
    return _bundle(*parts, model_name(str(path)), dev, dt, **second)


def _first(e: Exception) -> str:
    """An exception's first line (its type's name when it has no message)."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _file_layout(path: Path) -> str:
    """Which network the file's keys are: "sd3" (MMDiT joint blocks), "flux" (double-stream blocks) or
    "sd" (anything else: a UNet, or keys diffusers will judge)."""
    if path.suffix.lower() == SINGLE_FILE:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
        except Exception as e:  # noqa: BLE001 - not a safetensors file: one line, whatever the cause
            raise ModelError(
                f"cannot load model {path.name}: not a readable .safetensors file ({_first(e)})"
            ) from e
    else:
        keys = list(_checkpoint(path))
    if any(".joint_blocks." in k or k.startswith("joint_blocks.") for k in keys):
        return "sd3"
    if any(".double_blocks." in k or k.startswith("double_blocks.") for k in keys):
        return "flux"
    return "sd"


def _checkpoint(path: Path) -> dict:
    """The file's tensors by their original names (diffusers' reader: safetensors, or a pickle the
    caller has allowed)."""
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    try:
        return load_single_file_checkpoint(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable in any way: one line
        raise ModelError(f"cannot load model {path.name}: cannot read its weights ({_first(e)})") from e


def _check_same_family(path: Path, layout: str, folder: Path, index: dict) -> None:
    """The file's network and the config's pipeline are of one family, else one line saying which."""
    cls = index.get("_class_name")
    config_layout = "sd3" if cls == "StableDiffusion3Pipeline" else "flux" if cls == "FluxPipeline" else "sd"
    names = {"sd3": "a Stable Diffusion 3", "flux": "a FLUX", "sd": "a Stable Diffusion 1.x/2.x or SDXL"}
    if config_layout == "flux":
        raise ModelError(f"cannot load model {path.name}: its config {folder.name} is FLUX's; {FLUX_REFUSED}")
    if config_layout == "sd" and ("unet" not in index or "text_encoder" not in index):
        raise ModelError(
            f"cannot load model {path.name}: its config {folder.name} is a {cls}; retouch edits Stable "
            "Diffusion 1.x/2.x, SDXL, SD3 and FLUX models"
        )
    if layout != config_layout:
        raise ModelError(
            f"cannot load model {path.name}: its weights are {names[layout]} model's and its config "
            f"{folder.name} is {names[config_layout]} model's; give config= (--model-config) a folder of "
            "the file's family"
        )


def load_sd3_single_file(path: Path, folder: Path, index: dict, dev: torch.device, dt: torch.dtype):
    """An SD3 checkpoint in the original layout as a FlowBundle, part by part through diffusers'
    single-file conversions: the MMDiT from `model.diffusion_model.*`; the VAE from
    `first_stage_model.*`, else `folder`'s; each text encoder from `text_encoders.*` (SD3_FILE_ENCODERS),
    else `folder`'s, except T5, absent when the file has none (as SD3 runs without it). Configs,
    tokenizers and the scheduler come from `folder`."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import AutoTokenizer

    checkpoint = _checkpoint(path)
    where = dict(config=str(folder), local_files_only=True, torch_dtype=dt)
    try:
        parts = dict(
            transformer=SD3Transformer2DModel.from_single_file(
                dict(checkpoint), subfolder="transformer", **where
            ),
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler"),
        )
        has_vae = any(k.startswith("first_stage_model.") for k in checkpoint)
        parts["vae"] = (
            AutoencoderKL.from_single_file(dict(checkpoint), subfolder="vae", **where)
            if has_vae
            else AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dt, use_safetensors=True)
        )
        for name, prefix in SD3_FILE_ENCODERS.items():
            parts[name] = _sd3_encoder(path, checkpoint, name, prefix, folder, index, dt)
            token = "tokenizer" + name.removeprefix("text_encoder")
            if parts[name] is not None:
                parts[token] = AutoTokenizer.from_pretrained(folder, subfolder=token)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(
            f"cannot load model {path.name} with the config of {folder.name}: {_first(e)}"
        ) from e
    return flow_bundle(family="sd3", model_id=model_name(str(path)), device=dev, dtype=dt, **parts)


def _sd3_encoder(path: Path, checkpoint: dict, name: str, prefix: str, folder: Path, index: dict, dt):
    """One SD3 text encoder: from the file's weights under `prefix` with `folder`'s config (CLIP-L
    without a projection in the file gets the identity, its pooled output unprojected, as diffusers
    reads SD3's files); without such weights `folder`'s own, or None for T5."""
    import transformers
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    cls_name = (index.get(name) or [None, None])[1]
    in_file = any(k.startswith(prefix) for k in checkpoint)
    if not in_file:
        if name == "text_encoder_3" or cls_name is None:
            return None
        return getattr(transformers, cls_name).from_pretrained(folder, subfolder=name, torch_dtype=dt,
                                                               use_safetensors=True)  # fmt: skip
    if cls_name is None:
        raise ModelError(
            f"cannot load model {path.name}: it has a {prefix.split('.')[1]} text encoder and its config "
            f"{folder.name} has no {name} to configure it; give config= a folder with one"
        )
    cls = getattr(transformers, cls_name)
    config = cls.config_class.from_pretrained(folder, subfolder=name)
    # the prefix taken off; each tensor copied out of the file's buffer, whose odd offsets would send
    # the matrix products down other SIMD paths (another rounding than the folder's weights give)
    state = {k: v.clone() for k, v in convert_ldm_clip_checkpoint(checkpoint, prefix).items()}
    if name == "text_encoder" and "text_projection.weight" not in state:
        state["text_projection.weight"] = torch.eye(config.hidden_size)
    model, info = cls.from_pretrained(None, config=config, state_dict=state, torch_dtype=dt,
                                      output_loading_info=True)  # fmt: skip
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ModelError(
            f"cannot load model {path.name}: its {prefix.rstrip('.')} lacks {len(missing)} of the weights "
            f"{folder.name}/{name} configures (first: {missing[0]})"
        )
    return model


def _check_single_file(path: Path, allow_pickle: bool) -> None:
    """A `.safetensors` file, or a pickled one only when asked by name; anything else refused."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ModelError(f"cannot load model {path}: no such file")
    if suffix in PICKLED and not allow_pickle:
        raise ModelError(
            f"cannot load model {path.name}: a pickled checkpoint (unpickling can run code); convert it to "
            ".safetensors, or load it with allow_pickle=True (--allow-pickle) if you trust its source"
        )
    if suffix != SINGLE_FILE and suffix not in PICKLED:
        raise ModelError(
            f"cannot load model {path.name}: retouch reads a diffusers folder, a hub id, or a single-file "
            f"checkpoint ({SINGLE_FILE}; {', '.join(PICKLED)} with allow_pickle=True)"
        )


def _config_folder(path: Path, config: str | Path | None) -> Path:
    """The local folder holding the family's diffusers configs: `config` itself, a cached hub id,
    or the cached default diffusers infers from the checkpoint's keys. Never a download."""
    from huggingface_hub import snapshot_download

    hint = "give config= (--model-config) a local diffusers folder of the model's family"
    if config is not None and Path(config).expanduser().is_dir():
        return Path(config).expanduser()
    if config is not None and (str(config).startswith((".", "/", "~")) or str(config).count("/") > 1):
        raise ModelError(f"cannot load model {path.name}: config {config}: no such folder")
    if config is None:
        config = _inferred_family(path, hint)
    try:
        return Path(snapshot_download(str(config), local_files_only=True))
    except Exception as e:  # noqa: BLE001 - not cached (or no such id): the same advice
        raise ModelError(
            f"cannot load model {path.name}: config {config} is not in the local cache; {hint}"
        ) from e


def _inferred_family(path: Path, hint: str) -> str:
    """The hub id of the diffusers pipeline whose configs fit the checkpoint's keys; a family
    retouch does not read from one file (FLUX, an inpainting UNet, ...) is refused here, by its name."""
    from diffusers.loaders.single_file_utils import (
        DIFFUSERS_DEFAULT_PIPELINE_PATHS,
        infer_diffusers_model_type,
        load_single_file_checkpoint,
    )

    try:
        family = infer_diffusers_model_type(load_single_file_checkpoint(str(path), local_files_only=True))
    except Exception as e:  # noqa: BLE001 - unreadable, or keys of no family diffusers knows
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model {path.name}: its family is not known ({first}); {hint}") from e
    if family not in EDITABLE_FAMILIES + SD3_FAMILIES:
        raise ModelError(
            f"cannot load model {path.name}: its weights are diffusers' {family!r} family; retouch reads "
            "single files of Stable Diffusion 1.x/2.x, SDXL and SD3 models"
        )
    return DIFFUSERS_DEFAULT_PIPELINE_PATHS[family]["pretrained_model_name_or_path"]


def family_of(model: str | Path | None) -> str | None:
    """The family a model to load is of ("sd", "sdxl", "sd3" or "flux"), read from its folder's
    model_index.json without loading anything (None or "shapes-sd": the shipped model's); None when
    only loading tells (a hub id, a single file, a folder that is not a diffusers one)."""
    import json

    folder = Path(str(SHIPPED if model is None else SHIPPED_NAMES.get(str(model), model))).expanduser()
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict):
        return None
    if index.get("_class_name") in FLOW_PIPELINES:
        return "flux" if index["_class_name"] == "FluxPipeline" else "sd3"
    return "sdxl" if "text_encoder_2" in index else "sd"


def _model_index(folder: Path) -> dict:
    """The folder's model_index.json (which parts, which family)."""
    import json

    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelError(f"config {folder} is not a diffusers model folder (no model_index.json)")
    return json.loads(index.read_text())


def _bundle(vae, text_encoder, tokenizer, unet, scheduler, model_id, dev, dt, **second) -> ModelBundle:
    """The parts on their device and dtype, frozen; the VAE in float32 when a float16 model's VAE
    config asks to upcast (SDXL's VAE overflows in float16)."""
    modules = [vae, unet, text_encoder, *([second["text_encoder_2"]] if second.get("text_encoder_2") else [])]
    for m in modules:
        m.to(dev).eval().requires_grad_(False)
        if next(m.parameters()).dtype != dt:
            m.to(dtype=dt)
    if dt == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(dtype=torch.float32)
    return ModelBundle(
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        model_id,
        dev,
        dt,
        fingerprint(vae, text_encoder, unet, scheduler, second.get("text_encoder_2")),
        **second,
    )


def _check_hub(repo_id: str, timeout: float = 5.0) -> None:
    """A hub id must be in the local cache or the hub must answer, quickly: otherwise one line
    saying so, instead of a long wait and a misleading error."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    try:
        snapshot_download(repo_id, allow_patterns=["model_index.json"], local_files_only=True)
        return
    except Exception:  # noqa: BLE001 - not cached: ask the hub
        pass
    import huggingface_hub

    try:
        huggingface_hub.HfApi().model_info(repo_id, timeout=timeout)
    except HfHubHTTPError as e:
        raise ModelError(
            f"cannot load model {repo_id}: the hub does not have it ({e.__class__.__name__})"
        ) from e
    except Exception as e:  # noqa: BLE001 - connection refused, DNS, timeout: all say the same
        raise ModelError(
            f"cannot load model {repo_id}: not in the local cache and the model hub is unreachable "
            f"({type(e).__name__}); give a local folder or connect"
        ) from e


def model_name(source: str) -> str:
    """What outputs record of a model: a hub id as it is, a folder by its name (never the path
    it is installed at, which would tell every reader of an output where the server keeps it)."""
    path = Path(source).expanduser()
    return path.resolve().name if path.exists() else source


@contextmanager
def _quietly():
    """diffusers' and transformers' loading bars and warnings off while loading, then as they were:
    the library writes nothing, and leaves the libraries' settings to the application."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    saved = [
        (m, m.get_verbosity(), m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)
    ]
    for m, _, _ in saved:
        m.set_verbosity_error()
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m, verbosity, bars in saved:
            m.set_verbosity(verbosity)
            (m.enable_progress_bar if bars else m.disable_progress_bar)()


def fingerprint(vae, text_encoder, unet, scheduler, text_encoder_2=None) -> str:
    """A short hash of the configs and of every weight (as float32, so the dtype a model is loaded
    in does not change it): the same model gives the same value wherever it is installed; changing
    any one weight (merging a LoRA) gives another."""
    import hashlib
    import json

    h = hashlib.blake2b(digest_size=16)
    extra = [] if text_encoder_2 is None else [text_encoder_2]
    configs = [vae.config, unet.config, text_encoder.config.to_dict(), scheduler.config]
    for cfg in configs + [m.config.to_dict() for m in extra]:
        h.update(
            json.dumps(
                {k: v for k, v in dict(cfg).items() if not k.startswith("_")}, sort_keys=True, default=str
            ).encode()
        )
    for module in (vae, unet, text_encoder, *extra):
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy())
    return h.hexdigest()


def from_components(
    vae,
    text_encoder,
    tokenizer,
    unet,
    scheduler,
    model_id: str = "in-memory",
    device=None,
    dtype=None,
    text_encoder_2=None,
    tokenizer_2=None,
    force_zeros_for_empty_prompt: bool = True,
) -> ModelBundle:
    """A ModelBundle from components already in memory (a diffusers pipeline's, or built in code);
    with text_encoder_2 and tokenizer_2, an SDXL."""
    from diffusers import DDIMScheduler

    dev = torch.device(device) if device is not None else next(unet.parameters()).device
    dt = _dtype(dtype, dev) if dtype is not None else next(unet.parameters()).dtype
    second = {}
    if text_encoder_2 is not None:
        second = dict(
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            empty_is_zeros=bool(force_zeros_for_empty_prompt),
        )
    sched = DDIMScheduler.from_config(scheduler.config)
    return _bundle(vae, text_encoder, tokenizer, unet, sched, model_id, dev, dt, **second)


# --- flow models (Stable Diffusion 3, FLUX; docs/flow.md) ---


def load_flow(source: str, index: dict, dev: torch.device, dt: torch.dtype, kw: dict):
    """A diffusers StableDiffusion3Pipeline or FluxPipeline folder (or hub id) as a FlowBundle."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    flux = index.get("_class_name") == "FluxPipeline"

    def part(cls, name, **extra):
        if not index.get(name) or index[name][0] is None:
            return None
        if cls is AutoTokenizer:
            return cls.from_pretrained(source, subfolder=name)
        return cls.from_pretrained(source, subfolder=name, torch_dtype=dt, **kw, **extra)

    try:
        if flux:
            from diffusers import FluxTransformer2DModel as Transformer
        else:
            from diffusers import SD3Transformer2DModel as Transformer
        parts = dict(
            vae=AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dt, **kw),
            transformer=Transformer.from_pretrained(source, subfolder="transformer", torch_dtype=dt, **kw),
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler"),
            text_encoder=part(CLIPTextModel if flux else CLIPTextModelWithProjection, "text_encoder"),
            tokenizer=part(AutoTokenizer, "tokenizer"),
            text_encoder_2=part(T5EncoderModel if flux else CLIPTextModelWithProjection, "text_encoder_2"),
            tokenizer_2=part(AutoTokenizer, "tokenizer_2"),
        )
        if not flux:
            parts.update(
                text_encoder_3=part(T5EncoderModel, "text_encoder_3"),
                tokenizer_3=part(AutoTokenizer, "tokenizer_3"),
            )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model {source}: {first}") from e
    return flow_bundle(family="flux" if flux else "sd3", model_id=model_name(source), device=dev, dtype=dt,
                       **parts)  # fmt: skip


def flow_bundle(family: str, model_id: str = "in-memory", device=None, dtype=None, **parts):
    """A FlowBundle from parts in memory (loaded, or built in code): on `device` in `dtype` (default:
    the transformer's), frozen; the VAE in float32 when a float16 model's VAE config asks to upcast."""
    from retouch.flows import FLOW_FAMILIES, FlowBundle

    if family not in FLOW_FAMILIES:
        raise ModelError(f"family must be one of {FLOW_FAMILIES}, got {family!r}")
    tr = parts["transformer"]
    dev = torch.device(device) if device is not None else next(tr.parameters()).device
    dt = dtype if dtype is not None else next(tr.parameters()).dtype
    for name in ("vae", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3"):
        m = parts.get(name)
        if m is not None:
            m.to(dev).eval().requires_grad_(False)
            if next(m.parameters()).dtype != dt:
                m.to(dtype=dt)
    if dt == torch.float16 and getattr(parts["vae"].config, "force_upcast", False):
        parts["vae"].to(dtype=torch.float32)
    fp = fingerprint(parts["vae"], parts["text_encoder"], tr, parts["scheduler"], parts.get("text_encoder_2"))
    length = 512 if family == "flux" and getattr(tr.config, "guidance_embeds", False) else 256
    return FlowBundle(family=family, model_id=model_id, device=dev, dtype=dt, fingerprint=fp,
                      max_sequence_length=length, **parts)  # fmt: skip
