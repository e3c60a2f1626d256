"""Flux.1 and SD3.x transformers in the diffusers host: their text conditioning, their network call, their latents.

The recipe, the losses and the sampler are the diffusers host's (``hosts.diffusers_sd``): a flow model's data are
its own Euler samples and its loss is the velocity MSE at sigma drawn from its shifted table. What differs per
family is only how prompts become conditioning and how latents enter the network, which this module holds:

- Flux.1: T5-XXL hidden states (256 tokens, ComfyUI's length) and CLIP-L's pooled output; latents of 16 channels
  packed into 2x2 patches of 64 values, one token each, with (0, row, column) position ids for the rotary
  embedding; dev's distilled guidance (3.5) is an input of the network, stored with each prompt's conditioning.
- SD3.x: CLIP-L and CLIP-G penultimate hidden states side by side, zero-padded to T5's width, then T5's states
  (77 tokens) along the token axis; pooled = CLIP-L's (unprojected) and CLIP-G's projected outputs.
  The same choices as ComfyUI's SD3 and Flux text encoders, so that a model erased here is erased for prompts
  encoded there.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from rgd_core.checkpoints.flow_load import FLUX_GUIDANCE
from rgd_core.hosts.text_encoding import module_device, tokenize

LATENT_SCALE = 8  # pixels per latent cell of both families' VAEs


def encode_batch(components, prompts: list[str]) -> dict[str, Tensor]:
    """Conditioning of ``prompts`` for the family's transformer (module docstring)."""
    clip_l = components.text_encoder
    output = clip_l(tokenize(components.tokenizer, prompts).to(module_device(clip_l)), output_hidden_states=True)
    if components.family == "flux":
        t5 = components.text_encoder_2
        hidden = t5(tokenize(components.tokenizer_2, prompts).to(module_device(t5))).last_hidden_state
        cond = {"encoder_hidden_states": hidden, "pooled_projections": output.pooler_output}
        if components.transformer.config.guidance_embeds:
            cond["guidance"] = torch.full((len(prompts),), FLUX_GUIDANCE)
        return cond
    clip_g, t5 = components.text_encoder_2, components.text_encoder_3
    output_g = clip_g(tokenize(components.tokenizer_2, prompts).to(module_device(clip_g)), output_hidden_states=True)
    clip = torch.cat([output.hidden_states[-2], output_g.hidden_states[-2].to(output.hidden_states[-2].device)], -1)
    t5_states = t5(tokenize(components.tokenizer_3, prompts).to(module_device(t5))).last_hidden_state
    clip = nn.functional.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1]))
    return {
        "encoder_hidden_states": torch.cat([clip, t5_states.to(clip.device)], dim=1),
        "pooled_projections": torch.cat([output.pooler_output, output_g.text_embeds.to(clip.device)], -1),
    }


def latent_channels(components) -> int:
    """Channels of the family's latents (16 for both: Flux's transformer takes them packed 2x2, 64 wide)."""
    channels = components.transformer.config.in_channels
    return channels // 4 if components.family == "flux" else channels


def pack(latents: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): each 2x2 patch one token, row-major, as Flux reads latents."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack(tokens: Tensor, height: int, width: int) -> Tensor:
    """The inverse of ``pack`` for latents of ``height`` x ``width`` cells."""
    b, _, packed = tokens.shape
    c = packed // 4
    return tokens.reshape(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def image_ids(height: int, width: int) -> Tensor:
    """Flux's position ids of the packed latent tokens: (0, row, column) per 2x2 patch."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3)


def transformer_call(components) -> Callable[[nn.Module, Tensor, Tensor, Mapping[str, Tensor]], Tensor]:
    """``call(transformer, x, sigma, cond)`` -> velocity shaped like x, for latents x (B, 16, H, W) at noise levels
    sigma (B,). SD3's transformer takes the timestep 1000 sigma; Flux's multiplies sigma (and its guidance) by 1000
    itself, so it gets sigma."""
    if components.family == "flux":
        return _flux_call
    scale = float(components.scheduler.config.num_train_timesteps)
    return lambda model, x, sigma, cond: _sd3_call(model, x, sigma * scale, cond)


def _text(model: nn.Module, x: Tensor, cond: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    dtype = next(model.parameters()).dtype
    return cond["encoder_hidden_states"].to(x.device, dtype), cond["pooled_projections"].to(x.device, dtype)


def _sd3_call(model: nn.Module, x: Tensor, timestep: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
    hidden, pooled = _text(model, x, cond)
    return model(hidden_states=x, encoder_hidden_states=hidden, pooled_projections=pooled,
                 timestep=timestep.expand(x.shape[0]), return_dict=False)[0]


def _flux_call(model: nn.Module, x: Tensor, sigma: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
    hidden, pooled = _text(model, x, cond)
    height, width = x.shape[-2:]
    guidance = cond.get("guidance")
    if guidance is not None:
        guidance = guidance.to(x.device, x.dtype).expand(x.shape[0])
    out = model(hidden_states=pack(x), encoder_hidden_states=hidden, pooled_projections=pooled,
                timestep=sigma.to(x.dtype).expand(x.shape[0]), img_ids=image_ids(height, width).to(x.device, x.dtype),
                txt_ids=torch.zeros(hidden.shape[1], 3, device=x.device, dtype=x.dtype), guidance=guidance,
                return_dict=False)[0]
    return unpack(out, height, width)
