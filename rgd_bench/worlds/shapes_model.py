"""The shapes world's text-to-image model, built as the same ``PipelineComponents`` as Stable Diffusion 1.x.

What runs RGD on SD runs on this model unchanged (``encode_prompts``, ``sample_latents``, ``build_paired_data``,
``paired_losses``, ``unlearn_sd`` in rgd_core/hosts/diffusers_sd.py): family "sd1", a diffusers
``UNet2DConditionModel`` with cross-attention on the text encoder's last hidden state, a transformers
``CLIPTextModel`` (trained from scratch here, since no CLIP weights can be had offline) fed by the real CLIP BPE
tokenizer, and a diffusers DDPM scheduler (v-prediction, as SD 2.x 768-v; the samplers build DDIM from its
config).

The model works in pixel space (see rgd_bench/worlds/shapes.py for why), so the VAE slot holds ``PixelSpaceVAE``, an
identity with a VAE's interface: one ``block_out_channels`` entry (scale factor 1), ``scaling_factor`` 1, and
``encode``/``decode`` that hand the pixels through. The "latents" the backend samples are images in [-1, 1].

Prompts are padded to ``MAX_TOKENS`` = 24 tokens instead of SD's 77: the longest caption the builder makes is 17
tokens with BOS and EOS, and 24 leaves room for benchmark phrasings while keeping cross-attention cheap.

Weights: ``rgd_bench/weights/shapes_t2i.safetensors``, UNet and text encoder stored in float16 (the 49408 x 64
token embedding alone is 12.6 MB in float32) and loaded as float32; train it anew with
``python -m rgd_bench.worlds.train_shapes``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from rgd_bench.worlds import shapes
from rgd_core.checkpoints.configs import clip_tokenizer
from rgd_core.checkpoints.load import PipelineComponents, file_sha256
from rgd_core.errors import RGDInputError
from rgd_core.files import save_safetensors_atomic
from rgd_core.hosts.diffusers_sd import SamplerSettings, sample_latents

MODEL_PATH = Path(__file__).resolve().parent.parent / "weights" / "shapes_t2i.safetensors"
# The same world and networks trained with the rectified-flow objective (the SD3/Flux kind of model).
FLOW_MODEL_PATH = MODEL_PATH.with_name("shapes_t2i_flow.safetensors")
FORMAT = "rgd-shapes-t2i-1"
MAX_TOKENS = 24
FAMILY = "sd1"

UNET_CONFIG = dict(
    sample_size=shapes.IMAGE_SIZE,
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 64),  # 16 at full size: those convolutions dominate the step time
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=4,  # diffusers' legacy name: the number of heads
    norm_num_groups=8,
)
TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408,  # the CLIP BPE vocabulary
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=MAX_TOKENS,
    hidden_act="quick_gelu",  # SD1's CLIP activation
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    # v = sqrt(abar) eps - sqrt(1 - abar) x0: at high noise its loss is the error in x0, so the model is taught
    # to get the image's layout and colours (what the caption decides) right where an epsilon loss hardly cares.
    # With epsilon, 600 steps left the text unused at t > 700 (x0 error 0.75 with the right caption and with a
    # shuffled one) while the loss was dominated by t < 300.
    prediction_type="v_prediction",
    # No x0 clipping, as in SD: DDIM clips its x0 estimate but not the noise estimate derived from the same
    # output, and under CFG 4 the two disagree so much that black backgrounds came out white and white ones black.
    clip_sample=False,
)
# x_sigma = (1 - sigma) x0 + sigma eps, velocity target, sigma uniform on 1000 levels: no shift, since the model's
# 16x16 pixels are not the thousands of latent cells SD3's and Flux's shifts were tuned for.
FLOW_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)
OBJECTIVES = ("v_prediction", "flow")
# DDIM settings at which the committed model is checked (train_shapes prints the accuracy at them).
SAMPLE_STEPS = 25
GUIDANCE_SCALE = 4.0


class PixelSpaceVAE(nn.Module):
    """The identity in a VAE's clothes, so pixel-space "latents" pass through code written for SD's VAE.

    ``config.block_out_channels`` has one entry, so ``vae_scale_factor`` is 2**0 = 1; ``scaling_factor`` is 1. The
    empty parameter gives ``next(vae.parameters())`` a device and dtype, which callers read."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(block_out_channels=(3,), latent_channels=3, scaling_factor=1.0)
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def encode(self, pixels: Tensor, return_dict: bool = True):
        out = SimpleNamespace(latent_dist=SimpleNamespace(mean=pixels, mode=lambda: pixels, sample=lambda **_: pixels))
        return out if return_dict else (out.latent_dist,)

    def decode(self, latents: Tensor, return_dict: bool = True):
        return SimpleNamespace(sample=latents) if return_dict else (latents,)


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))


