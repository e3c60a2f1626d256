"""Unlearning any denoiser that a host application drives: the losses and the weight edits, without the host.

A host such as ComfyUI owns the model: it loads it, moves it between devices and calls it as a k-diffusion
*denoiser* ``D(x, sigma, cond) -> x0`` (x = x0 + sigma * eps). The paper's objective is the plain denoising MSE in
the model's own parameterisation (epsilon or v) at t ~ U{0..T-1}, as ``rgd_core.losses.denoising_error`` computes
it for a ``predict(x_t, t)`` in DDPM form. This module joins the two:

- ``predict_from_denoiser`` turns the host's denoiser into that DDPM-form ``predict`` (the same x_t, the same t,
  the model's own epsilon or v), so the in-graph loss is the headless loss, not an x0-space MSE;
- ``paired_losses`` gives the Unlearner its two loss callables over ``PairedData`` (the diffusers backend's paired
  forget/retain latents and conditioning), batching forget pair i with its retain twin i as the paper does;
- ``LoRADelta`` / ``FullDelta`` are weight edits kept *beside* the model: a host applies them as functions of the
  base weight (``weight -> weight + delta``) while it runs the model, so the loaded weights are never written and
  every other user of the model sees it unchanged. ``make_edit`` builds one per selected weight; the Unlearner
  trains the ``EditSet`` (an ``nn.Module`` holding only the deltas) in place;
- ``kohya_tensors`` writes an ``EditSet`` under kohya names (``.lora_down.weight``/``.lora_up.weight``/``.alpha``
  for LoRA, ``.diff``/``.diff_b`` for full-rank deltas), the format A1111, Forge and ComfyUI load.

Nothing here imports a host; the ComfyUI glue lives in the node pack (``nodes/``).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import RGDInputError
from ..checkpoints.load import PREDICTION_TYPES
from ..edits.scopes import SCOPES, in_scope
from ..lora import lora_rank_alpha
from .diffusers_sd import PairedData, batched_losses


# denoise(x, sigma, cond) -> x0, k-diffusion form: x = x0 + sigma * eps, sigma of shape (batch,)
Denoiser = Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]
# predict(x_t, t, cond) -> epsilon or v, DDPM form: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
Predict = Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]


# --- the objective -------------------------------------------------------------------------------------------


def alphas_cumprod_from_sigmas(sigmas: Tensor) -> Tensor:
    """abar_t = 1 / (1 + sigma_t^2): the DDPM schedule behind a discrete k-diffusion sigma table."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    return (1.0 / (1.0 + sigmas.square())).float()


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise RGDInputError(
            f"RGD trains epsilon- and v-prediction models, not {prediction_type!r}; use an SD1.x/SD2.x/SDXL-type model."
        )
    return prediction_type


def predict_from_denoiser(denoise: Denoiser, alphas_cumprod: Tensor, prediction_type: str) -> Predict:
    """The model's own prediction (epsilon or v) at DDPM timestep t, from its k-diffusion denoiser.

    With sigma = sqrt((1 - abar) / abar) the denoiser's input is x = x_t / sqrt(abar) = x0 + sigma * eps, and its
    x0 estimate gives eps = (x - x0) / sigma exactly (EPS and V models both define x0 that way), so
    v = sqrt(abar) eps - sqrt(1 - abar) x0 is the v-model's raw output. The division by sigma costs about
    ulp(x) / sigma_min of accuracy (1e-6 for SD's schedule in float32).
    """
    check_prediction_type(prediction_type)
    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
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


