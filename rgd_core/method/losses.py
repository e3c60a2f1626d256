"""Denoising losses and the forget-loss truncation modes.

Two families of models, one objective: the plain MSE in the model's own parameterisation at a noise level drawn
uniformly from the model's own training schedule (``noise_schedule``, indexed by t ~ U{0..T-1}):

- DDPM models (``epsilon``, ``v_prediction``): the schedule is abar_t; x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
  and the model gets t;
- flow-matching models (``flow``: SD3, Flux, the flow shapes model): the schedule is sigma_t in (0, 1], already
  shifted as the model samples with it; x_sigma = (1 - sigma) x0 + sigma eps, the target is the velocity
  eps - x0 (Esser et al. 2024, eq. 1-3; diffusers' and ComfyUI's convention) and the model gets sigma itself.

A loss here returns the *per-element* squared error of one batch; the Unlearner reduces it. Keeping the
elements lets the element-wise truncation min((D - y)^2, alpha) of the paper's EDM/CIFAR setup sit beside the
batch-level "skip ascent above m" of its Stable Diffusion setup, both as plain functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

TRUNCATION_MODES = ("none", "skip", "elementwise")
FLOW = "flow"
PREDICTION_TYPES = ("epsilon", "v_prediction", FLOW)


def add_noise(x0: Tensor, noise: Tensor, alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPM forward process)."""
    abar = _per_sample(alphas_cumprod[timesteps], x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def velocity(x0: Tensor, noise: Tensor, alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022), the target of v-prediction models."""
    abar = _per_sample(alphas_cumprod[timesteps], x0)
    return abar.sqrt() * noise - (1 - abar).sqrt() * x0


def flow_interpolate(x0: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    """x_sigma = (1 - sigma) x0 + sigma eps: the straight path from data (sigma 0) to noise (sigma 1)."""
    sigma = _per_sample(sigmas, x0)
    return (1 - sigma) * x0 + sigma * noise


def flow_velocity(x0: Tensor, noise: Tensor) -> Tensor:
    """d x_sigma / d sigma = eps - x0, the target of flow-matching models."""
    return noise - x0


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """s sigma / (1 + (s - 1) sigma): the timestep shift of SD3 and Flux (s = 3 for SD3, e^1.15 for Flux dev), which
    moves a uniform schedule towards high noise; s = 1 is the identity."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_sigmas(count: int = 1000, shift: float = 1.0) -> Tensor:
    """The discrete flow schedule sigma_k = shift(k / count), k = 1..count (ascending, no sigma = 0): the table
    ComfyUI's flow models sample from and RGD draws its training noise levels from."""
    return shift_sigma(torch.arange(1, count + 1, dtype=torch.float64) / count, shift).float()


def implied_noise(x0: Tensor, x_t: Tensor, levels: Tensor, prediction_type: str) -> Tensor:
    """The eps for which the forward process takes ``x0`` to ``x_t`` at ``levels`` (abar_t, or sigma for flow
    models): (x_t - sqrt(abar) x0) / sqrt(1 - abar), or (x_sigma - (1 - sigma) x0) / sigma. A noisy latent the
    sampler passed through on its way to x0 is then an ordinary training point (x0, eps, t)."""
    level = _per_sample(levels, x0)
    if prediction_type == FLOW:
        return (x_t - (1 - level) * x0) / level
    return (x_t - level.sqrt() * x0) / (1 - level).sqrt()


def denoising_error(
    model: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    noise_schedule: Tensor,
    generator: torch.Generator,
    prediction_type: str = "epsilon",
    points: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Per-element (prediction - target)^2 at t ~ U{0..T-1}, in the model's own parameterisation.

    ``noise_schedule`` is abar_t for epsilon/v models and sigma_t for flow models (module docstring). ``model(x, t)``
    closes over its conditioning and is called at the noisy input with its time input: the timestep t for
    epsilon/v, the noise level sigma_t for flow. Noise and timesteps come from ``generator`` only (t first, then
    the noise, for every kind), so a step is reproducible from its seed.

    ``points = (x_t, t)`` (trajectory reuse): where ``t[i] >= 0`` (an index into ``noise_schedule``), row i is taken
    at the noisy latent ``x_t[i]`` the sampler passed through at that t, with the noise that latent implies
    (``implied_noise``), instead of fresh noise at a drawn t. The draws are made all the same, so the other rows
    are what they would be without ``points``.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    num_timesteps = noise_schedule.shape[0]
    timesteps = torch.randint(0, num_timesteps, (x0.shape[0],), generator=generator, device=generator.device)
    timesteps = timesteps.to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device, x0.dtype)
    noise_schedule = noise_schedule.to(x0.device)
    if points is not None:
        point_latents, point_times = points[0].to(x0.device, x0.dtype), points[1].to(x0.device)
        use = point_times >= 0
        timesteps = torch.where(use, point_times, timesteps)
        at_point = implied_noise(x0, point_latents, noise_schedule[timesteps], prediction_type)
        noise = torch.where(_per_sample(use, x0).bool(), at_point, noise)
    if prediction_type == FLOW:
        sigmas = noise_schedule[timesteps]
        return (model(flow_interpolate(x0, noise, sigmas), sigmas) - flow_velocity(x0, noise)).square()
    x_t = add_noise(x0, noise, noise_schedule, timesteps)
    target = noise if prediction_type == "epsilon" else velocity(x0, noise, noise_schedule, timesteps)
    return (model(x_t, timesteps) - target).square()


@dataclass(frozen=True)
class Truncation:
    """How the ascended forget loss is bounded.

    - ``none``: plain mean.
    - ``skip``: if the batch forget loss exceeds ``threshold`` (the paper's m = 1.1 for SD), the ascent is
      skipped for that step: g_f = 0 and the retain gradient passes through unprojected. With several concepts
      and ``UnlearnConfig.forget_per_concept``, each concept's part of the batch is its own "batch" here.
    - ``elementwise``: mean of min((D - y)^2, ``threshold``) (the paper's alpha = 0.1 for EDM/CIFAR); elements
      already past alpha give no gradient, so the ascent is bounded.
    """

    mode: str = "none"
    threshold: float = float("inf")

    def __post_init__(self) -> None:
        if self.mode not in TRUNCATION_MODES:
            raise ValueError(f"truncation mode must be one of {TRUNCATION_MODES}, got {self.mode!r}")
        if self.mode != "none" and not self.threshold > 0:
            raise ValueError(f"truncation threshold must be > 0 for mode {self.mode!r}, got {self.threshold}")

    def forget_objective(self, error: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reported loss, objective to ascend, ascent-active flag), all 0-dim and on device (no host sync)."""
        loss = error.mean()
        if self.mode == "elementwise":
            return loss, error.clamp(max=self.threshold).mean(), torch.ones((), dtype=torch.bool, device=loss.device)
        if self.mode == "skip":
            active = loss.detach() <= self.threshold
            return loss, loss * active, active
        return loss, loss, torch.ones((), dtype=torch.bool, device=loss.device)


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
