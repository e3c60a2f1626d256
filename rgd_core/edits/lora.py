"""LoRA for the SD UNet's attention projections, without peft: wrap, train, merge, and save in kohya format.

``add_lora`` replaces the ``to_q``/``to_k``/``to_v``/``to_out.0`` Linear layers of every attention block
(``attn1`` and ``attn2``) with a ``LoRALinear``: the frozen layer plus ``up(down(x)) * alpha / rank``, ``up``
zero-initialised, so the wrapped UNet starts out computing exactly what it did. ``lora_parameters_filter`` is the
Unlearner's ``trainable`` filter for the LoRA weights only.

Two ways out:
- ``merge_lora`` folds ``W += alpha / rank * up @ down`` into each base layer and puts the plain Linear back, so the
  UNet has its original keys again and exports through ``checkpoints.export`` like a fully trained one;
- ``save_kohya_lora`` writes the LoRA itself in the kohya/A1111 format that A1111, Forge and ComfyUI load:
  ``lora_unet_<original-layout module path, dots as underscores>.{lora_down.weight, lora_up.weight, alpha}``, the
  original-layout path taken from the learned diffusers->original key map (``export.unet_key_map``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from rgd_core.edits.kohya import LORA_FORMAT, save_kohya_file  # noqa: F401  (LORA_FORMAT: the tag files carry)
from rgd_core.edits.scopes import LORA_TARGETS, is_lora_target
from rgd_core.checkpoints.load import UNET_PREFIX
from rgd_core.errors import RGDInputError
from rgd_core.files import save_safetensors_atomic

KOHYA_PREFIX = "lora_unet_"


def lora_rank_alpha(rank: int, alpha: float | None) -> tuple[int, float]:
    """Checked (rank, alpha); alpha defaults to the rank (scale 1), kohya's convention."""
    if rank < 1:
        raise RGDInputError(f"LoRA rank must be at least 1, not {rank}.")
    scaled = float(rank if alpha is None else alpha)
    if not math.isfinite(scaled) or scaled <= 0:
        raise RGDInputError(f"LoRA alpha must be a positive number, not {alpha}.")
    return int(rank), scaled


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a low-rank update: ``base(x) + up(down(x)) * alpha / rank``.

    ``down`` (rank x in) gets kohya's kaiming-uniform init from ``generator``; ``up`` (out x rank) starts at zero.
    Both live on the base layer's device and dtype.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise RGDInputError(f"LoRALinear wraps nn.Linear layers, not {type(base).__name__}.")
        self.rank, self.alpha = lora_rank_alpha(rank, alpha)
        self.base = base
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_down = nn.Linear(base.in_features, self.rank, bias=False, **factory)
        self.lora_up = nn.Linear(self.rank, base.out_features, bias=False, **factory)
        with torch.no_grad():
            # initialise in float32 on the CPU from the generator, so the init is the same on any device/dtype
            down = torch.empty(self.rank, base.in_features)
            nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
            self.lora_down.weight.copy_(down)
            self.lora_up.weight.zero_()

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta_weight(self) -> Tensor:
        """``alpha / rank * up @ down`` in float32, shaped like the base weight."""
        return (self.lora_up.weight.float() @ self.lora_down.weight.float()) * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.lora_up(self.lora_down(x)) * self.scale

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)  # also right for ModuleList children ("to_out.0")


def lora_modules(unet: nn.Module) -> dict[str, LoRALinear]:
    """The LoRALinear layers of ``unet`` by module name (the diffusers path of the layer they wrap)."""
    return {name: module for name, module in unet.named_modules() if isinstance(module, LoRALinear)}


