"""The digits world: class-conditional diffusion on scikit-learn's 8x8 handwritten digits.

A CPU-sized stand-in for the paper's CIFAR-10 class-forgetting experiment (Ko et al. 2024, Table 1): a
class-conditional DDPM (label 10 is the null label used for classifier-free guidance) whose weights are
trained by :func:`train_base_model` and committed to the package, so nothing is downloaded or retrained.
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from rgd_bench.worlds import ema_update
from rgd_core.method import losses

NUM_CLASSES = 10
NULL_CLASS = 10
IMAGE_SIZE = 8
BASE_MODEL_PATH = Path(__file__).resolve().parent.parent / "weights" / "digits_unet.safetensors"

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE,
    in_channels=1,
    out_channels=1,
    block_out_channels=(16, 32, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    num_class_embeds=NUM_CLASSES + 1,
    attention_head_dim=32,
    norm_num_groups=8,
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


def load_digits_data() -> tuple[Tensor, Tensor]:
    """All 1,797 digits as float32 images in [-1, 1], shape (N, 1, 8, 8), and their int64 labels.

    The CSV is parsed once per process (a benchmark asks for the data once per run); each call gets its own
    tensors, so no caller can change another's data.
    """
    images, labels = _digits_arrays()
    return torch.tensor(images).unsqueeze(1), torch.tensor(labels)


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32) / 8.0 - 1.0, digits.target.astype(np.int64)


def to_pixels(images: Tensor) -> np.ndarray:
    """Model space [-1, 1] back to scikit-learn's 0..16 scale, flattened to (N, 64) for the classifier."""
    return ((images.clamp(-1, 1) + 1.0) * 8.0).reshape(images.shape[0], -1).cpu().numpy().astype(np.float64)


def make_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(**UNET_CONFIG)


def make_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def alphas_cumprod() -> Tensor:
    return make_scheduler().alphas_cumprod.clone()


def load_base_model(path: str | Path = BASE_MODEL_PATH):
    """The committed base model (train it anew with ``python -m rgd_bench.worlds.train_digits``)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"digits base model not found at {path}; regenerate it with `python -m rgd_bench.worlds.train_digits`"
        )
    unet = make_unet()
    unet.load_state_dict(load_file(str(path)))
    return unet.eval().requires_grad_(False)


def conditional(unet, labels: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The denoiser as ``model(x_t, t)`` for fixed class labels (what :func:`losses.denoising_error` takes)."""
    return lambda x_t, t: unet(x_t, t, class_labels=labels).sample


def train_base_model(
    steps: int = 800,
    batch_size: int = 128,
    max_lr: float = 2e-3,
    ema_decay: float = 0.999,
    label_dropout: float = 0.1,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
):
    """Train the class-conditional DDPM on all digits (one-cycle AdamW, EMA). Returns the EMA model."""

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_digits_data()
    unet = make_unet().train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    abar = alphas_cumprod()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=max_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps)
    for step in range(steps):
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        x0, y = images[index], labels[index].clone()
        y[torch.rand(batch_size, generator=generator) < label_dropout] = NULL_CLASS
        loss = losses.denoising_error(conditional(unet, y), x0, abar, generator).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        ema_update(ema.parameters(), unet.parameters(), step, ema_decay)
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"step {step:5d}  loss {loss.item():.4f}  lr {schedule.get_last_lr()[0]:.2e}")
    return ema


@torch.no_grad()
def sample(
    unet,
    labels: Tensor,
    seed: int = 0,
    num_steps: int = 20,
    guidance: float = 1.0,
    batch_size: int = 1000,
) -> Tensor:
    """Deterministic DDIM (eta = 0), optionally with classifier-free guidance (``guidance`` > 1); one seeded
    noise draw for the whole set, so two models sampled with one seed start from the same noise."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**SCHEDULER_CONFIG, clip_sample=True)
    scheduler.set_timesteps(num_steps)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((labels.shape[0], 1, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
    out = []
    for start in range(0, labels.shape[0], batch_size):
        x = noise[start : start + batch_size]
        y = labels[start : start + batch_size]
        y_both = torch.cat([y, torch.full_like(y, NULL_CLASS)])
        for t in scheduler.timesteps:
            if guidance == 1.0:
                eps = unet(x, t, class_labels=y).sample
            else:
                eps_cond, eps_null = unet(torch.cat([x, x]), t, class_labels=y_both).sample.chunk(2)
                eps = eps_null + guidance * (eps_cond - eps_null)
            x = scheduler.step(eps, t, x).prev_sample
        out.append(x)
    return torch.cat(out).clamp(-1, 1)


def balanced_retain_indices(labels: Tensor, forget_class: int, per_class: int, seed: int) -> Tensor:
    """The paper's diverse retain set: the same number of images from every remaining class."""
    return _pick_per_class(labels, [c for c in range(NUM_CLASSES) if c != forget_class], per_class, seed)


def narrow_retain_indices(labels: Tensor, forget_class: int, per_class: int, seed: int) -> Tensor:
    """The Table 3 'Case 1' low-diversity retain set: two classes close to the forget class, same total size."""
    classes = list(NEAREST_CLASSES[forget_class])
    total = per_class * (NUM_CLASSES - 1)
    return _pick_per_class(labels, classes, math.ceil(total / len(classes)), seed)[:total]


# The two classes whose mean image is nearest (Euclidean) to each digit's mean image; computed once from the
# data by `nearest_classes()` and kept here so the narrow retain set does not change with library versions.
NEAREST_CLASSES = {0: (9, 8), 1: (8, 4), 2: (8, 3), 3: (9, 8), 4: (1, 6), 5: (8, 9), 6: (4, 8), 7: (8, 1),
                   8: (1, 9), 9: (3, 8)}


def nearest_classes(images: Tensor, labels: Tensor) -> dict[int, tuple[int, int]]:
    means = torch.stack([images[labels == c].mean(0).reshape(-1) for c in range(NUM_CLASSES)])
    distances = torch.cdist(means, means)
    distances.fill_diagonal_(float("inf"))
    return {c: tuple(int(i) for i in distances[c].argsort()[:2]) for c in range(NUM_CLASSES)}


def _pick_per_class(labels: Tensor, classes: list[int], per_class: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for c in classes:
        members = torch.nonzero(labels == c).squeeze(1)
        if per_class > members.numel():
            raise ValueError(f"class {c} has {members.numel()} images; asked for {per_class}")
        picked.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    return torch.cat(picked)
