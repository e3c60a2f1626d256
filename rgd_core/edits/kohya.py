"""One kohya-format LoRA / difference file writer for every host, with the same metadata.

A kohya file (what A1111, Forge and ComfyUI load) holds, per edited module ``<name>`` (``lora_unet_...``):
``<name>.lora_down.weight`` (rank x in), ``<name>.lora_up.weight`` (out x rank) and ``<name>.alpha`` for a LoRA,
applied as ``W + alpha / rank * up @ down``; or ``<name>.diff`` / ``<name>.diff_b`` for a full-rank difference.
The headless host builds the tensors from its ``LoRALinear`` layers (``lora.kohya_state_dict``), the in-graph host
from its ``LoRADelta``/``FullDelta`` edits (``edits.deltas.kohya_tensors``); both write through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from rgd_core.errors import RGDInputError
from rgd_core.files import save_safetensors_atomic

LORA_FORMAT = "rgd-kohya-lora-1"
DIFF_FORMAT = "rgd-kohya-diff-1"


def kohya_metadata(tensors: Mapping[str, Tensor], extra: Mapping[str, object] | None = None) -> dict[str, str]:
    """The file-level metadata kohya tools and UIs read, taken from the tensors themselves so that every host
    writes the same: ``ss_network_module``, ``ss_network_dim`` (the rank, or "dynamic"), ``ss_network_alpha`` and
    ``rgd_format`` for a LoRA (a difference file gets ``rgd_format`` only), then ``extra`` as strings."""
    downs = [value for key, value in tensors.items() if key.endswith(".lora_down.weight")]
    if downs:
        ranks = {int(value.shape[0]) for value in downs}
        alphas = {float(value) for key, value in tensors.items() if key.endswith(".alpha")}
        info = {
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "dynamic",
            "ss_network_alpha": repr(alphas.pop()) if len(alphas) == 1 else "dynamic",
            "rgd_format": LORA_FORMAT,
        }
    else:
        info = {"rgd_format": DIFF_FORMAT}
    for key, value in (extra or {}).items():
        if not isinstance(key, str):
            raise RGDInputError(f"safetensors metadata keys must be strings, not {key!r}.")
        info[key] = value if isinstance(value, str) else str(value)
    return info


def save_kohya_file(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, object] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write kohya ``tensors`` atomically (floating tensors cast to ``dtype`` when given) with ``kohya_metadata``."""
    if not tensors:
        raise RGDInputError("the edit is empty: nothing to write to a LoRA file.")
    out = {key: (value.to(dtype) if dtype is not None and value.is_floating_point() else value).contiguous()
           for key, value in tensors.items()}
    return save_safetensors_atomic(out, path, kohya_metadata(tensors, metadata))
