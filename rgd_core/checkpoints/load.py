"""Read Stable Diffusion checkpoints safely and offline: family detection, file reading, component loading.

Users hold single files in the original layout (CompVis/LDM for SD1/SD2, SGM for SDXL) or diffusers folders.
A single file holds weights but no configuration, so it is always loaded against a config-only diffusers folder
(``config_folder``) with diffusers' own single-file converters; no model hub is ever contacted.

What the keys can tell (see ``detect_family``) is the architecture family: "sd1", "sd2" or "sdxl". Whether an SD2
model predicts noise or velocity ("v-prediction", SD 2.x 768 models) is not in the weights; it comes from the config
folder's scheduler or from the caller's ``prediction_type``.

Pickled checkpoints (.ckpt/.pt/.bin) can run code when unpickled. They are refused unless the caller passes
``allow_pickle=True``, and even then read with ``torch.load(weights_only=True)``, which only rebuilds tensors and
plain containers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rgd_core.errors import RGDInputError

FAMILIES = ("sd1", "sd2", "sdxl")
# What a DDPM scheduler config can be told the model predicts (the weights cannot tell; module docstring)
DDPM_PREDICTION_TYPES = ("epsilon", "v_prediction")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT_2_PREFIX = "conditioner.embedders.1.model."
SDXL_REFINER_PREFIX = "conditioner.embedders.0.model."
UNET_INPUT_KEY = UNET_PREFIX + "input_blocks.0.0.weight"

# Sub-strings that only adapter files use: kohya LoRA/LoCon, diffusers/peft LoRA, LyCORIS LoHa/LoKr.
LORA_MARKERS = ("lora_unet_", "lora_te", ".lora_down.", ".lora_up.", "lora_A.", "lora_B.", ".lora.", "hada_w", "lokr_w")

# Text-encoder slots of each family: diffusers component name -> prefix of its keys in the original layout.
TEXT_ENCODERS = {
    "sd1": {"text_encoder": SD1_TEXT_PREFIX},
    "sd2": {"text_encoder": SD2_TEXT_PREFIX},
    "sdxl": {"text_encoder": SDXL_TEXT_PREFIX, "text_encoder_2": SDXL_TEXT_2_PREFIX},
}


# --- family detection ------------------------------------------------------------------------------------------


def detect_family(keys: Iterable[str], shapes: Mapping[str, Sequence[int]] | None = None) -> str:
    """Return "sd1", "sd2" or "sdxl" for an original-layout state dict, from its key names (and input shape).

    The family is read from the text encoder, whose layout differs per family: SD1 stores Hugging Face CLIP keys
    under ``cond_stage_model.transformer.``, SD2 an OpenCLIP tower under ``cond_stage_model.model.``, SDXL two
    encoders under ``conditioner.embedders.{0,1}.``. This does not depend on any width, unlike diffusers'
    ``infer_diffusers_model_type``, which calls a model SD2 only when its cross-attention width is exactly 1024.
    v-prediction is not decidable from keys; see the module docstring.

    ``shapes`` (key -> shape) lets the UNet input width be checked: inpainting (9 channels) and depth (5)
    models are refused. Anything that is not a full SD1/SD2/SDXL checkpoint raises RGDInputError saying what it is.
    """
    keys = set(keys)
    if not keys:
        raise RGDInputError("The checkpoint holds no tensors.")
    transformer = _flow_transformer(keys)
    if transformer:
        raise RGDInputError(
            f"This is a {transformer} model (a flow-matching transformer), which this reads only as SD1/SD2/SDXL "
            "checkpoints; erase it with rgd unlearn --text-encoders, or in ComfyUI with the RGD Unlearn node "
            "behind Load Diffusion Model (README: Flow-matching models)."
        )
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise RGDInputError(_not_a_checkpoint(keys))
    if not any(k.startswith(UNET_PREFIX + "input_blocks.") for k in keys):
        raise RGDInputError(
            "model.diffusion_model.* holds no UNet input_blocks (a transformer or another architecture); rgd "
            "supports SD1, SD2 and SDXL checkpoints."
        )
    if shapes is not None and UNET_INPUT_KEY in shapes:
        channels = int(shapes[UNET_INPUT_KEY][1])
        if channels == 9:
            raise RGDInputError(
                "This is an inpainting checkpoint (the UNet takes 9 input channels); rgd supports only "
                "text-to-image checkpoints with 4 input channels."
            )
        if channels != 4:
            raise RGDInputError(
                f"The UNet takes {channels} input channels (depth, upscaler or another variant); rgd supports only "
                "text-to-image checkpoints with 4 input channels."
            )

    has = {prefix: any(k.startswith(prefix) for k in keys) for prefix in _TEXT_PREFIXES}
    if has[SDXL_TEXT_PREFIX] and has[SDXL_TEXT_2_PREFIX]:
        return "sdxl"
    if has[SDXL_REFINER_PREFIX]:
        raise RGDInputError("This is an SDXL refiner checkpoint (one OpenCLIP text encoder); rgd supports SDXL base.")
    if has[SD2_TEXT_PREFIX]:
        return "sd2"
    if has[SD1_TEXT_PREFIX]:
        return "sd1"
    raise RGDInputError(
        "The checkpoint has a UNet but no text encoder in a known layout (cond_stage_model.* for SD1/SD2, "
        "conditioner.embedders.* for SDXL); rgd needs a full checkpoint with UNet, VAE and text encoder."
    )


_TEXT_PREFIXES = (SD1_TEXT_PREFIX, SD2_TEXT_PREFIX, SDXL_TEXT_PREFIX, SDXL_TEXT_2_PREFIX, SDXL_REFINER_PREFIX)


def _flow_transformer(keys: set[str]) -> str | None:
    """"Flux.1" or "SD3.x" when the keys (bare, ``model.diffusion_model.``-prefixed or diffusers) are those of a
    flow-matching transformer, else None."""
    parts = {part for key in keys for part in key.split(".")[:4]}
    if parts & {"double_blocks", "single_transformer_blocks"}:
        return "Flux.1"
    if "joint_blocks" in parts or any(key.startswith("transformer_blocks.") and ".attn.add_q_proj." in key
                                      for key in keys):
        return "SD3.x"
    return None


def _not_a_checkpoint(keys: set[str]) -> str:
    """Say what a file without ``model.diffusion_model.*`` keys is, and what to pass instead."""
    lora_keys = [k for k in keys if any(marker in k for marker in LORA_MARKERS)]
    if 2 * len(lora_keys) >= len(keys):
        return (
            "This file is a LoRA (an adapter of a few layers), not a checkpoint; pass the full base model "
            "checkpoint, and apply the LoRA to it in your UI before or after unlearning."
        )
    if "input_blocks.0.0.weight" in keys:
        return (
            "This file holds a UNet alone (a 'diffusion model' file without text encoder and VAE); pass a full "
            "checkpoint or a diffusers folder."
        )
    if "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys):
        return (
            "This file holds one component of a diffusers folder (a UNet in diffusers layout); pass the whole "
            "diffusers folder (the one with model_index.json) instead."
        )
    if any(k.startswith(("encoder.down", "decoder.up", "encoder.down_blocks")) for k in keys):
        return "This file holds a VAE alone, not a full checkpoint; pass a full SD1/SD2/SDXL checkpoint."
    if any(k.startswith(("text_model.", "transformer.resblocks.")) for k in keys):
        return "This file holds a text encoder alone, not a full checkpoint; pass a full SD1/SD2/SDXL checkpoint."
    return (
        "Unknown checkpoint layout: no model.diffusion_model.* UNet weights; rgd reads SD1/SD2/SDXL checkpoints "
        "in the original single-file layout, or diffusers folders."
    )


# --- reading files ---------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict:
    """Read every tensor of a single-file checkpoint into a dict on the CPU.

    safetensors is the default and the only format that cannot run code. A pickle (.ckpt/.pt/.pth/.bin) is
    refused unless ``allow_pickle`` is True, and then read with ``torch.load(weights_only=True)``; the usual
    ``{"state_dict": {...}, "global_step": n}`` wrapping is removed and non-tensor entries are dropped.
    Missing, truncated or corrupt files raise a one-line RGDInputError.
    """
    path = _checkpoint_file(path)
    if _is_pickle(path):
        return _read_pickle(path, allow_pickle)
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own error type, OSError or MemoryError
        raise RGDInputError(_unreadable_safetensors(path, error)) from error


def read_key_shapes(path: str | Path, allow_pickle: bool = False) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a checkpoint; for safetensors only the header is read, so this is instant on any size."""
    path = _checkpoint_file(path)
    if _is_pickle(path):
        return {key: tuple(tensor.shape) for key, tensor in _read_pickle(path, allow_pickle).items()}
    from safetensors import safe_open

    def compute() -> dict[str, tuple[int, ...]]:
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except Exception as error:
            raise RGDInputError(_unreadable_safetensors(path, error)) from error

    return dict(memoized("shapes", path, compute))


