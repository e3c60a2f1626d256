"""Tiny random-weight Stable Diffusion checkpoints in the original single-file layout, for tests.

A1111 and ComfyUI users hold one ``.safetensors`` file per model, in the layout of the code that trained it
(CompVis/LDM for SD1 and SD2, Stability's SGM for SDXL), not the diffusers folder layout. rgd must read those files
offline, so its tests need such files; real ones are gigabytes. This module builds tiny diffusers models from
small configs, then writes their weights under the original key names with a diffusers->original mapping written
for this project. The mapping is proved right by the tests: diffusers' own single-file loader must read the file
back to exactly the tensors it was built from.

Each fixture is one ``.safetensors`` file plus a config-only diffusers folder (model_index.json, unet/, vae/,
text_encoder/[, text_encoder_2/], scheduler/, tokenizer/[, tokenizer_2/]), which is what
``from_single_file(..., config=folder)`` needs offline. The folder holds no weights on purpose: given a folder with
weights, diffusers' pipeline loader silently takes a component from the folder when the file lacks it.

Honest sizes, so that diffusers' own key/shape test (``infer_diffusers_model_type``) names the family right:
- SD2: the OpenCLIP text encoder is 1024 wide (one layer, narrow MLP), so the UNet's cross-attention
  ``attn2.to_k`` weight ends in 1024, the test diffusers uses for v2. This costs a 34 MB file and under a second.
- SDXL: the OpenCLIP bigG-style encoder has 10 layers, because diffusers looks for ``resblocks.9``.
- SDXL: the two text encoders have different widths (32 and 64). diffusers chooses which keys to read for
  ``text_encoder_2`` by comparing the CLIP-L position-embedding width with the model's; equal widths would make
  it load text_encoder_2 from the CLIP-L keys.
Real SD2 files carry a 24th OpenCLIP layer that diffusers' 23-layer text encoder drops by its exact name
(``resblocks.23``); the tiny SD2 file has no such extra layer.

Tokenizer: the byte-level 514-id vocabulary (docs/offline.md section 2, option 2), built in memory, so the tiny text
encoders have vocab_size 514.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

FAMILIES = ("sd1", "sd2", "sdxl")
VOCAB_SIZE = 514
BOS_ID, EOS_ID = 512, 513

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."


# --- tokenizer -------------------------------------------------------------------------------------------------


def byte_to_unicode_table() -> list[str]:
    """The GPT-2/CLIP byte-to-unicode characters in table order (docs/offline.md section 2).

    Printable bytes keep their own code point; the 68 others map to chr(256) upwards. The order is the printable
    bytes first, then the others, which is what puts "a" at entry 64.
    """
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def byte_level_vocab() -> dict[str, int]:
    """256 byte characters, the same 256 with ``</w>``, then the two CLIP specials: 514 ids, no merges."""
    chars = byte_to_unicode_table()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def byte_level_tokenizer(pad_token: str = "<|endoftext|>"):
    """A CLIPTokenizer over the byte-level vocabulary; pad "!" (id 0) gives the OpenCLIP variant of SD2/SDXL."""
    from rgd_core.checkpoints.configs import bpe_clip_tokenizer

    # model_max_length must be set: the default is 1e30 and the pipelines pad to it. bpe_clip_tokenizer builds it
    # on transformers 4.x (file-based constructor) and 5 (vocab/merges constructor) alike.
    return bpe_clip_tokenizer(byte_level_vocab(), [], pad_token=pad_token, model_max_length=77)


# --- tiny diffusers models -------------------------------------------------------------------------------------


def tiny_text_encoder(hidden: int, layers: int, heads: int, intermediate: int, act: str, projection_dim=None):
    """A random CLIP text encoder; with ``projection_dim`` it is the SDXL second encoder (with text_projection)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID if projection_dim is None else 0,
        projection_dim=projection_dim or hidden,
    )
    model_class = CLIPTextModel if projection_dim is None else CLIPTextModelWithProjection
    return model_class(config).eval()


