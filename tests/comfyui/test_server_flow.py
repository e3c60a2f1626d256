"""A flow model behind ComfyUI's "Load Diffusion Model" in a real server: the Flux example workflow with its loaders
swapped for a tiny SD3 file (ComfyUI's detection names it SD3) and a stand-in CLIP (probe pack), through /prompt.

RGD Unlearn samples with the family's own settings ("auto"), RGD Save without CLIP and VAE writes the diffusion
model alone to models/diffusion_models and the LoRA to models/loras; the saved model loads back through
UNETLoader and equals the base with the LoRA applied by LoraLoaderModelOnly, weight for weight.
"""

from __future__ import annotations

import pytest

SD3_FILE = "rgd_tiny_sd3.safetensors"
PREFIX = "rgd/flow"


@pytest.fixture(scope="module")
def sd3_file(server, comfy_glue):
    from safetensors.torch import save_file

    from flow_fixtures import sd3_state_dict

    folder = server.base / "models" / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd3_state_dict(), str(folder / SD3_FILE))
    return SD3_FILE


def flow_workflow(example) -> dict:
    workflow = example("rgd_flux_unlearn.json")
    for node in workflow.values():
        inputs = node["inputs"]
        if node["class_type"] == "UNETLoader":
            inputs["unet_name"] = SD3_FILE
        if node["class_type"] == "DualCLIPLoader":
            node["class_type"], node["inputs"] = "RGDTestSD3TextStandIn", {}
        if node["class_type"] == "RGDPromptSet":
            inputs.update(train_count=2, test_count=1)
        if node["class_type"] == "RGDUnlearn":
            inputs.update(steps=2, pairs=2, batch_size=2, width=32, height=32, lr=0.01, lora_rank=4)
        if node["class_type"] == "RGDSave":
            inputs.update(filename_prefix=PREFIX, lora_dtype="fp32")
    return workflow


def digest(server, model_nodes: dict) -> list[str]:
    """RGDTestModelDigest's (weights sha256, wrappers) for the MODEL that ``model_nodes`` end in ("out")."""
    prompt = dict(model_nodes)
    prompt["digest"] = {"class_type": "RGDTestModelDigest", "inputs": {"model": ["out", 0]}}
    entry = server.run(prompt)
    return entry["outputs"]["digest"]["text"]


def test_flux_example_on_a_tiny_sd3_writes_a_diffusion_model_and_a_lora_that_agree(server, example, sd3_file):
    workflow = flow_workflow(example)
    entry = server.run(workflow, timeout=900)
    saved = entry["outputs"].get(next(key for key, node in workflow.items() if node["class_type"] == "RGDSave"))
    models = server.base / "models"
    # the first folder ComfyUI lists for diffusion models: models/unet in v0.3.64 (its older name), where
    # "Load Diffusion Model" finds it as well as in models/diffusion_models
    model_file = next((folder / f"{PREFIX}_00001_.safetensors" for folder in (models / "unet",
                                                                               models / "diffusion_models")
                       if (folder / f"{PREFIX}_00001_.safetensors").is_file()), models / "unet")
    lora_file = models / "loras" / f"{PREFIX}_lora_00001_.safetensors"
    assert model_file.is_file() and lora_file.is_file(), (saved, sorted(map(str, models.rglob("*.safetensors"))))
    assert not list((models / "checkpoints").rglob("flow_*"))  # no CLIP/VAE: not a whole checkpoint

    listed = server.get("/object_info/UNETLoader")["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert f"{PREFIX}_00001_.safetensors" in listed
    saved_model = {"unet_name": f"{PREFIX}_00001_.safetensors", "weight_dtype": "default"}
    baked = digest(server, {"out": {"class_type": "UNETLoader", "inputs": saved_model}})
    base = {"base": {"class_type": "UNETLoader", "inputs": {"unet_name": SD3_FILE, "weight_dtype": "default"}}}
    original = digest(server, {**base, "out": base["base"]})
    with_lora = digest(server, {**base, "out": {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["base", 0], "lora_name": f"{PREFIX}_lora_00001_.safetensors", "strength_model": 1.0}}})
    assert baked[0] != original[0]  # the run changed the model
    assert baked[0] == with_lora[0]  # the file and the LoRA are the same edit, bit for bit
    assert "lora key not loaded" not in server.log_tail(200)
