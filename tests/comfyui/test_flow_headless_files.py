"""What headless ``rgd unlearn`` writes for Flux.1 and SD3.x, read by ComfyUI itself.

The same tiny files a ComfyUI user's models folder would hold (``flow_checkpoints``): the headless run trains on
them; ComfyUI then loads the base, the erased diffusion model and the LoRA with its own loaders. Checked: the
headless network call equals ComfyUI's model on the same file and conditioning (velocity = (x - D) / sigma, so
packing, timestep scale and Flux's guidance agree); the erased file loads as the same family; base + LoRA through
LoraLoaderModelOnly's call gives the erased model's outputs, for the LoRA in kohya names (fused qkv) and in
diffusers names (separate q, k, v, which ComfyUI maps onto the fused rows). SD3 goes through ComfyUI's detection
(``load_diffusion_model``); Flux's detection fixes the width at 3072, so the tiny Flux file's tensors are loaded
into ComfyUI's Flux built from the matching model config, as ``flow_fixtures.tiny_flux`` does.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from flow_checkpoints import CLIP_L_HIDDEN, T5_WIDTH, write_comfyui_layout

LATENT = (16, 4, 4)


def comfy_flux(state: dict):
    """ComfyUI's Flux (dev) around the tiny BFL-layout ``state``: 128 wide, one 128-wide head, Flux's own rotary
    axes, one double and one single block."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher

    config = dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=CLIP_L_HIDDEN,
                  context_in_dim=T5_WIDTH, hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=1,
                  depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True)
    model_config = comfy.model_detection.model_config_from_unet_config(config)
    model_config.set_inference_dtype(torch.float32, None)
    with torch.inference_mode():
        base = model_config.get_model(state, "")
        base.load_model_weights(state, "")
        cpu = comfy.model_management.get_torch_device()
        return comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)


def load(family: str, path):
    import comfy.sd

    if family == "flux-dev":
        return comfy_flux(load_file(str(path)))
    with torch.inference_mode():
        return comfy.sd.load_diffusion_model(str(path))  # what "Load Diffusion Model" (UNETLoader) calls


def comfy_output(model, x, sigma, cond):
    """ComfyUI's x0 estimate D(x, sigma) for headless conditioning (c_crossattn, y, Flux's guidance)."""
    import comfy.model_management

    extra = {"y": cond["pooled_projections"]}
    if "guidance" in cond:
        extra["guidance"] = cond["guidance"]
    comfy.model_management.load_models_gpu([model], force_full_load=True)
    with torch.no_grad():
        return model.model.apply_model(x, sigma, c_crossattn=cond["encoder_hidden_states"], **extra)


@pytest.mark.parametrize("family, lora_format", [("sd3.5", "kohya"), ("flux-dev", "kohya"), ("sd3.5", "diffusers"),
                                                 ("flux-dev", "diffusers")])
def test_headless_outputs_are_what_comfyui_loads(comfy_glue, tmp_path, family, lora_format):
    import comfy.sd  # importable once the comfy_glue fixture has put ComfyUI on the path

    from rgd_core.apps.unlearn import resolve_settings, run_unlearn
    from rgd_core.checkpoints.flow_load import load_flow_components
    from rgd_core.hosts import diffusers_sd

    paths = write_comfyui_layout(tmp_path / "models", family)
    components = load_flow_components(paths["transformer"], [tmp_path / "models" / "text_encoders"])
    cond = diffusers_sd.encode_prompts(components, ["a striped cat in a garden"])
    x = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.6])

    base = load(family, paths["transformer"])
    denoised = comfy_output(base, x, sigma, cond)
    with torch.no_grad():
        velocity = diffusers_sd.model_call(components)(components.transformer, x, sigma, cond)
    torch.testing.assert_close((x - denoised) / sigma, velocity, atol=2e-5, rtol=1e-4)

    settings = resolve_settings({
        "checkpoint": str(paths["transformer"]), "text_encoders": [str(tmp_path / "models" / "text_encoders")],
        "concept": "cat", "out": str(tmp_path / "out"), "scope": "lora", "steps": 2, "train_prompts": 4,
        "batch_size": 2, "sample_steps": 2, "width": 32, "height": 32, "lr": 1e-2, "lora_format": lora_format})
    report = run_unlearn(settings)
    erased = load(family, report["output"])
    if family != "flux-dev":
        assert type(erased.model.model_config).__name__ == "SD3"
    with torch.inference_mode():
        patched, _ = comfy.sd.load_lora_for_models(base, None, load_file(report["lora"]), 1.0, 0)
    from_lora = comfy_output(patched, x, sigma, cond)
    patched.unpatch_model()
    expected = comfy_output(erased, x, sigma, cond)
    assert not torch.allclose(expected, denoised, atol=1e-6)  # the run changed the model
    torch.testing.assert_close(from_lora, expected, atol=2e-5, rtol=1e-4)
