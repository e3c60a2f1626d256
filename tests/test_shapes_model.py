"""The committed shapes text-to-image model: loads offline as SD1 PipelineComponents, follows its prompts, and runs
the Stable Diffusion backend's code path (encode_prompts, sample_latents, build_paired_data, unlearn_sd)
unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rgd_core.hosts import diffusers_sd
from rgd_core.checkpoints.load import PipelineComponents
from rgd_core.errors import RGDInputError
from rgd_core.method.unlearner import UnlearnConfig
from rgd_bench.worlds import shapes
from rgd_bench.worlds import shapes_model


# tiny tensors: one thread is faster than two fighting for a busy machine (conftest's fixture restores the count)
pytestmark = pytest.mark.usefixtures("single_thread_torch")


PATHS = {"v_prediction": shapes_model.MODEL_PATH, "flow": shapes_model.FLOW_MODEL_PATH}


@pytest.fixture(scope="module", params=sorted(PATHS))
def components(request):
    """Each committed shapes model: v-prediction, and its rectified-flow twin (SD3/Flux's objective)."""
    return shapes_model.load_model(PATHS[request.param])


def test_committed_model_is_small_and_loads_as_sd1_components(components):
    assert Path(components.source).stat().st_size <= 20 * 2**20
    assert isinstance(components, PipelineComponents) and components.family == "sd1"
    expected = "flow" if Path(components.source) == shapes_model.FLOW_MODEL_PATH else "v_prediction"
    assert components.prediction_type == expected and components.sha256
    assert diffusers_sd.vae_scale_factor(components) == 1
    assert components.unet.dtype == torch.float32 and components.unet.config.in_channels == 3
    assert type(components.unet).__name__ == "UNet2DConditionModel"
    assert type(components.text_encoder).__name__ == "CLIPTextModel"
    assert components.tokenizer.model_max_length == shapes_model.MAX_TOKENS


def test_every_caption_fits_the_token_window(components):
    longest = max(
        len(components.tokenizer(shapes.caption(a, t, {n: c - 1 for n, c in shapes.synonym_counts(a).items()}))
            .input_ids)
        for a in shapes.all_attributes()[::7] for t in range(len(shapes.TEMPLATES))
    )
    assert longest <= shapes_model.MAX_TOKENS - 4


def test_samples_have_the_right_shape_and_repeat_for_a_seed(components):
    prompts = ["a striped red triangle on a black background", "blue hollow disc, pale backdrop"]
    first = shapes_model.sample_images(components, prompts, seed=3, steps=5)
    assert first.shape == (2, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, shapes_model.sample_images(components, prompts, seed=3, steps=5))
    hidden = diffusers_sd.encode_prompts(components, prompts)["encoder_hidden_states"]
    assert hidden.shape == (2, shapes_model.MAX_TOKENS, shapes_model.TEXT_ENCODER_CONFIG["hidden_size"])


# Floors well above chance (1/4, 1/3) and below what the committed model measures on all 242 held-out samples
# (train_shapes: shape 0.73, colour 1.00, background 1.00, modifier 0.78), leaving room for 48-sample noise.
FLOORS = {name: 0.9 for name in shapes.ATTRIBUTES}  # the bar: every attribute right in 90% of samples


def test_model_follows_its_prompts(components):
    """A cut-down version of train_shapes' check: 48 held-out phrasings, every attribute mostly right.

    Sampled with 12 DDIM steps instead of the model's 25 (half the time): fewer steps make worse samples, so the
    bar is no easier to pass (measured: 1.000 on every attribute at 25, 12 and 8 steps)."""
    from rgd_bench.shapes_classifier import load_classifier
    from rgd_bench.worlds.train_shapes import held_out_prompts

    prompts, wanted, _ = held_out_prompts(samples_per_pair=1, seed=0)
    prompts, wanted = prompts[::2][:48], wanted[::2][:48]
    predicted = load_classifier().predict(shapes_model.sample_images(components, prompts, seed=0, steps=12))
    for name in shapes.ATTRIBUTES:
        accuracy = np.mean(predicted[name] == np.array([a.label(name) for a in wanted]))
        assert accuracy >= FLOORS[name], (name, accuracy)


def test_unlearn_sd_runs_unchanged_on_the_shapes_model(components):
    forget = ["a striped red triangle on a black background", "green stripy square, grey backdrop"]
    retain = ["a red triangle on a black background", "green square, grey backdrop"]
    sampler = diffusers_sd.SamplerSettings(steps=4, guidance_scale=4.0)
    data = diffusers_sd.build_paired_data(components, forget, retain, sampler, seed=0)
    assert data.forget_latents.shape == (2, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    before = {k: v.clone() for k, v in components.unet.state_dict().items()}
    config = UnlearnConfig(method="rgd", steps=2, lr=1e-3, retain_weight=1.0, seed=0)
    edited, records = diffusers_sd.unlearn_sd(components, forget, retain, config=config, batch_size=2, data=data)
    assert len(records) == 2
    assert any(not torch.equal(edited.state_dict()[k], v) for k, v in before.items())
    assert all(torch.equal(components.unet.state_dict()[k], v) for k, v in before.items())
    images = shapes_model.sample_images(components, forget, seed=0, steps=4, unet=edited)
    assert images.shape == (2, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3)


def test_a_foreign_file_is_refused(tmp_path):
    from rgd_core.files import save_safetensors_atomic

    path = save_safetensors_atomic({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(RGDInputError):
        shapes_model.load_model(path)
    with pytest.raises(RGDInputError):
        shapes_model.load_model(tmp_path / "missing.safetensors")
