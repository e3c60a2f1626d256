"""Update rules: how the forget gradient g_f and the retain gradient g_r become one step.

The restricted gradient is Theorem 4 of Ko et al., "Boosting Alignment for Post-Unlearning Text-to-Image
Generative Models" (NeurIPS 2024). With s = <g_f, g_r>, a = |g_f|^2 and b = |g_r|^2 over *all* trainable
parameters at once:

    delta_f = g_f - (s / b) g_r          g_f projected onto the normal plane of g_r
    delta_r = g_r - (s / a) g_f          g_r projected onto the normal plane of g_f
    d       = delta_f + lambda * delta_r                    when s < 0 (the gradients conflict)
    d       = g_f + lambda * g_r                            otherwise

Expanding the conflicting case gives d = (1 - lambda s / a) g_f + (lambda - s / b) g_r, so d needs only the three
scalars s, a, b and one in-place pass over the gradients: no flattening, no concatenation, no host sync.

Every rule has one signature: ``rule(grads, forget_grads, retain_weight, stats=None, metric=None)``. On entry ``grads`` holds
g_r (the parameters' ``.grad`` tensors); on exit it holds d. ``forget_grads`` is read, never written. ``stats``
lets a caller that already computed s, a, b (for logging) pass them in rather than pay for them twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

# metric(i) -> positive weights shaped like tensor i: a diagonal inner product <x, y>_M = sum M x y.
Metric = Callable[[int], Tensor]


@dataclass
class GradientStats:
    """0-dim tensors on the gradients' device, so reading them is the caller's choice of when to sync."""

    inner: Tensor  # s = <g_f, g_r>
    forget_sq_norm: Tensor  # a = |g_f|^2
    retain_sq_norm: Tensor  # b = |g_r|^2
    conflict: Tensor  # bool: s < 0 and both gradients non-zero

    @property
    def cosine(self) -> Tensor:
        denom = (self.forget_sq_norm * self.retain_sq_norm).sqrt()
        return torch.where(denom > 0, self.inner / denom.clamp_min(torch.finfo(denom.dtype).tiny), 0.0)


def gradient_stats(
    forget_grads: Sequence[Tensor], retain_grads: Sequence[Tensor], metric: Metric | None = None
) -> GradientStats:
    """s, a, b as one global inner product over every tensor, accumulated in float64.

    ``metric(i)``, when given, is the positive diagonal weight of tensor i and the products become
    <x, y>_M = sum M x y (see :func:`restricted_gradient_`); weights are made one tensor at a time, so no
    parameter-sized buffer is needed for them.
    """
    if metric is not None:
        inner, forget_sq_norm, retain_sq_norm = _weighted_dots(forget_grads, retain_grads, metric)
    else:
        inner = _sum_of_dots(forget_grads, retain_grads)
        if forget_grads[0].is_cuda:  # one fused multi-tensor kernel per list on GPUs
            forget_sq_norm = torch.stack(torch._foreach_norm(list(forget_grads))).double().square().sum()
            retain_sq_norm = torch.stack(torch._foreach_norm(list(retain_grads))).double().square().sum()
        else:  # on CPUs a BLAS dot per tensor reads memory faster than foreach_norm
            forget_sq_norm = _sum_of_dots(forget_grads, forget_grads)
            retain_sq_norm = _sum_of_dots(retain_grads, retain_grads)
    # A zero g_f (ascent skipped by truncation) or zero g_r is not a conflict: the other passes through
    # unprojected. The seed code got this only because NaN < 0 is False; here it is a stated rule.
    conflict = (inner < 0) & (forget_sq_norm > 0) & (retain_sq_norm > 0)
    return GradientStats(inner, forget_sq_norm, retain_sq_norm, conflict)


def _sum_of_dots(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys)]).double().sum()


def _weighted_dots(xs: Sequence[Tensor], ys: Sequence[Tensor], metric: Metric) -> tuple[Tensor, Tensor, Tensor]:
    inner, x_sq, y_sq = [], [], []
    for i, (x, y) in enumerate(zip(xs, ys)):
        weight = metric(i)  # made once per tensor: for Adam it is a sqrt and a division over the whole tensor
        weighted_x = (weight * x).reshape(-1)
        weighted_y = (weight * y).reshape(-1)
        inner.append(torch.dot(weighted_x, y.reshape(-1)))
        x_sq.append(torch.dot(weighted_x, x.reshape(-1)))
        y_sq.append(torch.dot(weighted_y, y.reshape(-1)))
    return tuple(torch.stack(v).double().sum() for v in (inner, x_sq, y_sq))


def restricted_gradient_(
    grads: list[Tensor],
    forget_grads: list[Tensor],
    retain_weight: float,
    stats: GradientStats | None = None,
    metric: Metric | None = None,
) -> GradientStats:
    """Theorem 4: write d = delta_f + lambda * delta_r into ``grads`` (which hold g_r on entry).

    With ``metric`` M the projections are taken in <x, y>_M = x^T M y (an extension, not the paper's rule):
    if the optimizer steps along -M d, as Adam roughly does with M = 1 / (sqrt(v) + eps), then
    <g_f, M d> >= 0 and <g_r, M d> >= 0 hold for the step actually taken, which the Euclidean rule does not
    promise once Adam rescales d per coordinate.
    """
    if stats is None:
        stats = gradient_stats(forget_grads, grads, metric)
    s, a, b = stats.inner, stats.forget_sq_norm, stats.retain_sq_norm
    one = torch.ones_like(s)
    forget_coef = torch.where(stats.conflict, 1 - retain_weight * s / torch.where(a > 0, a, one), one)
    retain_coef = torch.where(stats.conflict, retain_weight - s / torch.where(b > 0, b, one), retain_weight * one)
    dtype = grads[0].dtype
    torch._foreach_mul_(grads, retain_coef.to(dtype))
    forget_coef = forget_coef.to(dtype)
    # addcmul with a 0-dim factor is a fused axpy with an on-device scalar (alpha= would need a host number).
    torch._foreach_addcmul_(grads, forget_grads, [forget_coef] * len(grads))
    return stats


def graddiff_(
    grads: list[Tensor],
    forget_grads: list[Tensor],
    retain_weight: float,
    stats: GradientStats | None = None,
    metric: Metric | None = None,
) -> GradientStats | None:
    """Gradient difference, the baseline: d = g_f + lambda * g_r, no projection (and no statistics needed)."""
    torch._foreach_mul_(grads, retain_weight)
    torch._foreach_add_(grads, forget_grads)
    return stats


UpdateRule = Callable[..., "GradientStats | None"]

UPDATE_RULES: dict[str, UpdateRule] = {
    "rgd": restricted_gradient_,
    "rgd-adam": restricted_gradient_,  # projected in Adam's metric; the Unlearner supplies the metric
    "graddiff": graddiff_,
}


def restricted_gradient(
    forget_grads: Sequence[Tensor], retain_grads: Sequence[Tensor], retain_weight: float
) -> list[Tensor]:
    """Out-of-place convenience form of :func:`restricted_gradient_`."""
    update = [r.clone() for r in retain_grads]
    restricted_gradient_(update, list(forget_grads), retain_weight)
    return update


def graddiff(forget_grads: Sequence[Tensor], retain_grads: Sequence[Tensor], retain_weight: float) -> list[Tensor]:
    update = [r.clone() for r in retain_grads]
    graddiff_(update, list(forget_grads), retain_weight)
    return update
