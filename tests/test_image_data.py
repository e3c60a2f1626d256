"""Training on user-supplied images: folders are read in name order with kohya-style captions, images are
cover-resized and center-cropped, VAE-encoded once (posterior mean x scaling factor) and cached, and bad folders or
files give one-line errors before any model loads."""

import json

import pytest
import torch
from PIL import Image, features
from safetensors import safe_open

import sd_fixtures
from recorded_calls import recorded_calls
from rgd_core import cli
from rgd_core.hosts import diffusers_sd
from rgd_core.hosts.diffusers_sd import (
    SamplerSettings,
    build_paired_data,
    encode_images,
    encode_prompts,
    paired_losses,
    sample_latents,
    unlearn_sd,
)
from rgd_core.checkpoints.load import PipelineComponents, file_sha256
from rgd_core.errors import RGDInputError
from rgd_core.image_data import find_images, load_pixels
from rgd_core.prompts import build_prompt_sets
from rgd_core.method.unlearner import UnlearnConfig

FAST = SamplerSettings(steps=2, guidance_scale=5.0)
one_line_error = sd_fixtures.one_line_error
pytestmark = pytest.mark.usefixtures("single_thread_torch")


@pytest.fixture(scope="module")
def sd1():
    return PipelineComponents(family="sd1", **sd_fixtures.build_components("sd1"))


@pytest.fixture(scope="module")
def prompts():
    return build_prompt_sets("nudity", train_count=2, test_count=1, seed=0)[0]


def picture(path, size=(40, 48), seed=0, mode="RGB"):
    """A random-noise image file (noise so that every file, and its latent, differs)."""
    generator = torch.Generator().manual_seed(seed)
    channels = len(mode)
    pixels = torch.randint(0, 256, (size[1], size[0], channels), generator=generator, dtype=torch.uint8)
    array = pixels.numpy() if channels > 1 else pixels[..., 0].numpy()
    Image.fromarray(array, mode).save(path)
    return path


def image_folder(root, count, captions=None, start_seed=0):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        picture(root / f"img{i}.png", seed=start_seed + i)
    for i, text in (captions or {}).items():
        (root / f"img{i}.txt").write_text(text)
    return root


# --- finding and preparing images -----------------------------------------------------------------------------


def test_folder_is_read_in_name_order_with_captions(tmp_path):
    picture(tmp_path / "b.png", seed=1)
    picture(tmp_path / "a.JPG", seed=2)
    (tmp_path / "a.txt").write_text("  a cat\n on a   mat \n")
    picture(tmp_path / ".hidden.png")
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "sub").mkdir()
    picture(tmp_path / "sub" / "c.png")
    expected = ["a.JPG", "b.png"]
    if features.check("webp"):
        picture(tmp_path / "c.webp", seed=3)
        expected.append("c.webp")
    images = find_images(tmp_path, "forget")
    assert [image.path.name for image in images] == expected
    assert images[0].caption == "a cat on a mat" and images[1].caption is None
    assert all(image.sha256 == file_sha256(image.path) for image in images)


