"""The Unlearn tab without a webui: the form -> `rgd unlearn` settings, a run through the tab's host protocol (files
in the host's folders, progress, previews, Interrupt, resume), the A1111/Forge host against stand-ins for the UI's
modules, the environment check and installer, and `rgd ui` served and driven for 2 steps through Gradio's client.
The same tab against a real Forge: tests/forge."""

import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rgd_ui import environment
from rgd_ui.form import FORM_FIELDS, TabForm, form_from_values, pair_preview, settings_for
from rgd_ui.runner import PHASES, RunMonitor, run_tab
from rgd_ui.standalone import StandaloneHost
from servers import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("single_thread_torch")


@pytest.fixture
def host(sd1_files, tmp_path):
    """A standalone host whose checkpoint folder holds the tiny SD1 file (hard-linked: the fixture is shared)."""
    models = tmp_path / "models"
    models.mkdir()
    os.link(sd1_files.checkpoint, models / "tiny.safetensors")
    return StandaloneHost(models, tmp_path / "Lora", tmp_path / "cache")


def tiny_form(sd1_files, **changes) -> TabForm:
    values = dict(checkpoint="tiny.safetensors", concept="nudity", steps=2, train_prompts=4, sample_steps=2,
                  batch_size=2, lr=1e-3, config_folder=str(sd1_files.config_folder))
    return TabForm(**{**values, **changes})


def test_form_values_arrive_in_page_order_and_numbers_become_integers():
    values = [getattr(TabForm(), name) for name in FORM_FIELDS]
    values[FORM_FIELDS.index("steps")] = 7.0  # what a Gradio number sends
    form = form_from_values(values)
    assert form.steps == 7 and isinstance(form.steps, int)
    with pytest.raises(ValueError):
        form_from_values(values[:-1])


def test_form_maps_to_the_command_line_settings(host, sd1_files):
    settings = settings_for(tiny_form(sd1_files, prompt_preset="art-style", synonyms="nude"), host)
    assert settings["checkpoint"] == str(host.checkpoint_folder / "tiny.safetensors")
    assert settings["scope"] == "lora" and settings["format"] == "single-file"
    assert settings["out"] == str(host.checkpoint_folder) and settings["lora_out"] == str(host.lora_folder)
    assert settings["state_dir"] == str(host.state_folder) and settings["prompt_preset"] == "art-style"
    lora_only = settings_for(tiny_form(sd1_files, save_checkpoint=False), host)
    assert lora_only["format"] == "none" and lora_only["out"] == str(host.lora_folder)
    assert settings_for(tiny_form(sd1_files), host)["prompt_preset"] is None  # auto: decided from the concept
    assert settings["judge"] is None and settings["judge_clip"] is None  # "none": the loss ratio decides the stop
    assert settings["stop_ratio"] is None  # left at SD's 5: the checkpoint's family decides (a flow file: 7)
    assert settings["forget_objective"] == "auto"
    assert settings_for(tiny_form(sd1_files, forget_objective="one-mean"), host)["forget_objective"] == "one-mean"
    assert settings_for(tiny_form(sd1_files, stop_ratio=3.0), host)["stop_ratio"] == 3.0
    judged = settings_for(tiny_form(sd1_files, judge="nudenet", stop_share=0.25, judge_clip="/left/over"), host)
    assert judged["judge"] == "nudenet" and judged["stop_share"] == 0.25 and judged["judge_clip"] is None
    # with no judge chosen its fields are left alone, as a UI keeps them while hidden
    unjudged = settings_for(tiny_form(sd1_files, stop_share=0.25, judge_clip="/left/over"), host)
    assert unjudged["judge"] is None and unjudged["stop_share"] == 0.0 and unjudged["judge_clip"] is None


