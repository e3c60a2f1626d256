"""Read Flux.1 and SD3.x (flow-matching transformer) checkpoints offline, in the layouts their users hold.

Users of ComfyUI and Forge hold these models as separate files:
    the diffusion model     BFL's ``flux1-dev.safetensors`` (bare ``double_blocks.*`` keys), Stability's
                            ``sd3.5_large.safetensors`` (``model.diffusion_model.joint_blocks.*`` plus a VAE), or a
                            ComfyUI-saved checkpoint (``model.diffusion_model.*`` next to ``text_encoders.*``)
    the text encoders       ``clip_l.safetensors``, ``clip_g.safetensors`` (SD3), ``t5xxl_fp16.safetensors`` in
                            Hugging Face layout (ComfyUI's models/text_encoders), or inside an SD3 all-in-one file
                            under ``text_encoders.{clip_l,clip_g,t5xxl}.transformer.``
    the T5 tokenizer        a ``tokenizer.json``: ComfyUI ships one (comfy/text_encoders/t5_tokenizer), Forge too
                            (backend/huggingface/black-forest-labs/FLUX.1-dev/tokenizer_2), as does any diffusers
                            Flux/SD3 folder (tokenizer_2 / tokenizer_3)

No config is downloaded or shipped per model size: every width, depth and head count is read from the weights'
shapes (``flux_config``, ``sd3_config``, ``clip_config``, ``t5_config``), with the few constants the shapes cannot
tell (head widths, activations, rotary axes) fixed per family as every released model and finetune has them. The
transformer's keys go through diffusers' own converters (the ones ``from_single_file`` uses) and must fill the
model exactly; the VAE is not loaded, since training runs on latents the model samples itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rgd_core.checkpoints.configs import clip_tokenizer
from rgd_core.checkpoints.load import PipelineComponents, file_sha256, read_key_shapes
from rgd_core.errors import RGDInputError

FLOW_FAMILIES = ("flux", "sd3")
TRANSFORMER_PREFIX = "model.diffusion_model."
# Keys of other components that single files carry beside the transformer.
OTHER_PREFIXES = ("text_encoders.", "first_stage_model.", "vae.", "cond_stage_model.", "conditioner.")

FLUX_HEAD_DIM = 128
FLUX_ROPE_AXES = (16, 56, 56)  # per-axis rotary widths of every Flux.1 model: (index, row, column); sum = head width
SD3_HEAD_DIM = 64
# The noise-level shift each family samples and trains with (ComfyUI's model_sampling defaults): SD3 3.0; Flux dev
# e^1.15 (its mu = 1.15 without a resolution-dependent ModelSamplingFlux node); schnell none.
FLOW_SHIFTS = {"sd3": 3.0, "flux-dev": math.exp(1.15), "flux-schnell": 1.0}
# Steps and classifier-free guidance each family samples with (the in-graph node's "auto" sampling, the same numbers);
# Flux dev's distilled guidance is an input of the network, set by FLUX_GUIDANCE.
FLOW_SAMPLING = {"sd3": (28, 4.5), "flux-dev": (20, 1.0), "flux-schnell": (4, 1.0)}
FLUX_GUIDANCE = 3.5
# T5 tokens each prompt is padded to (ComfyUI's minimum lengths: Flux 256, SD3 77); CLIP takes 77.
T5_TOKENS = {"flux": 256, "sd3": 77}
NATIVE_SIZE = 1024

CLIP_PROBE = "text_model.encoder.layers.0.self_attn.q_proj.weight"
T5_PROBE = "encoder.block.0.layer.0.SelfAttention.q.weight"
SCALED_FP8 = "scaled_fp8"


# --- what a file is -------------------------------------------------------------------------------------------


def flow_family(keys: Iterable[str]) -> str | None:
    """"flux" or "sd3" when the keys hold a Flux.1 / SD3.x transformer in the original (BFL / Stability / ComfyUI)
    layout, bare or under ``model.diffusion_model.``; else None."""
    bare = {key.removeprefix(TRANSFORMER_PREFIX) for key in keys}
    if "double_blocks.0.img_attn.qkv.weight" in bare:
        return "flux"
    if "joint_blocks.0.x_block.attn.qkv.weight" in bare:
        return "sd3"
    return None


def flux_variant(keys: Iterable[str]) -> str:
    """"flux-dev" for a guidance-distilled Flux (it has a guidance embedder), else "flux-schnell"."""
    bare = {key.removeprefix(TRANSFORMER_PREFIX) for key in keys}
    return "flux-dev" if "guidance_in.in_layer.weight" in bare else "flux-schnell"


def transformer_keys(keys: Iterable[str]) -> list[str]:
    """The transformer's keys of a file: those under ``model.diffusion_model.`` when it has any, else every key not
    of another component."""
    keys = list(keys)
    prefixed = [key for key in keys if key.startswith(TRANSFORMER_PREFIX)]
    return prefixed or [key for key in keys if not key.startswith(OTHER_PREFIXES)]


def _bare(shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    return {key.removeprefix(TRANSFORMER_PREFIX): tuple(shapes[key]) for key in transformer_keys(shapes)}


def _count(bare: Iterable[str], block: str) -> int:
    pattern = re.compile(rf"^{block}\.(\d+)\.")
    found = {int(match.group(1)) for key in bare if (match := pattern.match(key))}
    return max(found) + 1 if found else 0


def _need(bare: Mapping[str, tuple[int, ...]], key: str, what: str) -> tuple[int, ...]:
    if key not in bare:
        raise RGDInputError(f"The {what} checkpoint lacks {key}; it is incomplete or of another architecture.")
    return bare[key]


# --- configs from shapes ---------------------------------------------------------------------------------------


def flux_config(shapes: Mapping[str, Sequence[int]]) -> dict:
    """diffusers ``FluxTransformer2DModel`` config of a BFL-layout Flux.1 transformer, from its shapes."""
    bare = _bare(shapes)
    hidden, in_channels = _need(bare, "img_in.weight", "Flux")
    head = _need(bare, "double_blocks.0.img_attn.norm.query_norm.scale", "Flux")[0]
    if head != FLUX_HEAD_DIM:
        raise RGDInputError(f"This Flux transformer has {head}-wide attention heads; rgd reads Flux.1 models, whose "
                            f"heads are {FLUX_HEAD_DIM} wide.")
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "num_layers": _count(bare, "double_blocks"),
        "num_single_layers": _count(bare, "single_blocks"),
        "attention_head_dim": head,
        "num_attention_heads": hidden // head,
        "joint_attention_dim": _need(bare, "txt_in.weight", "Flux")[1],
        "pooled_projection_dim": _need(bare, "vector_in.in_layer.weight", "Flux")[1],
        "guidance_embeds": "guidance_in.in_layer.weight" in bare,
        "axes_dims_rope": list(FLUX_ROPE_AXES),
    }


def sd3_config(shapes: Mapping[str, Sequence[int]]) -> dict:
    """diffusers ``SD3Transformer2DModel`` config of a Stability-layout SD3.x transformer, from its shapes."""
    bare = _bare(shapes)
    hidden, in_channels, patch, _ = _need(bare, "x_embedder.proj.weight", "SD3")
    positions = _need(bare, "pos_embed", "SD3")[1]
    depth = _count(bare, "joint_blocks")
    config = {
        "sample_size": NATIVE_SIZE // 8,
        "patch_size": patch,
        "in_channels": in_channels,
        "num_layers": depth,
        "attention_head_dim": SD3_HEAD_DIM,
        "num_attention_heads": hidden // SD3_HEAD_DIM,
        "joint_attention_dim": _need(bare, "context_embedder.weight", "SD3")[1],
        "caption_projection_dim": _need(bare, "context_embedder.weight", "SD3")[0],
        "pooled_projection_dim": _need(bare, "y_embedder.mlp.0.weight", "SD3")[1],
        "out_channels": _need(bare, "final_layer.linear.weight", "SD3")[0] // (patch * patch),
        "pos_embed_max_size": math.isqrt(positions),
    }
    # SD3.5: RMS-normed queries and keys, and (medium) a second, image-only attention in some blocks.
    if any(".ln_q." in key for key in bare):
        config["qk_norm"] = "rms_norm"
    dual = [i for i in range(depth) if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in bare]
    if dual:
        config["dual_attention_layers"] = dual
    return config


def clip_config(shapes: Mapping[str, Sequence[int]], role: str) -> dict:
    """transformers ``CLIPTextConfig`` keywords of a Hugging Face-layout CLIP text tower (keys without the
    ``text_model.`` prefix); ``role`` "clip_l" (OpenAI ViT-L, quick_gelu) or "clip_g" (OpenCLIP bigG, gelu)."""
    vocab, hidden = shapes["embeddings.token_embedding.weight"]
    config = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": shapes["encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": _count(shapes, "encoder.layers"),
        "num_attention_heads": hidden // 64,
        "max_position_embeddings": shapes["embeddings.position_embedding.weight"][0],
        "hidden_act": "gelu" if role == "clip_g" else "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
    }
    if "text_projection.weight" in shapes:
        config["projection_dim"] = shapes["text_projection.weight"][0]
    return config


def t5_config(shapes: Mapping[str, Sequence[int]]) -> dict:
    """transformers ``T5Config`` keywords of a T5 v1.1 encoder (gated GELU, as T5-XXL), from its shapes."""
    buckets, heads = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    embedding = shapes.get("shared.weight") or shapes["encoder.embed_tokens.weight"]
    return {
        "vocab_size": embedding[0],
        "d_model": embedding[1],
        "d_kv": shapes[T5_PROBE][0] // heads,
        "d_ff": shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0],
        "num_layers": _count(shapes, "encoder.block"),
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6,
        "is_encoder_decoder": False,
        "use_cache": False,
    }


# --- Flux key layout ---------------------------------------------------------------------------------------------

# BFL name -> diffusers name of the tensors that are plain renames (weight and bias alike).
_FLUX_RENAMES = {
    "img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
}
_FLUX_DOUBLE = {
    "img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight", "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2",
}
_FLUX_SINGLE = {
    "linear2": "proj_out", "modulation.lin": "norm.linear",
    "norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight",
}


def convert_flux_original(state: Mapping[str, Any]) -> dict:
    """A BFL-layout Flux.1 state dict (bare or ``model.diffusion_model.``-prefixed) in diffusers'
    ``FluxTransformer2DModel`` names: the fused qkv and single-block linear1 split by rows into q, k, v (and the
    MLP input), the final modulation's (shift, scale) halves swapped into diffusers' (scale, shift).

    The same mapping as diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``, which cannot be used for it
    because it fixes the width at 3072 (the released models'); this one reads the width from the weights, so tiny
    test models and any finetune convert (tests check both give the same at 3072). Splits are views of the source
    tensors, which the export's key-map tracing relies on."""
    import torch

    bare = {key.removeprefix(TRANSFORMER_PREFIX): state[key] for key in transformer_keys(state)}
    hidden = bare["img_in.weight"].shape[0]
    out: dict[str, Any] = {}

    def rename(source: str, target: str) -> None:
        if source.endswith(".scale"):  # an RMSNorm's scale: one tensor, named weight in diffusers
            if source in bare:
                out[target] = bare.pop(source)
            return
        for suffix in (".weight", ".bias"):
            if source + suffix in bare:
                out[target + suffix] = bare.pop(source + suffix)

    def split(source: str, targets: Sequence[str], sizes: Sequence[int]) -> None:
        for suffix in (".weight", ".bias"):
            if source + suffix in bare:
                parts = torch.split(bare.pop(source + suffix), list(sizes), dim=0)
                for target, part in zip(targets, parts):
                    out[target + suffix] = part

    for source, target in _FLUX_RENAMES.items():
        rename(source, target)
    for i in range(_count(bare, "double_blocks")):
        block, target = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for source, name in _FLUX_DOUBLE.items():
            rename(block + source, target + name)
        split(block + "img_attn.qkv", [target + "attn.to_q", target + "attn.to_k", target + "attn.to_v"], [hidden] * 3)
        split(block + "txt_attn.qkv", [target + f"attn.add_{x}_proj" for x in "qkv"], [hidden] * 3)
    for i in range(_count(bare, "single_blocks")):
        block, target = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for source, name in _FLUX_SINGLE.items():
            rename(block + source, target + name)
        mlp = bare[block + "linear1.weight"].shape[0] - 3 * hidden
        split(block + "linear1", [target + "attn.to_q", target + "attn.to_k", target + "attn.to_v",
                                  target + "proj_mlp"], [hidden, hidden, hidden, mlp])
    for suffix in (".weight", ".bias"):
        key = "final_layer.adaLN_modulation.1" + suffix
        if key in bare:
            shift, scale = bare.pop(key).chunk(2, dim=0)
            out["norm_out.linear" + suffix] = torch.cat([scale, shift], dim=0)
    if bare:
        raise RGDInputError(f"Flux weight {next(iter(bare))} has no place in Flux.1's architecture ({len(bare)} such "
                            "weights); is this a Flux variant rgd does not know?")
    return out


# --- text encoder files ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoderSource:
    """Where one text encoder's weights are: a file and the key prefix of its Hugging Face-layout keys."""

    role: str  # "clip_l", "clip_g" or "t5"
    path: Path
    prefix: str
    shapes: Mapping[str, tuple[int, ...]]


def text_encoder_sources(path: Path, shapes: Mapping[str, Sequence[int]]) -> list[TextEncoderSource]:
    """Every CLIP or T5 text tower the file's keys hold (a standalone file, or an all-in-one file's
    ``text_encoders.*.transformer.`` blocks), each with its role."""
    if any(SCALED_FP8 in key for key in shapes):
        raise RGDInputError(f"{path.name} stores scaled fp8 weights, which only ComfyUI reads; pass the fp16 (or "
                            "plain fp8) file of the same text encoder.")
    found = []
    for prefix in sorted({key[: -len(CLIP_PROBE)] for key in shapes if key.endswith(CLIP_PROBE)}):
        tower = {key[len(prefix):]: tuple(shape) for key, shape in shapes.items() if key.startswith(prefix)}
        tower = {key.removeprefix("text_model."): shape for key, shape in tower.items()}
        found.append(TextEncoderSource(_clip_role(path, prefix, tower), path, prefix, tower))
    for prefix in sorted({key[: -len(T5_PROBE)] for key in shapes if key.endswith(T5_PROBE)}):
        tower = {key[len(prefix):]: tuple(shape) for key, shape in shapes.items() if key.startswith(prefix)}
        found.append(TextEncoderSource("t5", path, prefix, tower))
    return found


def _clip_role(path: Path, prefix: str, tower: Mapping[str, tuple[int, ...]]) -> str:
    """CLIP-L or CLIP-G: by the prefix or file name that says so, else by width (768 / 1280, the released ones)."""
    for name in (prefix, path.name.lower()):
        for role in ("clip_l", "clip_g"):
            if role in name:
                return role
    width = tower["embeddings.token_embedding.weight"][1]
    return {768: "clip_l", 1280: "clip_g"}.get(width, f"clip of width {width}")


NEEDED_ENCODERS = {"flux": ("clip_l", "t5"), "sd3": ("clip_l", "clip_g", "t5")}


def find_text_encoders(family: str, checkpoint: Path, checkpoint_shapes: Mapping[str, Sequence[int]],
                       places: Sequence[str | Path]) -> dict[str, TextEncoderSource]:
    """The text encoders ``family`` needs, from the checkpoint itself or the files and folders in ``places``
    (every ``.safetensors`` in a folder is looked at by its header). A role found twice outside the checkpoint is
    refused with the candidates named, rather than guessed."""
    candidates: dict[str, list[TextEncoderSource]] = {}
    for source in text_encoder_sources(checkpoint, checkpoint_shapes):
        candidates.setdefault(source.role, []).append(source)
    inside = set(candidates)
    for path in _safetensors_files(places):
        if path.resolve() == checkpoint.resolve():
            continue
        for source in text_encoder_sources(path, read_key_shapes(path)):
            if source.role not in inside:
                candidates.setdefault(source.role, []).append(source)
    chosen = {}
    for role in NEEDED_ENCODERS[family]:
        options = candidates.get(role, [])
        if not options:
            raise RGDInputError(_missing_encoder(family, role, places))
        if len(options) > 1:
            names = ", ".join(str(option.path) for option in options)
            raise RGDInputError(f"several {_ENCODER_NAMES[role]} files found ({names}); pass the one to use in "
                                "--text-encoders.")
        chosen[role] = options[0]
    return chosen


_ENCODER_NAMES = {"clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5": "T5-XXL"}


def _missing_encoder(family: str, role: str, places: Sequence[str | Path]) -> str:
    needed = " + ".join(_ENCODER_NAMES[r] for r in NEEDED_ENCODERS[family])
    where = f" in {', '.join(str(p) for p in places)}" if places else ""
    return (f"no {_ENCODER_NAMES[role]} text encoder{where}: a {'Flux.1' if family == 'flux' else 'SD3.x'} model "
            f"needs {needed}; pass --text-encoders with the files or their folder (e.g. ComfyUI's "
            "models/text_encoders).")


def _safetensors_files(places: Sequence[str | Path]) -> list[Path]:
    files = []
    for place in places:
        place = Path(place)
        if place.is_dir():
            files.extend(sorted(place.glob("*.safetensors")))
        elif place.is_file():
            files.append(place)
        else:
            raise RGDInputError(f"--text-encoders {place} does not exist.")
    return files


def t5_tokenizer_file(places: Sequence[str | Path], encoder: Path) -> Path:
    """A T5 ``tokenizer.json`` in ``places`` (a file, a folder, or a folder's t5_tokenizer / tokenizer_2 /
    tokenizer_3 subfolder) or next to the T5 weights."""
    folders = []
    for place in [*places, encoder.parent]:
        place = Path(place)
        if place.is_file() and place.name == "tokenizer.json":
            return place
        if place.is_dir():
            folders += [place, place / "t5_tokenizer", place / "tokenizer_2", place / "tokenizer_3"]
    for folder in folders:
        candidate = folder / "tokenizer.json"
        if candidate.is_file() and _is_t5_tokenizer(candidate):
            return candidate
    raise RGDInputError(
        "no T5 tokenizer (tokenizer.json) found: add its folder to --text-encoders, e.g. ComfyUI's "
        "comfy/text_encoders/t5_tokenizer or Forge's backend/huggingface/black-forest-labs/FLUX.1-dev/tokenizer_2."
    )


def _is_t5_tokenizer(path: Path) -> bool:
    """A tokenizer.json whose vocabulary has T5's special tokens (a CLIP tokenizer folder can hold one too)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    added = {token.get("content") for token in data.get("added_tokens", [])}
    return {"<pad>", "</s>"} <= added


# --- building the models ---------------------------------------------------------------------------------------


def read_tensors(path: Path, keys: Iterable[str]) -> dict:
    """Only ``keys`` of a safetensors file, on the CPU (a 24 GB all-in-one file is not read whole)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in keys}


