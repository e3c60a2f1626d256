"""Exporting an edited model as a diffusers folder: the pipeline classes load it back offline with exactly the
edited UNet and the untouched VAE / text encoders; failures and interrupts leave nothing; existing folders are
replaced only on request; ``rgd unlearn --format`` writes what it is asked for."""

import copy
import json
import os

import pytest
import torch

import sd_fixtures
from rgd_core import cli
from rgd_core.checkpoints import export
from rgd_core.checkpoints.export import RGD_METADATA_FILE, export_diffusers_folder, safe_output_folder
from rgd_core.checkpoints.load import FAMILIES, file_sha256, load_pipeline_components
from rgd_core.edits.lora import add_lora

PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
TEXT_PARTS = {"sd1": ("text_encoder",), "sd2": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2")}

one_line_error = sd_fixtures.one_line_error
pytestmark = pytest.mark.usefixtures("single_thread_torch")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return sd_fixtures.write_all(tmp_path_factory.mktemp("diffusers_export"))


@pytest.fixture(scope="module")
def loaded(fixtures):
    return sd_fixtures.load_all(fixtures)


def edited(unet):
    """A copy of ``unet`` with its cross-attention keys moved, standing in for an unlearned UNet."""
    unet = copy.deepcopy(unet)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if ".attn2.to_k." in name:
                parameter += 0.25
    return unet


def same_weights(a, b) -> bool:
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def hidden(folder) -> list:
    """Staging (.tmp) and moved-aside (.old) folders an export could leave next to its target."""
    return [name for name in os.listdir(folder) if name.startswith(".")]


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_loads_back_with_the_pipeline_class(fixtures, loaded, family, tmp_path):
    import diffusers

    components, unet = loaded[family], edited(loaded[family].unet)
    folder = export_diffusers_folder(components, unet, tmp_path / "model", metadata={"rgd_concept": "nudity"})
    assert folder == (tmp_path / "model").resolve()
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(folder.rglob("*.bin")) and hidden(tmp_path) == []

    pipeline = getattr(diffusers, PIPELINES[family]).from_pretrained(folder, local_files_only=True)
    assert same_weights(pipeline.unet, unet)  # the edit, bit for bit
    assert not same_weights(pipeline.unet, components.unet)
    assert same_weights(pipeline.vae, components.vae)
    for name in TEXT_PARTS[family]:
        assert same_weights(getattr(pipeline, name), getattr(components, name)), name
    assert type(pipeline.scheduler) is type(components.scheduler)
    assert pipeline.scheduler.config.prediction_type == components.prediction_type
    prompt = "a photo of a cat"
    assert pipeline.tokenizer(prompt).input_ids == components.tokenizer(prompt).input_ids

    header = json.loads((folder / RGD_METADATA_FILE).read_text())
    assert header["rgd_concept"] == "nudity" and header["rgd_version"]
    assert header["base_sha256"] == file_sha256(fixtures[family].checkpoint)

    again = load_pipeline_components(folder)  # rgd reads its own export too (e.g. to unlearn a second concept)
    assert again.family == family and same_weights(again.unet, unet)


def test_failures_and_interrupts_leave_nothing(loaded, tmp_path, monkeypatch):
    components = loaded["sd1"]
    out = tmp_path / "out"

    def interrupt(folder):
        raise KeyboardInterrupt  # everything written, not yet renamed into place

    monkeypatch.setattr(export, "_fsync_tree", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_diffusers_folder(components, components.unet, out / "model")
    assert os.listdir(out) == []
    monkeypatch.undo()

    already_saved = []

    def disk_full(self, save_directory, *args, **kwargs):
        already_saved.extend(os.listdir(os.path.dirname(save_directory)))
        raise OSError("disk full")

    monkeypatch.setattr(type(components.unet), "save_pretrained", disk_full)
    with pytest.raises(OSError):
        export_diffusers_folder(components, components.unet, out / "model")
    assert already_saved, "the failure should come half-way, after other components were written"
    assert os.listdir(out) == []


def test_existing_folder_is_replaced_only_on_request(loaded, tmp_path, monkeypatch):
    components = loaded["sd1"]
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    message = one_line_error(export_diffusers_folder, components, components.unet, target)
    assert "--overwrite" in message and (target / "keep.txt").read_text() == "mine"

    monkeypatch.setattr(export, "_fsync_tree", lambda folder: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        export_diffusers_folder(components, components.unet, target, overwrite=True)
    assert os.listdir(target) == ["keep.txt"] and hidden(tmp_path) == []  # the old folder survives a failure
    monkeypatch.undo()

    export_diffusers_folder(components, components.unet, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model_index.json").is_file()
    assert hidden(tmp_path) == []


def test_the_base_model_folder_is_never_overwritten(loaded, tmp_path):
    base = export_diffusers_folder(loaded["sd1"], loaded["sd1"].unet, tmp_path / "base")
    from_folder = load_pipeline_components(base)
    before = sorted(os.listdir(base))
    assert "base model" in one_line_error(export_diffusers_folder, from_folder, from_folder.unet, base, overwrite=True)
    assert sorted(os.listdir(base)) == before


def test_unmerged_lora_and_state_dicts_are_refused(loaded, tmp_path):
    components = loaded["sd1"]
    wrapped = copy.deepcopy(components.unet)
    add_lora(wrapped, rank=2)
    assert "merge_lora" in one_line_error(export_diffusers_folder, components, wrapped, tmp_path / "a")
    assert "UNet2DConditionModel" in one_line_error(
        export_diffusers_folder, components, components.unet.state_dict(), tmp_path / "b")
    assert os.listdir(tmp_path) == []


def test_folder_names_are_checked_like_file_names(tmp_path):
    assert safe_output_folder(tmp_path, "m.safetensors") == tmp_path.resolve() / "m"
    assert safe_output_folder(tmp_path, "m") == tmp_path.resolve() / "m"
    for name in ("../x", "a/b", "", ".safetensors", "C:x"):
        one_line_error(safe_output_folder, tmp_path, name)


# --- rgd unlearn --format -------------------------------------------------------------------------------------


def unlearn_args(sd1_files, out, cache, *extra):
    return ["unlearn", "--checkpoint", str(sd1_files.checkpoint), "--config-folder", str(sd1_files.config_folder),
            "--concept", "nudity", "--out", str(out), "--steps", "1", "--train-prompts", "2", "--sample-steps", "2",
            "--batch-size", "2", "--scope", "cross-attn", "--lr", "1e-3", "--cache-dir", str(cache), "--json",
            *extra]


def test_cli_format_both_writes_file_and_folder_with_the_same_unet(sd1_files, tmp_path, capsys):
    out = tmp_path / "out"
    cli.main(unlearn_args(sd1_files, out, tmp_path / "cache", "--format", "both"))
    report = json.loads(capsys.readouterr().out)
    folder = out / "sd1-rgd-nudity"
    assert report["diffusers_folder"] == str(folder.resolve())
    assert report["output"] == str((out / "sd1-rgd-nudity.safetensors").resolve())
    assert sorted(os.listdir(out)) == ["sd1-rgd-nudity", "sd1-rgd-nudity-diff.safetensors", "sd1-rgd-nudity.json",
                                       "sd1-rgd-nudity.safetensors"]  # cross-attn scope: also the difference file
    from_file = load_pipeline_components(report["output"], sd1_files.config_folder)
    from_folder = load_pipeline_components(folder)
    assert same_weights(from_folder.unet, from_file.unet)
    assert same_weights(from_folder.vae, from_file.vae)
    assert json.loads((folder / RGD_METADATA_FILE).read_text())["rgd_prompt_digest"] == \
        report["prompt_digests"]["train"]


def test_cli_diffusers_format_refuses_an_existing_folder_before_training(sd1_files, tmp_path, capsys):
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    cli.main(unlearn_args(sd1_files, out, cache, "--format", "diffusers"))
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == report["diffusers_folder"]
    # no single file (the difference file comes with the cross-attn scope)
    assert sorted(os.listdir(out)) == ["sd1-rgd-nudity", "sd1-rgd-nudity-diff.safetensors", "sd1-rgd-nudity.json"]
    stamp = (out / "sd1-rgd-nudity" / "model_index.json").stat().st_mtime_ns

    with pytest.raises(SystemExit) as exit_info:
        cli.main(unlearn_args(sd1_files, out, tmp_path / "other-cache", "--format", "diffusers"))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--overwrite" in lines[0]
    assert not (tmp_path / "other-cache").exists()  # refused before any sampling
    assert (out / "sd1-rgd-nudity" / "model_index.json").stat().st_mtime_ns == stamp

    cli.main(unlearn_args(sd1_files, out, cache, "--format", "diffusers", "--overwrite", "--seed", "1"))
    assert json.loads(capsys.readouterr().out)["settings"]["seed"] == 1
    assert (out / "sd1-rgd-nudity" / "model_index.json").stat().st_mtime_ns != stamp
    assert hidden(out) == []


def test_format_and_overwrite_come_from_toml_too(tmp_path):
    from rgd_core.apps.unlearn import resolve_settings

    config = tmp_path / "run.toml"
    config.write_text('format = "both"\noverwrite = true\nforget_images = "shots"\n')
    base = {"checkpoint": "x.safetensors", "concept": "cat", "out": str(tmp_path)}
    settings = resolve_settings(base, config)
    assert (settings["format"], settings["overwrite"], settings["forget_images"]) == ("both", True, "shots")
    assert resolve_settings(base)["format"] == "single-file" and resolve_settings(base)["overwrite"] is False
    assert "format" in one_line_error(resolve_settings, {**base, "format": "ckpt"})
    config.write_text('overwrite = "yes"\n')
    assert "overwrite" in one_line_error(resolve_settings, base, config)