@pytest.mark.parametrize("changes, message", [
    (dict(checkpoint=""), "choose a checkpoint"),
    (dict(checkpoint="gone.safetensors"), "no checkpoint 'gone.safetensors'"),
    (dict(concept="  "), "type the concept"),
    (dict(lr=float("nan")), "must be a finite number"),
    (dict(steps=0), "at least 1"),
    (dict(save_checkpoint=False, scope="full"), "nothing to save"),
    (dict(prompt_preset="custom"), "needs --custom-template"),
    (dict(prompt_preset="my lists", forget_list="a nude man", retain_list=""), "one retain prompt per forget"),
    (dict(judge="clip"), "--judge clip needs --judge-clip"),
    (dict(forget_objective="sum"), "--forget-objective must be one of"),
])
def test_bad_input_is_one_line_and_runs_nothing(host, sd1_files, changes, message):
    monitor = RunMonitor()
    outcome = run_tab(tiny_form(sd1_files, **changes), host, monitor)
    assert not outcome.ok and message in outcome.message and "\n" not in outcome.message
    assert monitor.phase == "" and not host.lora_folder.exists()


def test_prompt_pairs_shown_are_the_runs_first_pairs(host, sd1_files):
    form = tiny_form(sd1_files, prompt_preset="my lists", synonyms="nude", forget_list="a nude man\na nude woman",
                     retain_list="a man\na woman")
    assert pair_preview(form) == "forget: a nude man\nretain: a man\nforget: a nude woman\nretain: a woman"
    assert pair_preview(tiny_form(sd1_files, concept="")).startswith("Type a concept")
    assert pair_preview(tiny_form(sd1_files, prompt_preset="custom")).startswith("No pairs yet:")
    shown = pair_preview(tiny_form(sd1_files)).splitlines()
    assert len(shown) == 8 and all("naked" not in line for line in shown[1::2])


def test_a_tab_run_saves_into_the_hosts_folders_with_progress_and_previews(host, sd1_files):
    shown = []
    host.show = lambda monitor: shown.append((monitor.phase, monitor.step))
    monitor = RunMonitor()
    outcome = run_tab(tiny_form(sd1_files, steps=3, preview_every=2), host, monitor)
    assert outcome.ok, outcome.message
    model = host.checkpoint_folder / "tiny-rgd-nudity.safetensors"
    lora = host.lora_folder / "tiny-rgd-nudity-lora.safetensors"
    assert outcome.report["output"] == str(model.resolve()) and outcome.report["lora"] == str(lora.resolve())
    assert any(key.startswith("lora_unet_") for key in load_file(str(lora)))
    assert "tiny-rgd-nudity.safetensors" in host.checkpoint_choices()  # listed at once
    assert not list(host.state_folder.glob("*.resume.*"))  # a finished run keeps no state
    # progress went through every phase in order, one record per step
    assert [phase for phase in PHASES if phase in {p for p, _ in shown}] == list(PHASES)
    assert [r["step"] for r in monitor.records] == [0, 1, 2] and ("train", 3) in shown
    assert (monitor.sampled, monitor.to_sample) == (6, 6)  # the 3 pairs that 3 steps of 2 draw, both sides
    # previews: the base model before training, every 2 steps, and after the last; their cost is their own phase
    assert sorted(monitor.previews) == [0, 2, 3]
    assert monitor.previews[0]["forget"].shape == monitor.previews[3]["retain"].shape
    phases = outcome.report["phases"]
    assert phases["training"]["evaluations"] == 3 * (2 + 2)  # 3 steps of 2 forget + 2 retain examples
    assert phases["preview"]["evaluations"] == 3 * 2 * 2 * 2  # 3 previews x 2 prompts x 2 steps x CFG
    chart = monitor.chart()
    assert chart.width == 640 and chart.height > 300  # the plot and the preview row under it


def test_a_judged_tab_run_says_why_it_ended(host, sd1_files):
    # the tiny model draws noise: NudeNet finds no nudity in the probe, so the first probe (step 5) ends the run
    outcome = run_tab(tiny_form(sd1_files, steps=8, judge="nudenet"), host, RunMonitor())
    assert outcome.ok and "(5 steps" in outcome.message, outcome.message
    assert outcome.message.endswith("; ended: the judge sees the concept in 0.0% of its probe (target at most 0.0%) "
                                    "after 5 steps).")


