"""The two small pieces every text path of the diffusers host shares (SD's CLIP encoders, Flux's and SD3's CLIP and
T5): padded token ids, and the device a module runs on."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def tokenize(tokenizer, prompts: Sequence[str]) -> Tensor:
    """Token ids padded to the tokenizer's full length, as every prompt reaching the text encoder is padded."""
    # SD pads every prompt to the full 77 tokens (Flux's T5 to 256, SD3's to 77): the networks were trained on
    # padded embeddings, so shorter padding would change the conditioning.
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
