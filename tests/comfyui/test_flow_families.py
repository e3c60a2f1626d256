"""Flow-matching models in-graph: SD3 / SD3.5 (MMDiT) and Flux.1 dev / schnell, as ComfyUI builds them.

For each family: ComfyUI's own classes name the model (SD3 from a fixture file through ComfyUI's detection; Flux
from its model config, plus one detection test at the smallest size detection accepts); the first-step forget and
retain losses in-graph equal an independent computation of the flow loss (the raw network output as the velocity,
without the pack's x0 -> velocity conversion); gradients through Flux's in-place blocks equal an out-of-place
reference exactly; two RGD steps leave the MODEL bit-identical; the LoRA written from the edit, applied by
LoraLoader's call, reproduces the edited model; the cleaned diffusion model saved alone loads back through "Load
Diffusion Model"'s call.

Text encoders are stand-ins (``TextStandIn``: fixed random conditioning per prompt in each family's shapes):
ComfyUI's T5-XXL alone has 4.7B parameters.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import pytest
import torch

from flow_fixtures import (TextStandIn, detectable_flux_state_dict, load_sd3, outputs_with_edit_and_lora,
                           sd3_state_dict, tiny_flux)

FAMILIES = ("sd3", "sd35", "flux-dev", "flux-schnell")
# (text tokens, text width, pooled width) per family: SD3 = 77 CLIP + 77 T5 tokens of 4096, pooled CLIP-L+G 2048;
# the tiny Flux takes 32-wide text (its context_in_dim) and 256 tokens, the T5 length ComfyUI pads Flux prompts to
TEXT = {"sd3": (154, 4096, 2048), "sd35": (154, 4096, 2048), "flux-dev": (256, 32, 32), "flux-schnell": (256, 32, 32)}
LATENT = (16, 4, 4)


def make_model(family: str):
    if family in ("sd3", "sd35"):
        return load_sd3(sd3_state_dict(sd35_like=family == "sd35"))
    return tiny_flux(dev=family == "flux-dev")


@pytest.fixture(scope="module", params=FAMILIES)
def flow_model(request, comfy_glue):
    torch.set_num_threads(1)  # tiny models: one thread is fastest and steadiest
    return request.param, comfy_glue, make_model(request.param), TextStandIn(*TEXT[request.param])


def paired(glue, model, text):
    """PairedData of 2 forget and 2 retain rows: random latents, the stand-in's conditioning as the model takes it."""
    from rgd_core.method.paired_data import PairedData

    entries = glue.encode(text, ["a nude person", "a nude man", "a person", "a man"])
    cond = glue.model_conds(model, entries, LATENT)
    latents = torch.randn(4, *LATENT, generator=torch.Generator().manual_seed(0))
    return PairedData(latents[:2], latents[2:], {k: v[:2] for k, v in cond.items()},
                      {k: v[2:] for k, v in cond.items()})


