"""Loading SD1/SD2/SDXL checkpoints offline: family detection, safe reading, bit-exact components.

The fixtures are tiny random models written in the original single-file layout by ``sd_fixtures``; loading them
back through diffusers' converters and comparing with the tensors they were built from checks the fixture mapping
and the loader at once.
"""

import hashlib
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import sd_fixtures
from rgd_core.checkpoints.load import (
    FAMILIES,
    PipelineComponents,
    config_family,
    detect_family,
    load_pipeline_components,
    read_key_shapes,
    read_state_dict,
)
from rgd_core.errors import RGDInputError

DIFFUSERS_MODEL_TYPE = {"sd1": "v1", "sd2": "v2", "sdxl": "xl_base"}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return sd_fixtures.write_all(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def loaded(fixtures):
    return sd_fixtures.load_all(fixtures)


def assert_same_weights(components: PipelineComponents, reference: dict) -> None:
    for name, expected in reference.items():
        got = getattr(components, name).state_dict()
        assert set(got) == set(expected), name
        different = [key for key in expected if not torch.equal(got[key], expected[key])]
        assert not different, f"{name}: {different[:3]}"


one_line_error = sd_fixtures.one_line_error


@pytest.mark.parametrize("family", FAMILIES)
def test_detect_family_from_keys(fixtures, family):
    shapes = read_key_shapes(fixtures[family].checkpoint)
    assert detect_family(shapes, shapes) == family
    assert detect_family(shapes) == family  # key names alone decide the family
    assert config_family(fixtures[family].config_folder) == family


@pytest.mark.parametrize("family", FAMILIES)
def test_fixtures_look_real_to_diffusers(fixtures, family):
    # diffusers' own key/shape test names the same family, so the tiny files are honest stand-ins for real ones
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    shapes = read_key_shapes(fixtures[family].checkpoint)
    meta = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    assert infer_diffusers_model_type(meta) == DIFFUSERS_MODEL_TYPE[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_loads_bit_identical(fixtures, loaded, family):
    fixture, components = fixtures[family], loaded[family]
    assert components.family == family
    assert_same_weights(components, fixture.reference)
    assert components.sha256 == hashlib.sha256(fixture.checkpoint.read_bytes()).hexdigest()
    assert components.prediction_type == "epsilon"
    assert components.tokenizer("a cat").input_ids == [512, 320, 66, 64, 339, 513]
    assert (components.text_encoder_2 is not None) == (family == "sdxl")
    assert type(components.scheduler).__name__ == type(fixture.components["scheduler"]).__name__


def test_prediction_type_comes_from_the_caller(fixtures):
    # the weights cannot say "v-prediction" (SD 2.x 768-v); the override works the same for every family, and sd1
    # is the quickest to load
    fixture = fixtures["sd1"]
    components = load_pipeline_components(fixture.checkpoint, fixture.config_folder, "sd1", "v_prediction")
    assert components.prediction_type == "v_prediction"
    assert "prediction_type" in one_line_error(
        load_pipeline_components, fixture.checkpoint, fixture.config_folder, prediction_type="x0"
    )


def test_pickle_is_refused_then_read_weights_only(fixtures, tmp_path):
    expected = load_file(str(fixtures["sd1"].checkpoint))
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": expected, "global_step": 7}, ckpt)

    message = one_line_error(read_state_dict, ckpt)
    assert "allow_pickle=True" in message and "safetensors" in message
    one_line_error(load_pipeline_components, ckpt, fixtures["sd1"].config_folder)

    state = read_state_dict(ckpt, allow_pickle=True)
    assert set(state) == set(expected)  # the wrapper and global_step are gone
    assert all(torch.equal(state[key], expected[key]) for key in expected)
    components = load_pipeline_components(ckpt, fixtures["sd1"].config_folder, allow_pickle=True)
    assert_same_weights(components, fixtures["sd1"].reference)


class RunsCode:
    """Unpickling this with a full unpickler would call os.makedirs; weights-only loading must refuse it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pickle-ran-code"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": RunsCode(marker)}, path)
    message = one_line_error(read_state_dict, path, allow_pickle=True)
    assert "weights-only" in message
    assert not marker.exists()


def test_truncated_files_give_one_line_errors(fixtures, tmp_path):
    data = fixtures["sd1"].checkpoint.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    assert "truncated" in one_line_error(read_state_dict, truncated)
    one_line_error(read_key_shapes, truncated)
    one_line_error(load_pipeline_components, truncated, fixtures["sd1"].config_folder)

    ckpt = tmp_path / "truncated.ckpt"
    torch.save({"w": torch.ones(1000)}, tmp_path / "whole.ckpt")
    whole = (tmp_path / "whole.ckpt").read_bytes()
    ckpt.write_bytes(whole[: len(whole) // 2])
    assert "truncated" in one_line_error(read_state_dict, ckpt, allow_pickle=True)
    assert "No checkpoint file" in one_line_error(read_state_dict, tmp_path / "absent.safetensors")


def test_lora_file_is_named_as_such(fixtures, tmp_path):
    kohya = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
    }
    path = tmp_path / "style_lora.safetensors"
    save_file(kohya, str(path))
    assert "LoRA" in one_line_error(load_pipeline_components, path, fixtures["sd1"].config_folder)
    peft = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32)}
    assert "LoRA" in one_line_error(detect_family, peft)


def test_other_layouts_are_refused_with_the_reason(fixtures):
    shapes = read_key_shapes(fixtures["sd1"].checkpoint)
    inpainting = dict(shapes)
    inpainting["model.diffusion_model.input_blocks.0.0.weight"] = (32, 9, 3, 3)
    assert "inpainting" in one_line_error(detect_family, inpainting, inpainting)

    diffusers_unet = fixtures["sd1"].reference["unet"]
    assert "model_index.json" in one_line_error(detect_family, diffusers_unet)
    no_text = {k: s for k, s in shapes.items() if not k.startswith("cond_stage_model.")}
    assert "text encoder" in one_line_error(detect_family, no_text)
    assert "Unknown" in one_line_error(detect_family, {"weight": (1,)})


def test_folder_where_a_file_is_expected(fixtures):
    message = one_line_error(read_state_dict, fixtures["sd1"].config_folder)
    assert "load_pipeline_components" in message
    # a config-only folder is not a model: say where it belongs
    assert "config_folder" in one_line_error(load_pipeline_components, fixtures["sd1"].config_folder)
    assert "config_folder" in one_line_error(load_pipeline_components, fixtures["sd1"].checkpoint)


def test_wrong_config_or_missing_weights(fixtures, tmp_path):
    sd1, sd2 = fixtures["sd1"], fixtures["sd2"]
    assert "sd2 config folder" in one_line_error(load_pipeline_components, sd2.checkpoint, sd1.config_folder)
    assert "not sdxl" in one_line_error(load_pipeline_components, sd1.checkpoint, sd1.config_folder, family="sdxl")

    state = load_file(str(sd1.checkpoint))
    partial = {k: v for k, v in state.items() if ".output_blocks.4." not in k}
    path = tmp_path / "partial.safetensors"
    save_file(partial, str(path))
    assert "lacks" in one_line_error(load_pipeline_components, path, sd1.config_folder)
    no_vae = {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}
    save_file(no_vae, str(path))
    assert "no vae weights" in one_line_error(load_pipeline_components, path, sd1.config_folder)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_folder_loads(fixtures, tmp_path, family):
    fixture = fixtures[family]
    folder = sd_fixtures.save_diffusers_folder(tmp_path / "model", family, fixture.components, with_weights=True)
    components = load_pipeline_components(folder)
    assert components.family == family and components.sha256 is None
    assert_same_weights(components, fixture.reference)
    assert components.tokenizer("a cat").input_ids == [512, 320, 66, 64, 339, 513]


def test_config_folder_without_vocabulary_is_refused(fixtures, tmp_path):
    folder = shutil.copytree(fixtures["sd1"].config_folder, tmp_path / "config")
    for name in ("tokenizer.json", "vocab.json"):  # transformers 5 saves the first, 4.x the second
        (folder / "tokenizer" / name).unlink(missing_ok=True)
    assert "vocab.json" in one_line_error(load_pipeline_components, fixtures["sd1"].checkpoint, folder)
