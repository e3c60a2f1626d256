"""Where a headless run computes: the ``--device`` setting, checked before anything loads."""

from __future__ import annotations

import contextlib

from rgd_core.errors import RGDInputError

AUTO = "auto"

# How the model's forward computes (--precision). The weights, the edit and the optimizer always stay float32;
# "bf16" runs the forward's matrix products and convolutions in bfloat16 under autocast, the arithmetic recent GPUs
# are fastest at (not measured here: no GPU was lent; on this project's CPUs the casts cost more than they save,
# README "Time to erase"). float16 is not offered: its gradients would need loss scaling, which RGD's projections
# between two gradients would then have to undo.
PRECISIONS = ("fp32", "bf16")


def resolve_device(text: str | None) -> str:
    """"auto" (or None): the first CUDA GPU when torch sees one, else the CPU; "cpu", "cuda", "cuda:N" and "mps" are
    taken as given once torch confirms the device exists. One line naming the problem otherwise."""
    import torch

    text = (text or AUTO).strip().lower()
    if text == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise RGDInputError(f"--device {text!r} is not a device; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RGDInputError(f"--device {text}: this torch sees no CUDA GPU ({torch.__version__}); use cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RGDInputError(f"--device {text}: there are {torch.cuda.device_count()} CUDA GPUs.")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RGDInputError("--device mps: this torch sees no Apple GPU; use cpu.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise RGDInputError(f"--device {text!r}: rgd runs on cpu, cuda or mps.")
    return str(device)


def move_components(components, device: str):
    """The pipeline's networks (denoiser, text encoders, VAE) on ``device``, in place; returns ``components``.
    Everything else in a run follows them: data are made where the networks are and cached on the CPU, batches
    are moved to the denoiser's device, files are written from CPU copies."""
    for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(components, name, None)
        if module is not None:
            module.to(device)
    return components


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise RGDInputError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    return precision


def autocast(device, precision: str):
    """The context a forward runs under for ``precision`` on ``device`` (a torch.device or its name): bfloat16
    autocast for "bf16"; for "fp32" no context at all (a disabled autocast would switch off a caller's own, and
    older torch refuses to build one for some devices)."""
    import torch

    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def check_bf16(device: str, precision: str) -> None:
    """Refuse ``--precision bf16`` on a device this torch cannot run it on, before the model loads."""
    import torch

    if check_precision(precision) == "fp32":
        return
    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise RGDInputError(f"--precision bf16: this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16; "
                            "use --precision fp32.")
    try:
        torch.autocast(kind, dtype=torch.bfloat16)
    except RuntimeError as error:
        raise RGDInputError(f"--precision bf16 does not run on {device} with torch {torch.__version__} ({error}); "
                            "use --precision fp32.") from None
