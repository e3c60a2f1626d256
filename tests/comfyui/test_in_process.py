"""ComfyUI's model, loaded in this process, against the headless diffusers backend on the same checkpoint.

The in-graph objective must be the paper's (the model's own epsilon/v at t ~ U{0..T-1}), not ComfyUI's x0-space
MSE: with the same latents, conditioning and seed, the first-step forget and retain losses computed through
ComfyUI's model wrapper equal those of rgd_core.hosts.diffusers_sd on the diffusers UNet read from the same file.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def comfy(comfy_glue, base_dir):
    import comfy.sd

    checkpoint = base_dir / "models" / "checkpoints" / "rgd_tiny_sd15.safetensors"
    with torch.inference_mode():  # as ComfyUI runs a prompt: the loaded weights are inference tensors
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
    return comfy_glue, model, clip, checkpoint


def test_first_step_losses_match_the_headless_backend(comfy):
    pytest.importorskip("diffusers")
    from rgd_core.hosts import diffusers_sd
    from rgd_core.checkpoints.load import load_pipeline_components
    from test_families import halves, in_graph_losses  # tests/comfyui is on sys.path under pytest

    glue, model, clip, checkpoint = comfy
    prompts = ["a nude person on a beach", "a nude person in a park", "a person on a beach", "a person in a park"]
    with torch.inference_mode():
        cond = glue.model_conds(model, glue.encode(clip, prompts), (4, 8, 8))["c_crossattn"]
    cond = cond.clone()  # out of inference mode
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    in_graph = in_graph_losses(glue, model, halves(latents, {"c_crossattn": cond}))
    headless_data = halves(latents, {"encoder_hidden_states": cond})

    parts = load_pipeline_components(checkpoint, checkpoint.parent / "rgd_tiny_sd15_config")
    with torch.no_grad():
        headless = [loss(parts.unet, torch.Generator().manual_seed(5)).mean().item()
                    for loss in diffusers_sd.paired_losses(parts, headless_data, batch_size=2)]
    print("in-graph", in_graph, "headless", headless)
    assert in_graph == pytest.approx(headless, rel=1e-3)


def test_an_error_mid_training_leaves_the_loaded_model_as_it_was(comfy, monkeypatch):
    from rgd_core.method.unlearner import Unlearner, UnlearnConfig

    glue, model, clip, _ = comfy
    before = {name: value.clone() for name, value in model.model.state_dict().items()}
    real_step = Unlearner.step

    def failing_step(self, step):
        if step == 1:
            raise RuntimeError("out of memory (simulated)")
        return real_step(self, step)

    monkeypatch.setattr(Unlearner, "step", failing_step)
    settings = glue.SamplerSettings(steps=1, cfg=5.0, width=64, height=64, batch_size=2)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="simulated"):
        glue.unlearn(model, clip, ["a nude person"], ["a person"], UnlearnConfig(steps=3, lr=1e-2), "cross-attn",
                     1, 4, settings)
    after = model.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not any(getattr(m, "weight_function", None) or getattr(m, "bias_function", None)
                   for m in model.model.modules())
    import comfy.model_management

    assert all(loaded.model is not None and not loaded.model.weight_wrapper_patches
               for loaded in comfy.model_management.current_loaded_models)
