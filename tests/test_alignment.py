"""CLIP alignment score on a tiny random CLIP model saved as a transformers folder: it loads offline, repeats
exactly, equals the plain cosine of the model's own image/text features (the paper's convention), and bad model
paths are one-line errors."""

import json
import shutil

import numpy as np
import pytest

from rgd_core.errors import RGDInputError
from rgd_core.evaluate import alignment

PROMPTS = ["a photo of a cat", "a red car on a street", "an oil painting of a tree"]
IMAGE_SIZE = 32  # the tiny vision tower's input side


def write_tiny_clip(folder):
    """A random CLIPModel (8-wide towers, the real 49408-token vocabulary) with rgd's shipped tokenizer and a CLIP
    image processor for 32x32 inputs, saved with save_pretrained as a user's local CLIP folder would be."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from rgd_core.checkpoints.configs import clip_tokenizer

    tiny = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config={**tiny, "vocab_size": 49408, "max_position_embeddings": 77},
                        vision_config={**tiny, "image_size": IMAGE_SIZE, "patch_size": 8}, projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    clip_tokenizer("sd1").save_pretrained(folder)
    alignment._image_processor_class()(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def scorer(clip_dir):
    return alignment.load_clip(clip_dir)


def random_images(n=3, height=40, width=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def test_scores_load_offline_and_repeat_exactly(clip_dir, scorer):
    images = random_images()
    scores = alignment.alignment_scores(scorer, images, PROMPTS)
    assert len(scores) == 3 and all(-1.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) == 3
    assert alignment.alignment_scores(scorer, images, PROMPTS) == scores
    assert alignment.alignment_scores(alignment.load_clip(clip_dir), images, PROMPTS) == scores


def test_score_is_the_plain_cosine_of_image_and_own_prompt(clip_dir, scorer):
    """Convention: cosine in [-1, 1] of the model's projected features, image i with prompt i, not x100."""
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPTokenizer

    images = random_images()
    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).float().eval()
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir, local_files_only=True)
    processor = alignment._image_processor_class().from_pretrained(clip_dir, local_files_only=True)
    pixels = processor(images=[Image.fromarray(i) for i in images], return_tensors="pt")["pixel_values"]
    tokens = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        image_features = alignment._features(model.get_image_features(pixel_values=pixels))
        text_features = alignment._features(model.get_text_features(**tokens))
    matrix = torch.nn.functional.cosine_similarity(image_features[:, None], text_features[None], dim=-1)

    scores = alignment.alignment_scores(scorer, images, PROMPTS)
    np.testing.assert_allclose(scores, matrix.diagonal().numpy(), rtol=0, atol=1e-6)
    off_diagonal = matrix[~torch.eye(3, dtype=torch.bool)].numpy()
    assert np.abs(off_diagonal[:, None] - np.asarray(scores)[None]).min() > 1e-4  # pairs are image i, prompt i


def test_preprocessing_is_clips_resize_and_normalise(scorer):
    """A square 64x64 image: bicubic resize to 32x32, then (x/255 - mean) / std with CLIP's mean and std."""
    from PIL import Image

    image = random_images(1, 64, 64)[0]
    got = scorer.processor(images=[Image.fromarray(image)], return_tensors="pt")["pixel_values"][0].numpy()
    resized = np.asarray(Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), np.float32) / 255
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    np.testing.assert_allclose(got, ((resized - mean) / std).transpose(2, 0, 1), atol=1e-5)


def test_batch_size_does_not_change_scores(scorer):
    images = random_images(5, seed=1)
    prompts = PROMPTS + ["a dog", "two dogs"]
    # batches of 2 against one batch of 5: batch composition changes float round-off on some CPUs, not the scores
    np.testing.assert_allclose(alignment.alignment_scores(scorer, images, prompts, batch_size=2),
                               alignment.alignment_scores(scorer, images, prompts), rtol=0, atol=1e-5)