def fill_exactly(model, state: Mapping[str, Any], what: str, tied: Sequence[tuple[str, str]] = ()) -> None:
    """Load ``state`` into ``model`` as float32, refusing any missing or unexpected weight (diffusers' own loaders
    fill gaps with random values silently). ``tied`` pairs name weights stored once for two keys."""
    import torch

    expected = model.state_dict()
    state = dict(state)
    if not any(key.startswith("text_model.") for key in expected):  # transformers >= 5.6 flattened CLIP
        state = {key.removeprefix("text_model."): value for key, value in state.items()}
    for first, second in tied:
        if first in expected and first not in state and second in state:
            state[first] = state[second]
        if second in expected and second not in state and first in state:
            state[second] = state[first]
    state = {key: value for key, value in state.items() if not key.endswith("position_ids")}
    missing = [key for key in expected if key not in state and not key.endswith("position_ids")]
    extra = [key for key in state if key not in expected]
    if missing or extra:
        detail = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the model has no place for"
        raise RGDInputError(f"The {what} weights do not fit its architecture: the file {detail} "
                            f"({len(missing)} missing, {len(extra)} extra).")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise RGDInputError(f"{what} weight {key} has shape {tuple(value.shape)}, the architecture needs "
                                f"{tuple(expected[key].shape)}.")
    model.load_state_dict({key: value.to(torch.float32) for key, value in state.items()}, strict=False)