def test_interrupt_writes_no_model_and_resume_finishes_the_run(host, sd1_files):
    host.should_stop = lambda: len(monitor.records) >= 1
    monitor = RunMonitor()
    outcome = run_tab(tiny_form(sd1_files, steps=3), host, monitor)
    assert not outcome.ok and outcome.message.startswith("Interrupted after 1 of 3 steps")
    assert [p.name for p in host.checkpoint_folder.iterdir() if p.is_file()] == ["tiny.safetensors"]
    assert not host.lora_folder.exists() or not list(host.lora_folder.iterdir())
    assert list(host.state_folder.glob("*.resume.safetensors"))  # kept for Resume, where the UI lists nothing
    again = run_tab(tiny_form(sd1_files, steps=3), host, RunMonitor())
    assert not again.ok and "--resume" in again.message  # the interrupted run is never replaced silently

    host.should_stop = lambda: False
    monitor = RunMonitor()
    outcome = run_tab(tiny_form(sd1_files, steps=3, resume=True), host, monitor)
    assert outcome.ok, outcome.message
    assert [r["step"] for r in monitor.records] == [1, 2]


def test_interrupt_while_sampling_stops_before_training_and_writes_nothing(host, sd1_files):
    monitor = RunMonitor()
    host.should_stop = lambda: monitor.sampled > 0
    outcome = run_tab(tiny_form(sd1_files), host, monitor)
    assert outcome.message.startswith("Interrupted while sampling the training data (2 of 4 prompts)")
    assert monitor.records == [] and not list(host.state_folder.glob("*"))  # no resume state: nothing to resume
    assert not host.lora_folder.exists() and not list(host.cache_dir.rglob("*.safetensors"))  # nor cached data


# --- the A1111 / Forge host, against stand-ins for the UI's modules ----------------------------------------------


class FakeState:
    def __init__(self):
        self.job_count, self.job_no, self.sampling_step, self.sampling_steps = 0, 0, 0, 0
        self.textinfo, self.interrupted, self.images = None, False, []

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0

    def assign_current_image(self, image):
        self.images.append(image)

    def interrupt(self):
        self.interrupted = True


@pytest.fixture
def fake_webui(monkeypatch, tmp_path, sd1_files):
    """``modules.shared``, ``modules.sd_models`` and ``modules.paths`` as A1111 shapes them (Forge: ``forge=True``
    adds its reload hook and placeholder model)."""
    models = tmp_path / "webui" / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(sd1_files.checkpoint, models / "Stable-diffusion" / "tiny.safetensors")
    calls = []
    loaded = types.SimpleNamespace(name="the UI's model")

    def list_models():
        calls.append("list_models")
        sd_models.checkpoints_list = {
            f"{p.name} [abcd]": types.SimpleNamespace(name=p.name, filename=str(p), title=f"{p.name} [abcd]")
            for p in sorted((models / "Stable-diffusion").glob("*.safetensors"))}

    def match(choice):
        return next((info for info in sd_models.checkpoints_list.values() if info.name == choice), None)

    shared = types.SimpleNamespace(state=FakeState(), cmd_opts=types.SimpleNamespace(ckpt_dir=None),
                                   sd_model=loaded)
    sd_models = types.SimpleNamespace(model_path=str(models / "Stable-diffusion"), list_models=list_models,
                                      get_closet_checkpoint_match=match,
                                      unload_model_weights=lambda: calls.append("unload"),
                                      send_model_to_device=lambda model: calls.append(("to device", model)))
    list_models()
    calls.clear()
    package = types.ModuleType("modules")
    package.shared, package.sd_models = shared, sd_models
    package.paths = types.SimpleNamespace(models_path=str(models))
    monkeypatch.setitem(sys.modules, "modules", package)
    return types.SimpleNamespace(models=models, shared=shared, sd_models=sd_models, calls=calls, loaded=loaded)


