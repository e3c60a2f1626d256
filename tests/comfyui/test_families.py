"""SD2 (v-prediction) and SDXL models as ComfyUI builds them, against the headless diffusers backend.

test_in_process.py checks SD1. Here the same check (first-step forget/retain losses in-graph = headless, same
latents, conditioning, t and noise) runs on:

- an SD2-structured checkpoint that ComfyUI's own detection names SD2 (320 channels, 1024-wide context, linear
  projections; one resolution level so it stays small), switched to v-prediction the way users switch SD2-768 and
  v-pred checkpoints: a ModelSamplingDiscrete patch on the MODEL;
- ComfyUI's SDXL model class (its ``y`` vector: pooled text plus six embedded size numbers) around a small UNet
  with SDXL's block pattern. ComfyUI's detection only names SDXL for the full 2.6B-parameter depth, so the test
  builds the model from ComfyUI's SDXL model config directly instead of from a file.

The SDXL model also runs the whole in-graph path (its own samples as data, two RGD steps on a LoRA) and the kohya
LoRA written from the edit, applied the way LoraLoader applies it, reproduces the edited model.
"""

from __future__ import annotations

import pytest
import torch

from flow_fixtures import TextStandIn, outputs_with_edit_and_lora  # tests/comfyui is on sys.path under pytest

pytest.importorskip("diffusers")

SDXL_TIME_EMBED = 256  # ComfyUI embeds SDXL's six size numbers in 256 dims each, as the real model does
SDXL_POOLED = 32
SDXL_CONTEXT = 96


def sd2_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(320,), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
        attention_head_dim=5,  # heads; SD2 has 64 channels per head
        cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32,
    ).eval()


def sdxl_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(1, 2), transformer_layers_per_block=(1, 2), cross_attention_dim=SDXL_CONTEXT,
        use_linear_projection=True, norm_num_groups=32, addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED,
        projection_class_embeddings_input_dim=SDXL_POOLED + 6 * SDXL_TIME_EMBED,
    ).eval()


def scheduler(prediction_type: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction_type)


def headless_losses(unet, prediction_type: str, data) -> list[float]:
    from rgd_core.hosts import diffusers_sd
    from rgd_core.checkpoints.load import PipelineComponents

    parts = PipelineComponents("sdxl" if "text_embeds" in data.forget_cond else "sd2", unet, None, None, None,
                               scheduler(prediction_type))
    with torch.no_grad():
        return [loss(unet, torch.Generator().manual_seed(5)).mean().item()
                for loss in diffusers_sd.paired_losses(parts, data, batch_size=2)]


def halves(latents, cond: dict):
    """PairedData with the first half of the batch as the forget side and the second as the retain side."""
    from rgd_core.method.paired_data import PairedData

    half = latents.shape[0] // 2
    return PairedData(latents[:half], latents[half:], {k: v[:half] for k, v in cond.items()},
                      {k: v[half:] for k, v in cond.items()})


def in_graph_losses(glue, model, data) -> list[float]:
    from rgd_core.hosts.denoiser import denoiser_losses, predict_from_denoiser
    from rgd_core.edits.deltas import make_edit

    schedule, kind = glue.noise_schedule(model), glue.prediction_type(model)
    edit = make_edit(glue.editable_shapes(model), "lora", seed=0)  # LoRA starts as the identity
    with torch.inference_mode(False), torch.no_grad(), glue.wrapped(model, edit) as patcher:
        predict = predict_from_denoiser(lambda x, s, c: patcher.model.apply_model(x, s, **c), schedule, kind)
        return [loss(None, torch.Generator().manual_seed(5)).mean().item()
                for loss in denoiser_losses(predict, data, schedule, kind, batch_size=2)]


def v_prediction(model):
    """What ComfyUI's ModelSamplingDiscrete node does for sampling="v_prediction"."""
    import comfy.model_sampling

    class VPrediction(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
        pass

    patched = model.clone()
    patched.add_object_patch("model_sampling", VPrediction(model.model.model_config))
    return patched


def latents_and_conds(width: int, pooled: bool):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 8, 8, generator=generator)
    hidden = torch.randn(4, 77, width, generator=generator)
    extras = [{"pooled_output": torch.randn(1, SDXL_POOLED, generator=generator)} if pooled else {} for _ in range(4)]
    return latents, [[hidden[i : i + 1], extras[i]] for i in range(4)]


@pytest.fixture(scope="module")
def sd2(comfy_glue, tmp_path_factory):
    import comfy.sd
    import comfy.supported_models
    from safetensors.torch import save_file

    from sd_fixtures import unet_to_original

    unet = sd2_unet()
    path = tmp_path_factory.mktemp("sd2") / "tiny_sd2.safetensors"
    save_file({k: v.contiguous() for k, v in unet_to_original(unet).items()}, str(path))
    with torch.inference_mode():
        model, _, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=False)
    assert type(model.model.model_config) is comfy.supported_models.SD20, type(model.model.model_config)
    return comfy_glue, model, unet


