"""Where a headless run computes: the ``--device`` setting, checked before anything loads."""

from __future__ import annotations

from rgd_core.errors import RGDInputError

AUTO = "auto"


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