def test_webui_host_folders_progress_and_model_memory(fake_webui, sd1_files):
    from rgd_ui.webui import WebuiHost, info

    host = WebuiHost()
    assert not host.forge and host.checkpoint_choices() == ["tiny.safetensors"]  # names, never hash titles
    assert host.lora_folder == fake_webui.models / "Lora" and host.state_folder == fake_webui.models / "rgd"
    state = fake_webui.shared.state
    monitor = RunMonitor()
    outcome = run_tab(tiny_form(sd1_files), host, monitor)
    assert outcome.ok, outcome.message
    assert (fake_webui.models / "Stable-diffusion" / "tiny-rgd-nudity.safetensors").is_file()
    assert (fake_webui.models / "Lora" / "tiny-rgd-nudity-lora.safetensors").is_file()
    # the UI's model left while rgd trained and came back; the lists were refreshed after saving
    assert fake_webui.calls == ["unload", ("to device", fake_webui.loaded), "list_models"]
    assert "tiny-rgd-nudity.safetensors" in host.checkpoint_choices()
    # the UI's progress machinery saw the phases as jobs and the steps as sampling steps
    assert state.job_count == len(PHASES) and state.job_no == PHASES.index("write")
    assert state.sampling_steps == 2 and state.images  # the chart went out as the live preview
    assert info(host)["checkpoints"] == host.checkpoint_choices() and info(host)["unmet_requirements"] == []

    state.interrupted = True  # the tab's Interrupt button sets the UI's flag
    outcome = run_tab(tiny_form(sd1_files, name="stopped"), host, RunMonitor())
    assert outcome.message.startswith("Interrupted after 0 of 2 steps")
    assert not (fake_webui.models / "Stable-diffusion" / "stopped.safetensors").exists()


def test_forge_frees_the_loaded_model_and_lets_the_next_generation_reload_it(fake_webui):
    from rgd_ui.webui import WebuiHost

    sd_models = fake_webui.sd_models
    sd_models.forge_model_reload = lambda: None
    sd_models.FakeInitialModel = type("FakeInitialModel", (), {})
    sd_models.model_data = types.SimpleNamespace(sd_model=fake_webui.loaded, forge_hash="abc")
    host = WebuiHost()
    with host.model_out_of_the_way():
        assert isinstance(sd_models.model_data.sd_model, sd_models.FakeInitialModel)
        assert sd_models.model_data.forge_hash == ""
    assert fake_webui.calls == ["unload"]  # nothing to restore: Forge reloads at the next generation


# --- environment and installer -----------------------------------------------------------------------------------


def test_environment_reads_rgds_floors_and_names_what_is_unmet(monkeypatch):
    floors = environment.declared_floors()
    assert floors["transformers"] == "4.46.1" and floors["diffusers"] == "0.31"
    assert environment.unmet_requirements() == []
    versions = {"transformers": "4.29.0", "diffusers": None}
    monkeypatch.setattr(environment, "installed_version",
                        lambda name: versions[name] if name in versions else "99")
    assert environment.unmet_requirements() == ["transformers 4.29.0 (rgd needs >= 4.30.2)",
                                                "diffusers is not installed (rgd needs >= 0.31)"]
    assert environment.missing_packages() == ["diffusers==0.31.0"]  # the lowest set CI tests
    versions["transformers"] = "4.30.2"  # A1111 1.10's pin: the tab runs on it
    assert environment.unmet_requirements() == ["diffusers is not installed (rgd needs >= 0.31)"]
    assert environment.version_tuple("2.13.0+cpu") == (2, 13, 0)