def test_prompts_are_cut_at_77_tokens(scorer):
    images = random_images(1)
    long_prompt = "a photo of " + "a very small cat " * 30
    first = alignment.alignment_scores(scorer, images, [long_prompt])
    assert alignment.alignment_scores(scorer, images, [long_prompt + "and a huge dog"]) == first


def test_weights_only_folder_and_file_path_give_the_same_scores(clip_dir, scorer, tmp_path):
    """A folder with only config.json + model.safetensors uses the shipped tokenizer and CLIP's default
    preprocessing; a path to the .safetensors file means its folder."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip_dir / name, bare / name)
    images = random_images()
    expected = alignment.alignment_scores(scorer, images, PROMPTS)
    assert alignment.alignment_scores(alignment.load_clip(bare), images, PROMPTS) == expected
    assert alignment.alignment_scores(alignment.load_clip(bare / "model.safetensors"), images, PROMPTS) == expected


def _bad_folder(kind, clip_dir, tmp_path):
    folder = tmp_path / kind
    if kind == "missing":
        return folder
    folder.mkdir()
    if kind == "not-safetensors-file":
        (folder / "model.ckpt").write_bytes(b"x")
        return folder / "model.ckpt"
    if kind == "no-config":
        shutil.copy(clip_dir / "model.safetensors", folder / "model.safetensors")
    if kind == "not-clip":
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
        shutil.copy(clip_dir / "model.safetensors", folder / "model.safetensors")
    if kind in ("no-weights", "pickle-only"):
        shutil.copy(clip_dir / "config.json", folder / "config.json")
    if kind == "pickle-only":
        (folder / "pytorch_model.bin").write_bytes(b"never read")
    if kind == "broken-weights":
        shutil.copy(clip_dir / "config.json", folder / "config.json")
        (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    return folder


@pytest.mark.parametrize("kind, words", [
    ("missing", "not found"), ("not-safetensors-file", "not a CLIP model"), ("no-config", "no config.json"),
    ("not-clip", "'bert'"), ("no-weights", "no model.safetensors"), ("pickle-only", "pickle"),
    ("broken-weights", "cannot load"),
])
def test_bad_model_paths_are_one_line_errors(clip_dir, tmp_path, kind, words):
    with pytest.raises(RGDInputError) as error:
        alignment.load_clip(_bad_folder(kind, clip_dir, tmp_path))
    message = str(error.value)
    assert words in message and "\n" not in message


def test_weights_missing_a_tower_are_refused(clip_dir, tmp_path):
    """from_pretrained would fill missing tensors with random values; scores from them would mean nothing."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "text-only"
    folder.mkdir()
    shutil.copy(clip_dir / "config.json", folder / "config.json")
    tensors = load_file(clip_dir / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.startswith("vision_model.")}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(RGDInputError, match="lack"):
        alignment.load_clip(folder)


def test_images_and_prompts_must_pair_up(scorer):
    with pytest.raises(RGDInputError, match="own prompt"):
        alignment.alignment_scores(scorer, random_images(2), PROMPTS)
    with pytest.raises(RGDInputError, match="uint8"):
        alignment.alignment_scores(scorer, random_images().astype(np.float32), PROMPTS)


def test_report_holds_sides_per_prompt_scores_and_change():
    report = alignment.alignment_report([0.30, 0.40], [0.35, 0.30], ["a", "b"], {"folder": "x"})
    assert report["before"]["mean"] == pytest.approx(0.35) and report["before"]["std"] == pytest.approx(0.05)
    assert report["after"]["mean"] == pytest.approx(0.325)
    assert report["change"]["mean_difference"] == pytest.approx(-0.025)
    assert (report["change"]["prompts_improved"], report["change"]["prompts_worse"]) == (1, 1)
    assert [p["change"] for p in report["per_prompt"]] == pytest.approx([0.05, -0.10])
    assert report["per_prompt"][1]["prompt"] == "b"
    json.dumps(report)