# One run touches its checkpoint from several places (size estimate, loading, export, the LoRA and difference
# files); each answer below is computed once per file version, keyed by (path, size, mtime), so a multi-GB file is
# hashed once and a pickle unpickled once. Only a handful of entries are kept (one pickle's tensors at most).
_MEMO: dict[tuple, object] = {}
_MEMO_LIMIT = 16


def file_version(path: str | Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime in ns): what a cached answer about a file depends on."""
    path = Path(path).resolve()
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def memoized(kind: str, path: str | Path, compute):
    """``compute()`` once per (``kind``, file version); the pickle kind keeps only the newest entry."""
    key = (kind, *file_version(path))
    if key not in _MEMO:
        if kind == "pickle":
            for old in [k for k in _MEMO if k[0] == "pickle"]:
                del _MEMO[old]
        while len(_MEMO) >= _MEMO_LIMIT:
            del _MEMO[next(iter(_MEMO))]
        _MEMO[key] = compute()
    return _MEMO[key]


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so that a multi-gigabyte checkpoint never sits in memory twice;
    computed once per file version (``memoized``)."""

    def compute() -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_size):
                digest.update(chunk)
        return digest.hexdigest()

    return memoized("sha256", path, compute)


def _checkpoint_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise RGDInputError(
            f"{path} is a folder, not a checkpoint file: give the path of a single .safetensors checkpoint "
            "(in Python, load_pipeline_components also reads a diffusers folder with model_index.json)."
        )
    if not path.is_file():
        raise RGDInputError(f"No checkpoint file at {path}.")
    return path


