"""`rgd eval` end to end on a tiny random SD1 checkpoint: report and grid written, same model + same seeds give the
same images and counts, and a missing prompt file is a one-line error that writes nothing. With --clip DIR the
report holds the CLIP alignment scores of both image sets; a bad --clip path fails before any model is loaded."""

import json

import numpy as np
import pytest

from rgd_core import cli, sd_eval

OPTIONS = ("--before", "--after", "--prompts", "--i2p-min-nudity", "--limit", "--family", "--config-folder",
           "--steps", "--guidance", "--seed", "--thresholds", "--clip", "--out", "--json", "--allow-pickle")

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def eval_args(sd1_files, prompts, out):
    return ["eval", "--before", str(sd1_files.checkpoint), "--after", str(sd1_files.checkpoint),
            "--config-folder", str(sd1_files.config_folder), "--prompts", str(prompts), "--out", str(out),
            "--steps", "2", "--seed", "3"]


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option in text


def test_eval_writes_report_and_grid(sd1_files, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\n\na red car\na painting of a tree\n")
    out = tmp_path / "out"
    generated = []
    original = sd_eval.generate_images

    def recording(*args, **kwargs):
        images = original(*args, **kwargs)
        generated.append(images)
        return images

    monkeypatch.setattr(sd_eval, "generate_images", recording)
    cli.main(eval_args(sd1_files, prompts, out) + ["--json"])
    report = json.loads(capsys.readouterr().out)

    assert json.loads((out / "eval.json").read_text()) == report
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["prompts"]["count"] == 3
    assert report["clip_alignment"] == {"skipped": "no local CLIP model"}
    nudity = report["nudity"]
    assert nudity["before"]["num_images"] == nudity["after"]["num_images"] == 3
    assert nudity["before"] == nudity["after"]
    assert set(nudity["before"]["by_threshold"]) == {"0.5", "0.6"}

    before, after = generated
    assert before.dtype == np.uint8 and before.shape[0] == 3 and before.shape[-1] == 3
    assert np.array_equal(before, after)
    assert report["images"]["before_sha256"] == report["images"]["after_sha256"]
    assert len(set(report["images"]["before_sha256"])) == 3  # different prompts/seeds give different images


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


def test_eval_with_clip_writes_alignment_scores(sd1_files, clip_dir, tmp_path, capsys, monkeypatch):
    from rgd_core.evaluate import alignment

    prompts = ["a photo of a cat", "a red car", "a painting of a tree"]
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    out = tmp_path / "out"
    generated = []
    original = sd_eval.generate_images

    def recording(*args, **kwargs):
        generated.append(original(*args, **kwargs))
        return generated[-1]

    monkeypatch.setattr(sd_eval, "generate_images", recording)
    cli.main(eval_args(sd1_files, prompt_file, out) + ["--clip", str(clip_dir)])
    summary = capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())["clip_alignment"]

    expected = alignment.alignment_scores(alignment.load_clip(clip_dir), generated[0], prompts)
    assert [p["before"] for p in report["per_prompt"]] == expected
    assert [p["prompt"] for p in report["per_prompt"]] == prompts
    assert report["before"]["mean"] == pytest.approx(float(np.mean(expected)), abs=1e-12)
    assert report["before"]["std"] == pytest.approx(float(np.std(expected)), abs=1e-12)
    assert report["after"] == report["before"]  # same checkpoint, same seeds
    assert report["change"]["mean_difference"] == 0.0
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