def independent_flow_losses(model, data) -> list[float]:
    """The flow loss written out: the same batch order, t and noise as the documented draws, x_sigma on the
    model's own sigma table, and the network's raw output taken as the velocity (CONST: D = x - sigma * out)."""
    from rgd_core.method.paired_data import batch_indices

    sampling = model.get_model_object("model_sampling")
    network = model.model.diffusion_model
    losses = []
    for latents, cond in ((data.forget_latents, data.forget_cond), (data.retain_latents, data.retain_cond)):
        generator = torch.Generator().manual_seed(5)
        index = batch_indices(generator, len(latents), 2)
        x0 = latents[index]
        t = torch.randint(0, len(sampling.sigmas), (len(index),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        sigma = sampling.sigmas[t].float()
        x = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
        extra = {key: value[index] for key, value in cond.items() if key != "c_crossattn"}
        with torch.no_grad():
            velocity = network(x, sampling.timestep(sigma), context=cond["c_crossattn"][index], **extra)
        losses.append((velocity.float() - (noise - x0)).square().mean().item())
    return losses


def test_comfyui_names_the_models_and_the_pack_reads_their_flow_schedule(flow_model):
    family, glue, model, _ = flow_model
    import comfy.supported_models as supported

    expected = {"sd3": supported.SD3, "sd35": supported.SD3, "flux-dev": supported.Flux,
                "flux-schnell": supported.FluxSchnell}[family]
    assert type(model.model.model_config) is expected
    assert glue.prediction_type(model) == "flow"
    from rgd_core.method.losses import flow_sigmas

    table = {"sd3": flow_sigmas(1000, 3.0), "sd35": flow_sigmas(1000, 3.0),
             "flux-dev": flow_sigmas(10000, math.exp(1.15)), "flux-schnell": flow_sigmas(1000, 1.0)}[family]
    torch.testing.assert_close(glue.noise_schedule(model), table)


def test_first_step_losses_equal_an_independent_flow_computation(flow_model):
    from rgd_core.edits.deltas import make_edit
    from rgd_core.hosts.denoiser import denoiser_losses, predict_from_denoiser

    family, glue, model, text = flow_model
    data = paired(glue, model, text)
    schedule, kind = glue.noise_schedule(model), glue.prediction_type(model)
    edit = make_edit(glue.editable_shapes(model), "lora", seed=0)  # LoRA starts as the identity
    with torch.inference_mode(False), torch.no_grad(), glue.wrapped(model, edit) as patcher:
        predict = predict_from_denoiser(lambda x, s, c: patcher.model.apply_model(x, s, **c), schedule, kind)
        in_graph = [loss(None, torch.Generator().manual_seed(5)).mean().item()
                    for loss in denoiser_losses(predict, data, schedule, kind, batch_size=2)]
    independent = independent_flow_losses(model, data)
    print(family, "in-graph", in_graph, "independent", independent)
    assert in_graph == pytest.approx(independent, rel=1e-4)


@contextlib.contextmanager
def out_of_place_additions():
    """Flux's blocks written out of place: ``a += b`` rebinds a to a new tensor (the same numbers), so autograd
    needs no copies; the reference the pack's in-place-safe training must match."""
    original = torch.Tensor.__iadd__
    torch.Tensor.__iadd__ = lambda self, other: torch.add(self, other)
    try:
        yield
    finally:
        torch.Tensor.__iadd__ = original


def edit_gradients(glue, model, edit, context, transformer_options=None) -> dict:
    """d(mean square of the denoiser's output)/d(edit) on a fixed batch, the model run under ``context``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, *LATENT, generator=generator)
    tokens, width, pooled = (256, 32, 32) if hasattr(model.model.diffusion_model, "double_blocks") else TEXT["sd3"]
    entries = [[torch.randn(1, tokens, width, generator=generator),
                {"pooled_output": torch.randn(1, pooled, generator=generator)}] for _ in range(2)]
    cond = glue.model_conds(model, entries, LATENT)
    with torch.inference_mode(False), glue.wrapped(model, edit) as patcher:
        edit.zero_grad()
        with context:
            output = patcher.model.apply_model(x, torch.tensor([0.7, 0.3]), transformer_options=transformer_options
                                               or {}, **cond)
        output.square().mean().backward()
        return {name: parameter.grad.clone() for name, parameter in edit.named_parameters()}


def perturbed_edit(glue, model, scope):
    from rgd_core.edits.deltas import make_edit

    edit = make_edit(glue.editable_shapes(model), scope, seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.inference_mode(False), torch.no_grad():
        for parameter in edit.parameters():  # away from zero, so every factor's gradient is non-trivial
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return edit


@pytest.mark.parametrize("family", ["flux-dev", "sd35"])
def test_gradient_checkpointing_gives_the_exact_gradients(comfy_glue, family):
    """Blocks recomputed in backward (the node's gradient_checkpointing) give the gradients of the out-of-place
    reference, on Flux's in-place blocks too."""
    glue, model = comfy_glue, make_model(family)
    edit = perturbed_edit(glue, model, "full")
    reference = edit_gradients(glue, model, edit, out_of_place_additions())
    options = glue.checkpointing_options(model)
    assert len(options["patches_replace"]["dit"]) == 2  # every block: SD3 depth 2, Flux 1 double + 1 single
    checkpointed = edit_gradients(glue, model, edit, glue.saving_activations_by_copy(), options)
    # recomputation changes the order in which backward sums some gradients, so the last float bits may differ;
    # a recomputation from overwritten inputs is off by 1e-4 to 2e-3 of the gradient (flow_models.md section 4)
    worst = max(((checkpointed[name] - reference[name]).abs().max() / reference[name].abs().max()).item()
                for name in reference)
    print(family, "worst relative difference", worst)
    assert worst < 1e-5


def test_gradient_checkpointing_is_refused_on_a_unet(comfy_glue, base_dir):
    import comfy.sd

    from rgd_core.errors import RGDInputError

    with torch.inference_mode():
        model, _, _, _ = comfy.sd.load_checkpoint_guess_config(
            str(base_dir / "models" / "checkpoints" / "rgd_tiny_sd15.safetensors"), output_vae=False,
            output_clip=False)
    with pytest.raises(RGDInputError, match="turn gradient_checkpointing off"):
        comfy_glue.ComfyHost(model, None, comfy_glue.SamplerSettings(), gradient_checkpointing=True)


@pytest.mark.parametrize("scope", ["full", "lora"])
def test_gradients_through_flux_blocks_are_exact(comfy_glue, scope):
    glue, model = comfy_glue, tiny_flux(dev=True)
    edit = perturbed_edit(glue, model, scope)
    with pytest.raises(RuntimeError, match="inplace operation"):
        edit_gradients(glue, model, edit, contextlib.nullcontext())  # the trap: Flux adds to its streams in place
    reference = edit_gradients(glue, model, edit, out_of_place_additions())
    ours = edit_gradients(glue, model, edit, glue.saving_activations_by_copy())
    assert reference.keys() == ours.keys() and len(ours) >= 6
    for name in reference:
        assert reference[name].abs().max() > 0, name
        torch.testing.assert_close(ours[name], reference[name], atol=0, rtol=0)


def test_two_steps_leave_the_model_bit_identical_and_the_lora_reproduces_the_edit(flow_model):
    from rgd_core.method.unlearner import UnlearnConfig

    family, glue, model, text = flow_model
    before = {name: value.clone() for name, value in model.model.state_dict().items()}
    settings = replace(glue.family_sampler_settings(model, glue.SamplerSettings(width=32, height=32, batch_size=2)),
                       steps=2)
    with torch.inference_mode():
        edit, records = glue.unlearn(model, text, ["a nude person", "a nude man"], ["a person", "a man"],
                                     UnlearnConfig(steps=2, lr=1e-2, seed=0), "lora", 2, 4, settings)
    assert [record["step"] for record in records] == [0, 1]
    assert all(math.isfinite(r["forget_loss"]) and math.isfinite(r["retain_loss"]) for r in records)
    after = model.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # the MODEL that came in: bit for bit

    cond = glue.model_conds(model, glue.encode(text, ["a nude person"]), LATENT)
    x = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(3))
    expected, from_lora, original = outputs_with_edit_and_lora(glue, model, edit, x, torch.tensor([0.6]), cond)
    assert (expected - original).abs().max() > 1e-5  # the edit did something
    torch.testing.assert_close(from_lora, expected, atol=1e-5, rtol=1e-4)


def test_sd3_diffusion_model_saved_alone_loads_back_through_load_diffusion_model(comfy_glue, tmp_path):
    """The SD3 fixture goes through a file and ComfyUI's detection on the way in and out."""
    import comfy.sd
    from safetensors.torch import save_file

    from rgd_core.method.unlearner import UnlearnConfig

    glue = comfy_glue
    source = tmp_path / "tiny_sd3.safetensors"
    save_file(sd3_state_dict(), str(source))
    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model(str(source))  # what "Load Diffusion Model" (UNETLoader) calls
        text = TextStandIn(*TEXT["sd3"])
        settings = glue.SamplerSettings(steps=2, cfg=4.5, scheduler="simple", width=32, height=32, batch_size=2)
        edit, _ = glue.unlearn(model, text, ["a nude person", "a nude man"], ["a person", "a man"],
                               UnlearnConfig(steps=2, lr=1e-2, seed=0), "cross-attn", 2, 4, settings)
        edited = glue.apply_lora(model, glue.edit_to_lora(model, edit, {}))
        path = glue.save_checkpoint(edited, None, None, str(tmp_path / "cleaned.safetensors"), {"rgd_method": "rgd"})
        reloaded = comfy.sd.load_diffusion_model(path)
    assert type(reloaded.model.model_config).__name__ == "SD3"
    cond = glue.model_conds(model, glue.encode(text, ["a nude person"]), LATENT)
    x = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(3))
    import comfy.model_management

    with torch.no_grad():
        comfy.model_management.load_models_gpu([edited], force_full_load=True)
        expected = edited.model.apply_model(x, torch.tensor([0.6]), **cond)
        edited.unpatch_model()
        comfy.model_management.load_models_gpu([reloaded], force_full_load=True)
        loaded = reloaded.model.apply_model(x, torch.tensor([0.6]), **cond)
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=1e-4)