def load_transformer(path: Path, family: str, shapes: Mapping[str, Sequence[int]]):
    """The diffusers transformer of a Flux.1 / SD3.x file, float32, on the CPU, in eval mode."""
    from diffusers.loaders import single_file_utils as sfu

    if family == "flux":
        from diffusers import FluxTransformer2DModel as model_class

        config, convert = flux_config(shapes), convert_flux_original
    else:
        from diffusers import SD3Transformer2DModel as model_class

        config, convert = sd3_config(shapes), sfu.convert_sd3_transformer_checkpoint_to_diffusers
    original = read_tensors(path, transformer_keys(shapes))
    try:
        converted = convert(dict(original))
    except KeyError as error:
        raise RGDInputError(f"{path.name} lacks transformer weight {error} that its architecture needs.") from None
    model = model_class.from_config(config)
    fill_exactly(model, converted, f"{path.name} transformer")
    return model.eval().requires_grad_(False)


def load_text_encoder(source: TextEncoderSource):
    """A transformers text model for one ``TextEncoderSource``, float32, eval mode: CLIPTextModel for CLIP-L (its
    pooled output is the unprojected one Flux and SD3 use), CLIPTextModelWithProjection for CLIP-G, T5EncoderModel."""
    import transformers

    keys = [key for key in read_key_shapes_of(source) if not key.endswith("position_ids")]
    state = {key[len(source.prefix):]: value for key, value in read_tensors(source.path, keys).items()}
    if source.role == "t5":
        model = transformers.T5EncoderModel(transformers.T5Config(**t5_config(source.shapes)))
        fill_exactly(model, state, f"{source.path.name} T5", tied=[("shared.weight", "encoder.embed_tokens.weight")])
    else:
        config = transformers.CLIPTextConfig(**clip_config(source.shapes, source.role))
        if source.role == "clip_g":
            model = transformers.CLIPTextModelWithProjection(config)
        else:
            model = transformers.CLIPTextModel(config)
            state = {key: value for key, value in state.items() if key != "text_projection.weight"}
        fill_exactly(model, state, f"{source.path.name} {_ENCODER_NAMES[source.role]}")
    return model.eval().requires_grad_(False)


