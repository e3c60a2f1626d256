"""Shipped SD configs and CLIP tokenizers: real token ids, real model sizes, complete folders, all offline.

Real-size models are built on the meta device (shapes only, no memory), so every family is checked in seconds.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from rgd_core.checkpoints import configs
from rgd_core.errors import RGDInputError

# The ids the real SD tokenizers give (docs/offline.md section 2).
A_PHOTO_OF_A_CAT = [49406, 320, 1125, 539, 320, 2368, 49407]
TOKENIZERS = [("sd1", 1, "<|endoftext|>", 49407), ("sd2", 1, "!", 0), ("sd2-v", 1, "!", 0),
              ("sdxl", 1, "<|endoftext|>", 49407), ("sdxl", 2, "!", 0)]
# Parameter counts of the public models: SD 1.5 UNet (measured in docs/offline.md section 3), SD 2.x UNet, SDXL
# base UNet, the SD VAE, CLIP ViT-L/14 text (SD1, SDXL 1), OpenCLIP ViT-H text cut to 23 layers (SD2), and
# OpenCLIP bigG text with projection (SDXL 2).
UNET_PARAMS = {"sd1": 859_520_964, "sd2": 865_910_724, "sd2-v": 865_910_724, "sdxl": 2_567_463_684}
VAE_PARAMS = 83_653_863
TEXT_ENCODERS = {
    ("sd1", "text_encoder"): (CLIPTextModel, 768, 123_060_480),
    ("sd2", "text_encoder"): (CLIPTextModel, 1024, 340_387_840),
    ("sd2-v", "text_encoder"): (CLIPTextModel, 1024, 340_387_840),
    ("sdxl", "text_encoder"): (CLIPTextModel, 768, 123_060_480),
    ("sdxl", "text_encoder_2"): (CLIPTextModelWithProjection, 1280, 694_659_840),
}
PREDICTION = {"sd1": "epsilon", "sd2": "epsilon", "sd2-v": "v_prediction", "sdxl": "epsilon"}
SCHEDULER = {"sd1": "PNDMScheduler", "sd2": "PNDMScheduler", "sd2-v": "DDIMScheduler", "sdxl": "EulerDiscreteScheduler"}


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One complete config folder per family, in a temporary cache (never the user's)."""
    cache = tmp_path_factory.mktemp("rgd_cache")
    return {family: configs.config_folder(family, cache) for family in configs.CONFIG_FAMILIES}


# --- tokenizers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family, which, pad, pad_id", TOKENIZERS)
def test_tokenizer_gives_the_real_sd_ids(family, which, pad, pad_id):
    tok = configs.clip_tokenizer(family, which)
    assert tok("a photo of a cat").input_ids == A_PHOTO_OF_A_CAT
    assert (tok.pad_token, tok.pad_token_id) == (pad, pad_id)
    assert (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)
    assert tok.model_max_length == 77 and len(tok) == 49408
    padded = tok("a photo of a cat", padding="max_length", truncation=True).input_ids
    assert padded == A_PHOTO_OF_A_CAT + [pad_id] * (77 - len(A_PHOTO_OF_A_CAT))
    assert len(tok("cat " * 200, padding="max_length", truncation=True).input_ids) == 77