def add_lora(
    unet: nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    target: Sequence[str] = LORA_TARGETS,
    seed: int = 0,
) -> dict[str, LoRALinear]:
    """Wrap the ``target`` Linear layers of every attn1/attn2 block of ``unet`` (in place) with LoRALinear.

    ``alpha`` defaults to ``rank`` (scale 1). Each layer's ``down`` init comes from one generator seeded with
    ``seed`` and walked in module order, so the same UNet and seed always give the same LoRA. Returns the new
    layers by module name; a UNet that already holds LoRA layers is refused.
    """
    if lora_modules(unet):
        raise RGDInputError("the UNet already holds LoRA layers; merge them (merge_lora) before adding new ones.")
    names = [name for name, module in unet.named_modules()
             if isinstance(module, nn.Linear) and is_lora_target(name, tuple(target))]
    if not names:
        raise RGDInputError(f"no attention Linear layers named {', '.join(target)} in the UNet to put LoRA on.")
    generator = torch.Generator().manual_seed(int(seed))
    added: dict[str, LoRALinear] = {}
    for name in names:
        wrapped = LoRALinear(unet.get_submodule(name), rank, alpha, generator)
        _set_module(unet, name, wrapped)
        added[name] = wrapped
    return added


def lora_parameters_filter(name: str, parameter: nn.Parameter | None = None) -> bool:
    """The Unlearner's ``trainable`` filter: the LoRA down/up weights only, never the wrapped base layers."""
    return ".lora_down." in name or ".lora_up." in name or name.startswith(("lora_down.", "lora_up."))


@torch.no_grad()
def merge_lora(unet: nn.Module) -> nn.Module:
    """Fold every LoRA layer into its base weight (``W += alpha / rank * up @ down``, summed in float32) and put
    the plain Linear back in its place, in place. The UNet then has exactly its original state-dict keys."""
    for name, module in lora_modules(unet).items():
        base = module.base
        base.weight.copy_((base.weight.float() + module.delta_weight().to(base.weight.device)).to(base.weight.dtype))
        _set_module(unet, name, base)
    return unet


def kohya_name(diffusers_module: str, key_map: Mapping) -> str:
    """``lora_unet_<original module path with _>`` for a diffusers module, through the learned key map (the path
    without ``model.diffusion_model.``; BFL's Flux files have bare keys)."""
    source = _placement(diffusers_module, key_map).source
    if not source.endswith(".weight"):
        raise RGDInputError(f"{diffusers_module}.weight maps to {source}, not a weight.")
    return KOHYA_PREFIX + source.removeprefix(UNET_PREFIX)[: -len(".weight")].replace(".", "_")


def _placement(diffusers_module: str, key_map: Mapping):
    key = f"{diffusers_module}.weight"
    placement = key_map.get(key)
    if placement is None:
        raise RGDInputError(f"the key map has no place for {key}; save the LoRA against the checkpoint the model came "
                            "from.")
    if placement.index is not None:
        raise RGDInputError(f"{key} is reshaped in the checkpoint ({placement.source}); kohya LoRA cannot address it.")
    return placement


def kohya_state_dict(
    loras: Mapping[str, LoRALinear], key_map: Mapping, dtype: torch.dtype | None = None
) -> dict[str, Tensor]:
    """kohya/A1111 LoRA tensors: ``<name>.lora_down.weight`` (rank x in), ``<name>.lora_up.weight`` (out x rank)
    and ``<name>.alpha`` (a 0-d tensor), for each layer of ``loras``; applied as ``W + alpha / rank * up @ down``.
    ``dtype`` converts the tensors (e.g. torch.float16 for distribution); default: as trained.

    Layers that are row slices of one fused original weight (diffusers' to_q, to_k, to_v of Flux's and SD3's qkv,
    and proj_mlp of Flux's single-block linear1) become one LoRA on that weight, exactly: the downs stacked, the ups
    placed block-diagonally at their rows with each layer's scale folded in, alpha = the summed rank (scale 1)."""
    if not loras:
        raise RGDInputError("no LoRA layers to save.")
    by_source: dict[str, list[tuple[str, LoRALinear]]] = {}
    for module_name, module in loras.items():
        placement = _placement(module_name, key_map)
        if tuple(placement.shape) != tuple(module.base.weight.shape):
            raise RGDInputError(f"{module_name}.weight has shape {tuple(module.base.weight.shape)}, "
                                f"the checkpoint needs {tuple(placement.shape)}.")
        by_source.setdefault(placement.source, []).append((module_name, module))
    out: dict[str, Tensor] = {}
    for source, members in by_source.items():
        name = kohya_name(members[0][0], key_map)
        if len(members) == 1 and key_map[f"{members[0][0]}.weight"].rows is None:
            module = members[0][1]
            down, up = module.lora_down.weight.detach().cpu(), module.lora_up.weight.detach().cpu()
            alpha = torch.tensor(module.alpha, dtype=torch.float32)
        else:
            down, up, alpha = _fused_lora(members, key_map)
        if dtype is not None:
            down, up, alpha = down.to(dtype), up.to(dtype), alpha.to(dtype)
        out[name + ".lora_down.weight"] = down.contiguous()
        out[name + ".lora_up.weight"] = up.contiguous()
        out[name + ".alpha"] = alpha
    return out