def _is_pickle(path: Path) -> bool:
    """Pickles by suffix, or by content (zip or pickle magic) when the suffix is unknown."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    if path.suffix.lower() in (".safetensors", ".sft"):
        return False
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _read_pickle(path: Path, allow_pickle: bool) -> dict:
    if not allow_pickle:
        raise RGDInputError(
            f"{path.name} is a pickle checkpoint, which can run code when opened; convert it to .safetensors, "
            "or, if you trust it, allow pickles (--allow-pickle; allow_pickle=True in Python) to read it with "
            "torch.load(weights_only=True)."
        )
    # a shallow copy: callers may drop keys, never the cached dict's
    return dict(memoized("pickle", path, lambda: _unpickle(path)))


def _unpickle(path: Path) -> dict:
    import pickle

    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise RGDInputError(
            f"{path.name} holds Python objects besides tensors ({_refused_global(error)}), which weights-only "
            "loading refuses; convert it to .safetensors with a tool you trust."
        ) from error
    except Exception as error:  # truncated zip archives raise RuntimeError, old formats EOFError or others
        raise RGDInputError(
            f"{path.name} could not be read as a torch checkpoint (truncated or corrupt?): {_first_line(error)}"
        ) from error
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise RGDInputError(f"{path.name} holds a {type(loaded).__name__}, not a dict of tensors.")
    return {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def _refused_global(error: Exception) -> str:
    """The object torch refused, from its long message ("... unsupported GLOBAL posix.system ...")."""
    for line in str(error).splitlines():
        if "GLOBAL" in line:
            return line.strip().rstrip(".")
    return "unsupported content"


def _unreadable_safetensors(path: Path, error: Exception) -> str:
    return (
        f"{path.name} is not a readable safetensors file (truncated, corrupt or another format: "
        f"{_first_line(error)}); download or export it again."
    )


def _first_line(error: Exception, limit: int = 160) -> str:
    """The first non-empty line of an exception message, so user-facing errors stay one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- config folders --------------------------------------------------------------------------------------------


