"""Where a headless run computes: the ``--device`` setting, checked before anything loads."""

from __future__ import annotations

from rgd_core.errors import RGDInputError

AUTO = "auto"

# How the model's forward computes (--precision). The weights, the edit and the optimizer always stay float32;
# "bf16" runs the forward's matrix products and convolutions in bfloat16 under autocast (GPUs with bf16: about half
# the time and activation memory; on CPUs autocast's casts usually cost more than they save). float16 is not offered:
# its gradients would need loss scaling, which RGD's projections between two gradients would then have to undo.
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
    autocast for "bf16", nothing for "fp32"."""
    import torch

    check_precision(precision)
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
