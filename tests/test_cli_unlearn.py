"""`rgd unlearn` end to end on a tiny random SD1 checkpoint: files written, only the scoped keys changed, settings
layered defaults < preset < TOML < flags, and one-line errors that leave no files behind."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from rgd_core import cli
from rgd_core.checkpoints.load import load_pipeline_components
from rgd_core.apps.unlearn import resolve_settings

OPTIONS = ("--checkpoint", "--concept", "--out", "--preset", "--prompt-preset", "--config", "--family",
           "--config-folder", "--method", "--scope", "--steps", "--lr", "--retain-weight", "--truncation",
           "--truncation-threshold", "--batch-size", "--train-prompts", "--sample-steps", "--guidance", "--seed",
           "--cache-dir", "--name", "--allow-pickle", "--json", "--lora-rank", "--format", "--overwrite",
           "--forget-images", "--retain-images", "--sampler", "--lora-out", "--no-save-lora", "--state-dir",
           "--width", "--height", "--text-encoders", "--neighbours", "--neighbour-share", "--stop-ratio",
           "--stop-every", "--device", "--lora-format")


pytestmark = pytest.mark.usefixtures("single_thread_torch")


def fast_args(sd1_files, out, cache):
    return ["unlearn", "--checkpoint", str(sd1_files.checkpoint), "--config-folder", str(sd1_files.config_folder),
            "--concept", "nudity", "--out", str(out), "--steps", "2", "--train-prompts", "8", "--sample-steps", "2",
            "--batch-size", "2", "--scope", "cross-attn", "--lr", "1e-3", "--cache-dir", str(cache)]


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["unlearn", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option in text


def test_unlearn_writes_checkpoint_and_report(sd1_files, tmp_path, capsys):
    out = tmp_path / "out"
    cli.main(fast_args(sd1_files, out, tmp_path / "cache") + ["--json"])
    report = json.loads(capsys.readouterr().out)
    written = out / "sd1-rgd-nudity.safetensors"
    assert report["output"] == str(written.resolve())
    assert json.loads((out / "sd1-rgd-nudity.json").read_text()) == report
    assert report["summary"]["steps"] == 2
    assert report["settings"]["prompt_preset"] == "nudity" and report["settings"]["scope"] == "cross-attn"
    assert report["settings"]["stop_ratio"] == 5.0  # the SD families' stop target

    before, after = load_file(str(sd1_files.checkpoint)), load_file(str(written))
    assert before.keys() == after.keys()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(k.startswith("model.diffusion_model.") and ".attn2." in k for k in changed)

    # the cross-attention edit also comes as a difference file: base + diff = edited, for exactly those tensors
    diff = load_file(report["diff"])
    assert set(diff) == changed
    for key, delta in diff.items():
        assert torch.allclose(before[key].float() + delta, after[key].float(), atol=1e-6)

    with safe_open(str(written), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["rgd_concept"] == "nudity" and metadata["rgd_method"] == "rgd"
    assert metadata["rgd_prompt_digest"] == report["prompt_digests"]["train"]
    load_pipeline_components(written, sd1_files.config_folder)


def test_lora_scope_writes_a_kohya_lora_and_the_merged_checkpoint(sd1_files, tmp_path, capsys):
    out = tmp_path / "out"
    args = fast_args(sd1_files, out, tmp_path / "cache")
    args[args.index("--scope") + 1] = "lora"
    cli.main(args + ["--lora-rank", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    lora = load_file(report["lora"])
    assert lora and all(key.startswith("lora_unet_") for key in lora)
    assert all(v.shape[0] == 2 for k, v in lora.items() if k.endswith("lora_down.weight"))  # the rank asked for

    before, after = load_file(str(sd1_files.checkpoint)), load_file(report["output"])
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    # only attention projections carry LoRA, so only they change once it is merged
    assert changed and all(k.split(".")[-2] in ("to_q", "to_k", "to_v", "0") and ".attn" in k for k in changed)
    modules = {k.split(".")[0] for k in lora}
    assert modules == {"lora_unet_" + k[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
                       for k in changed}


def test_toml_value_is_used_and_flag_overrides_it(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('retain_weight = 2.5\nsteps = 7\nconcept = "Van Gogh"\n')
    base = {"checkpoint": "x.safetensors", "out": str(tmp_path), "preset": "paper-nudity-sd14"}
    settings = resolve_settings({**base, "steps": 3}, config)
    assert settings["retain_weight"] == 2.5  # TOML over preset (1.6)
    assert settings["steps"] == 3  # flag over TOML
    assert settings["truncation"] == "skip" and settings["truncation_threshold"] == 1.1  # the preset's
    assert settings["concept"] == "Van Gogh"


def test_defaults_are_the_papers_sd_run(tmp_path):
    from rgd_core.hosts.diffusers_sd import PAPER_NUDITY_SD14

    settings = resolve_settings({"checkpoint": "x.safetensors", "out": str(tmp_path), "concept": "cat"})
    for key in ("method", "retain_weight", "truncation", "truncation_threshold", "lr", "steps", "batch_size", "scope"):
        assert settings[key] == PAPER_NUDITY_SD14[key], key


def test_toml_precedence_through_the_parser(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("lr = 0.5\nseed = 4\n")
    args = cli.build_parser().parse_args(["unlearn", "--config", str(config), "--checkpoint", "c", "--concept",
                                          "cat", "--out", "o", "--seed", "9"])
    settings = resolve_settings(vars(args), args.config)
    assert settings["lr"] == 0.5 and settings["seed"] == 9 and settings["allow_pickle"] is False


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_bad_toml_key_is_a_one_line_error(sd1_files, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("retain_wieght = 2.0\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(fast_args(sd1_files, out, tmp_path / "cache") + ["--config", str(config)])
    assert exit_info.value.code == 2
    line = _error_line(capsys)
    assert line.startswith("rgd: error:") and "retain_wieght" in line
    assert not out.exists()


def test_missing_checkpoint_is_a_one_line_error(sd1_files, tmp_path, capsys):
    args = fast_args(sd1_files, tmp_path / "out", tmp_path / "cache")
    args[args.index("--checkpoint") + 1] = str(tmp_path / "absent.safetensors")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    line = _error_line(capsys)
    assert line.startswith("rgd: error:") and "absent.safetensors" in line
    assert not (tmp_path / "out").exists()


def test_fast_preset_samples_with_dpm_solver_and_flags_still_win():
    settings = resolve_settings({"checkpoint": "x.safetensors", "concept": "nudity", "out": "o", "preset": "fast"})
    assert (settings["sampler"], settings["sample_steps"], settings["train_prompts"]) == ("dpm++2m", 20, 800)
    settings = resolve_settings({"checkpoint": "x.safetensors", "concept": "nudity", "out": "o", "preset": "fast",
                                 "sample_steps": 12})
    assert settings["sample_steps"] == 12


def test_dpm_solver_data_run(sd1_files, tmp_path, capsys):
    cli.main(fast_args(sd1_files, tmp_path / "out", tmp_path / "cache") + ["--sampler", "dpm++2m", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["sampler"] == "dpm++2m" and report["summary"]["steps"] == 2


def test_device_is_checked_before_anything_loads(sd1_files, tmp_path, capsys):
    import torch

    from rgd_core.devices import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            cli.main(fast_args(sd1_files, tmp_path / "out", tmp_path / "cache") + ["--device", "cuda"])
        assert "sees no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(fast_args(sd1_files, tmp_path / "out", tmp_path / "cache") + ["--device", "tpu9"])
    error = capsys.readouterr().err
    assert "not a device" in error or "runs on cpu" in error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_size_off_the_latent_grid_is_refused_before_anything_loads():
    with pytest.raises(Exception, match="multiple of 8 pixels"):
        resolve_settings({"checkpoint": "x.safetensors", "concept": "cat", "out": "o", "width": 500})
