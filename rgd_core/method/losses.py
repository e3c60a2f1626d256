"""Denoising losses and the forget-loss truncation modes.

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


def add_noise(x0: Tensor, noise: Tensor, alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPM forward process)."""
    abar = _per_sample(alphas_cumprod[timesteps], x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def velocity(x0: Tensor, noise: Tensor, alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022), the target of v-prediction models."""
    abar = _per_sample(alphas_cumprod[timesteps], x0)
    return abar.sqrt() * noise - (1 - abar).sqrt() * x0


def denoising_error(
    model: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    alphas_cumprod: Tensor,
    generator: torch.Generator,
    prediction_type: str = "epsilon",
) -> Tensor:
    """Per-element (prediction - target)^2 at t ~ U{0..T-1}, in the model's own parameterisation.

    ``model(x_t, t)`` closes over its conditioning. Noise and timesteps come from ``generator`` only, so a step
    is reproducible from its seed.
    """
    num_timesteps = alphas_cumprod.shape[0]
    timesteps = torch.randint(0, num_timesteps, (x0.shape[0],), generator=generator, device=generator.device)
    timesteps = timesteps.to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device, x0.dtype)
    alphas_cumprod = alphas_cumprod.to(x0.device)
    x_t = add_noise(x0, noise, alphas_cumprod, timesteps)
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = velocity(x0, noise, alphas_cumprod, timesteps)
    else:
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    return (model(x_t, timesteps) - target).square()


@dataclass(frozen=True)
class Truncation:
    """How the ascended forget loss is bounded.

    - ``none``: plain mean.
    - ``skip``: if the batch forget loss exceeds ``threshold`` (the paper's m = 1.1 for SD), the ascent is
      skipped for that step: g_f = 0 and the retain gradient passes through unprojected.
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