def tiny_unet(family: str, cross_attention_dim: int, text_embeds_dim: int = 0):
    """A random UNet with the block pattern of the family, two resolutions deep.

    SD1/SD2 put cross-attention in the first (highest-resolution) block as the real models do, so the key diffusers
    probes for v2 (``input_blocks.2.1...attn2.to_k``) exists. SDXL has no attention at the top resolution, uses
    linear projections, two transformer layers in its attention blocks and the text_time add-embedding.
    """
    from diffusers import UNet2DConditionModel

    common = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        attention_head_dim=8,
        norm_num_groups=32,
        cross_attention_dim=cross_attention_dim,
    )
    if family == "sdxl":
        add_time_dim = 8
        return UNet2DConditionModel(
            **common,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=add_time_dim,
            # the pooled text embedding plus six size/crop numbers, each embedded in add_time_dim
            projection_class_embeddings_input_dim=text_embeds_dim + 6 * add_time_dim,
        ).eval()
    return UNet2DConditionModel(
        **common,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        use_linear_projection=family == "sd2",
    ).eval()


def tiny_vae(scaling_factor: float):
    """A random AutoencoderKL, two resolutions (scale factor 2), with the real models' two resnets per block."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=scaling_factor,
    ).eval()


def tiny_scheduler(family: str):
    """The real models' noise schedule (scaled_linear 0.00085-0.012), epsilon prediction."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon")
    if family == "sdxl":
        return EulerDiscreteScheduler(**schedule, timestep_spacing="leading", steps_offset=1)
    return DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_components(family: str, seed: int = 0) -> dict:
    """All pipeline components of a tiny model of ``family``, by diffusers' component names."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    torch.manual_seed(seed)
    if family == "sd1":
        text_encoder = tiny_text_encoder(32, 2, 4, 37, "quick_gelu")
        return {
            "unet": tiny_unet("sd1", cross_attention_dim=32),
            "vae": tiny_vae(0.18215),
            "text_encoder": text_encoder,
            "tokenizer": byte_level_tokenizer(),
            "scheduler": tiny_scheduler("sd1"),
        }
    if family == "sd2":
        text_encoder = tiny_text_encoder(1024, 1, 16, 64, "gelu")
        return {
            "unet": tiny_unet("sd2", cross_attention_dim=1024),
            "vae": tiny_vae(0.18215),
            "text_encoder": text_encoder,
            "tokenizer": byte_level_tokenizer(pad_token="!"),
            "scheduler": tiny_scheduler("sd2"),
        }
    text_encoder = tiny_text_encoder(32, 2, 4, 37, "quick_gelu")
    text_encoder_2 = tiny_text_encoder(64, 10, 4, 64, "gelu", projection_dim=32)
    return {
        "unet": tiny_unet("sdxl", cross_attention_dim=32 + 64, text_embeds_dim=32),
        "vae": tiny_vae(0.13025),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": byte_level_tokenizer(),
        "tokenizer_2": byte_level_tokenizer(pad_token="!"),
        "scheduler": tiny_scheduler("sdxl"),
    }


# --- diffusers -> original key mapping -------------------------------------------------------------------------

# ResBlock sub-layers: LDM numbers the layers of its nn.Sequential stacks, diffusers names them.
UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET_NAMES = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_module_map(config) -> dict[str, tuple[str, str]]:
    """diffusers module prefix -> (LDM prefix, kind) for a UNet2DConditionModel config.

    LDM numbers its UNet as flat lists. input_blocks: 0 is conv_in, then per resolution ``layers_per_block``
    entries of (resnet, attention), then one downsampler (except at the last resolution). output_blocks: per
    resolution ``layers_per_block + 1`` entries of (resnet, attention), the upsampler sitting in the last entry of
    each resolution but the last, after the attention if there is one. The attention (SpatialTransformer) keys
    below the prefix are the same in both layouts; only ResBlock sub-layers are renamed.
    """
    per_block = config.layers_per_block
    levels = len(config.block_out_channels)
    modules = {
        "conv_in.": ("input_blocks.0.0.", "plain"),
        "time_embedding.linear_1.": ("time_embed.0.", "plain"),
        "time_embedding.linear_2.": ("time_embed.2.", "plain"),
        "add_embedding.linear_1.": ("label_emb.0.0.", "plain"),
        "add_embedding.linear_2.": ("label_emb.0.2.", "plain"),
        "conv_norm_out.": ("out.0.", "plain"),
        "conv_out.": ("out.2.", "plain"),
        "mid_block.resnets.0.": ("middle_block.0.", "resnet"),
        "mid_block.attentions.0.": ("middle_block.1.", "plain"),
        "mid_block.resnets.1.": ("middle_block.2.", "resnet"),
    }
    for level in range(levels):
        for layer in range(per_block):
            index = 1 + level * (per_block + 1) + layer
            modules[f"down_blocks.{level}.resnets.{layer}."] = (f"input_blocks.{index}.0.", "resnet")
            modules[f"down_blocks.{level}.attentions.{layer}."] = (f"input_blocks.{index}.1.", "plain")
        if level < levels - 1:
            index = 1 + level * (per_block + 1) + per_block
            modules[f"down_blocks.{level}.downsamplers.0.conv."] = (f"input_blocks.{index}.0.op.", "plain")

        has_attention = "CrossAttn" in config.up_block_types[level]
        for layer in range(per_block + 1):
            index = level * (per_block + 1) + layer
            modules[f"up_blocks.{level}.resnets.{layer}."] = (f"output_blocks.{index}.0.", "resnet")
            modules[f"up_blocks.{level}.attentions.{layer}."] = (f"output_blocks.{index}.1.", "plain")
        if level < levels - 1:
            index = level * (per_block + 1) + per_block
            slot = 2 if has_attention else 1
            modules[f"up_blocks.{level}.upsamplers.0."] = (f"output_blocks.{index}.{slot}.", "plain")
    return modules


def vae_module_map(config) -> dict[str, tuple[str, str]]:
    """diffusers module prefix -> (LDM prefix, kind) for an AutoencoderKL config.

    The LDM decoder numbers its resolutions from the bottom (``up.0`` is the last to run), diffusers from the top,
    so decoder indices are reversed. Encoder blocks hold ``layers_per_block`` resnets, decoder blocks one more.
    """
    per_block = config.layers_per_block
    levels = len(config.block_out_channels)
    modules = {
        "encoder.conv_norm_out.": ("encoder.norm_out.", "plain"),
        "decoder.conv_norm_out.": ("decoder.norm_out.", "plain"),
    }
    for part in ("encoder", "decoder"):
        modules[f"{part}.conv_in."] = (f"{part}.conv_in.", "plain")
        modules[f"{part}.conv_out."] = (f"{part}.conv_out.", "plain")
        modules[f"{part}.mid_block.resnets.0."] = (f"{part}.mid.block_1.", "resnet")
        modules[f"{part}.mid_block.resnets.1."] = (f"{part}.mid.block_2.", "resnet")
        modules[f"{part}.mid_block.attentions.0."] = (f"{part}.mid.attn_1.", "attention")
    for name in ("quant_conv.", "post_quant_conv."):
        modules[name] = (name, "plain")
    for level in range(levels):
        for layer in range(per_block):
            source = f"encoder.down_blocks.{level}.resnets.{layer}."
            modules[source] = (f"encoder.down.{level}.block.{layer}.", "resnet")
        if level < levels - 1:
            modules[f"encoder.down_blocks.{level}.downsamplers.0."] = (f"encoder.down.{level}.downsample.", "plain")
        ldm_level = levels - 1 - level
        for layer in range(per_block + 1):
            source = f"decoder.up_blocks.{level}.resnets.{layer}."
            modules[source] = (f"decoder.up.{ldm_level}.block.{layer}.", "resnet")
        if level < levels - 1:
            modules[f"decoder.up_blocks.{level}.upsamplers.0."] = (f"decoder.up.{ldm_level}.upsample.", "plain")
    return modules


def rename_first(rest: str, names: dict[str, str]) -> str:
    """Rename the leading sub-module of ``rest`` (``norm1.weight`` -> ``in_layers.0.weight``) if it has a new name."""
    for old, new in names.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def map_module_keys(state: dict, modules: dict[str, tuple[str, str]], renames: dict[str, dict[str, str]]) -> dict:
    """Rewrite every key of ``state`` through the longest matching module prefix; an unmapped key is an error.

    Failing on an unmapped key (instead of copying it) is what makes the mapping provably complete.
    """
    ordered = sorted(modules, key=len, reverse=True)
    out = {}
    for key, tensor in state.items():
        prefix = next((p for p in ordered if key.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"no original-layout name for diffusers key {key!r}")
        target, kind = modules[prefix]
        out[target + rename_first(key[len(prefix) :], renames.get(kind, {}))] = tensor
    return out


def unet_to_original(unet) -> dict:
    """UNet weights under ``model.diffusion_model.*`` LDM/SGM names."""
    mapped = map_module_keys(unet.state_dict(), unet_module_map(unet.config), {"resnet": UNET_RESNET_NAMES})
    return {UNET_PREFIX + key: tensor for key, tensor in mapped.items()}


def vae_to_original(vae) -> dict:
    """VAE weights under ``first_stage_model.*`` LDM names.

    The LDM VAE attention is built from 1x1 convolutions (q, k, v, proj_out), so those weights get two trailing
    singleton dimensions; diffusers stores them as linear layers.
    """
    renames = {"resnet": VAE_RESNET_NAMES, "attention": VAE_ATTENTION_NAMES}
    mapped = map_module_keys(vae.state_dict(), vae_module_map(vae.config), renames)
    out = {}
    for key, tensor in mapped.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[VAE_PREFIX + key] = tensor.contiguous()
    return out


def clip_to_original(text_encoder, prefix: str) -> dict:
    """A CLIP-L style encoder as SD1 and SDXL store it: the Hugging Face keys under ``prefix + "text_model."``.

    Newer transformers drop the ``text_model.`` level from CLIPTextModel; the files always have it. The
    position_ids buffer is written too, as real SD1/SDXL files carry it (diffusers ignores it).
    """
    out = {}
    for key, tensor in text_encoder.state_dict().items():
        key = key.removeprefix("text_model.")
        out[f"{prefix}text_model.{key}"] = tensor
    out[f"{prefix}text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return out


# OpenCLIP names, one per diffusers sub-layer of an encoder layer.
OPENCLIP_LAYER_NAMES = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def open_clip_to_original(text_encoder, prefix: str, extra_projection: bool = False) -> dict:
    """An OpenCLIP text tower as SD2 (``cond_stage_model.model.``) and SDXL (``conditioner.embedders.1.model.``).

    OpenCLIP keeps q, k and v as one ``in_proj`` matrix stacked in that order, stores the positional embedding as
    a bare parameter, and applies ``text_projection`` as ``x @ P``, i.e. the transpose of the Hugging Face linear
    weight. ``extra_projection`` writes a random projection for SD2, whose real files carry one that the
    projection-less diffusers encoder ignores.
    """
    state = {key.removeprefix("text_model."): tensor for key, tensor in text_encoder.state_dict().items()}
    state.pop("embeddings.position_ids", None)  # transformers < 4.31 keeps it in the state dict; OpenCLIP has none
    out = {
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state.pop("text_projection.weight").T.contiguous()
    elif extra_projection:
        width = text_encoder.config.hidden_size
        out[prefix + "text_projection"] = torch.randn(width, width) / width**0.5

    for layer in range(text_encoder.config.num_hidden_layers):
        source = f"encoder.layers.{layer}."
        target = f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{source}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            out[f"{target}attn.in_proj_{kind}"] = torch.cat(parts)
            for old, new in OPENCLIP_LAYER_NAMES.items():
                out[f"{target}{new}.{kind}"] = state.pop(f"{source}{old}.{kind}")
    if state:
        raise KeyError(f"no OpenCLIP name for {sorted(state)}")
    return out


def original_state_dict(family: str, components: dict) -> dict:
    """The whole model as one original-layout state dict, as an A1111/ComfyUI user's file holds it."""
    state = {**unet_to_original(components["unet"]), **vae_to_original(components["vae"])}
    if family == "sd1":
        state.update(clip_to_original(components["text_encoder"], SD1_CLIP_PREFIX))
    elif family == "sd2":
        state.update(open_clip_to_original(components["text_encoder"], SD2_OPENCLIP_PREFIX, extra_projection=True))
    else:
        state.update(clip_to_original(components["text_encoder"], SDXL_CLIP_PREFIX))
        state.update(open_clip_to_original(components["text_encoder_2"], SDXL_OPENCLIP_PREFIX))
    return state