def test_bad_folders_and_files_are_one_line_errors(tmp_path):
    assert "does not exist" in one_line_error(find_images, tmp_path / "absent", "forget")
    (tmp_path / "notes.md").write_text("x")
    assert "holds no" in one_line_error(find_images, tmp_path, "retain")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "fake.png").write_bytes(b"this is not a png")
    assert "fake.png" in one_line_error(find_images, broken, "forget")

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    whole = picture(tmp_path / "whole.png", size=(64, 64)).read_bytes()
    (truncated / "cut.png").write_bytes(whole[: len(whole) // 2])
    assert "cut.png" in one_line_error(find_images, truncated, "forget")

    empty_caption = image_folder(tmp_path / "captions", 1, captions={0: "  \n"})
    assert "empty" in one_line_error(find_images, empty_caption, "forget")


def test_pixels_cover_then_center_crop(tmp_path):
    # three vertical bands, red | green | blue: a 16x16 crop of the 60x20 image must be the green middle
    bands = torch.zeros(20, 60, 3, dtype=torch.uint8)
    bands[:, :20, 0], bands[:, 20:40, 1], bands[:, 40:, 2] = 255, 255, 255
    Image.fromarray(bands.numpy()).save(tmp_path / "bands.png")
    pixels = load_pixels(tmp_path / "bands.png", 16, 16)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    middle = pixels[:, :, 2:14].mean(dim=(1, 2))  # away from the resampled band edges
    torch.testing.assert_close(middle, torch.tensor([-1.0, 1.0, -1.0]), atol=0.05, rtol=0)

    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black: lands on white
    clear.save(tmp_path / "clear.png")
    assert torch.equal(load_pixels(tmp_path / "clear.png", 8, 8), torch.ones(3, 8, 8))
    picture(tmp_path / "grey.png", mode="L")
    assert load_pixels(tmp_path / "grey.png", 32, 32).shape == (3, 32, 32)


# --- encoding and the paired data -----------------------------------------------------------------------------


def test_forget_images_replace_the_samples(sd1, prompts, tmp_path):
    folder = image_folder(tmp_path / "forget", 3, captions={0: "a painting of a nude figure"})
    data = build_paired_data(sd1, prompts, settings=FAST, forget_images=folder)

    pixels = torch.stack([load_pixels(image, 32, 32) for image in find_images(folder)])
    with torch.no_grad():
        expected = sd1.vae.encode(pixels).latent_dist.mean * sd1.vae.config.scaling_factor
    torch.testing.assert_close(data.forget_latents, expected, atol=1e-6, rtol=0)
    assert torch.equal(data.forget_latents, encode_images(sd1, pixels))  # same images, same batch: same computation

    # caption first, else the forget prompts cycled; the sampled retain side follows the same cycle
    forget_prompts = ["a painting of a nude figure", prompts.forget_prompts[1], prompts.forget_prompts[0]]
    assert torch.equal(data.forget_cond["encoder_hidden_states"],
                       encode_prompts(sd1, forget_prompts)["encoder_hidden_states"])
    retain_prompts = [prompts.retain_prompts[i % 2] for i in range(3)]
    assert torch.equal(data.retain_latents, sample_latents(sd1, retain_prompts, 0, FAST))  # same 3 prompts, one batch

    sampled = build_paired_data(sd1, prompts, settings=FAST)
    assert not torch.allclose(data.forget_latents[:2], sampled.forget_latents)  # the training data changed
    # the same two retain prompts and noises, sampled in a batch of 3 there and of 2 here: batch composition
    # changes float round-off on some CPUs (the promise is the same samples, not the same bits)
    torch.testing.assert_close(data.retain_latents[:2], sampled.retain_latents, atol=1e-4, rtol=1e-4)


def test_images_are_encoded_once_and_the_cache_follows_the_files(sd1, prompts, tmp_path):
    folder = image_folder(tmp_path / "forget", 2)
    cache = tmp_path / "cache"
    with recorded_calls(sd1.vae.encoder) as vae_calls, recorded_calls(sd1.unet) as unet_calls:
        first = build_paired_data(sd1, prompts, settings=FAST, cache_dir=cache, forget_images=folder)
        assert len(vae_calls) == 1 and unet_calls  # one VAE batch; the retain side was sampled
        assert [path.name for path in cache.iterdir()] == [f"{first.key}.safetensors"]
        vae_calls.clear()
        unet_calls.clear()
        again = build_paired_data(sd1, prompts, settings=FAST, cache_dir=cache, forget_images=folder)
        assert not vae_calls and not unet_calls
        assert again.key == first.key and torch.equal(again.forget_latents, first.forget_latents)

        picture(folder / "img1.png", seed=99)  # same name, new content: a miss
        changed = build_paired_data(sd1, prompts, settings=FAST, cache_dir=cache, forget_images=folder)
        assert vae_calls and changed.key != first.key
        assert not torch.allclose(changed.forget_latents[1], first.forget_latents[1], atol=1e-3)
        # image 0 re-encoded beside another image 1: the same latent up to float round-off
        torch.testing.assert_close(changed.forget_latents[0], first.forget_latents[0], atol=1e-5, rtol=1e-5)


def test_both_sides_as_images_and_count_checks(sd1, prompts, tmp_path):
    forget = image_folder(tmp_path / "forget", 2)
    retain = image_folder(tmp_path / "retain", 2, start_seed=10)
    with recorded_calls(sd1.unet) as unet_calls:
        data = build_paired_data(sd1, prompts, settings=FAST, forget_images=forget, retain_images=retain)
    assert not unet_calls  # nothing sampled
    assert len(data) == 2 and data.retain_latents.shape == data.forget_latents.shape

    only_retain = build_paired_data(sd1, prompts, settings=FAST, retain_images=retain)
    assert torch.equal(only_retain.retain_latents, data.retain_latents)
    assert torch.equal(only_retain.forget_latents, sample_latents(sd1, prompts.forget_prompts, 0, FAST))

    three = image_folder(tmp_path / "three", 3, start_seed=20)
    uneven = build_paired_data(sd1, prompts, settings=FAST, forget_images=three, retain_images=retain)
    with pytest.raises(RGDInputError, match="as many"):
        paired_losses(sd1, uneven, batch_size=2)
    paired_losses(sd1, uneven, batch_size=2, paired=False)  # unpaired training takes any counts
    with pytest.raises(RGDInputError, match="empty"):
        build_paired_data(sd1, prompts, settings=FAST, forget_images=[])


def test_unlearn_sd_trains_on_images(sd1, prompts, tmp_path):
    """The images are what the forget side trains on: a run given a folder ends with exactly the weights of a run
    given the paired data built from that folder (whose forget latents are the images' VAE encodings, see
    test_forget_images_replace_the_samples), and a folder of other images (same count, prompts and seed, so the same
    sampled retain side) ends elsewhere."""
    config = UnlearnConfig(method="rgd", steps=1, lr=1e-3, seed=0)

    def run(**data_source):
        unet, records = unlearn_sd(sd1, prompts, config=config, scope="cross-attn", batch_size=2, sampler=FAST,
                                   **data_source)
        assert len(records) == 1
        return unet.state_dict()

    folder_a, folder_b = image_folder(tmp_path / "a", 2), image_folder(tmp_path / "b", 2, start_seed=50)
    from_a, from_b = run(forget_images=folder_a), run(forget_images=folder_b)
    data_a = build_paired_data(sd1, prompts, settings=FAST, forget_images=folder_a)
    pixels = torch.stack([load_pixels(image, 32, 32) for image in find_images(folder_a)])
    assert torch.equal(data_a.forget_latents, encode_images(sd1, pixels))  # the same encoding, same batch
    from_data_a = run(data=data_a)

    changed = [key for key, value in from_a.items() if not torch.equal(value, sd1.unet.state_dict()[key])]
    assert changed and all("attn2" in key for key in changed)
    assert all(torch.equal(from_a[key], from_data_a[key]) for key in from_a)  # the same computation, bit for bit
    assert any(not torch.allclose(from_a[key], from_b[key], atol=1e-6) for key in changed)


def test_sdxl_image_side_gets_size_conditioning(prompts, tmp_path):
    sdxl = PipelineComponents(family="sdxl", **sd_fixtures.build_components("sdxl"))
    folder = image_folder(tmp_path / "forget", 2)
    settings = SamplerSettings(steps=2, guidance_scale=5.0, scheduler="euler")
    data = build_paired_data(sdxl, prompts, settings=settings, forget_images=folder)
    assert data.forget_latents.shape == (2, 4, 16, 16)
    assert data.forget_cond["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    assert data.forget_cond["text_embeds"].shape == (2, 32)
    assert set(data.forget_cond) == set(data.retain_cond)


# --- rgd unlearn --forget-images / --retain-images ------------------------------------------------------------


def unlearn_args(sd1_files, out, cache, *extra):
    return ["unlearn", "--checkpoint", str(sd1_files.checkpoint), "--config-folder", str(sd1_files.config_folder),
            "--concept", "nudity", "--out", str(out), "--steps", "1", "--train-prompts", "2", "--sample-steps", "2",
            "--batch-size", "2", "--scope", "cross-attn", "--lr", "1e-3", "--cache-dir", str(cache), "--json",
            *extra]


def test_cli_forget_images_are_encoded_once_across_runs(sd1_files, tmp_path, capsys, monkeypatch):
    folder = image_folder(tmp_path / "forget", 2, captions={1: "a nude statue"})
    encoded = []
    real = diffusers_sd.encode_images

    def counting(*args, **kwargs):
        encoded.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(diffusers_sd, "encode_images", counting)
    cache = tmp_path / "cache"
    cli.main(unlearn_args(sd1_files, tmp_path / "out1", cache, "--forget-images", str(folder)))
    report = json.loads(capsys.readouterr().out)
    assert encoded
    images = report["images"]["forget"]
    assert images["count"] == 2 and images["captions"] == 1 and "retain" not in report["images"]
    with safe_open(report["output"], framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["rgd_forget_images"] == "2" and metadata["rgd_forget_images_sha256"] == images["sha256"]

    encoded.clear()
    cli.main(unlearn_args(sd1_files, tmp_path / "out2", cache, "--forget-images", str(folder)))
    capsys.readouterr()
    assert not encoded  # the second run read the cached latents


@pytest.mark.parametrize("case", ["empty", "mismatch", "unreadable"])
def test_cli_bad_image_folders_fail_before_loading(sd1_files, tmp_path, capsys, case):
    forget = image_folder(tmp_path / "forget", 2)
    extra = ["--forget-images", str(forget)]
    if case == "empty":
        (tmp_path / "empty").mkdir()
        extra = ["--forget-images", str(tmp_path / "empty")]
    elif case == "mismatch":
        extra += ["--retain-images", str(image_folder(tmp_path / "retain", 3, start_seed=5))]
    else:
        (forget / "zz.webp").write_bytes(b"\x00" * 10)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(unlearn_args(sd1_files, out, tmp_path / "cache", *extra))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rgd: error:")
    assert {"empty": "holds no", "mismatch": "holds 2", "unreadable": "zz.webp"}[case] in lines[0]
    assert not out.exists() and not (tmp_path / "cache").exists()
