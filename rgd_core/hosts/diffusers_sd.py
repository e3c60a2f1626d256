"""Stable Diffusion (SD1/SD2/SDXL, diffusers) backend for RGD concept unlearning.

The paper's SD setup (Ko et al., "Boosting Alignment for Post-Unlearning Text-to-Image Generative Models",
NeurIPS 2024, section 4.2; docs/method.md section 2(b)):

- D_f: images of the concept *made by the base model itself* from diverse forget prompts; D_r: images made from the
  same prompts with the concept removed. Pair i of D_f is pair i of D_r.
- each step takes a forget batch and its paired retain batch (8 + 8), t ~ U{0..999}, eps ~ N(0, I), and the plain
  denoising MSE in the model's own parameterisation (no CFG during training);
- the forget loss is ascended, skipped on steps whose batch forget loss exceeds m = 1.1; lambda = 1.6; Adam,
  lr 1e-5, 100 steps, the full UNet.

This module turns prompts into that data (``sample_latents``, ``build_paired_data`` with a disk cache), gives the
Unlearner its two loss callables (``paired_losses``), picks the trainable parameters (``scope_filter``) and ties
them together in ``unlearn_sd``. Training works on latents: images are never decoded, and since the data are the
model's own samples there is no VAE encoding either (the paper VAE-encodes its generated images; sampling straight
into latents skips a lossy decode/encode round trip). Images a user supplies instead (``--forget-images``,
``--retain-images``; ``build_image_paired_data``) are VAE-encoded once and cached the same way.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from rgd_core.devices import autocast, check_precision
from rgd_core.edits.lora import add_lora, lora_parameters_filter
from rgd_core.edits.scopes import LORA_SCOPE, check_scope, scope_filter
from rgd_core.errors import RGDInputError
from rgd_core.checkpoints.flow_load import FLOW_FAMILIES, NATIVE_SIZE
from rgd_core.files import save_safetensors_atomic
from rgd_core.hosts import flow_transformers
from rgd_core.hosts.text_encoding import module_device, tokenize
from rgd_core.hosts.base import RecipeSettings, Trainee, add_phases, run_unlearning
from rgd_core.image_data import PREPARATION, ImageFile, find_images, load_pixels
from rgd_core.method.losses import FLOW, flow_sigmas, shift_sigma
from rgd_core.method.paired_data import (PairedData, batched_losses, merge_rows, prompt_seed, rows_mask,
                                        sampled_rows, scatter_rows)
from rgd_core.method.unlearner import UnlearnConfig
from rgd_core.prompts import PromptSet

# Bump when the layout or the meaning of the cached tensors changes: old cache files then simply miss.
DATA_FORMAT = "rgd-sd-paired-data-1"

# Deterministic samplers only: with them a prompt's latent depends on its own starting noise alone, so one seeded
# generator per prompt makes every subset and every batching reproducible.
SAMPLERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
}

# The paper's nudity run on SD v1.4 (docs/method.md 2(b): run-surgery.sh and its argparse defaults).
PAPER_NUDITY_SD14 = {
    "method": "rgd",
    "retain_weight": 1.6,
    "truncation": "skip",
    "truncation_threshold": 1.1,
    "lr": 1e-5,
    "optimizer": "adam",
    "steps": 100,
    "batch_size": 8,
    "scope": "full",
}


def paper_nudity_sd14_config(seed: int = 0) -> UnlearnConfig:
    """``PAPER_NUDITY_SD14`` as an UnlearnConfig (batch_size and scope go to ``unlearn_sd`` itself)."""
    keys = ("method", "retain_weight", "truncation", "truncation_threshold", "lr", "optimizer", "steps")
    return UnlearnConfig(seed=seed, **{key: PAPER_NUDITY_SD14[key] for key in keys})


# --- text conditioning ---------------------------------------------------------------------------------------


@torch.no_grad()
def encode_prompts(components, prompts: Sequence[str], batch_size: int = 32) -> dict[str, Tensor]:
    """Text conditioning for ``prompts``, as the diffusers pipelines build it, on the CPU in float32.

    SD1/SD2: ``encoder_hidden_states`` = the text encoder's last hidden state. SDXL: the penultimate hidden states
    of both encoders side by side, plus ``text_embeds`` (the second encoder's pooled projection), which go to the
    UNet through ``added_cond_kwargs`` together with ``time_ids`` (added by the caller, who knows the image size).
    """
    prompts = list(prompts)
    if not prompts:
        raise RGDInputError("no prompts to encode; give at least one.")
    chunks: dict[str, list[Tensor]] = {}
    for start in range(0, len(prompts), batch_size):
        for key, value in _encode_batch(components, prompts[start : start + batch_size]).items():
            chunks.setdefault(key, []).append(value.float().cpu())
    return {key: torch.cat(values) for key, values in chunks.items()}


def _encode_batch(components, prompts: list[str]) -> dict[str, Tensor]:
    if components.family in FLOW_FAMILIES:
        return flow_transformers.encode_batch(components, prompts)
    encoder = components.text_encoder
    ids = tokenize(components.tokenizer, prompts).to(module_device(encoder))
    if components.family != "sdxl":
        return {"encoder_hidden_states": encoder(ids).last_hidden_state}
    first = encoder(ids, output_hidden_states=True).hidden_states[-2]
    encoder_2 = components.text_encoder_2
    ids_2 = tokenize(components.tokenizer_2, prompts).to(module_device(encoder_2))
    output = encoder_2(ids_2, output_hidden_states=True)
    hidden = torch.cat([first, output.hidden_states[-2].to(first.device)], dim=-1)
    return {"encoder_hidden_states": hidden, "text_embeds": output.text_embeds}


def sdxl_time_ids(height: int, width: int, count: int) -> Tensor:
    """SDXL's size conditioning (original size, crop top-left, target size), as the base pipeline sets it."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(count, 1)


def noise_schedule(components) -> Tensor:
    """The model's training noise schedule as ``losses.denoising_error`` takes it: abar_t from a DDPM scheduler;
    for a flow-matching scheduler, its sigma table (``num_train_timesteps`` levels, shifted by its ``shift``; a
    scheduler that shifts by resolution at sampling time trains unshifted)."""
    scheduler = components.scheduler
    if components.prediction_type != FLOW:
        return torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)
    return flow_sigmas(int(scheduler.config.num_train_timesteps), flow_shift(components))