def _fused_lora(members: list[tuple[str, LoRALinear]], key_map: Mapping) -> tuple[Tensor, Tensor, Tensor]:
    """One LoRA on a fused weight from LoRAs on row slices of it (``kohya_state_dict``)."""
    placements = [key_map[f"{name}.weight"] for name, _ in members]
    if any(placement.rows is None for placement in placements):
        raise RGDInputError(f"two LoRA layers map to the same checkpoint weight {placements[0].source}.")
    rows = max(placement.rows[1] for placement in placements)
    downs = [module.lora_down.weight.detach().float().cpu() for _, module in members]
    up = torch.zeros(rows, sum(down.shape[0] for down in downs))
    column = 0
    for (_, module), placement, down in zip(members, placements, downs):
        start, stop = placement.rows
        up[start:stop, column : column + down.shape[0]] = module.lora_up.weight.detach().float().cpu() * module.scale
        column += down.shape[0]
    return torch.cat(downs), up, torch.tensor(float(up.shape[1]))


def save_kohya_lora(
    path: str | Path,
    loras: Mapping[str, LoRALinear],
    key_map: Mapping,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``kohya_state_dict`` atomically through the one kohya writer (``edits.kohya.save_kohya_file``), with
    its metadata (``ss_network_dim``, ``ss_network_alpha``, ``ss_network_module``, ``rgd_format``) plus
    ``metadata`` (str -> str; prefix your own keys with ``rgd_``)."""
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise RGDInputError(f"safetensors metadata must be str -> str; {key!r} has a {type(value).__name__} value.")
    return save_kohya_file(path, kohya_state_dict(loras, key_map, dtype), metadata)


DIFFUSERS_LORA_FORMAT = "rgd-diffusers-lora-1"


def diffusers_lora_state_dict(loras: Mapping[str, LoRALinear], prefix: str = "transformer.") -> dict[str, Tensor]:
    """The LoRA in diffusers' (peft) naming, ``<prefix><module>.lora_A.weight`` (rank x in) and ``.lora_B.weight``
    (out x rank), with each layer's ``alpha / rank`` folded into B so that no alpha is needed (diffusers and peft
    then apply B @ A at scale 1). For the separate q, k, v of a flow transformer this is what diffusers'
    ``load_lora_weights`` reads and what ComfyUI's LoraLoader maps onto the fused qkv rows."""
    if not loras:
        raise RGDInputError("no LoRA layers to save.")
    out: dict[str, Tensor] = {}
    for name, module in loras.items():
        out[f"{prefix}{name}.lora_A.weight"] = module.lora_down.weight.detach().float().cpu().contiguous()
        out[f"{prefix}{name}.lora_B.weight"] = (module.lora_up.weight.detach().float().cpu()
                                                * module.scale).contiguous()
    return out


def save_diffusers_lora(path: str | Path, loras: Mapping[str, LoRALinear], metadata: Mapping[str, str] | None = None,
                        prefix: str = "transformer.") -> Path:
    """Write ``diffusers_lora_state_dict`` atomically, with ``rgd_format`` and ``metadata`` (str -> str)."""
    header = {"rgd_format": DIFFUSERS_LORA_FORMAT, **{str(k): str(v) for k, v in (metadata or {}).items()}}
    return save_safetensors_atomic(diffusers_lora_state_dict(loras, prefix), path, header)

