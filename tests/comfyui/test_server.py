"""The node pack inside a real ComfyUI (see conftest.py): the example workflows through /prompt, on the CPU.

The tests share one server and run in file order: the unlearn-and-save run makes the files that the later tests
load. Settings are cut to a few steps at 64x64 so the whole file takes minutes on two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from rgd_core.prompts import build_prompt_sets

NODE_IDS = ("RGDCheckpointLoader", "RGDPromptSet", "RGDUnlearn", "RGDSave", "RGDEvaluate")
CHECKPOINT = "rgd_tiny_sd15.safetensors"
UNET = "model.diffusion_model."
ATTENTION_PROJECTIONS = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")


def fast(workflow: dict, seed: int = 0, steps: int = 2, prefix: str = "rgd/test") -> dict:
    """The example workflow with test-sized settings: 2 prompt pairs, 2 sampler steps at 64x64, a few RGD steps."""
    for node in workflow.values():
        inputs = node["inputs"]
        if node["class_type"] in ("RGDCheckpointLoader", "CheckpointLoaderSimple"):
            inputs["ckpt_name"] = CHECKPOINT
        if node["class_type"] == "RGDPromptSet":
            inputs.update(train_count=2, test_count=1)
        if node["class_type"] == "RGDUnlearn":
            inputs.update(steps=steps, seed=seed, pairs=2, batch_size=2, sample_steps=2, width=64, height=64,
                          lr=0.01)
        if node["class_type"] == "RGDSave":
            inputs.update(filename_prefix=prefix, lora_dtype="fp32")
        if node["class_type"] == "KSampler":
            inputs.update(steps=2)
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        if node["class_type"] == "LoraLoader":
            inputs.update(lora_name=f"{prefix}_lora_00001_.safetensors")
        if node["class_type"] == "SaveImage":
            inputs.update(filename_prefix="examples/" + inputs["filename_prefix"].replace("/", "_"))
    return workflow


def node_of(workflow: dict, class_type: str) -> str:
    return next(key for key, node in workflow.items() if node["class_type"] == class_type)


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def unlearned(server, example):
    """The unlearn-and-save example, run once: (history entry, workflow, seconds)."""
    workflow = fast(example("rgd_unlearn_and_save.json"))
    start = time.monotonic()
    entry = server.run(workflow)
    return entry, workflow, time.monotonic() - start


def test_the_pack_loads_and_its_nodes_are_in_object_info(server):
    info = server.get("/object_info")
    for node_id in NODE_IDS:
        assert node_id in info, node_id
        assert info[node_id]["category"] == "unlearning/RGD"
    assert CHECKPOINT in json.dumps(info["RGDCheckpointLoader"]["input"])
    assert "IMPORT FAILED" not in server.log.read_text()
    unlearn = info["RGDUnlearn"]
    assert unlearn["output"] == ["MODEL", "LORA_MODEL", "LOSS_MAP"]
    assert "lora" in json.dumps(unlearn["input"]["required"]["scope"])


def refusal(server, workflow) -> dict:
    """ComfyUI's answer to a prompt it refuses at validation: {node id: [error messages with details]}."""
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"prompt": workflow, "client_id": "rgd-tests"}).encode()
    request = urllib.request.Request(server.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    answer = json.loads(info.value.read().decode())
    return {node: [f"{e['message']}: {e['details']}" for e in errors["errors"]]
            for node, errors in answer["node_errors"].items()}


def test_a_bad_setting_is_refused_before_anything_runs_with_one_message_per_problem(server, example):
    """ComfyUI repeats a validate_inputs message under every input the function declares; the Save node declares only
    its prefix and the Unlearn node none (ComfyUI's own range checks report each bad widget once)."""
    workflow = fast(example("rgd_unlearn_and_save.json"))
    save = node_of(workflow, "RGDSave")
    workflow[save]["inputs"]["filename_prefix"] = "../../escape"
    messages = refusal(server, workflow)[save]
    assert len(messages) == 1 and "filename prefix" in messages[0]
    workflow = fast(example("rgd_unlearn_and_save.json"))
    unlearn = node_of(workflow, "RGDUnlearn")
    workflow[unlearn]["inputs"]["steps"] = 0
    messages = refusal(server, workflow)[unlearn]
    assert len(messages) == 1 and "steps" in messages[0] and "smaller than min" in messages[0]


def test_unlearn_and_save_writes_a_checkpoint_with_only_the_lora_targets_changed(server, unlearned):
    entry, workflow, seconds = unlearned
    print(f"unlearn-and-save workflow: {seconds:.1f} s")
    base = server.base
    checkpoint = base / "models" / "checkpoints" / "rgd" / "test_00001_.safetensors"
    lora = base / "models" / "loras" / "rgd" / "test_lora_00001_.safetensors"
    assert checkpoint.is_file() and lora.is_file()
    original = load_file(str(base / "models" / "checkpoints" / CHECKPOINT))
    saved = load_file(str(checkpoint))
    changed, unet_keys = [], [k for k in original if k.startswith(UNET)]
    for key in unet_keys:
        assert key in saved, key
        if not torch.equal(saved[key].to(original[key].dtype), original[key]):
            changed.append(key)
    assert changed, "the edit changed nothing"
    assert all(key.endswith(ATTENTION_PROJECTIONS) for key in changed), [k for k in changed
                                                                          if not k.endswith(ATTENTION_PROJECTIONS)]
    vae = [k for k in original if k.startswith("first_stage_model.")]
    assert all(torch.equal(saved[k].to(original[k].dtype), original[k]) for k in vae)
    with safe_open(str(checkpoint), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["rgd_method"] == "rgd" and metadata["rgd_scope"] == "lora"
    assert metadata["base_sha256"] == sha256(base / "models" / "checkpoints" / CHECKPOINT)
    assert metadata["modelspec.predict_key"] == "epsilon"
    train, _ = build_prompt_sets("nudity", preset="nudity", train_count=2, test_count=1, seed=0)
    assert json.loads(metadata["rgd_forget_prompts"]) == train.forget_prompts  # the headless path's prompts

    tensors = load_file(str(lora))
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in tensors)
    with safe_open(str(lora), "pt") as handle:
        assert handle.metadata()["rgd_method"] == "rgd"
    history = entry["outputs"]
    unlearn_node = node_of(workflow, "RGDSave")
    assert "saved:" in history[unlearn_node]["text"][0]


def test_an_unchanged_graph_requeued_is_cached_and_writes_nothing(server, unlearned):
    """Judged by events, not by wall time: ComfyUI reports the Unlearn node cached, no training step is logged and
    no file is written."""
    _, workflow, _ = unlearned
    before = files(server.base / "models")
    steps_logged = server.log.read_text().count("RGD step")
    entry = server.run(workflow)
    cached = [data["nodes"] for event, data in entry["status"]["messages"] if event == "execution_cached"]
    assert cached and node_of(workflow, "RGDUnlearn") in cached[0]
    assert server.log.read_text().count("RGD step") == steps_logged  # the cached edit was reused, nothing trained
    assert files(server.base / "models") == before


def sample_nodes(model_ref: list, clip_ref: list, prefix: str) -> dict:
    """Nodes that sample "a nude person" (seed 7, 2 steps at 64x64) from a MODEL and save the latent as cmp/<prefix>."""
    return {
        f"{prefix}_pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": "a nude person"}},
        f"{prefix}_neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": ""}},
        f"{prefix}_latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        f"{prefix}_k": {"class_type": "KSampler", "inputs": {
            "model": model_ref, "positive": [f"{prefix}_pos", 0], "negative": [f"{prefix}_neg", 0],
            "latent_image": [f"{prefix}_latent", 0], "seed": 7, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0}},
        f"{prefix}_save": {"class_type": "SaveLatent", "inputs": {"samples": [f"{prefix}_k", 0],
                                                                  "filename_prefix": f"cmp/{prefix}"}},
    }