def make_tokenizer():
    """The real CLIP BPE tokenizer (SD1 settings) padding to MAX_TOKENS."""

    tokenizer = clip_tokenizer(FAMILY)
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def make_scheduler(objective: str = "v_prediction"):
    """The v-prediction DDPM scheduler, or for ``objective`` "flow" the flow-matching one."""
    if objective not in OBJECTIVES:
        raise RGDInputError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}.")
    if objective == "flow":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULER_CONFIG)
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def make_components(unet, text_encoder, sha256: str | None = None, source: str = "",
                    objective: str = "v_prediction") -> "PipelineComponents":
    """PipelineComponents around ``unet`` and ``text_encoder``, with the scheduler of ``objective``."""

    return PipelineComponents(
        family=FAMILY,
        unet=unet,
        vae=PixelSpaceVAE(),
        text_encoder=text_encoder,
        tokenizer=make_tokenizer(),
        scheduler=make_scheduler(objective),
        sha256=sha256,
        source=source,
    )


def save_model(unet, text_encoder, path: str | Path = MODEL_PATH, metadata: dict | None = None,
               objective: str = "v_prediction") -> Path:
    """UNet and text encoder in one safetensors file ("unet." and "text_encoder." keys), float16, atomically.

    The text encoder's keys are written without the ``text_model.`` level that transformers < 5.6 puts in
    CLIPTextModel's state dict, so the file is the same whichever transformers wrote it (``load_model`` adds the
    level back where the installed CLIPTextModel has it)."""
    tensors = {}
    for prefix, module in (("unet.", unet), ("text_encoder.", text_encoder)):
        for key, value in module.state_dict().items():
            key = key.removeprefix("text_model.") if prefix == "text_encoder." else key
            tensors[prefix + key] = value.detach().to(torch.float16).contiguous()
    configs = {"unet": UNET_CONFIG, "text_encoder": TEXT_ENCODER_CONFIG,
               "scheduler": FLOW_SCHEDULER_CONFIG if objective == "flow" else SCHEDULER_CONFIG}
    if objective != "v_prediction":  # files of the v-prediction model stay byte-identical to before
        configs["objective"] = objective
    info = {"format": FORMAT, "configs": json.dumps(configs), **{k: str(v) for k, v in (metadata or {}).items()}}
    return save_safetensors_atomic(tensors, path, info)


def load_model(path: str | Path = MODEL_PATH) -> "PipelineComponents":
    """The committed (or any saved) shapes model as PipelineComponents in float32, eval mode, offline."""
    from safetensors import safe_open


    path = Path(path)
    if not path.is_file():
        raise RGDInputError(f"no shapes model at {path}; train one with `python -m rgd_bench.worlds.train_shapes`.")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise RGDInputError(f"{path} is not a shapes model file ({FORMAT}); pass one written by train_shapes.")
        tensors = {key: handle.get_tensor(key).float() for key in handle.keys()}
    unet, text_encoder = make_unet(), make_text_encoder()
    for prefix, module in (("unet.", unet), ("text_encoder.", text_encoder)):
        state = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        if hasattr(module, "text_model"):  # transformers < 5.6: CLIPTextModel keeps its layers under text_model
            state = {f"text_model.{key}": value for key, value in state.items()}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise RGDInputError(f"{path} does not fit the shapes model configs ({first}); retrain it.") from None
    objective = json.loads(metadata.get("configs", "{}")).get("objective", "v_prediction")
    return make_components(unet.eval(), text_encoder.eval(), sha256=file_sha256(path), source=str(path),
                           objective=objective)


def sample_images(
    components,
    prompts: Sequence[str],
    seed: int = 0,
    steps: int = SAMPLE_STEPS,
    guidance_scale: float = GUIDANCE_SCALE,
    batch_size: int = 64,
    unet=None,
) -> np.ndarray:
    """(N, 16, 16, 3) uint8 images, one per prompt, through the SD backend's own ``sample_latents`` (DDIM, CFG
    against the empty prompt, prompt i from the noise of ``prompt_seed(seed, i)``). ``unet`` swaps in an edited
    UNet (what ``unlearn_sd`` returns) without touching ``components``."""
    from dataclasses import replace


    if unet is not None:
        components = replace(components, unet=unet, sha256=None)  # the hash names the base model, not this one
    settings = SamplerSettings(steps=steps, guidance_scale=guidance_scale, scheduler="ddim", batch_size=batch_size)
    return shapes.to_uint8(sample_latents(components, prompts, seed=seed, settings=settings))
