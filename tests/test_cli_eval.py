"""`rgd eval` end to end on a tiny random SD1 checkpoint: report and grid written, same model + same seeds give the
same images and counts, and a missing prompt file is a one-line error that writes nothing."""

import json

import numpy as np
import pytest

from rgd_core import cli, sd_eval

OPTIONS = ("--before", "--after", "--prompts", "--i2p-min-nudity", "--limit", "--family", "--config-folder",
           "--steps", "--guidance", "--seed", "--thresholds", "--out", "--json", "--allow-pickle")

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