def assert_lora_reproduces_checkpoint(server, checkpoint: str, lora: str, tag: str) -> None:
    """The saved checkpoint and the original checkpoint + the saved LoRA/diff through LoraLoader sample the same
    latent, and it differs from the original's."""
    workflow = {
        f"{tag}_saved_ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        f"{tag}_orig_ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        f"{tag}_loader": {"class_type": "LoraLoader", "inputs": {
            "model": [f"{tag}_orig_ckpt", 0], "clip": [f"{tag}_orig_ckpt", 1], "strength_model": 1.0,
            "strength_clip": 1.0, "lora_name": lora}},
        **sample_nodes([f"{tag}_saved_ckpt", 0], [f"{tag}_saved_ckpt", 1], f"{tag}_saved"),
        **sample_nodes([f"{tag}_loader", 0], [f"{tag}_loader", 1], f"{tag}_lora"),
        **sample_nodes([f"{tag}_orig_ckpt", 0], [f"{tag}_orig_ckpt", 1], f"{tag}_orig"),
    }
    server.run(workflow)
    assert "lora key not loaded" not in server.log.read_text()
    out = server.base / "output" / "cmp"
    latent = {name: load_file(str(out / f"{tag}_{name}_00001_.latent"))["latent_tensor"]
              for name in ("saved", "lora", "orig")}
    assert torch.allclose(latent["saved"], latent["lora"], atol=1e-4, rtol=1e-4), \
        (latent["saved"] - latent["lora"]).abs().max()
    assert not torch.allclose(latent["saved"], latent["orig"], atol=1e-4, rtol=1e-4)