def paired_losses(
    predict: Predict,
    data: PairedData,
    alphas_cumprod: Tensor,
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
    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
    return batched_losses(lambda model, x_t, t, cond: predict(x_t, t, cond), data, alphas_cumprod, prediction_type,
                          batch_size, paired, place=lambda model, x0: x0.to(device or x0.device))


# --- weight edits --------------------------------------------------------------------------------------------


class LoRADelta(nn.Module):
    """weight -> weight + alpha / rank * up @ down, for a 2-D (Linear) weight.

    kohya's init: ``down`` kaiming-uniform from ``generator``, ``up`` zero, so the edit starts as the identity.
    The factors are float32 whatever the model's dtype; the delta is cast to the weight's dtype when applied.
    """

    def __init__(self, shape: Sequence[int], rank: int, alpha: float | None = None,
                 generator: torch.Generator | None = None, device=None) -> None:
        super().__init__()
        if len(shape) != 2:
            raise RGDInputError(f"LoRA edits 2-D weights, not a weight of shape {tuple(shape)}.")
        self.rank, self.alpha = lora_rank_alpha(rank, alpha)
        out_features, in_features = shape
        down = torch.empty(self.rank, in_features)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
        self.down = nn.Parameter(down.to(device))
        self.up = nn.Parameter(torch.zeros(out_features, self.rank, device=device))

    def delta(self) -> Tensor:
        return (self.up @ self.down) * (self.alpha / self.rank)

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.delta().to(weight.device, weight.dtype)


class FullDelta(nn.Module):
    """weight -> weight + diff, a full-rank float32 difference starting at zero."""

    def __init__(self, shape: Sequence[int], device=None) -> None:
        super().__init__()
        self.diff = nn.Parameter(torch.zeros(*shape, device=device))

    def delta(self) -> Tensor:
        return self.diff

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.diff.to(weight.device, weight.dtype)


class EditSet(nn.Module):
    """The trainable edits of one run, by the model's own parameter name (``...attn2.to_k.weight``)."""

    def __init__(self, edits: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.names = list(edits)
        # ModuleDict keys may not contain dots
        self.edits = nn.ModuleDict({name.replace(".", "/"): edit for name, edit in edits.items()})

    def items(self):
        return [(name, self.edits[name.replace(".", "/")]) for name in self.names]

    def __len__(self) -> int:
        return len(self.names)


def make_edit(
    shapes: Mapping[str, Sequence[int]],
    scope: str,
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    device=None,
) -> EditSet:
    """One delta per parameter of ``shapes`` (name -> shape) that ``scope`` selects, in name order.

    LoRA inits come from one generator seeded with ``seed``, drawn in sorted-name order, so an edit is the same
    for the same seed whatever order the host lists its weights in.
    """
    names = sorted(name for name in shapes if in_scope(name, scope))
    if not names:
        raise RGDInputError(f"scope {scope!r} selects no weights of this model; pick another scope.")
    generator = torch.Generator().manual_seed(seed)
    edits: dict[str, nn.Module] = {}
    for name in names:
        if scope == "lora":
            edits[name] = LoRADelta(shapes[name], rank, alpha, generator, device)
        else:
            edits[name] = FullDelta(shapes[name], device)
    return EditSet(edits)


@torch.no_grad()
def kohya_tensors(edit: EditSet, kohya_names: Mapping[str, str], dtype: torch.dtype = torch.float32) -> dict:
    """The edit as a kohya-format state dict.

    ``kohya_names`` maps each edited weight's module path (the parameter name without ``.weight``/``.bias``) to
    its kohya name (``lora_unet_...``). LoRA: ``<name>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``.
    Full deltas: ``<name>.diff`` for a weight, ``<name>.diff_b`` for a bias. Deltas that are still exactly zero are
    left out (a scope's untouched weights would only bloat the file).
    """
    out: dict[str, Tensor] = {}
    for name, delta in edit.items():
        module, kind = name.rsplit(".", 1)
        if module not in kohya_names:
            raise RGDInputError(f"no kohya name for {module}; the edit and the model do not match.")
        key = kohya_names[module]
        if isinstance(delta, LoRADelta):
            out[f"{key}.lora_down.weight"] = delta.down.detach().to("cpu", dtype).contiguous()
            out[f"{key}.lora_up.weight"] = delta.up.detach().to("cpu", dtype).contiguous()
            out[f"{key}.alpha"] = torch.tensor(delta.alpha, dtype=dtype)
            continue
        diff = delta.diff.detach()
        if not bool(diff.any()):
            continue
        out[f"{key}.diff" if kind == "weight" else f"{key}.diff_b"] = diff.to("cpu", dtype).contiguous()
    return out