def read_key_shapes_of(source: TextEncoderSource) -> list[str]:
    """The file keys of one text tower (its prefix kept)."""
    return [key for key in read_key_shapes(source.path) if key.startswith(source.prefix)]


def load_t5_tokenizer(path: Path, length: int):
    """T5's tokenizer from a ``tokenizer.json``: pads with ``<pad>`` to ``length`` and ends prompts with ``</s>``."""
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token="<pad>", eos_token="</s>",
                                       unk_token="<unk>", model_max_length=length)
    except Exception as error:  # the tokenizers library raises its own exception type on a bad file
        raise RGDInputError(f"{path} is not a usable tokenizer.json ({str(error).splitlines()[0][:120]}).") from None


def flow_scheduler(variant: str):
    """A diffusers flow-matching scheduler with the family's fixed shift (``FLOW_SHIFTS``); 1000 training levels."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=FLOW_SHIFTS[variant])


def load_flow_components(path: str | Path, text_encoders: Sequence[str | Path] = ()):
    """``PipelineComponents`` of a Flux.1 / SD3.x single file, offline: the transformer (``components.transformer``)
    and, from the file or ``text_encoders`` (files or folders), CLIP-L + T5 (Flux: ``text_encoder``,
    ``text_encoder_2``) or CLIP-L + CLIP-G + T5 (SD3: ``text_encoder``, ``text_encoder_2``, ``text_encoder_3``) with
    their tokenizers; no VAE. The family's variant ("flux-dev", "flux-schnell", "sd3") is ``components.variant``."""

    path = Path(path)
    shapes = read_key_shapes(path)
    family = flow_family(shapes)
    if family is None:
        raise RGDInputError(f"{path.name} holds no Flux.1 or SD3.x transformer.")
    variant = flux_variant(shapes) if family == "flux" else "sd3"
    # every check on the text encoders and tokenizer runs before gigabytes of weights are read
    sources = find_text_encoders(family, path, shapes, text_encoders)
    tokenizer_file = t5_tokenizer_file(text_encoders, sources["t5"].path)
    t5_tokenizer = load_t5_tokenizer(tokenizer_file, T5_TOKENS[family])
    if len(t5_tokenizer) > t5_config(sources["t5"].shapes)["vocab_size"]:
        raise RGDInputError(f"{tokenizer_file} knows more tokens than {sources['t5'].path.name} embeds; it is not "
                            "this T5's tokenizer.")
    parts: dict[str, Any] = {"transformer": load_transformer(path, family, shapes)}
    parts["text_encoder"], parts["tokenizer"] = load_text_encoder(sources["clip_l"]), clip_tokenizer("sd1")
    if family == "flux":
        parts["text_encoder_2"], parts["tokenizer_2"] = load_text_encoder(sources["t5"]), t5_tokenizer
    else:
        parts["text_encoder_2"], parts["tokenizer_2"] = load_text_encoder(sources["clip_g"]), clip_tokenizer("sdxl", 2)
        parts["text_encoder_3"], parts["tokenizer_3"] = load_text_encoder(sources["t5"]), t5_tokenizer
    files = sorted({source.path for source in sources.values() if source.path.resolve() != path.resolve()})
    text_sha256 = tuple(file_sha256(file) for file in [*files, tokenizer_file])
    return PipelineComponents(family=family, unet=None, vae=None, scheduler=flow_scheduler(variant), variant=variant,
                              sha256=file_sha256(path), source=str(path), text_sha256=text_sha256, **parts)