# --- files -----------------------------------------------------------------------------------------------------


def model_index(family: str, components: dict) -> dict:
    """model_index.json: which class loads each component; the safety checker is left out (None)."""
    index = {
        "_class_name": "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
    }
    for name, component in components.items():
        library = "diffusers" if type(component).__module__.startswith("diffusers") else "transformers"
        index[name] = [library, type(component).__name__]
    if family == "sdxl":
        index.update(image_encoder=[None, None], feature_extractor=[None, None], force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    return index


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def save_diffusers_folder(folder: Path, family: str, components: dict, with_weights: bool = False) -> Path:
    """Write a diffusers-layout folder: configs only by default, or a full pipeline folder with weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(model_index(family, components), indent=2))
    for name, component in components.items():
        target = folder / name
        if name.startswith("tokenizer"):
            component.save_pretrained(target)
        elif name == "scheduler" or not with_weights:
            if hasattr(component, "save_config"):  # diffusers models and schedulers
                component.save_config(target)
            else:  # transformers models keep their config object apart
                component.config.save_pretrained(target)
        else:
            component.save_pretrained(target)
    return folder


@dataclass
class Fixture:
    """A tiny single-file checkpoint, its config-only diffusers folder and the tensors it was built from."""

    family: str
    checkpoint: Path
    config_folder: Path
    components: dict
    reference: dict = field(default_factory=dict)  # component name -> diffusers state dict (the ground truth)


def write_fixture(family: str, folder: Path, seed: int = 0) -> Fixture:
    """Build the tiny ``family`` model and write ``<family>.safetensors`` and ``<family>_config/`` in ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    components = build_components(family, seed)
    checkpoint = folder / f"{family}.safetensors"
    save_file(original_state_dict(family, components), str(checkpoint))
    config_folder = save_diffusers_folder(folder / f"{family}_config", family, components)
    reference = {
        name: {key: tensor.detach().clone() for key, tensor in component.state_dict().items()}
        for name, component in components.items()
        if isinstance(component, torch.nn.Module)
    }
    return Fixture(family, checkpoint, config_folder, components, reference)


def write_all(root: Path) -> dict:
    """One tiny original-layout checkpoint and config folder per family, under ``root/<family>``."""
    from rgd_core.checkpoints.load import FAMILIES

    return {family: write_fixture(family, root / family) for family in FAMILIES}


def load_all(fixtures: dict) -> dict:
    from rgd_core.checkpoints.load import load_pipeline_components

    return {family: load_pipeline_components(f.checkpoint, f.config_folder) for family, f in fixtures.items()}


def one_line_error(call, *args, **kwargs) -> str:
    """Run ``call``, expect an RGDInputError, and check its message is one line (what users see)."""
    import pytest

    from rgd_core.errors import RGDInputError

    with pytest.raises(RGDInputError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message