def changed_unet_keys(base: Path, saved_path: Path) -> list[str]:
    """UNet keys whose tensors differ between the test checkpoint and a saved one; every other tensor both files
    hold (VAE, text encoder) must be equal, and every UNet tensor must be saved."""
    original, saved = load_file(str(base / "models" / "checkpoints" / CHECKPOINT)), load_file(str(saved_path))
    changed = []
    for key, value in original.items():
        if key not in saved:  # ComfyUI's saver leaves out buffers such as the text encoder's position_ids
            assert not key.startswith(UNET), key
            continue
        if not torch.equal(saved[key].to(value.dtype), value):
            assert key.startswith(UNET), f"{key} is outside the UNet"
            changed.append(key)
    return changed


def test_saved_checkpoint_loads_in_comfyui_and_the_lora_reproduces_it(server, unlearned):
    assert_lora_reproduces_checkpoint(server, "rgd/test_00001_.safetensors", "rgd/test_lora_00001_.safetensors",
                                      "lora")


@pytest.mark.parametrize("scope", ["cross-attn", "full"])
def test_other_scopes_change_only_their_weights_and_the_difference_file_reproduces_them(server, example, scope):
    prefix = f"rgd/{scope.replace('-', '_')}"
    workflow = fast(example("rgd_unlearn_and_save.json"), prefix=prefix)
    workflow[node_of(workflow, "RGDUnlearn")]["inputs"]["scope"] = scope
    server.run(workflow)
    name = prefix.split("/")[1]
    changed = changed_unet_keys(server.base, server.base / "models" / "checkpoints" / "rgd" / f"{name}_00001_.safetensors")
    assert changed, "the edit changed nothing"
    if scope == "cross-attn":
        assert all(".attn2." in key for key in changed), [key for key in changed if ".attn2." not in key]
    else:
        assert any(".attn" not in key for key in changed)  # convolutions, norms, ... train too
    difference = load_file(str(server.base / "models" / "loras" / "rgd" / f"{name}_lora_00001_.safetensors"))
    assert difference and all(key.endswith((".diff", ".diff_b")) for key in difference), sorted(difference)[:4]
    assert_lora_reproduces_checkpoint(server, f"rgd/{name}_00001_.safetensors", f"rgd/{name}_lora_00001_.safetensors",
                                      name)


def test_the_other_example_workflows_run(server, unlearned, example):
    start = time.monotonic()
    entry = server.run(fast(example("rgd_before_after.json")))
    images = server.base / "output" / "examples"
    grids = list(images.glob("rgd_before_after_*.png"))
    assert len(grids) == 1
    from PIL import Image

    assert Image.open(grids[0]).size == (2 * 64, 2 * 64)  # forget, retain across; before above after
    workflow = example("rgd_before_after.json")
    report = entry["outputs"][node_of(workflow, "RGDEvaluate")]["text"][0]
    assert "NudeNet >= 0.5: exposed parts" in report  # NudeNet's own detector ran on both batches
    server.run(fast(example("rgd_lora_in_loraloader.json")))
    assert list(images.glob("rgd_with_lora_*.png"))
    print(f"before/after and LoRA examples: {time.monotonic() - start:.1f} s")