def config_family(config_folder: str | Path) -> str:
    """The family a diffusers-layout folder describes: "sdxl" if it has a second text encoder, else SD2 when its
    text encoder is OpenCLIP (gelu activation; SD1's CLIP uses quick_gelu), else SD1."""
    index = _model_index(config_folder)
    if (index.get("text_encoder_2") or [None])[0]:
        return "sdxl"
    text_config = _read_json(Path(config_folder) / "text_encoder" / "config.json")
    return "sd2" if text_config.get("hidden_act") == "gelu" else "sd1"


def _model_index(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise RGDInputError(f"{folder} is not a folder; config_folder must be a diffusers-layout config folder.")
    if not (folder / "model_index.json").is_file():
        raise RGDInputError(
            f"{folder} has no model_index.json; pass a diffusers-layout folder (a shipped config folder or a "
            "diffusers model)."
        )
    return _read_json(folder / "model_index.json")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RGDInputError(f"{path} is missing; the diffusers folder is incomplete.") from None
    except (OSError, ValueError) as error:
        raise RGDInputError(f"{path} is not readable JSON: {_first_line(error)}") from error


def _text_encoder_class(index: dict, name: str):
    """The transformers class model_index.json names for a text encoder, limited to the two SD uses."""
    import transformers

    class_name = (index.get(name) or [None, None])[1]
    if class_name not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise RGDInputError(f"model_index.json names {class_name!r} for {name}; rgd expects a CLIP text model.")
    return getattr(transformers, class_name)


def _scheduler(folder: Path, index: dict, prediction_type: str | None):
    """The folder's scheduler, with ``prediction_type`` overriding its config when given."""
    import diffusers

    class_name = (index.get("scheduler") or [None, None])[1]
    scheduler_class = getattr(diffusers, str(class_name), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise RGDInputError(f"model_index.json names {class_name!r} as scheduler, which is not a diffusers scheduler.")
    overrides = {"prediction_type": prediction_type} if prediction_type else {}
    return scheduler_class.from_pretrained(folder, subfolder="scheduler", local_files_only=True, **overrides)


def _tokenizer(folder: Path, name: str):
    """The folder's CLIP tokenizer; a folder without vocabulary is refused, because CLIPTokenizer.from_pretrained
    would silently build one that knows only its three special tokens."""
    from transformers import CLIPTokenizer

    if not any((folder / name / file).is_file() for file in ("vocab.json", "tokenizer.json")):
        raise RGDInputError(f"{folder / name} has no vocab.json or tokenizer.json; the config folder is incomplete.")
    if not (folder / name / "vocab.json").is_file():
        # A folder saved by transformers 5 holds only tokenizer.json, which transformers 4's slow CLIPTokenizer
        # cannot read; the fast one can (on 5 the two names are one class).
        from transformers import CLIPTokenizerFast as CLIPTokenizer  # noqa: N814
    try:
        return CLIPTokenizer.from_pretrained(str(folder / name), local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise RGDInputError(f"{folder / name} holds no usable CLIP tokenizer: {_first_line(error)}") from error


# --- checking a file against a config folder -------------------------------------------------------------------


def check_against_config(shapes: Mapping[str, Sequence[int]], family: str, config_folder: str | Path) -> None:
    """Raise a one-line RGDInputError unless every weight the config folder's models need is in the checkpoint
    with the right shape.

    diffusers' single-file loaders fill a model with ``load_state_dict(strict=False)`` (or leave weights on the
    meta device when accelerate is installed), so a checkpoint that lacks weights loads silently with random
    ones. This dry run converts key names and shapes with diffusers' own converters on meta tensors, which costs
    no memory, and compares them with the models the config describes, before any weight is read.
    """
    import torch

    index = _model_index(config_folder)
    if family == "sdxl":
        _check_sdxl_text_widths(shapes)
    meta = {key: torch.empty(tuple(shape), device="meta") for key, shape in shapes.items()}
    for name, model in _meta_models(Path(config_folder), index, family).items():
        try:
            converted = _convert_to_diffusers(name, model, meta, family)
        except KeyError as error:  # the SDXL converter indexes label_emb directly
            raise RGDInputError(f"The checkpoint lacks {name} weight {error} needed by {config_folder}.") from None
        _compare(name, model, converted, config_folder)


def _check_sdxl_text_widths(shapes: Mapping[str, Sequence[int]]) -> None:
    """diffusers picks the keys for each SDXL text encoder by comparing position-embedding widths with the model's;
    two encoders of one width would both be read from the CLIP-L keys. Real SDXL (768 and 1280) never trips this."""
    first = shapes.get(SDXL_TEXT_PREFIX + "text_model.embeddings.position_embedding.weight")
    second = shapes.get(SDXL_TEXT_2_PREFIX + "positional_embedding")
    if first is not None and second is not None and first[-1] == second[-1]:
        raise RGDInputError(
            f"Both SDXL text encoders are {first[-1]} wide, which diffusers' single-file loader cannot tell apart; "
            "export the model as a diffusers folder instead."
        )


def _meta_models(folder: Path, index: dict, family: str) -> dict:
    """Empty (meta-device) models built from the folder's configs: their state dicts are what loading must fill."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    models = {}
    with torch.device("meta"):
        for name, model_class in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
            config = _read_json(folder / name / "config.json")
            models[name] = model_class.from_config(config)
        for name in TEXT_ENCODERS[family]:
            text_class = _text_encoder_class(index, name)
            config = text_class.config_class.from_pretrained(str(folder / name), local_files_only=True)
            models[name] = text_class(config)
    return models


def _convert_to_diffusers(name: str, model, checkpoint: dict, family: str) -> dict:
    """diffusers' own original->diffusers conversion for one component (the same functions its loaders call)."""
    from diffusers.loaders import single_file_utils as sfu

    if name == "unet":
        return sfu.convert_ldm_unet_checkpoint(checkpoint, dict(model.config))
    if name == "vae":
        return sfu.convert_ldm_vae_checkpoint(checkpoint, dict(model.config))
    prefix = TEXT_ENCODERS[family][name]
    if prefix in (SD2_TEXT_PREFIX, SDXL_TEXT_2_PREFIX):
        converted = sfu.convert_open_clip_checkpoint(model, checkpoint, prefix=prefix)
    else:
        converted = sfu.convert_ldm_clip_checkpoint(checkpoint)
    if not hasattr(model, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return converted


def _compare(name: str, model, converted: dict, config_folder) -> None:
    # transformers < 4.31 (A1111 1.10 pins 4.30.2) keeps CLIP's position_ids, a fixed 0..n-1, in the state dict;
    # it is no weight and OpenCLIP files never carry it.
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()
                if not key.endswith(".position_ids")}
    missing = [key for key in expected if converted.get(key) is None]  # the converters store None for gaps
    if len(missing) == len(expected):
        raise RGDInputError(f"The checkpoint has no {name} weights for the {config_folder} configuration.")
    if missing:
        raise RGDInputError(
            f"The checkpoint lacks {len(missing)} of {len(expected)} {name} weights that {config_folder} needs "
            f"(first: {missing[0]}); is it the right config folder for this model?"
        )
    for key, shape in expected.items():
        if tuple(converted[key].shape) != shape:
            raise RGDInputError(
                f"{name} weight {key} has shape {tuple(converted[key].shape)} in the checkpoint but {shape} in "
                f"{config_folder}; pass the config folder of this model's size and family."
            )


# --- loading ---------------------------------------------------------------------------------------------------


@dataclass
class PipelineComponents:
    """The parts of an SD1/SD2/SDXL pipeline (or of a Flux.1 / SD3.x one: ``transformer`` instead of ``unet``, no
    VAE; ``checkpoints.flow_load``), ready for training on the CPU, and where they came from.

    ``sha256`` is the single file's hash (None for a diffusers folder); it identifies the base model in exports
    and caches; ``text_sha256`` those of the files a flow model's text encoders and T5 tokenizer came from, when
    not the checkpoint. ``variant`` names what the family alone does not: "flux-dev", "flux-schnell" or "sd3".
    """

    family: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    sha256: str | None = None
    source: str = ""
    transformer: Any = None
    text_encoder_3: Any = None
    tokenizer_3: Any = None
    variant: str = ""
    text_sha256: tuple[str, ...] = ()

    @property
    def denoiser(self):
        """The network that predicts the noise or velocity: the UNet, or a flow model's transformer."""
        return self.unet if self.unet is not None else self.transformer

    @property
    def prediction_type(self) -> str:
        """"epsilon" or "v_prediction" from a DDPM-type scheduler's config; "flow" for a flow-matching scheduler
        (diffusers' FlowMatch* classes), whose config names no prediction type."""
        if type(self.scheduler).__name__.startswith("FlowMatch"):
            return "flow"
        return self.scheduler.config.prediction_type


def load_pipeline_components(
    path: str | Path,
    config_folder: str | Path | None = None,
    family: str | None = None,
    prediction_type: str | None = None,
    allow_pickle: bool = False,
) -> PipelineComponents:
    """Load UNet, VAE, text encoder(s), tokenizer(s) and scheduler from a single file or a diffusers folder, offline.

    A single file needs ``config_folder``, a config-only diffusers folder of the same family and size (the shipped
    ones, or any diffusers model folder); its weights are converted by diffusers' ``from_single_file`` machinery
    with ``local_files_only=True``. A diffusers folder (with model_index.json) carries its own configs and loads
    with ``from_pretrained(local_files_only=True)``; ``config_folder`` is then ignored.

    ``family``, when given, must agree with what the file's keys say (it guards against loading the wrong file).
    ``prediction_type`` ("epsilon" or "v_prediction") overrides the scheduler config: the weights cannot tell
    an SD2 768-v model from an SD2 base model. Every mismatch raises a one-line RGDInputError.
    """
    if family is not None and family not in FAMILIES:
        raise RGDInputError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}.")
    if prediction_type is not None and prediction_type not in DDPM_PREDICTION_TYPES:
        raise RGDInputError(f"prediction_type must be one of {', '.join(DDPM_PREDICTION_TYPES)}, "
                            f"not {prediction_type!r}.")
    path = Path(path)
    if path.is_dir():
        return _load_diffusers_folder(path, family, prediction_type)
    _checkpoint_file(path)
    if config_folder is None:
        raise RGDInputError(
            f"{path.name} is a single-file checkpoint, which holds no configuration; pass config_folder, a "
            "diffusers-layout config folder of the same family (sd1, sd2 or sdxl)."
        )
    return _load_single_file(path, Path(config_folder), family, prediction_type, allow_pickle)


def _reset_position_ids(text_encoder) -> None:
    """CLIP's position ids are always 0..n-1. transformers < 4.31 loads them from the file, where fp16 checkpoints
    often hold them as floats (an embedding index must be an integer) or slightly off: rebuild them."""
    import torch

    embeddings = getattr(getattr(text_encoder, "text_model", text_encoder), "embeddings", None)
    ids = getattr(embeddings, "position_ids", None)
    if ids is not None:
        embeddings.position_ids = torch.arange(ids.shape[-1], device=ids.device).expand((1, -1))


def _load_single_file(path, config_folder, family, prediction_type, allow_pickle) -> PipelineComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    # A pickle must be read whole to see its keys; safetensors headers are read first, the weights only once the
    # file is known to fit the config folder.
    state = read_state_dict(path, allow_pickle) if _is_pickle(path) else None
    shapes = {k: tuple(v.shape) for k, v in state.items()} if state is not None else read_key_shapes(path)
    found = detect_family(shapes, shapes)
    if family is not None and family != found:
        raise RGDInputError(f"{path.name} is an {found} checkpoint by its keys, not {family}.")
    expected = config_family(config_folder)
    if expected != found:
        raise RGDInputError(
            f"{path.name} is an {found} checkpoint but {config_folder} describes an {expected} model; "
            f"pass an {found} config folder."
        )
    check_against_config(shapes, found, config_folder)  # before reading gigabytes of weights
    if state is None:
        state = read_state_dict(path)

    index = _model_index(config_folder)
    common = dict(config=str(config_folder), local_files_only=True)
    parts = {
        "unet": UNet2DConditionModel.from_single_file(state, subfolder="unet", **common),
        "vae": AutoencoderKL.from_single_file(state, subfolder="vae", **common),
    }
    for name in TEXT_ENCODERS[found]:
        text_class = _text_encoder_class(index, name)
        parts[name] = create_diffusers_clip_model_from_ldm(text_class, checkpoint=state, subfolder=name, **common)
        _reset_position_ids(parts[name])
    del state
    for name in ("tokenizer", "tokenizer_2") if found == "sdxl" else ("tokenizer",):
        parts[name] = _tokenizer(config_folder, name)
    parts["scheduler"] = _scheduler(config_folder, index, prediction_type)
    return PipelineComponents(family=found, sha256=file_sha256(path), source=str(path), **parts)


def _load_diffusers_folder(folder: Path, family, prediction_type) -> PipelineComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    index = _model_index(folder)
    found = config_family(folder)
    if family is not None and family != found:
        raise RGDInputError(f"{folder} holds an {found} model by its configs, not {family}.")
    in_channels = _read_json(folder / "unet" / "config.json").get("in_channels", 4)
    if in_channels != 4:
        raise RGDInputError(
            f"The UNet in {folder} takes {in_channels} input channels (inpainting or another variant); rgd "
            "supports only text-to-image models with 4 input channels."
        )
    parts = {}
    try:
        parts["unet"] = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
        parts["vae"] = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
        for name in TEXT_ENCODERS[found]:
            text_class = _text_encoder_class(index, name)
            parts[name] = text_class.from_pretrained(str(folder / name), local_files_only=True)
    except OSError as error:  # no weights file: most likely a config-only folder
        raise RGDInputError(
            f"{folder} lacks model weights ({_first_line(error)}); a config-only folder goes in config_folder, "
            "next to a checkpoint file."
        ) from error
    for name in ("tokenizer", "tokenizer_2") if found == "sdxl" else ("tokenizer",):
        parts[name] = _tokenizer(folder, name)
    parts["scheduler"] = _scheduler(folder, index, prediction_type)
    return PipelineComponents(family=found, sha256=None, source=str(folder), **parts)
