"""Tiny flow-matching models as ComfyUI builds them (SD3's MMDiT and Flux.1), a text-encoder stand-in, and the
edited-model-against-its-LoRA comparison, for the in-process tests.

- ``sd3_state_dict``: an MMDiT state dict small enough for a fixture file that ComfyUI's own detection names SD3
  (its depth fixes the width: 64 per block). Optionally SD3.5-like: RMS QK-norm and an image-only attn2 in
  block 0, the two things SD3 lacks that trip autograd and the scopes.
- ``tiny_flux``: a 64-wide Flux (dev: with the guidance embedding; schnell: without) built from ComfyUI's own model
  config, since ComfyUI's detection hard-codes Flux's 3072 width.
- ``detectable_flux_state_dict``: the smallest Flux that detection accepts (one double block, 3072 wide,
  ~404M parameters), for the one test that reads a Flux file the way ComfyUI's loaders do.

Weights are N(0, 0.02^2) with norm scales 1 and biases 0, from a seeded generator, the modulation and final
layers included, so the models' outputs depend on every block (a zero-initialised adaLN would silence them).
"""

from __future__ import annotations

import hashlib

import torch

FLUX_TINY = dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=32,
                 context_in_dim=32, hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1,
                 axes_dim=[8, 12, 12], theta=10000, qkv_bias=True)


def random_state(module_on_meta: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in module_on_meta.state_dict().items():
        if name.endswith(".scale") or "norm" in name.split(".")[-2:-1] and name.endswith("weight") \
                or name.endswith(("ln_q.weight", "ln_k.weight")):
            state[name] = torch.ones(tensor.shape)
        elif name.endswith(".bias"):
            state[name] = torch.zeros(tensor.shape)
        else:
            state[name] = torch.randn(tensor.shape, generator=generator) * 0.02
    return state


def sd3_state_dict(depth: int = 2, sd35_like: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Bare MMDiT keys (as a "diffusion model only" file holds them) of a depth-``depth`` SD3 (width 64 * depth)
    with CLIP-L+G pooled width 2048 and T5 context width 4096, SD3's own text widths."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

    extra = dict(qk_norm="rms", x_block_self_attn_layers=[0]) if sd35_like else {}
    model = OpenAISignatureMMDITWrapper(
        input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=depth, adm_in_channels=2048,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096,
                                                                         "out_features": 64 * depth}},
        pos_embed_max_size=16, num_patches=256, device="meta", operations=comfy.ops.disable_weight_init, **extra)
    return random_state(model, seed)


def load_sd3(state: dict[str, torch.Tensor]):
    """A MODEL (ModelPatcher) from bare MMDiT keys, through ComfyUI's "Load Diffusion Model" call, under inference
    mode as ComfyUI loads."""
    import comfy.sd

    with torch.inference_mode():
        return comfy.sd.load_diffusion_model_state_dict(state)


def tiny_flux(dev: bool = True, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A MODEL around ComfyUI's Flux (dev) or FluxSchnell config on a 64-wide, one double + one single block
    network, with random weights, loaded as ComfyUI loads (inference mode, on the CPU, in ``dtype``: float64 for
    finite-difference checks of gradients)."""
    import comfy.ldm.flux.model
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.ops

    config = dict(FLUX_TINY, guidance_embed=dev)
    model_config = comfy.model_detection.model_config_from_unet_config(config)
    model_config.set_inference_dtype(dtype, None)
    params = {k: v for k, v in config.items() if k != "image_model"}
    meta = comfy.ldm.flux.model.Flux(**params, device="meta", operations=comfy.ops.disable_weight_init)
    state = {name: tensor.to(dtype) for name, tensor in random_state(meta, seed).items()}
    with torch.inference_mode():
        base = model_config.get_model(state, "")
        base.load_model_weights(state, "")
        cpu = comfy.model_management.get_torch_device()
        return comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)


def detectable_flux_state_dict(dev: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """The smallest Flux state dict ComfyUI's detection names Flux: one double block at the real 3072 width
    (~404M parameters, 0.75 GiB in bfloat16), random bfloat16 weights."""
    import comfy.ldm.flux.model
    import comfy.ops

    meta = comfy.ldm.flux.model.Flux(
        in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0,
        num_heads=24, depth=1, depth_single_blocks=0, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
        qkv_bias=True, guidance_embed=dev, device="meta", operations=comfy.ops.disable_weight_init)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in meta.state_dict().items():
        if name.endswith(".scale"):
            state[name] = torch.ones(tensor.shape, dtype=torch.bfloat16)
        else:
            state[name] = (torch.randn(tensor.shape, generator=generator) * 0.02).to(torch.bfloat16)
    return state


class TextStandIn:
    """The two CLIP calls the glue makes, giving each prompt fixed random conditioning (hidden states of ``tokens``
    x ``width``, a pooled output of ``pooled``), a function of the prompt's bytes. Every 8 words add 77 tokens, as
    a long prompt does to a T5 encoding. Real text encoders (SDXL's CLIP-L + bigG, T5-XXL) are not what is tested."""

    def __init__(self, tokens: int, width: int, pooled: int) -> None:
        self.tokens, self.width, self.pooled = tokens, width, pooled

    def tokenize(self, prompt: str) -> str:
        return prompt

    def encode_from_tokens_scheduled(self, prompt: str) -> list:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "little")
        generator = torch.Generator().manual_seed(seed)
        hidden = torch.randn(1, len(prompt.split()) // 8 * 77 + self.tokens, self.width, generator=generator)
        return [[hidden, {"pooled_output": torch.randn(1, self.pooled, generator=generator)}]]


def outputs_with_edit_and_lora(glue, model, edit, x, sigma, cond):
    """(edited, from_lora, original): the denoiser's output on ``x`` at ``sigma`` with the edit in weight wrappers,
    with the edit's kohya LoRA applied by LoraLoader's call, and without either."""
    import comfy.model_management

    lora = glue.edit_to_lora(model, edit, {})
    assert lora and all(key.startswith("lora_unet_") for key in lora)
    patched = glue.apply_lora(model, lora)
    with torch.no_grad():
        with glue.wrapped(model, edit) as trained:
            edited = trained.model.apply_model(x, sigma, **cond)
        comfy.model_management.load_models_gpu([patched], force_full_load=True)
        from_lora = patched.model.apply_model(x, sigma, **cond)
        patched.unpatch_model()
        comfy.model_management.load_models_gpu([model], force_full_load=True)
        original = model.model.apply_model(x, sigma, **cond)
    return edited, from_lora, original