def test_sd2_v_prediction_losses_match_the_headless_backend(sd2):
    glue, model, unet = sd2
    assert glue.prediction_type(model) == "epsilon"  # a small SD2 file carries no v-prediction marker
    model = v_prediction(model)
    assert glue.prediction_type(model) == "v_prediction"

    latents, entries = latents_and_conds(1024, pooled=False)
    cond = glue.model_conds(model, entries, (4, 8, 8))
    assert set(cond) == {"c_crossattn"}
    data = halves(latents, cond)
    headless_data = halves(latents, {"encoder_hidden_states": cond["c_crossattn"]})
    in_graph, headless = in_graph_losses(glue, model, data), headless_losses(unet, "v_prediction", headless_data)
    print("in-graph", in_graph, "headless", headless)
    assert in_graph == pytest.approx(headless, rel=1e-3)
    # and they are v losses: the epsilon objective on the same model gives other numbers
    assert headless_losses(unet, "epsilon", headless_data) != pytest.approx(headless, rel=1e-2)


def test_models_that_are_not_epsilon_or_v_are_refused(sd2):
    import comfy.model_sampling

    from rgd_core.errors import RGDInputError

    glue, model, _ = sd2

    class X0(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.X0):
        pass

    patched = model.clone()
    patched.add_object_patch("model_sampling", X0(model.model.model_config))
    with pytest.raises(RGDInputError, match="epsilon- and v-prediction"):
        glue.prediction_type(patched)


@pytest.fixture(scope="module")
def sdxl(comfy_glue):
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    from sd_fixtures import unet_to_original

    unet = sdxl_unet()
    state = {k: v.contiguous() for k, v in unet_to_original(unet).items()}
    prefix = "model.diffusion_model."
    config = comfy.supported_models.SDXL(comfy.model_detection.detect_unet_config(state, prefix))
    with torch.inference_mode():
        base = config.get_model(state, prefix)
        base.load_model_weights(state, prefix)
        cpu = comfy.model_management.get_torch_device()
        model = comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)
    return comfy_glue, model, unet


def sdxl_data(glue, model):
    from rgd_core.hosts.diffusers_sd import sdxl_time_ids

    latents, entries = latents_and_conds(SDXL_CONTEXT, pooled=True)
    cond = glue.model_conds(model, entries, (4, 8, 8))
    assert set(cond) == {"c_crossattn", "y"} and cond["y"].shape == (4, SDXL_POOLED + 6 * SDXL_TIME_EMBED)
    pooled = torch.cat([extras["pooled_output"] for _, extras in entries])
    headless = {"encoder_hidden_states": cond["c_crossattn"], "text_embeds": pooled,
                "time_ids": sdxl_time_ids(64, 64, 4)}
    return halves(latents, cond), halves(latents, headless)


def test_sdxl_losses_match_the_headless_backend(sdxl):
    glue, model, unet = sdxl
    assert glue.prediction_type(model) == "epsilon"
    data, headless_data = sdxl_data(glue, model)
    in_graph, headless = in_graph_losses(glue, model, data), headless_losses(unet, "epsilon", headless_data)
    print("in-graph", in_graph, "headless", headless)
    assert in_graph == pytest.approx(headless, rel=1e-3)


def test_sdxl_unlearns_in_graph_and_its_lora_reproduces_the_edit(sdxl):
    from rgd_core.method.unlearner import UnlearnConfig

    glue, model, _ = sdxl
    before = {name: value.clone() for name, value in model.model.state_dict().items()}
    settings = glue.SamplerSettings(steps=2, cfg=5.0, width=64, height=64, batch_size=2)
    clip = TextStandIn(77, SDXL_CONTEXT, SDXL_POOLED)
    with torch.inference_mode():
        edit, records = glue.unlearn(model, clip, ["a nude person", "a nude man"], ["a person", "a man"],
                                     UnlearnConfig(steps=2, lr=1e-2, seed=0), "lora", 2, 4, settings)
    assert [record["step"] for record in records] == [0, 1]
    assert all(torch.isfinite(torch.tensor([r["forget_loss"], r["retain_loss"]])).all() for r in records)
    after = model.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # the MODEL that came in is untouched

    _, entries = latents_and_conds(SDXL_CONTEXT, pooled=True)
    cond = glue.model_conds(model, entries[:1], (4, 8, 8))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    expected, from_lora, original = outputs_with_edit_and_lora(glue, model, edit, x, torch.tensor([2.0]), cond)
    assert (expected - original).abs().max() > 1e-4  # the edit did something
    torch.testing.assert_close(from_lora, expected, atol=1e-4, rtol=1e-4)
