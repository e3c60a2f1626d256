"""The one scope vocabulary: which weights of a denoiser an unlearning run edits.

Every host and every command uses these four names, and this one test of a parameter name, whatever the model's
key layout (diffusers ``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight`` or the original/ComfyUI
``input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight``; both name the attention blocks attn1/attn2 and their
projections the same way):

    lora            low-rank deltas on the attention projections (to_q, to_k, to_v, to_out.0 of attn1 and attn2):
                    small, fast, and a LoRA file every UI loads (the UI default)
    cross-attn      full-rank deltas on the cross-attention layers (attn2: ESD-x's choice, where text enters)
    non-cross-attn  everything else (ESD-u's side)
    full            the whole denoiser (the paper)

Transformer denoisers (SD3.x's MMDiT, Flux.1) have no cross-attention: text enters through *joint* attention, in
which the text and image streams attend together. For them the same names mean:

    lora            low-rank deltas on every attention projection of the transformer blocks: the fused qkv and the
                    output proj of both streams (Flux double blocks img_attn/txt_attn, SD3 x_block/context_block
                    attn, SD3.5's image-only attn2), and Flux's single-stream blocks' linear1/linear2, in which
                    attention is fused with the MLP
    cross-attn      full-rank deltas on the joint attention (where text enters; not SD3.5's image-only attn2)
    non-cross-attn  everything else
    full            the whole denoiser

Both key layouts are read: the original (BFL / Stability, ComfyUI's) ``double_blocks.3.img_attn.qkv``,
``single_blocks.0.linear1``, ``joint_blocks.5.x_block.attn.qkv``, and diffusers' ``transformer_blocks.3.attn.to_q``,
``add_q_proj``, ``to_add_out``, ``single_transformer_blocks.0.attn.to_k`` / ``proj_out``.
"""

from __future__ import annotations

from rgd_core.errors import RGDInputError

LORA_SCOPE = "lora"
SCOPES = (LORA_SCOPE, "cross-attn", "non-cross-attn", "full")
FULL_RANK_SCOPES = ("full", "cross-attn", "non-cross-attn")

# The layers LoRA goes on: the four projections of every self- and cross-attention block.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ATTENTION_BLOCKS = ("attn1", "attn2")
CROSS_ATTENTION = "attn2"


# Transformer blocks: original layout anywhere in the path; diffusers' "transformer_blocks" only at the root, since
# an SD UNet also has transformer_blocks, inside its attention modules.
DIT_BLOCKS = ("double_blocks", "single_blocks", "joint_blocks", "single_transformer_blocks")
DIT_ROOT_BLOCKS = ("transformer_blocks",)
ROOT_PREFIXES = ("model", "diffusion_model", "transformer")
# diffusers' names of the joint attention's projections (image stream, then text stream)
DIFFUSERS_JOINT = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def is_transformer_block(module: str) -> bool:
    """Whether ``module`` lies in a transformer block of an SD3.x / Flux.1 denoiser (either key layout)."""
    parts = module.split(".")
    while parts and parts[0] in ROOT_PREFIXES:
        parts = parts[1:]
    return any(block in parts for block in DIT_BLOCKS) or bool(parts) and parts[0] in DIT_ROOT_BLOCKS


def transformer_attention(module: str) -> str | None:
    """"joint" for an attention projection where text and image attend together, "self" for SD3.5's image-only
    attn2, None for anything else (MLPs, modulation, norms) of a transformer block."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    last, parent = parts[-1], parts[-2]
    if "single_blocks" in parts:
        return "joint" if last in ("linear1", "linear2") else None
    if "double_blocks" in parts:
        return "joint" if parent in ("img_attn", "txt_attn") and last in ("qkv", "proj") else None
    if "joint_blocks" in parts:
        if last in ("qkv", "proj") and parent in ("attn", "attn2"):
            return "joint" if parent == "attn" else "self"
        return None
    if module.endswith(".attn.to_out.0") or parent == "attn" and last in DIFFUSERS_JOINT:
        return "joint"
    if "single_transformer_blocks" in parts and last in ("proj_mlp", "proj_out"):
        return "joint"  # diffusers' split of a single block's linear1 (q, k, v, proj_mlp) and its linear2
    if module.endswith(".attn2.to_out.0") or parent == "attn2" and last in ("to_q", "to_k", "to_v"):
        return "self"
    return None


def check_scope(scope: str, allowed: tuple[str, ...] = SCOPES) -> str:
    if scope not in allowed:
        raise RGDInputError(f"scope must be one of {', '.join(allowed)}, not {scope!r}.")
    return scope


def is_lora_target(module: str, targets: tuple[str, ...] = LORA_TARGETS) -> bool:
    """Whether the module at dotted path ``module`` is an attention projection LoRA goes on: in a UNet one of
    ``targets`` inside attn1/attn2; in an SD3.x / Flux.1 transformer block any attention projection (module
    docstring)."""
    if is_transformer_block(module):
        return transformer_attention(module) is not None
    parts = module.split(".")
    if not any(block in parts for block in ATTENTION_BLOCKS):
        return False
    return any(module.endswith("." + target) for target in targets)


def in_scope(name: str, scope: str) -> bool:
    """Whether parameter ``name`` (``<module path>.weight`` or ``.bias``) is edited under ``scope``."""
    check_scope(scope)
    parts = name.split(".")
    module = ".".join(parts[:-1])
    if is_transformer_block(module):
        attention = transformer_attention(module)
        if scope == LORA_SCOPE:
            return parts[-1] == "weight" and attention is not None
        if scope == "cross-attn":
            return attention == "joint"
        return scope == "full" or attention != "joint"
    if scope == LORA_SCOPE:
        return parts[-1] == "weight" and is_lora_target(module)
    if scope == "cross-attn":
        return CROSS_ATTENTION in parts
    if scope == "non-cross-attn":
        return CROSS_ATTENTION not in parts
    return True


def scope_filter(scope: str):
    """``in_scope`` as the Unlearner's ``trainable(name, parameter)`` filter for a full-rank scope."""
    check_scope(scope, FULL_RANK_SCOPES)
    return lambda name, parameter=None: in_scope(name, scope)
