"""The Unlearn tab inside a real Forge (tests/forge/conftest.py starts it): the tab and its route load, a 2-step run
driven through Gradio's API reports progress through Forge's own progress endpoint, its checkpoint and LoRA land in
Forge's folders and lists and load back (the LoRA changes a txt2img result), and Interrupt mid-run leaves no file."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from rgd_ui.form import FORM_FIELDS, TabForm

TINY = "rgd_tiny_sd15.safetensors"


def form_values(forge, **changes) -> str:
    values = dict(checkpoint=TINY, concept="nudity", steps=2, train_prompts=2, sample_steps=1, batch_size=1, lr=1e-2,
                  config_folder=str(forge.data / "rgd_tiny_sd15_config"))
    form = TabForm(**{**values, **changes})
    return json.dumps([getattr(form, name) for name in FORM_FIELDS])


def progress(forge, task_id: str) -> dict:
    return forge.request("/internal/progress", {"id_task": task_id, "id_live_preview": -1, "live_preview": True})


def txt2img(forge, prompt: str, **extra) -> bytes:
    body = {"prompt": prompt, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1,
            "cfg_scale": 7, **extra}
    return base64.b64decode(forge.request("/sdapi/v1/txt2img", body)["images"][0].split(",")[-1])


def test_tab_and_route_are_registered(forge):
    log = forge.log_text()
    assert "Unlearn tab is not available" not in log and "Error loading script: rgd_tab.py" not in log, log[-2000:]
    config = forge.request("/config")
    assert any(c.get("type") == "tabitem" and c["props"].get("elem_id") == "tab_rgd" for c in config["components"])
    info = forge.request("/rgd/v1/info")
    assert info["ui"] == "forge" and TINY in info["checkpoints"] and info["unmet_requirements"] == []
    assert info["checkpoint_folder"] == str(forge.models / "Stable-diffusion")
    assert info["lora_folder"] == str(forge.models / "Lora")


def test_run_reports_progress_saves_into_forges_lists_and_the_lora_works(forge):
    before = txt2img(forge, "a photo of a cat")  # the UI's model is loaded: the tab must move it away and back
    task = "task(rgd-two-steps)"
    client = forge.drive(task, form_values(forge, name="cleaned"))
    seen = []
    while client.poll() is None:
        state = progress(forge, task)
        if state.get("active"):
            seen.append((state.get("progress") or 0, state.get("textinfo") or ""))
        time.sleep(0.5)
    out, err = client.communicate()
    assert client.returncode == 0, err[-3000:]
    status = json.loads(out)["status"]
    assert "rgd-ok" in status and "Saved" in status, status
    assert any(p > 0 for p, _ in seen) and any(t.startswith(("Sampling", "Training", "Saving")) for _, t in seen), seen

    checkpoint = forge.models / "Stable-diffusion" / "cleaned.safetensors"
    lora = forge.models / "Lora" / "cleaned-lora.safetensors"
    assert checkpoint.is_file() and lora.is_file()
    assert "cleaned.safetensors" in forge.request("/rgd/v1/info")["checkpoints"]  # the tab refreshed the list
    forge.request("/sdapi/v1/refresh-checkpoints", {})
    assert any(m["model_name"] == "cleaned" for m in forge.request("/sdapi/v1/sd-models"))
    forge.request("/sdapi/v1/refresh-loras", {})
    assert any(entry["name"] == "cleaned-lora" for entry in forge.request("/sdapi/v1/loras"))

    # the model Forge had loaded is untouched: same image as before the run
    assert txt2img(forge, "a photo of a cat") == before
    # the LoRA loads through Forge's built-in Lora, every key applied, and changes the picture
    with_lora = txt2img(forge, "a photo of a cat <lora:cleaned-lora:1>")
    assert with_lora != before
    assert "cleaned-lora" in forge.log_text() and "skipped 0 keys" in forge.log_text()
    # the cleaned checkpoint loads back as a model
    assert txt2img(forge, "a photo of a cat", override_settings={"sd_model_checkpoint": "cleaned"})


def test_a_judged_run_stops_once_nudenet_sees_no_nudity(forge):
    """The tab's judge inside Forge's Python: the tiny model draws noise, NudeNet finds no exposed body in the
    probe, so the first probe (step 5 of 8) ends the run, and the page says why."""
    client = forge.drive("task(rgd-judged)", form_values(forge, name="judged", steps=8, judge="nudenet"))
    out, err = client.communicate(timeout=600)
    assert client.returncode == 0, err[-3000:]
    status = json.loads(out)["status"]
    assert "rgd-ok" in status and "(5 steps" in status, status
    assert "ended: the judge sees the concept in 0.0% of its probe" in status, status


def test_interrupt_mid_run_leaves_no_file(forge):
    task = "task(rgd-interrupted)"
    client = forge.drive(task, form_values(forge, name="interrupted", steps=500))
    deadline = time.monotonic() + 300
    while not (progress(forge, task).get("textinfo") or "").startswith("Training"):
        assert client.poll() is None, client.communicate()
        assert time.monotonic() < deadline, "the run never reached training"
        time.sleep(0.3)
    forge.request("/sdapi/v1/interrupt", {})
    out, err = client.communicate(timeout=300)
    assert client.returncode == 0, err[-3000:]
    status = json.loads(out)["status"]
    assert "Interrupted after" in status, status
    leftovers = [p for folder in ("Stable-diffusion", "Lora") for p in (forge.models / folder).glob("interrupted*")]
    assert leftovers == []


def test_the_tab_renders_in_headless_chromium(forge, tmp_path):
    """The page a user sees: Forge's UI in a real browser, switched to the Unlearn tab (RGD_SCREENSHOT=PATH keeps
    the screenshot, as the README's)."""
    if not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chromium (apt-get install chromium)")
    out = Path(os.environ.get("RGD_SCREENSHOT") or tmp_path / "tab.png")
    result = subprocess.run([os.environ["RGD_FORGE_PYTHON"], str(Path(__file__).parent / "screenshot.py"), forge.url,
                             str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
