"""ESD, the most used baseline: erase a concept by negative-guidance self-distillation (Gandikota et al. 2023).

The edited UNet is trained so that its prediction under the concept prompt c matches what the frozen original
would predict if it were guided *away* from c:

    target(x_t, t) = p*(x_t, t, "") - eta * (p*(x_t, t, c) - p*(x_t, t, ""))
    loss           = || p(x_t, t, c) - target(x_t, t) ||^2

where p* is the frozen model, p the edited one, and x_t a point on the edited model's own trajectory for c:
a DDIM run from noise, stopped after a random number of steps. Only text is needed, no images and no retain set.
Predictions stay in the model's own parameterisation (epsilon or v): guidance is linear in either.

Written from the paper's objective; the timestep of x_t is the DDIM step's own DDPM timestep (the original
code draws it from a neighbouring interval).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from rgd_core.edits.scopes import scope_filter
from rgd_core.errors import NonFiniteError, RGDInputError, UnlearningCancelled
from rgd_core.hosts.diffusers_sd import (
    SamplerSettings,
    _make_scheduler,
    _unet_call,
    guidance_conditioning,
    image_size,
    vae_scale_factor,
)
from rgd_core.method.unlearner import step_seed


@dataclass(frozen=True)
class ESDConfig:
    """Defaults follow ESD's original script: negative guidance 1, start guidance 3, 50 DDIM steps, lr 1e-5, Adam.
    ``scope`` is ESD-u ("non-cross-attn", its nudity choice), ESD-x ("cross-attn", styles) or "full"."""

    steps: int = 200
    lr: float = 1e-5
    negative_guidance: float = 1.0
    start_guidance: float = 3.0
    ddim_steps: int = 50
    batch_size: int = 1
    scope: str = "non-cross-attn"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.ddim_steps < 1 or self.batch_size < 1:
            raise RGDInputError("ESD needs steps >= 0, lr > 0, ddim_steps >= 1 and batch_size >= 1.")
        scope_filter(self.scope)  # one-line error for an unknown scope


def esd_target(uncond: Tensor, concept: Tensor, negative_guidance: float) -> Tensor:
    """The frozen model's prediction guided away from the concept."""
    return uncond - negative_guidance * (concept - uncond)


def _rows(cond: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    return {key: value[index] for key, value in cond.items()}


def _repeat(uncond: dict[str, Tensor], count: int) -> dict[str, Tensor]:
    return {key: value.expand(count, *value.shape[1:]) for key, value in uncond.items()}


@torch.no_grad()
def sample_until(unet: nn.Module, scheduler, noise: Tensor, cond: dict, uncond: dict, guidance: float, stop: int):
    """Run ``stop`` guided DDIM steps from ``noise`` with ``unet``; return x and the timestep it now sits at."""
    count = noise.shape[0]
    repeated = _repeat(uncond, count)
    both = {key: torch.cat([repeated[key], cond[key]]) for key in cond}
    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps[:stop]:
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        uncond_out, cond_out = _unet_call(unet, model_input, t, both).chunk(2)
        latents = scheduler.step(uncond_out + guidance * (cond_out - uncond_out), t, latents).prev_sample
    return latents, scheduler.timesteps[stop]


def run_esd(
    components,
    prompts: Sequence[str],
    config: ESDConfig | None = None,
    height: int | None = None,
    width: int | None = None,
    callbacks: Iterable[Callable[[dict], None]] = (),
    should_stop: Callable[[], bool] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """ESD on a copy of ``components.unet`` for the concept prompts (ESD uses one; any number is accepted and each
    step draws ``batch_size`` of them). Returns the edited UNet and per-step records ``{step, loss, seconds}``;
    ``components.unet`` is never changed."""
    config = config or ESDConfig()
    prompts = list(prompts)
    if not prompts:
        raise RGDInputError("ESD needs at least one concept prompt.")
    if components.prediction_type not in ("epsilon", "v_prediction"):
        raise RGDInputError("ESD here samples DDIM trajectories of epsilon/v models; it does not run on a "
                            f"{components.prediction_type} model.")
    frozen = components.unet
    edited = copy.deepcopy(frozen)
    trainable = scope_filter(config.scope)
    for name, parameter in edited.named_parameters():
        parameter.requires_grad_(trainable(name, parameter))
    params = [p for p in edited.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)

    height, width = image_size(components, SamplerSettings(height=height, width=width))
    cond, uncond = guidance_conditioning(components, prompts, height, width)
    factor = vae_scale_factor(components)
    shape = (frozen.config.in_channels, height // factor, width // factor)
    device, dtype = next(frozen.parameters()).device, frozen.dtype
    scheduler = _make_scheduler(components, "ddim")
    scheduler.set_timesteps(config.ddim_steps, device=device)
    callbacks = list(callbacks)
    records: list[dict] = []
    for step in range(config.steps):
        if should_stop is not None and should_stop():
            raise UnlearningCancelled(f"ESD cancelled before step {step}")
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(step_seed(config.seed, step))
        index = torch.randint(0, len(prompts), (config.batch_size,), generator=generator)
        stop = int(torch.randint(0, config.ddim_steps, (1,), generator=generator))
        noise = torch.randn((config.batch_size, *shape), generator=generator).to(device, dtype)
        batch = _rows(cond, index)
        edited.eval()
        x_t, t = sample_until(edited, scheduler, noise, batch, uncond, config.start_guidance, stop)
        with torch.no_grad():
            repeated = _repeat(uncond, config.batch_size)
            both = {key: torch.cat([repeated[key], batch[key]]) for key in batch}
            frozen_uncond, frozen_concept = _unet_call(frozen, torch.cat([x_t, x_t]), t, both).chunk(2)
            target = esd_target(frozen_uncond, frozen_concept, config.negative_guidance)
        loss = (_unet_call(edited, x_t, t, batch) - target).square().mean()
        if not torch.isfinite(loss):
            raise NonFiniteError(f"ESD loss is not finite at step {step}; lower the learning rate.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record = {"step": step, "loss": loss.item(), "timestep": int(t), "seconds": time.perf_counter() - started}
        records.append(record)
        for callback in callbacks:
            callback(record)
    for parameter in edited.parameters():
        parameter.requires_grad_(False)
    edited.eval()
    return edited, records
