"""Weight edits kept *beside* a host's model, and their kohya form.

A host that owns the model (ComfyUI, a UI's loaded checkpoint) applies these as functions of the base weight
(``weight -> weight + delta``) while it runs the model, so the loaded weights are never written and every other
user of the model sees it unchanged. ``make_edit`` builds one delta per weight the scope selects
(``edits.scopes.in_scope``); the Unlearner trains the ``EditSet`` (an ``nn.Module`` holding only the deltas) in
place. ``kohya_tensors`` names an ``EditSet`` the kohya way (``.lora_down.weight``/``.lora_up.weight``/``.alpha``
for LoRA, ``.diff``/``.diff_b`` for full-rank deltas), what A1111, Forge and ComfyUI load; ``edits.kohya`` writes it.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from rgd_core.edits.lora import lora_rank_alpha
from rgd_core.edits.scopes import in_scope
from rgd_core.errors import RGDInputError


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
