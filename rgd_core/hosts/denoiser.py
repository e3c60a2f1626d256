"""Unlearning any denoiser that a host application drives: its prediction and losses, without the host.

A host such as ComfyUI owns the model: it loads it, moves it between devices and calls it as a k-diffusion
*denoiser* ``D(x, sigma, cond) -> x0`` (x = x0 + sigma * eps for epsilon/v models; x = (1 - sigma) x0 + sigma * eps
for flow models). The paper's objective is the plain denoising MSE in the model's own parameterisation (epsilon, v
or the flow velocity) at a noise level drawn from the model's own schedule, as
``rgd_core.method.losses.denoising_error`` computes it for a ``predict(x_t, t)``. This module joins the two:

- ``predict_from_denoiser`` turns the host's denoiser into that ``predict`` (the same x_t, the same t or sigma,
  the model's own epsilon, v or velocity), so the in-graph loss is the headless loss, not an x0-space MSE;
- ``denoiser_losses`` gives the Unlearner its two loss callables over ``PairedData`` (the diffusers backend's paired
  forget/retain latents and conditioning), batching forget pair i with its retain twin i as the paper does;
- the weight edits a host applies beside its model (``LoRADelta``, ``FullDelta``, ``make_edit``) are in
  ``rgd_core.edits.deltas``.

Nothing here imports a host; the ComfyUI glue lives in the node pack (``nodes/``).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor

from rgd_core.errors import RGDInputError
from rgd_core.method.losses import FLOW, PREDICTION_TYPES
from rgd_core.method.paired_data import PairedData, batched_losses

# denoise(x, sigma, cond) -> x0, k-diffusion form: x = x0 + sigma * eps, sigma of shape (batch,)
Denoiser = Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]
# predict(x_t, t, cond) -> epsilon or v, DDPM form: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; for flow models
# predict(x_sigma, sigma, cond) -> the velocity eps - x0 at x_sigma = (1 - sigma) x0 + sigma eps
Predict = Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]


# --- the objective -------------------------------------------------------------------------------------------


def alphas_cumprod_from_sigmas(sigmas: Tensor) -> Tensor:
    """abar_t = 1 / (1 + sigma_t^2): the DDPM schedule behind a discrete k-diffusion sigma table."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    return (1.0 / (1.0 + sigmas.square())).float()


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise RGDInputError(
            f"RGD trains epsilon-, v-prediction and flow-matching models, not {prediction_type!r}; use an "
            "SD1.x/SD2.x/SDXL, SD3.x or Flux.1-type model."
        )
    return prediction_type


def velocity_from_denoiser(denoise: Denoiser) -> Predict:
    """A flow model's velocity at noise level sigma from its x0 denoiser: with x = (1 - sigma) x0 + sigma eps,
    (x - D(x, sigma)) / sigma = eps - x0 exactly (ComfyUI's CONST parameterisation defines D that way). The
    division costs about ulp(x) / sigma of accuracy (6e-4 at Flux's sigma_min 0.00032 in float32)."""

    def predict(x: Tensor, sigma: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return (x - denoise(x, sigma.flatten(), cond)) / sigma

    return predict


def predict_from_denoiser(denoise: Denoiser, noise_schedule: Tensor, prediction_type: str) -> Predict:
    """The model's own prediction (epsilon or v at DDPM timestep t, or the velocity at sigma for flow models) from
    its k-diffusion denoiser; ``noise_schedule`` is abar_t (unused for flow: the caller passes sigma itself).

    With sigma = sqrt((1 - abar) / abar) the denoiser's input is x = x_t / sqrt(abar) = x0 + sigma * eps, and its
    x0 estimate gives eps = (x - x0) / sigma exactly (EPS and V models both define x0 that way), so
    v = sqrt(abar) eps - sqrt(1 - abar) x0 is the v-model's raw output. The division by sigma costs about
    ulp(x) / sigma_min of accuracy (1e-6 for SD's schedule in float32).
    """
    if check_prediction_type(prediction_type) == FLOW:
        return velocity_from_denoiser(denoise)
    alphas_cumprod = torch.as_tensor(noise_schedule, dtype=torch.float32)
    tables: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    def schedule_on(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        # sqrt(abar), sqrt(1 - abar) and sigma for every t, moved and computed once per device, not every call
        if device not in tables:
            abar = alphas_cumprod.to(device)
            tables[device] = (abar.sqrt(), (1 - abar).sqrt(), ((1 - abar) / abar).sqrt())
        return tables[device]

    def predict(x_t: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        sqrt_abar, sqrt_one_minus_abar, sigma = (table[t.long()] for table in schedule_on(x_t.device))
        shape = (-1, *([1] * (x_t.ndim - 1)))
        x = x_t / sqrt_abar.reshape(shape).to(x_t.dtype)
        x0 = denoise(x, sigma, cond)
        eps = (x - x0) / sigma.reshape(shape).to(x.dtype)
        if prediction_type == "epsilon":
            return eps
        return sqrt_abar.reshape(shape) * eps - sqrt_one_minus_abar.reshape(shape) * x0

    return predict


def denoiser_losses(
    predict: Predict,
    data: PairedData,
    noise_schedule: Tensor,
    prediction_type: str,
    batch_size: int = 8,
    paired: bool = True,
    device: torch.device | str | None = None,
):
    """(forget_loss, retain_loss) for the Unlearner: ``loss(model, generator) -> per-element squared error``.

    The model argument is ignored: ``predict`` already runs the model with the edit being trained. Batches, noise
    and t come from the step's generator exactly as in the diffusers backend (``batch_indices`` from its seed,
    noise and t from ``denoising_error``), so the same data and seed give the same draws in both.
    """
    check_prediction_type(prediction_type)
    noise_schedule = torch.as_tensor(noise_schedule, dtype=torch.float32)
    return batched_losses(lambda model, x_t, t, cond: predict(x_t, t, cond), data, noise_schedule, prediction_type,
                          batch_size, paired, place=lambda model, x0: x0.to(device or x0.device))
