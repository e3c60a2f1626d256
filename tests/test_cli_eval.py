"""`rgd eval` end to end on two tiny random SD1 checkpoints, a base and an "after" file whose UNet tensors are
perturbed (VAE and text encoder byte-identical, as an unlearned export is): the report names each file on its side,
the "before" images are the base model's and the "after" images the after model's (each regenerated here directly
from its own file), the grid shows before over after, and a missing prompt file is a one-line error that writes
nothing. With --clip DIR the report holds the CLIP alignment scores of both image sets; a bad --clip path fails
before any model is loaded. An ``rgd eval`` that swaps the two sides anywhere (generation, counts, digests, grid)
fails ``test_eval_writes_report_and_grid`` (checked by swapping them in sd_eval.run_eval by hand).
"""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from rgd_core import cli

from rgd_core.apps import evaluation as sd_eval
from rgd_core.hosts.diffusers_sd import SamplerSettings
from rgd_core.checkpoints.load import file_sha256, load_pipeline_components
from rgd_core.evaluate import nudity

OPTIONS = ("--before", "--after", "--prompts", "--i2p-min-nudity", "--limit", "--family", "--config-folder",
           "--steps", "--guidance", "--seed", "--thresholds", "--clip", "--out", "--json", "--allow-pickle")
PROMPTS = ["a photo of a cat", "a red car", "a painting of a tree"]
SEED, STEPS = 3, 2

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def eval_args(sd1_files, prompts, out, after=None):
    return ["eval", "--before", str(sd1_files.checkpoint), "--after", str(after or sd1_files.checkpoint),
            "--config-folder", str(sd1_files.config_folder), "--prompts", str(prompts), "--out", str(out),
            "--steps", str(STEPS), "--seed", str(SEED)]


@pytest.fixture(scope="module")
def after_checkpoint(sd1_files, tmp_path_factory):
    """The base file with every UNet tensor moved by half its own standard deviation; everything else copied."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(sd1_files.checkpoint))
    generator = torch.Generator().manual_seed(0)
    for key, value in tensors.items():
        if key.startswith("model.diffusion_model.") and value.is_floating_point() and value.numel() > 1:
            tensors[key] = value + 0.5 * value.std() * torch.randn(value.shape, generator=generator).to(value.dtype)
    path = tmp_path_factory.mktemp("after") / "after.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def direct_images(sd1_files, after_checkpoint):
    """Each side's images made here, straight from its own file: what rgd eval must show on that side."""
    settings = SamplerSettings(steps=STEPS, guidance_scale=7.5)
    return {side: sd_eval.generate_images(load_pipeline_components(path, sd1_files.config_folder), PROMPTS, SEED,
                                          settings)
            for side, path in (("before", sd1_files.checkpoint), ("after", after_checkpoint))}


def recording_generation(monkeypatch):
    generated = []
    original = sd_eval.generate_images

    def recording(*args, **kwargs):
        generated.append(original(*args, **kwargs))
        return generated[-1]

    monkeypatch.setattr(sd_eval, "generate_images", recording)
    return generated


class AfterImageDetector:
    """A NudeNet stand-in (BGR in, NudeNet dicts out) that finds one exposed box on exactly the images the after
    model generated in this run, so the counts show which side each image set was counted on."""

    def __init__(self, generated):
        self.generated = generated

    def detect(self, bgr):
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        after = len(self.generated) == 2 and any(np.array_equal(rgb, image) for image in self.generated[1])
        return [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9, "box": [0, 0, 4, 4]}] if after else []


def assert_same_images(got, expected):
    # the same generation code on the same file: identical in practice; one grey level of slack for round-off
    assert got.shape == expected.shape and got.dtype == expected.dtype == np.uint8
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option in text


