"""Headless and in-graph LoRA files go through one kohya writer and one run-metadata function: the same metadata
keys (rgd_* and the ss_network_* keys kohya tools read) whichever host trained the edit."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from rgd_core import cli
from rgd_core.edits.deltas import kohya_tensors, make_edit
from rgd_core.hosts.base import RecipeSettings, run_metadata
from rgd_core.method.unlearner import UnlearnConfig

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def load_glue():
    """nodes/glue.py imports ComfyUI only inside its functions; load it alone, without the pack's ComfyUI entry."""
    spec = importlib.util.spec_from_file_location("rgd_glue_under_test", ROOT / "nodes" / "glue.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def header(path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_headless_and_in_graph_lora_files_carry_the_same_metadata_keys(sd1_files, tmp_path, capsys):
    out = tmp_path / "out"
    cli.main(["unlearn", "--checkpoint", str(sd1_files.checkpoint), "--config-folder", str(sd1_files.config_folder),
              "--concept", "nudity", "--out", str(out), "--steps", "1", "--train-prompts", "4", "--sample-steps",
              "1", "--batch-size", "2", "--scope", "lora", "--lora-rank", "2", "--cache-dir", str(tmp_path / "c"),
              "--json"])
    headless = header(json.loads(capsys.readouterr().out)["lora"])

    glue = load_glue()
    shapes = {"diffusion_model.block.attn2.to_k.weight": (8, 4)}
    edit = make_edit(shapes, "lora", rank=2, seed=0)
    for delta in dict(edit.items()).values():
        delta.up.data.fill_(0.5)
    settings = RecipeSettings(UnlearnConfig(steps=1), "lora", 2, 2)
    metadata = run_metadata("nudity", "nudity", "0" * 64, ["a nude person"], ["a person"], settings,
                            {"steps": 1}, [], "comfyui")
    lora = glue.RGDEdit(kohya_tensors(edit, {"diffusion_model.block.attn2.to_k": "lora_unet_block_attn2_to_k"}),
                        metadata)
    path = tmp_path / "in_graph.safetensors"
    glue.save_lora(lora, str(path), lora.metadata, lora["lora_unet_block_attn2_to_k.alpha"].dtype)
    in_graph = header(path)

    ours = lambda keys: {k for k in keys if k.startswith(("rgd_", "ss_"))}  # noqa: E731
    # the headless checkpoint-level extras (user images) are absent in both runs here
    assert ours(headless) == ours(in_graph)
    assert headless["ss_network_dim"] == in_graph["ss_network_dim"] == "2"
    assert headless["rgd_backend"] == "diffusers" and in_graph["rgd_backend"] == "comfyui"
    assert json.loads(in_graph["rgd_forget_prompts"]) == ["a nude person"]
