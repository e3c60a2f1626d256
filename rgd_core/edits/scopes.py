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


def check_scope(scope: str, allowed: tuple[str, ...] = SCOPES) -> str:
    if scope not in allowed:
        raise RGDInputError(f"scope must be one of {', '.join(allowed)}, not {scope!r}.")
    return scope


def is_lora_target(module: str, targets: tuple[str, ...] = LORA_TARGETS) -> bool:
    """Whether the module at dotted path ``module`` is an attention projection LoRA goes on."""
    parts = module.split(".")
    if not any(block in parts for block in ATTENTION_BLOCKS):
        return False
    return any(module.endswith("." + target) for target in targets)


def in_scope(name: str, scope: str) -> bool:
    """Whether parameter ``name`` (``<module path>.weight`` or ``.bias``) is edited under ``scope``."""
    check_scope(scope)
    parts = name.split(".")
    if scope == LORA_SCOPE:
        return parts[-1] == "weight" and is_lora_target(".".join(parts[:-1]))
    if scope == "cross-attn":
        return CROSS_ATTENTION in parts
    if scope == "non-cross-attn":
        return CROSS_ATTENTION not in parts
    return True


def scope_filter(scope: str):
    """``in_scope`` as the Unlearner's ``trainable(name, parameter)`` filter for a full-rank scope."""
    check_scope(scope, FULL_RANK_SCOPES)
    return lambda name, parameter=None: in_scope(name, scope)