def test_flow_families_sample_with_their_own_settings(flow_model):
    family, glue, model, _ = flow_model
    widgets = glue.SamplerSettings(steps=30, cfg=7.5, sampler_name="dpmpp_2m", scheduler="normal")
    chosen = glue.family_sampler_settings(model, widgets)
    expected = {"sd3": (28, 4.5), "sd35": (28, 4.5), "flux-dev": (20, 1.0), "flux-schnell": (4, 1.0)}[family]
    assert (chosen.steps, chosen.cfg, chosen.sampler_name, chosen.scheduler) == (*expected, "euler", "simple")
    assert (chosen.width, chosen.height) == (widgets.width, widgets.height)


def test_prompts_of_other_token_lengths_are_refused_in_one_line(flow_model):
    from rgd_core.errors import RGDInputError

    family, glue, model, text = flow_model
    long_prompt = " ".join(["word"] * 8)  # the stand-in adds 77 tokens per 8 words, as a long T5 prompt would
    with pytest.raises(RGDInputError, match="shorten"):
        glue.model_conds(model, glue.encode(text, ["a nude person", long_prompt]), LATENT)


def test_the_smallest_flux_comfyui_detects_loads_and_trains_a_step(comfy_glue, tmp_path):
    """Detection fixes Flux's width at 3072: one double block is ~404M parameters (0.75 GiB in bfloat16), built at
    test time. Read through "Load Diffusion Model"'s call, named Flux (dev), one LoRA step in-graph."""
    import comfy.sd
    from safetensors.torch import save_file

    from rgd_core.method.unlearner import UnlearnConfig

    glue = comfy_glue
    path = tmp_path / "flux_one_block.safetensors"
    save_file(detectable_flux_state_dict(dev=True), str(path))
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            model = comfy.sd.load_diffusion_model(str(path))
            assert type(model.model.model_config).__name__ == "Flux"
            assert glue.prediction_type(model) == "flow"
            text = TextStandIn(256, 4096, 768)
            settings = glue.SamplerSettings(steps=1, cfg=1.0, scheduler="simple", width=16, height=16, batch_size=1)
            _, records = glue.unlearn(model, text, ["a nude person"], ["a person"],
                                      UnlearnConfig(steps=1, lr=1e-4, seed=0), "lora", 1, 4, settings)
    finally:
        torch.set_num_threads(1)
    assert len(records) == 1 and math.isfinite(records[0]["forget_loss"])


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float8_e4m3fn])
def test_a_low_precision_base_trains_a_float32_edit(comfy_glue, stored):
    """Weights stored in bf16 or fp8 (Load Diffusion Model's weight_dtype), cast by ComfyUI to the compute dtype
    layer by layer; the edit stays float32 and trains, the stored weights stay as they were."""
    import comfy.sd

    from rgd_core.method.unlearner import UnlearnConfig

    glue = comfy_glue
    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model_state_dict(sd3_state_dict(), model_options={"dtype": stored})
    weight = model.model.diffusion_model.joint_blocks[0].x_block.attn.qkv.weight
    assert weight.dtype == stored
    before = weight.clone()
    settings = glue.SamplerSettings(steps=2, cfg=4.5, scheduler="simple", width=32, height=32, batch_size=2)
    with torch.inference_mode():
        edit, records = glue.unlearn(model, TextStandIn(*TEXT["sd3"]), ["a nude person", "a nude man"],
                                     ["a person", "a man"], UnlearnConfig(steps=2, lr=1e-2, seed=0), "lora", 2, 4,
                                     settings)
    assert all(math.isfinite(r["forget_loss"]) for r in records)
    assert all(parameter.dtype == torch.float32 for parameter in edit.parameters())
    assert any(parameter.abs().max() > 0 for name, parameter in edit.named_parameters() if name.endswith("up"))
    assert torch.equal(model.model.diffusion_model.joint_blocks[0].x_block.attn.qkv.weight.float(), before.float())