def test_a_nudenet_judge_stops_the_run_once_the_probe_shows_no_nudity(server, unlearned, example):
    """The tiny model draws noise through the example's VAE: NudeNet finds no exposed body, so the first probe
    (step 5 of 8) ends the run, and the saved checkpoint's summary says why."""
    workflow = fast(example("rgd_unlearn_and_save.json"), steps=8, prefix="rgd/judged")
    workflow[node_of(workflow, "RGDUnlearn")]["inputs"].update(judge="nudenet", stop_share=0.0)
    server.run(workflow)
    checkpoint = server.base / "models" / "checkpoints" / "rgd" / "judged_00001_.safetensors"
    with safe_open(str(checkpoint), "pt") as handle:
        summary = json.loads(handle.metadata()["rgd_summary"])
    assert summary["steps"] == 5
    assert summary["stop_reason"].startswith("the judge sees the concept in 0.0% of its probe"), summary


def test_cancel_stops_within_a_step_and_leaves_the_loaded_model_unchanged(server, unlearned, example):
    digest = {"loader": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
              "digest": {"class_type": "RGDTestModelDigest", "inputs": {"model": ["loader", 0]}}}
    before = server.run(digest)["outputs"]["digest"]["text"]
    assert before[1] == "0"

    workflow = fast(example("rgd_unlearn_and_save.json"), seed=123, steps=500, prefix="rgd/cancelled")
    workflow[node_of(workflow, "RGDUnlearn")]["inputs"]["model"] = ["loader", 0]  # the same cached MODEL
    workflow["loader"] = digest["loader"]
    prompt_id = server.queue(workflow)

    def last_step() -> int:  # the Unlearn node logs "RGD step k/500 ..." after each training step
        return max(map(int, re.findall(r"RGD step (\d+)/500", server.log.read_text())), default=0)

    deadline = time.monotonic() + 600  # a generous ceiling: sampling the data first takes minutes on a busy machine
    while last_step() < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert last_step() >= 2, server.log_tail()
    at_interrupt = last_step()
    server.post("/interrupt")
    entry = server.wait(prompt_id, timeout=600)
    print(f"interrupted after step {at_interrupt}; the last step logged is {last_step()}")
    # Judged by steps, not by wall time: the step under way finishes and no further one starts (one more is allowed
    # for a step that began between reading the log and the interrupt arriving).
    assert last_step() <= at_interrupt + 2
    assert entry["status"]["status_str"] == "error"
    assert any(event == "execution_interrupted" for event, _ in entry["status"]["messages"])
    after = server.run(digest)["outputs"]["digest"]["text"]
    assert after == before
    leftovers = [p for p in files(server.base / "models") | files(server.base / "output")
                 if p.endswith(".tmp") or "cancelled" in p]
    assert not leftovers, leftovers


def test_saved_checkpoint_loads_back_in_diffusers(server, unlearned):
    pytest.importorskip("diffusers")
    from rgd_core.checkpoints.load import load_pipeline_components

    base = server.base
    parts = load_pipeline_components(base / "models" / "checkpoints" / "rgd" / "test_00001_.safetensors",
                                     base / "models" / "checkpoints" / "rgd_tiny_sd15_config")
    assert parts.family == "sd1"
    original = load_pipeline_components(base / "models" / "checkpoints" / CHECKPOINT,
                                        base / "models" / "checkpoints" / "rgd_tiny_sd15_config")
    changed = [name for name, value in parts.unet.state_dict().items()
               if not torch.equal(value.to(torch.float16), original.unet.state_dict()[name].to(torch.float16))]
    assert changed and all(any(name.endswith(p) for p in ATTENTION_PROJECTIONS) for name in changed), changed