@pytest.mark.parametrize("family, which, pad, pad_id", TOKENIZERS[:2] + TOKENIZERS[4:])
def test_tokenizer_survives_save_and_reload(tmp_path, family, which, pad, pad_id):
    configs.clip_tokenizer(family, which).save_pretrained(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert tok("a photo of a cat").input_ids == A_PHOTO_OF_A_CAT
    assert (tok.pad_token_id, tok.model_max_length, len(tok)) == (pad_id, 77, 49408)


@pytest.mark.parametrize("family, which, pad, pad_id", TOKENIZERS)
def test_config_folder_tokenizer_matches_clip_tokenizer(folders, family, which, pad, pad_id):
    # len() guards against transformers 5 silently building a 3-token tokenizer from a folder without vocab.json.
    subfolder = configs.tokenizer_subfolders(family)[which - 1]
    tok = CLIPTokenizer.from_pretrained(folders[family], subfolder=subfolder, local_files_only=True)
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == A_PHOTO_OF_A_CAT
    assert (tok.pad_token, tok.pad_token_id, tok.model_max_length) == (pad, pad_id, 77)


def test_shipped_vocabulary_is_what_the_build_script_makes():
    # Renumbering the shipped merges with the script's own functions must give the shipped vocab.json back, so a
    # hand edit of either file (or a change of the numbering) is caught without downloading the wheel.
    script_path = Path(__file__).parents[1] / "tools" / "build_tokenizer.py"
    spec = importlib.util.spec_from_file_location("build_tokenizer", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    vocab = json.loads((configs.TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    lines = (configs.TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) == 1 + 48_894
    assert script.build_vocab([tuple(line.split(" ")) for line in lines[1:]]) == vocab
    assert len(vocab) == 49408 and sorted(vocab.values()) == list(range(49408))
    assert (vocab["!"], vocab["a</w>"], vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (0, 320, 49406, 49407)
    notice = (configs.TOKENIZER_DIR / "LICENSE").read_text(encoding="utf-8")
    assert "Copyright (c) 2021 OpenAI" in notice and "MIT License" in notice and script.SHA256 in notice


# --- model configs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", configs.CONFIG_FAMILIES)
def test_unet_config_has_the_real_parameter_count(family):
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs.component_config(family, "unet"))
    assert parameter_count(unet) == UNET_PARAMS[family]
    assert unet.config.in_channels == unet.config.out_channels == 4
    assert unet.config.cross_attention_dim == {"sd1": 768, "sdxl": 2048}.get(family, 1024)


@pytest.mark.parametrize("family", configs.CONFIG_FAMILIES)
def test_vae_config_builds(family):
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(configs.component_config(family, "vae"))
    assert parameter_count(vae) == VAE_PARAMS
    assert vae.config.latent_channels == 4
    assert vae.config.scaling_factor == (0.13025 if family == "sdxl" else 0.18215)


@pytest.mark.parametrize("family, subfolder", list(TEXT_ENCODERS))
def test_text_encoder_config_builds(folders, family, subfolder):
    model_class, hidden_size, params = TEXT_ENCODERS[family, subfolder]
    config = CLIPTextConfig.from_pretrained(folders[family], subfolder=subfolder, local_files_only=True)
    with torch.device("meta"):
        model = model_class(config)
    assert (config.hidden_size, config.max_position_embeddings, config.vocab_size) == (hidden_size, 77, 49408)
    assert parameter_count(model) == params
    if model_class is CLIPTextModelWithProjection:
        assert config.projection_dim == 1280 and model.text_projection.out_features == 1280


@pytest.mark.parametrize("family", configs.CONFIG_FAMILIES)
def test_scheduler_prediction_type(family):
    assert configs.prediction_type(family) == PREDICTION[family]
    scheduler = configs.component_config(family, "scheduler")
    assert scheduler["_class_name"] == SCHEDULER[family]
    betas = (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"])
    assert betas == (0.00085, 0.012, "scaled_linear")


# --- complete folders and diffusers' single-file loader ---------------------------------------------------------


@pytest.mark.parametrize("family", configs.CONFIG_FAMILIES)
def test_config_folder_is_complete(folders, family):
    folder = folders[family]
    names = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    expected = {"model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "scheduler/scheduler_config.json"}
    if family == "sdxl":
        expected.add("text_encoder_2/config.json")
    for subfolder in configs.tokenizer_subfolders(family):
        expected |= {f"{subfolder}/{name}" for name in ("tokenizer_config.json", "vocab.json", "merges.txt", "LICENSE")}
    assert names == expected
    index = json.loads((folder / "model_index.json").read_text())
    assert {name for name, value in index.items() if isinstance(value, list) and value[0]} == {
        path.split("/")[0] for path in expected if "/" in path
    }


def test_config_folder_is_reused_and_leaves_no_staging_files(tmp_path):
    first = configs.config_folder("sd1", tmp_path)
    stamp = (first / "tokenizer" / "vocab.json").stat().st_mtime_ns
    assert configs.config_folder("sd1", str(tmp_path)) == first
    assert (first / "tokenizer" / "vocab.json").stat().st_mtime_ns == stamp
    # A second writer that loses the race to rename keeps the winner's folder and cleans up after itself.
    configs._materialise("sd1", first.parent, first)
    assert [path.name for path in first.parent.iterdir()] == [first.name]


def test_config_folder_reports_an_unwritable_cache(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RGDInputError, match="cache_dir"):
        configs.config_folder("sd1", blocker)


@pytest.mark.parametrize("family", configs.CONFIG_FAMILIES)
def test_from_single_file_takes_the_folder_offline(folders, tmp_path, family):
    # The models are passed in (built on meta: no weights exist offline); diffusers still reads model_index.json,
    # the scheduler and the tokenizer(s) from the folder, which is what the folder must get right.
    checkpoint = tmp_path / "weights.safetensors"
    save_file({"unused": torch.zeros(1)}, checkpoint)
    folder = folders[family]
    with torch.device("meta"):
        models = {"unet": UNet2DConditionModel.from_config(configs.component_config(family, "unet")),
                  "vae": AutoencoderKL.from_config(configs.component_config(family, "vae")),
                  "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder"))}
        if family == "sdxl":
            models["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder_2"))
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = pipeline_class.from_single_file(str(checkpoint), config=str(folder), local_files_only=True, **models)
    assert type(pipe.scheduler).__name__ == SCHEDULER[family]
    assert pipe.scheduler.config.prediction_type == PREDICTION[family]
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    for which, tok in enumerate(tokenizers, start=1):
        assert tok("a photo of a cat").input_ids == A_PHOTO_OF_A_CAT
        assert tok.pad_token_id == configs.clip_tokenizer(family, which).pad_token_id
    if family != "sdxl":
        assert pipe.safety_checker is None


# --- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda: configs.config_folder("sd3"),
    lambda: configs.clip_tokenizer("SD1"),
    lambda: configs.component_config("flux", "unet"),
    lambda: configs.prediction_type(""),
])
def test_unknown_family_says_which_families_exist(call):
    with pytest.raises(RGDInputError, match="use one of sd1, sd2, sd2-v, sdxl"):
        call()


def test_wrong_tokenizer_or_component_is_an_input_error():
    with pytest.raises(RGDInputError, match="which=1"):
        configs.clip_tokenizer("sd1", 2)
    with pytest.raises(RGDInputError, match="which=1 or 2"):
        configs.clip_tokenizer("sdxl", 3)
    with pytest.raises(RGDInputError, match="text_encoder_2"):
        configs.component_config("sd2", "text_encoder_2")