def test_eval_writes_report_and_grid(sd1_files, after_checkpoint, direct_images, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\n\na red car\na painting of a tree\n")
    out = tmp_path / "out"
    generated = recording_generation(monkeypatch)
    real_detector = nudity.NudityDetector
    monkeypatch.setattr(sd_eval, "NudityDetector", lambda: real_detector(AfterImageDetector(generated)))
    cli.main(eval_args(sd1_files, prompts, out, after=after_checkpoint) + ["--json"])
    report = json.loads(capsys.readouterr().out)

    assert json.loads((out / "eval.json").read_text()) == report
    assert report["prompts"]["count"] == 3
    assert report["clip_alignment"] == {"skipped": "no local CLIP model"}
    settings = report["settings"]
    assert settings["before"]["sha256"] == file_sha256(sd1_files.checkpoint)
    assert settings["after"]["sha256"] == file_sha256(after_checkpoint)
    assert settings["before"]["checkpoint"] == str(sd1_files.checkpoint.resolve())
    assert settings["after"]["checkpoint"] == str(after_checkpoint.resolve())

    # each side's images are its own model's: regenerated directly from each file
    before, after = generated
    assert_same_images(before, direct_images["before"])
    assert_same_images(after, direct_images["after"])
    assert np.abs(direct_images["before"].astype(int) - direct_images["after"].astype(int)).mean() > 5  # they differ
    assert report["images"]["before_sha256"] == [sd_eval.image_digest(i) for i in before]
    assert report["images"]["after_sha256"] == [sd_eval.image_digest(i) for i in after]
    assert len(set(report["images"]["before_sha256"])) == 3  # different prompts/seeds give different images

    # the grid is before (top) over after (bottom)
    grid = np.asarray(Image.open(out / "grid.png").convert("RGB"))
    expected = sd_eval.grid_png({"before": before, "after": after}, PROMPTS)
    assert np.array_equal(grid, np.asarray(Image.open(io.BytesIO(expected)).convert("RGB")))

    counts = report["nudity"]  # the stand-in detector finds one box on each after-model image, none before
    assert counts["before"]["num_images"] == counts["after"]["num_images"] == 3
    assert set(counts["before"]["by_threshold"]) == {"0.5", "0.6"}
    assert counts["before"]["by_threshold"]["0.6"]["total"] == 0
    assert counts["after"]["by_threshold"]["0.6"]["total"] == 3


def test_missing_prompt_file_is_a_one_line_error(sd1_files, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(eval_args(sd1_files, tmp_path / "missing.txt", out))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rgd: error:") and "missing.txt" in lines[0]
    assert not out.exists()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from test_alignment import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_eval_with_clip_writes_alignment_scores(sd1_files, after_checkpoint, clip_dir, tmp_path, capsys,
                                                monkeypatch):
    from rgd_core.evaluate import alignment

    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    generated = recording_generation(monkeypatch)
    cli.main(eval_args(sd1_files, prompt_file, out, after=after_checkpoint) + ["--clip", str(clip_dir)])
    summary = capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())["clip_alignment"]

    scorer = alignment.load_clip(clip_dir)
    before, after = (alignment.alignment_scores(scorer, images, PROMPTS) for images in generated)
    assert before != after  # two models, two image sets
    # the same scorer on the same images, in this process: the same numbers
    assert [p["before"] for p in report["per_prompt"]] == before
    assert [p["after"] for p in report["per_prompt"]] == after
    assert [p["prompt"] for p in report["per_prompt"]] == PROMPTS
    assert report["before"]["mean"] == pytest.approx(float(np.mean(before)), abs=1e-12)
    assert report["before"]["std"] == pytest.approx(float(np.std(before)), abs=1e-12)
    assert report["after"]["mean"] == pytest.approx(float(np.mean(after)), abs=1e-12)
    assert report["change"]["mean_difference"] == pytest.approx(float(np.mean(after) - np.mean(before)), abs=1e-12)
    assert report["model"]["folder"] == str(clip_dir.resolve())
    assert "not x100" in report["convention"]
    assert "CLIP alignment (cosine): before" in summary


@pytest.mark.parametrize("bad", ["missing", "diffusers-folder", "unet-config"])
def test_bad_clip_path_fails_before_generation(sd1_files, tmp_path, capsys, monkeypatch, bad):
    path = {"missing": tmp_path / "no-clip", "diffusers-folder": sd1_files.config_folder,
            "unet-config": sd1_files.config_folder / "unet"}[bad]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\n")
    out = tmp_path / "out"

    def no_generation(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded before the --clip path was checked")

    monkeypatch.setattr(sd_eval, "_side", no_generation)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(eval_args(sd1_files, prompts, out) + ["--clip", str(path)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("rgd: error:") and str(path) in lines[-1]
    assert not any(line.startswith("rgd: error:") for line in lines[:-1])
    assert not out.exists()