def flow_shift(components) -> float:
    """A flow scheduler's fixed timestep shift (1 when it shifts by resolution instead: diffusers' Flux dev)."""
    config = components.scheduler.config
    return 1.0 if config.get("use_dynamic_shifting", False) else float(config.get("shift", 1.0))


def model_call(components) -> Callable[[nn.Module, Tensor, Tensor, Mapping[str, Tensor]], Tensor]:
    """``call(unet, x, t, cond)`` at the time input ``losses.denoising_error`` gives: t itself for DDPM models;
    for flow models sigma, which diffusers' flow networks take as the timestep sigma * num_train_timesteps."""
    if components.prediction_type != FLOW:
        return _unet_call
    if components.family in FLOW_FAMILIES:
        return flow_transformers.transformer_call(components)
    scale = float(components.scheduler.config.num_train_timesteps)
    return lambda unet, x, sigma, cond: _unet_call(unet, x, sigma * scale, cond)


def _place_on_unet(unet: nn.Module, x0: Tensor) -> Tensor:
    """A batch of latents on the UNet's device, in its dtype."""
    return x0.to(module_device(unet), unet.dtype)


def _unet_call(unet: nn.Module, x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
    """One UNet forward with the conditioning dict (SDXL's pooled embedding and time ids as added_cond_kwargs)."""
    dtype, device = unet.dtype, x.device
    hidden = cond["encoder_hidden_states"].to(device, dtype)
    added = None
    if "text_embeds" in cond:
        added = {"text_embeds": cond["text_embeds"].to(device, dtype), "time_ids": cond["time_ids"].to(device, dtype)}
    return unet(x, t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample


# --- sampling the base model's own data ----------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerSettings:
    """How D_f and D_r are generated. The paper does not state its settings (docs/method.md 2(b): UNCONFIRMED);
    the defaults are SD's usual 50 DDIM steps at guidance 7.5. ``height``/``width`` are in pixels; None means the
    UNet's native size (``sample_size`` times the VAE's downscale factor, 512 for SD1.4)."""

    steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    scheduler: str = "ddim"
    batch_size: int = 8
    # Trajectory reuse: besides x0, keep this many of the noisy latents each trajectory passes through (at steps
    # chosen per pair from its seed) as training points at their own timesteps (0: x0 only).
    trajectory_points: int = 0
    # Guidance of the retain side (None: guidance_scale). 1.0 samples the retain images from the conditional alone,
    # one UNet evaluation per step instead of two; the forget side keeps guidance_scale.
    retain_guidance_scale: float | None = None
    # "bf16": the UNet's forward under bfloat16 autocast (devices.PRECISIONS); the latents stay float32
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.scheduler not in SAMPLERS:
            raise RGDInputError(f"sampler scheduler must be one of {sorted(SAMPLERS)}, not {self.scheduler!r}.")
        if self.steps < 1 or self.batch_size < 1:
            raise RGDInputError("sampler steps and batch_size must be at least 1.")
        if not 0 <= self.trajectory_points <= self.steps:
            raise RGDInputError(f"trajectory points (--trajectory-points) must be between 0 and the sampler's "
                                f"{self.steps} steps (--sample-steps), not {self.trajectory_points}.")
        if self.retain_guidance_scale is not None and not self.retain_guidance_scale >= 0:
            raise RGDInputError(f"the retain side's guidance (--retain-guidance) must be 0 or more, not "
                                f"{self.retain_guidance_scale}.")
        check_precision(self.precision)

    def for_retain(self) -> "SamplerSettings":
        """These settings as the retain side samples with them."""
        if self.retain_guidance_scale is None:
            return self
        return replace(self, guidance_scale=self.retain_guidance_scale, retain_guidance_scale=None)


def vae_scale_factor(components) -> int:
    if components.vae is None:  # a flow transformer loaded without its VAE (SD3's and Flux's both scale by 8)
        return flow_transformers.LATENT_SCALE
    return 2 ** (len(components.vae.config.block_out_channels) - 1)


def latent_channels(components) -> int:
    if components.family in FLOW_FAMILIES:
        return flow_transformers.latent_channels(components)
    return components.unet.config.in_channels


def image_size(components, settings: SamplerSettings) -> tuple[int, int]:
    """(height, width) in pixels, checked to be a whole number of latent cells."""
    factor = vae_scale_factor(components)
    if components.family in FLOW_FAMILIES:
        native = NATIVE_SIZE
    else:
        native = components.unet.config.sample_size * factor
    height, width = settings.height or native, settings.width or native
    if height % factor or width % factor:
        raise RGDInputError(f"height and width must be multiples of {factor}, got {height}x{width}.")
    return height, width


def _make_scheduler(components, name: str):
    import diffusers

    # A fresh scheduler per batch: multistep samplers keep state between steps.
    return getattr(diffusers, SAMPLERS[name]).from_config(components.scheduler.config)


def sample_latents(
    components,
    prompts: Sequence[str],
    seed: int = 0,
    settings: SamplerSettings | None = None,
    conditioning: Mapping[str, Tensor] | None = None,
    on_batch: Callable[[int], None] | None = None,
    seed_indices: Sequence[int] | None = None,
) -> Tensor:
    """The base model's own x0 latents (scaled, as the UNet sees them) for each prompt, with classifier-free
    guidance against the empty prompt. Deterministic for ``seed``: prompt i starts from noise drawn with its own
    generator seeded by ``prompt_seed(seed, i)``. ``conditioning`` reuses an ``encode_prompts`` result; the
    unconditional branch is ``guidance_conditioning``'s. ``on_batch(n)`` hears after each batch how many prompts
    are done (it may raise to stop). ``seed_indices[i]`` replaces i in the noise seed when ``prompts`` are rows of a
    longer list (a host sampling only the drawn pairs).
    """
    return sample_trajectories(components, prompts, seed, settings, conditioning, on_batch, seed_indices)[0]


@torch.no_grad()
def sample_trajectories(
    components,
    prompts: Sequence[str],
    seed: int = 0,
    settings: SamplerSettings | None = None,
    conditioning: Mapping[str, Tensor] | None = None,
    on_batch: Callable[[int], None] | None = None,
    seed_indices: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``sample_latents``' x0 latents and, with ``settings.trajectory_points`` = P > 0, the P noisy latents each
    trajectory passed through, (N, P, *latent), at steps chosen from prompt i's own seed (``kept_steps``), with
    their timesteps as indices into the model's noise schedule, (N, P); otherwise (x0, None, None)."""
    settings = settings or SamplerSettings()
    prompts = list(prompts)
    if not prompts:
        raise RGDInputError("no prompts to sample; give at least one.")
    height, width = image_size(components, settings)
    cond, uncond = guidance_conditioning(components, prompts, height, width, conditioning)
    factor = vae_scale_factor(components)
    shape = (latent_channels(components), height // factor, width // factor)
    out, points, times = [], [], []
    for start in range(0, len(prompts), settings.batch_size):
        index = range(start, min(start + settings.batch_size, len(prompts)))
        seeds = [prompt_seed(seed, i if seed_indices is None else seed_indices[i]) for i in index]
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        batch_cond = {key: value[index.start : index.stop] for key, value in cond.items()}
        passed: list[tuple[int, Tensor]] | None = [] if settings.trajectory_points else None
        with autocast(module_device(components.denoiser), settings.precision):
            x0 = _denoise(components, noise, batch_cond, uncond, settings, passed)
        out.append(x0.float().cpu())
        if passed is not None:
            steps = torch.stack([kept_steps(s, len(passed), settings.trajectory_points) for s in seeds])
            trajectory = torch.stack([x_t for _, x_t in passed], dim=1)  # (batch, sampler steps, *latent)
            points.append(trajectory[torch.arange(len(seeds))[:, None], steps])
            times.append(torch.tensor([t for t, _ in passed])[steps])
        if on_batch is not None:
            on_batch(index.stop)
    if not points:
        return torch.cat(out), None, None
    return torch.cat(out), torch.cat(points), torch.cat(times)


def kept_steps(pair_seed: int, sampler_steps: int, count: int) -> Tensor:
    """Which ``count`` of a trajectory's ``sampler_steps`` noisy latents trajectory reuse keeps (ascending step
    numbers), drawn from the pair's own noise seed (salted), so a pair keeps the same steps in any batch or subset
    and both sides of a pair keep the same ones."""
    generator = torch.Generator().manual_seed((pair_seed + 0x7A1) % 2**63)
    return torch.randperm(sampler_steps, generator=generator)[:count].sort().values


def decode_images(components, latents, batch_size: int = 4) -> np.ndarray:
    """x0 latents (scaled, as the UNet sees them) -> (N, H, W, 3) uint8 RGB images."""
    vae = components.vae
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    out = []
    with torch.no_grad():
        for start in range(0, latents.shape[0], batch_size):
            chunk = latents[start : start + batch_size].to(device, dtype) / vae.config.scaling_factor
            pixels = vae.decode(chunk).sample.float().clamp(-1, 1)
            out.append(((pixels + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def generate_images(components, prompts: Sequence[str], seed: int, settings) -> np.ndarray:
    """One image per prompt; prompt i starts from the noise of ``prompt_seed(seed, i)``."""

    latents = sample_latents(components, prompts, seed=seed, settings=settings)
    return decode_images(components, latents, batch_size=settings.batch_size)


def guidance_conditioning(components, prompts: Sequence[str], height: int, width: int,
                          conditioning: Mapping[str, Tensor] | None = None) -> tuple[dict, dict]:
    """(cond, uncond) for classifier-free guidance. SDXL's unconditional branch is all zeros, as SDXL base's
    pipeline does for an empty negative prompt (``force_zeros_for_empty_prompt``), and both carry the size time
    ids; SD1/SD2 encode the empty prompt. ``conditioning`` reuses an ``encode_prompts`` result."""
    cond = dict(conditioning) if conditioning is not None else encode_prompts(components, prompts)
    if components.family != "sdxl":
        return cond, encode_prompts(components, [""])
    cond["time_ids"] = sdxl_time_ids(height, width, len(prompts))
    uncond = {key: torch.zeros_like(value[:1]) for key, value in cond.items() if key != "time_ids"}
    uncond["time_ids"] = cond["time_ids"][:1]
    return cond, uncond


def _denoise(components, noise: Tensor, cond: dict, uncond: dict, settings: SamplerSettings,
             passed: list[tuple[int, Tensor]] | None = None) -> Tensor:
    """x0 from ``noise``; ``passed`` (when given) collects (timestep index, x_t as the model saw it) at every step."""
    unet = components.denoiser
    count = noise.shape[0]
    conditional_only = settings.guidance_scale == 1.0  # guidance 1 is the conditional alone: half the evaluations
    if components.prediction_type == FLOW and conditional_only:
        return _flow_denoise(components, noise, cond, settings, guided=False, passed=passed)
    # One UNet call per step on [uncond; cond], as the pipelines do.
    both = cond if conditional_only else {
        key: torch.cat([uncond[key].expand(count, *uncond[key].shape[1:]), cond[key]]) for key in cond}
    if components.prediction_type == FLOW:
        return _flow_denoise(components, noise, both, settings, passed=passed)
    scheduler = _make_scheduler(components, settings.scheduler)
    device = module_device(unet)
    scheduler.set_timesteps(settings.steps, device=device)
    latents = noise.to(device, unet.dtype) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents if conditional_only else torch.cat([latents, latents]), t)
        if passed is not None:  # the scaled input is the DDPM x_t whatever the scheduler's own latent scale
            passed.append((int(t), model_input[:count].float().cpu()))
        # the prediction in the latents' dtype: under bf16 autocast the UNet answers in bfloat16
        if conditional_only:
            guided = _unet_call(unet, model_input, t, both).to(latents.dtype)
        else:
            uncond_out, cond_out = _unet_call(unet, model_input, t, both).to(latents.dtype).chunk(2)
            guided = uncond_out + settings.guidance_scale * (cond_out - uncond_out)
        latents = scheduler.step(guided, t, latents).prev_sample
    return latents


def flow_sampling_sigmas(steps: int, shift: float = 1.0) -> Tensor:
    """``steps`` + 1 noise levels from 1 to 0, evenly spaced before the model's shift (ComfyUI's "simple"
    scheduler on a flow model; the last step lands on the data, not near sigma_min)."""
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()


def _flow_denoise(components, noise: Tensor, both: dict, settings: SamplerSettings, guided: bool = True,
                  passed: list[tuple[int, Tensor]] | None = None) -> Tensor:
    """Euler steps along the flow ODE dx/dsigma = v from sigma 1 (noise) to 0, CFG on the velocity (``both`` holds
    [uncond; cond]; without ``guided`` it is the conditioning alone). For a straight path DDIM's deterministic step
    is this same Euler step, so "ddim" and "euler" sample alike here. ``passed`` as ``_denoise``'s, the index being
    that of the training table's sigma nearest the step's."""
    if settings.scheduler not in ("ddim", "euler"):
        raise RGDInputError(f"flow-matching models sample with euler (or ddim, the same step), not "
                            f"{settings.scheduler!r}; pass --sampler euler.")
    unet = components.denoiser
    device = module_device(unet)
    call = model_call(components)
    sigmas = flow_sampling_sigmas(settings.steps, flow_shift(components)).to(device)
    table = noise_schedule(components) if passed is not None else None
    x = noise.to(device, unet.dtype)
    for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:]):
        if passed is not None:
            passed.append((int((table - sigma.cpu()).abs().argmin()), x.float().cpu()))
        if not guided:
            x = x + (next_sigma - sigma) * call(unet, x, sigma.expand(x.shape[0]), both).to(x.dtype)
            continue
        uncond_v, cond_v = call(unet, torch.cat([x, x]), sigma.expand(2 * x.shape[0]), both).to(x.dtype).chunk(2)
        x = x + (next_sigma - sigma) * (uncond_v + settings.guidance_scale * (cond_v - uncond_v))
    return x


# --- paired data and its cache -------------------------------------------------------------------------------


def _prompt_lists(forget_set, retain_set) -> tuple[list[str], list[str]]:
    """Forget and retain prompts. A PromptSet as ``forget_set`` gives its forget prompts and, when ``retain_set``
    is None, its retain twins; a PromptSet as ``retain_set`` gives its retain prompts; plain lists are taken as
    they are."""
    if isinstance(forget_set, PromptSet):
        forget = forget_set.forget_prompts
        if retain_set is None:
            retain_set = forget_set
    else:
        forget = list(forget_set or [])
    if retain_set is None:
        raise RGDInputError("no retain prompts: pass a PromptSet (its retain twins are used) or a retain_set.")
    retain = retain_set.retain_prompts if isinstance(retain_set, PromptSet) else list(retain_set)
    if not forget or not retain:
        raise RGDInputError("the forget and retain prompt sets must each hold at least one prompt.")
    if not all(isinstance(p, str) for p in forget + retain):
        raise RGDInputError("prompts must be strings.")
    return forget, retain


def model_fingerprint(components) -> str:
    """What the sampled data depend on: the checkpoint file's sha256 (and those of a flow model's separate text
    encoder and tokenizer files; for a model without a file, a hash of the UNet and text-encoder weights), the
    family and the noise-schedule config."""
    digest = hashlib.sha256()
    if components.sha256:
        digest.update(components.sha256.encode())
        for text_file in components.text_sha256:  # a flow model's text encoders and tokenizer, kept apart
            digest.update(text_file.encode())
    else:
        for name in ("unet", "text_encoder", "text_encoder_2"):
            module = getattr(components, name, None)
            for key, tensor in sorted(module.state_dict().items()) if module is not None else ():
                digest.update(f"{name}.{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    config = {k: v for k, v in dict(components.scheduler.config).items() if not k.startswith("_")}
    digest.update(json.dumps([components.family, config], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _digest(prompts: list[str]) -> str:
    return hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode("utf-8")).hexdigest()


def _sampler_key(settings: SamplerSettings) -> dict:
    # trajectory reuse off, the retain side at the forget side's guidance and float32 leave the key as it was
    # before those settings existed, so older caches still hit
    unset = {"trajectory_points": 0, "retain_guidance_scale": None, "precision": "fp32"}
    return {key: value for key, value in asdict(settings).items() if key not in unset or value != unset[key]}


def cache_key(components, forget: list[str], retain: list[str], settings: SamplerSettings, seed: int) -> str:
    """sha256 over everything the paired data depend on; any change gives a new key, so a stale file never hits.
    Which pairs are sampled is not part of it: one file per key holds every pair sampled so far (``sampled``)."""
    parts = {
        "format": DATA_FORMAT,
        "model": model_fingerprint(components),
        "forget": _digest(forget),
        "retain": _digest(retain),
        "sampler": _sampler_key(settings),
        "size": image_size(components, settings),
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def build_paired_data(
    components,
    forget_set: PromptSet | Sequence[str],
    retain_set: PromptSet | Sequence[str] | None = None,
    settings: SamplerSettings | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    *,
    forget_images: Sequence[ImageFile] | str | Path | None = None,
    retain_images: Sequence[ImageFile] | str | Path | None = None,
    on_sampled: Callable[[int, int], None] | None = None,
    rows: Sequence[int] | None = None,
) -> PairedData:
    """Sample D_f and D_r with the base model (the paper's data are "generated by the original SD"), or read them
    from ``cache_dir/<key>.safetensors``. Pair i of both sets starts from the same noise, so the two images differ
    mainly by the concept. Cache files are written atomically; a corrupt or foreign file is recomputed.

    ``forget_images`` / ``retain_images`` (a folder or ``image_data.find_images``' list) replace that side's
    samples with the user's images; see ``build_image_paired_data``. ``on_sampled(done, total)`` follows the
    sampling, in prompts of both sides (it may raise to stop; nothing is cached then). ``rows`` asks for those
    pairs only (``method.paired_data.drawn_pairs``: the ones training will draw), each from its own noise as in a
    full sampling; the others stay zero and marked unsampled unless the cache already held them. The cache file
    grows: a later call samples only the pairs it lacks. User images ignore ``rows``."""
    settings = settings or SamplerSettings()
    if forget_images is not None or retain_images is not None:
        if settings.trajectory_points:
            raise RGDInputError("trajectory points come from sampling both sides; drop --trajectory-points or the "
                                "image folders.")
        return build_image_paired_data(components, forget_set, retain_set, settings, seed, cache_dir,
                                       forget_images=forget_images, retain_images=retain_images)
    forget, retain = _prompt_lists(forget_set, retain_set)
    if rows is not None and len(forget) != len(retain):
        raise RGDInputError("sampling only some pairs needs as many forget as retain prompts.")

    def sample(chosen: list[int] | None):
        total = 2 * len(chosen) if chosen is not None else len(forget) + len(retain)

        def progress(offset: int):
            return None if on_sampled is None else (lambda done: on_sampled(offset + done, total))

        return (_sample_side(components, forget, settings, seed, progress(0), chosen),
                _sample_side(components, retain, settings.for_retain(), seed, progress(total // 2), chosen))

    key = cache_key(components, forget, retain, settings, seed)
    return _cached_pairs(cache_dir, key, forget, retain, sample, rows)


def _cached_pairs(cache_dir, key: str, forget_prompts: list[str], retain_prompts: list[str], build,
                  rows: Sequence[int] | None = None) -> PairedData:
    """The data of ``key`` with at least ``rows`` sampled (None: all): what ``cache_dir/<key>.safetensors`` holds,
    plus ``build(missing rows, or None for all)`` -> ((forget latents, cond, points, times), (the same for retain))
    for the pairs it lacks (points and times None without trajectory reuse); the file is then rewritten atomically
    with everything sampled so far."""
    path = Path(cache_dir) / f"{key}.safetensors" if cache_dir is not None else None
    cached = _read_cache(path, key) if path is not None and path.is_file() else None
    count = len(forget_prompts)
    wanted = set(range(count)) if rows is None else set(rows)
    have = sampled_rows(cached) if cached is not None else set()
    if cached is not None and wanted <= have:
        return cached
    chosen = None if rows is None and cached is None else sorted(wanted - have)
    (forget_latents, forget_cond, forget_points, times), (retain_latents, retain_cond, retain_points, _) = build(chosen)
    # trajectory points (or None): both sides keep the same steps, so one times tensor serves them
    data = PairedData(forget_latents, retain_latents, forget_cond, retain_cond, key, rows_mask(chosen, count),
                      forget_points, retain_points, times)
    if cached is not None:
        merge_rows(cached, data)
        data = cached
    if path is not None:
        metadata = {"format": DATA_FORMAT, "key": key, "forget": json.dumps(forget_prompts),
                    "retain": json.dumps(retain_prompts)}
        save_safetensors_atomic(data.to_tensors(), path, metadata)
    return data


def _sample_side(components, prompts: list[str], settings: SamplerSettings, seed: int, on_batch=None, rows=None):
    """(x0 latents, conditioning, trajectory points or None, their times or None) of every prompt, zeros in the
    rows not sampled."""
    chosen = prompts if rows is None else [prompts[i] for i in rows]
    cond = encode_prompts(components, chosen)
    latents, points, times = sample_trajectories(components, chosen, seed, settings, conditioning=cond,
                                                 on_batch=on_batch, seed_indices=rows)
    if components.family == "sdxl":
        cond["time_ids"] = sdxl_time_ids(*image_size(components, settings), len(chosen))
    count = len(prompts)
    if points is not None:
        points, times = scatter_rows(points, rows, count), scatter_rows(times, rows, count)
    return (scatter_rows(latents, rows, count), {key: scatter_rows(value, rows, count) for key, value in cond.items()},
            points, times)


def _read_cache(path: Path, key: str) -> PairedData | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != DATA_FORMAT or metadata.get("key") != key:
                return None
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception:  # a truncated or foreign file: recompute and overwrite it
        return None
    return PairedData.from_tensors(tensors, key)


# --- user-supplied images ------------------------------------------------------------------------------------

# The posterior mean, not a sample: the latents are encoded once and cached, so a sample would freeze one draw of
# the VAE's noise into every training step (no augmentation, just a fixed perturbation) and would need a seed in the
# cache key; the mean is the encoder's deterministic best guess.
IMAGE_ENCODING = "vae-latent-mean*scaling_factor"
IMAGE_BATCH = 4


@torch.no_grad()
def encode_images(components, pixels: Tensor, batch_size: int = 4) -> Tensor:
    """Scaled latents (as the UNet sees them) of images in [-1, 1], shaped (N, 3, H, W): the VAE posterior's mean
    times the VAE's ``scaling_factor``; on the CPU in float32."""
    vae = components.vae
    device, dtype = module_device(vae), vae.dtype
    out = []
    for start in range(0, pixels.shape[0], batch_size):
        batch = pixels[start : start + batch_size].to(device, dtype)
        out.append(vae.encode(batch).latent_dist.mean.float().cpu())
    return torch.cat(out) * vae.config.scaling_factor


def build_image_paired_data(
    components,
    forget_set: PromptSet | Sequence[str],
    retain_set: PromptSet | Sequence[str] | None = None,
    settings: SamplerSettings | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    *,
    forget_images: Sequence[ImageFile] | str | Path | None = None,
    retain_images: Sequence[ImageFile] | str | Path | None = None,
) -> PairedData:
    """Paired data where one side, or both, are the user's images instead of the base model's samples.

    Images are prepared at the training size (``image_data.load_pixels``: cover, center-crop) and VAE-encoded once
    (``encode_images``). Image i is conditioned on its caption file, else on prompt ``i mod P`` of its side's
    prompts. A side without images is sampled as in ``build_paired_data`` with one example per image of the other
    side, example i from prompt ``i mod P``: uncaptioned forget image i is then paired with the retain twin of the
    prompt it was given. Images on both sides may differ in number (unpaired training; ``paired_losses`` refuses
    them for paired batches). Cached like ``build_paired_data``; the key covers the image files' content.
    """

    settings = settings or SamplerSettings()
    forget_prompts, retain_prompts = _prompt_lists(forget_set, retain_set)
    if isinstance(forget_images, (str, Path)):
        forget_images = find_images(forget_images, "forget")
    if isinstance(retain_images, (str, Path)):
        retain_images = find_images(retain_images, "retain")
    if forget_images is None and retain_images is None:
        raise RGDInputError("build_image_paired_data needs forget_images or retain_images.")
    for side, images in (("forget", forget_images), ("retain", retain_images)):
        if images is not None and not images:
            raise RGDInputError(f"the {side} image list is empty; give at least one image.")
    count = len(forget_images if forget_images is not None else retain_images)
    forget = _side_plan(forget_images, forget_prompts, count)
    retain = _side_plan(retain_images, retain_prompts, count)

    key = _image_cache_key(components, forget, retain, settings, seed)
    return _cached_pairs(cache_dir, key, forget["prompts"], retain["prompts"],
                         lambda chosen: (_build_side(components, forget, settings, seed),
                                         _build_side(components, retain, settings.for_retain(), seed)))


def _side_plan(images, pool: list[str], count: int) -> dict:
    """What one side is made of: its images (None: sampled) and one prompt per example, captions first."""
    if images is None:
        return {"images": None, "prompts": [pool[i % len(pool)] for i in range(count)]}
    prompts = [image.caption or pool[i % len(pool)] for i, image in enumerate(images)]
    return {"images": list(images), "prompts": prompts}


def _image_cache_key(components, forget: dict, retain: dict, settings: SamplerSettings, seed: int) -> str:
    def side(plan: dict):
        files = None if plan["images"] is None else [image.sha256 for image in plan["images"]]
        return {"images": files, "prompts": _digest(plan["prompts"])}

    sampled = forget["images"] is None or retain["images"] is None
    parts = {
        "format": DATA_FORMAT,
        "model": model_fingerprint(components),
        "forget": side(forget),
        "retain": side(retain),
        "size": image_size(components, settings),
        "images": [PREPARATION, IMAGE_ENCODING],
        # encoding is deterministic: sampler and seed matter only when a side is sampled
        "sampler": _sampler_key(settings) if sampled else None,
        "seed": seed if sampled else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _build_side(components, plan: dict, settings: SamplerSettings, seed: int):
    if plan["images"] is None:
        return _sample_side(components, plan["prompts"], settings, seed)

    height, width = image_size(components, settings)
    chunks = []
    images = plan["images"]
    for start in range(0, len(images), IMAGE_BATCH):  # a few at a time: pixels at full size are large
        batch = torch.stack([load_pixels(image, height, width) for image in images[start : start + IMAGE_BATCH]])
        chunks.append(encode_images(components, batch, IMAGE_BATCH))
    cond = encode_prompts(components, plan["prompts"])
    if components.family == "sdxl":
        # the images were resized to the training size, so that is also their "original size" for SDXL
        cond["time_ids"] = sdxl_time_ids(height, width, len(plan["prompts"]))
    return torch.cat(chunks), cond, None, None


# --- losses for the Unlearner --------------------------------------------------------------------------------


def paired_losses(components, data: PairedData, batch_size: int = 8, paired: bool = True):
    """(forget_loss, retain_loss) callables ``loss(unet, generator) -> per-element squared error``.

    With ``paired`` (the paper: zip of the unshuffled forget and retain loaders) both use the same indices, so the
    forget prompt i is always balanced by its concept-free twin i; without it the retain batch is drawn
    independently. Each returns (prediction - target)^2 at t ~ U{0..T-1} in the model's parameterisation
    (epsilon or v_prediction, from the scheduler config), the UNet called with the batch's text conditioning.
    """
    return batched_losses(model_call(components), data, noise_schedule(components), components.prediction_type,
                          batch_size, paired,
                          place=_place_on_unet)


# --- parameter scopes ----------------------------------------------------------------------------------------


# --- the whole run -------------------------------------------------------------------------------------------


def unlearn_sd(
    components,
    forget_set: PromptSet | Sequence[str],
    retain_set: PromptSet | Sequence[str] | None = None,
    config: UnlearnConfig | None = None,
    scope: str = "full",
    batch_size: int = 8,
    sampler: SamplerSettings | None = None,
    data_seed: int = 0,
    cache_dir: str | Path | None = None,
    paired: bool = True,
    data: PairedData | None = None,
    gradient_checkpointing: bool = False,
    callbacks: Iterable[Callable[[dict], None]] = (),
    should_stop: Callable[[], bool] | None = None,
    lora_rank: int = 4,
    lora_alpha: float | None = None,
    forget_images: Sequence[ImageFile] | str | Path | None = None,
    retain_images: Sequence[ImageFile] | str | Path | None = None,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
    resume_from: str | Path | None = None,
    phases: dict | None = None,
    watch: Callable[[nn.Module], None] | None = None,
    precision: str = "fp32",
    judge: Callable[[nn.Module], Mapping[str, float]] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """RGD on a Stable Diffusion UNet: sample (or load) the paired data, then run the Unlearner on the parameters
    of ``scope``. Returns the edited UNet (a copy; ``components.unet`` is never changed) and the step records.
    ``config`` defaults to the paper's nudity run (``paper_nudity_sd14_config``).

    ``scope="lora"`` (``edits.scopes``; the other scopes edit the UNet's own weights) copies the UNet, wraps its
    attention projections with LoRA (``rgd_core.edits.lora.add_lora``: rank ``lora_rank``, alpha ``lora_alpha``,
    default the rank, init seeded by ``config.seed``) and trains only the LoRA weights. The returned UNet is the
    LoRA-wrapped copy: ``rgd_core.edits.lora.lora_modules(unet)`` gives the LoRA layers (for ``save_kohya_lora``) and
    ``merge_lora(unet)`` folds them in for a plain UNet.

    ``forget_images`` / ``retain_images`` train on the user's images instead of samples on that side
    (``build_image_paired_data``); ignored when ``data`` is given. ``checkpoint_path``, ``checkpoint_every`` and
    ``resume_from`` are the Unlearner's: the resumable state every N steps and on cancel, and the state to go on
    from (bit-identical to an uninterrupted run). ``phases``, a dict, receives the seconds and UNet evaluations
    of the data and training phases (``hosts.base.phase``). A ``forget_set`` of several concepts (its
    ``pair_concepts``) makes the adaptive stop wait for (and retire) each. ``watch(module)`` is called with the
    module being trained before the first step (a host's live previews sample from it). ``precision`` "bf16"
    trains with the forward (and the probe's) under bfloat16 autocast, the weights and their gradients float32; the
    data follow ``sampler.precision``. ``judge`` (the Unlearner's) decides the adaptive stop from the UNet's own
    samples."""
    config = config or paper_nudity_sd14_config()
    host = DiffusersHost(components, sampler, cache_dir, forget_images, retain_images, precision)
    # the prompts go along with given data too: pairs that data lack are sampled as training goes
    forget, retain = (None, None) if forget_set is None else _prompt_lists(forget_set, retain_set)
    settings = RecipeSettings(config, scope, batch_size, lora_rank, lora_alpha, paired, data_seed)

    def on_training(module: nn.Module):
        if watch is not None:
            watch(module)
        return _gradient_checkpointing(module) if gradient_checkpointing else None

    pair_concepts = forget_set.pair_concepts if isinstance(forget_set, PromptSet) and retain_set is None else ()
    result = run_unlearning(host, forget, retain, settings, callbacks, should_stop, data, checkpoint_path,
                            checkpoint_every, resume_from, on_training=on_training, pair_concepts=pair_concepts,
                            judge=judge)
    result.module.eval()
    if phases is not None:
        add_phases(phases, result.phases)
    return result.module, result.records


@contextlib.contextmanager
def _gradient_checkpointing(unet: nn.Module):
    # The paper's LDM config trains with checkpointing (use_checkpoint: True); diffusers applies it only in train
    # mode. SD UNets have no dropout, so train mode changes nothing else.
    unet.enable_gradient_checkpointing()
    unet.train()
    yield


class DiffusersHost:
    """The recipe's host for diffusers pipeline components (SD1.x, SD2.x, SDXL, and the shapes world's model):
    data sampled by the model itself with ``sampler`` (or the user's images), cached under ``cache_dir``; the UNet
    trained on a scope (a deep copy: ``components.unet`` is never written) or LoRA-wrapped (``scope="lora"``),
    its forward under ``precision`` (``devices.PRECISIONS``)."""

    # sampling uses ``components``' own UNet, which training never writes (it trains a copy): pairs can be sampled
    # on demand while the copy trains
    samples_while_training = True

    def __init__(self, components, sampler: SamplerSettings | None = None, cache_dir: str | Path | None = None,
                 forget_images: Sequence[ImageFile] | str | Path | None = None,
                 retain_images: Sequence[ImageFile] | str | Path | None = None, precision: str = "fp32") -> None:
        check_precision(precision)
        self.components = components
        self.sampler = sampler
        self.cache_dir = cache_dir
        self.forget_images, self.retain_images = forget_images, retain_images
        self.prediction_type = components.prediction_type
        self.noise_schedule = noise_schedule(components)
        self.call = _in_precision(model_call(components), precision)
        self.evaluated_module = components.denoiser

    def paired_data(self, forget_prompts: Sequence[str], retain_prompts: Sequence[str], seed: int,
                    rows: Sequence[int] | None = None) -> PairedData:
        images = self.forget_images is not None or self.retain_images is not None
        return build_paired_data(self.components, list(forget_prompts), list(retain_prompts), self.sampler, seed,
                                 self.cache_dir, forget_images=self.forget_images, retain_images=self.retain_images,
                                 rows=None if images else rows)

    @contextlib.contextmanager
    def training(self, scope: str, lora_rank: int = 4, lora_alpha: float | None = None, seed: int = 0):
        if check_scope(scope) == LORA_SCOPE:
            unet = copy.deepcopy(self.components.denoiser)
            add_lora(unet, lora_rank, lora_alpha, seed=seed)
            yield Trainee(unet, self.call, lora_parameters_filter, in_place=True, place=_place_on_unet)
        else:
            yield Trainee(self.components.denoiser, self.call, scope_filter(scope), in_place=False,
                          place=_place_on_unet)


def _in_precision(call, precision: str):
    """``call(unet, x, t, cond)`` with the forward under ``precision``'s autocast and the prediction back in x's
    dtype, so the loss and everything after it compute in float32; "fp32" returns ``call`` itself."""
    if precision == "fp32":
        return call

    def cast_call(unet: nn.Module, x: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        with autocast(x.device, precision):
            prediction = call(unet, x, t, cond)
        return prediction.to(x.dtype)

    return cast_call