def test_installer_installs_only_whats_missing_and_pins_everything_installed(tmp_path, monkeypatch):
    (tmp_path / "launch.py").write_text(
        "import json, os\n"
        "def run_pip(command, desc):\n"
        "    open(os.environ['PIP_LOG'], 'a').write(json.dumps([command, desc]) + '\\n')\n")
    log = tmp_path / "pip.log"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PIP_LOG": str(log)}
    subprocess.run([sys.executable, str(ROOT / "install.py")], check=True, env=env, timeout=120)
    assert not log.exists()  # nothing missing here: no pip call at all

    # with diffusers missing, pip is asked for it alone, under constraints that hold every installed version
    code = ("import sys, runpy; sys.path.insert(0, sys.argv[1]); import rgd_ui.environment as e; "
            "e.missing_packages = lambda: ['diffusers>=0.31']; "
            "e.installed_constraints = lambda: 'torch==2.13.0\\n'; runpy.run_path(sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(ROOT), str(ROOT / "install.py")], check=True, env=env,
                   timeout=120)
    command, desc = json.loads(log.read_text())
    assert command.startswith('install "diffusers>=0.31" -c ') and "diffusers" in desc
    assert "torch==" in environment.installed_constraints()


def test_scripts_folder_holds_only_the_tab_entry_point():
    # A1111 and Forge execute every .py file in scripts/ at start-up.
    assert sorted(p.name for p in (ROOT / "scripts").glob("*.py")) == ["rgd_tab.py"]


# --- rgd ui, served and driven through Gradio's client -----------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="the ui extra (Gradio) is not installed")
def test_rgd_ui_serves_the_tab_and_runs_two_steps(host, sd1_files, tmp_path):
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "rgd_core.cli", "ui", "--checkpoints",
                               str(host.checkpoint_folder), "--loras", str(host.lora_folder), "--cache-dir",
                               str(tmp_path / "cache"), "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        client = None
        deadline = time.monotonic() + 120
        while client is None:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "rgd ui did not start in 120 s"
            try:
                client = Client(url, verbose=False)
            except Exception:
                time.sleep(1)
        form = tiny_form(sd1_files)
        chart, checkpoints, status = client.predict(*[getattr(form, name) for name in FORM_FIELDS],
                                                    api_name="/rgd_unlearn")
        assert "rgd-ok" in status and "Saved" in status, status
        assert (host.checkpoint_folder / "tiny-rgd-nudity.safetensors").is_file()
        assert (host.lora_folder / "tiny-rgd-nudity-lora.safetensors").is_file()
        chart_path = chart if isinstance(chart, str) else chart.get("path") or chart.get("name")
        assert Path(chart_path).is_file()
        # a second run into the same names is refused in one line, nothing replaced
        _, _, status = client.predict(*[getattr(form, name) for name in FORM_FIELDS], api_name="/rgd_unlearn")
        assert "rgd-error" in status and "already exists" in status, status
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_rgd_ui_without_a_folder_is_one_line(tmp_path, capsys):
    from rgd_core import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ui", "--checkpoints", str(tmp_path / "missing")])
    if importlib.util.find_spec("gradio") is None:
        assert "pip install 'rgd[ui]'" in capsys.readouterr().err
    else:
        assert "is not a folder" in capsys.readouterr().err
    assert exit_info.value.code == 2


def test_a_lora_alone_is_saved_beside_its_report(host, sd1_files):
    outcome = run_tab(tiny_form(sd1_files, save_checkpoint=False), host, RunMonitor())
    assert outcome.ok, outcome.message
    assert sorted(p.name for p in host.lora_folder.iterdir()) == ["tiny-rgd-nudity-lora.safetensors",
                                                                 "tiny-rgd-nudity.json"]
    assert [p.name for p in host.checkpoint_folder.glob("*.safetensors")] == ["tiny.safetensors"]
    before = load_file(str(sd1_files.checkpoint))
    assert all(torch.equal(before[k], v) for k, v in load_file(str(host.checkpoint_folder / "tiny.safetensors"))
               .items())  # the user's checkpoint is never touched
