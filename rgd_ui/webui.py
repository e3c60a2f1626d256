"""The Unlearn tab inside Automatic1111 (1.10) and Forge: ``register()`` is all ``scripts/rgd_tab.py`` calls.

Only the extension API the two UIs share is used (read in A1111 1.8–1.10 and Forge f2.0.1; run on Forge):
``modules.script_callbacks.on_ui_tabs`` / ``on_app_started``; ``modules.call_queue.wrap_gradio_gpu_call`` with a
``task(...)`` id and the page's ``requestProgress`` (``javascript/rgd.js``), so the UI's progress bar, ETA and
live preview follow the run; ``modules.shared.state`` (``job_count``, ``nextjob``, ``sampling_step(s)``,
``textinfo``, ``assign_current_image``, ``interrupted``); ``modules.sd_models`` (``checkpoints_list``,
``list_models``, ``get_closet_checkpoint_match``, ``model_path``, ``unload_model_weights``,
``send_model_to_device``); ``modules.paths.models_path``; ``cmd_opts.ckpt_dir`` / ``lora_dir``; the builtin Lora
extension's ``networks.list_available_networks``. Where the two differ (freeing the loaded model) Forge is told
apart by ``sd_models.forge_model_reload``.

The tab trains the checkpoint *file* through rgd's own diffusers host, not the UI's loaded model: the two UIs load
models through different backends (A1111's LDM modules, Forge's ComfyUI-style patcher), a file round trip is what
``rgd unlearn`` and the ComfyUI node already test, and the UI's model is then never touched, only moved out of the
way while the run needs the memory.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from pathlib import Path

from rgd_core.errors import RGDInputError

from rgd_ui.blocks import build_blocks
from rgd_ui.environment import unmet_requirements
from rgd_ui.form import form_from_values
from rgd_ui.runner import PHASES, RunMonitor, run_tab

TAB_ID = "rgd"
PREVIEW_SECONDS = 1.0  # the live chart is redrawn at most this often (matplotlib costs ~0.1 s)


class WebuiHost:
    """Places, progress, Interrupt and model memory of the running A1111 or Forge."""

    def __init__(self) -> None:
        from modules import paths, sd_models, shared

        self.shared, self.sd_models = shared, sd_models
        options = shared.cmd_opts
        self.checkpoint_folder = Path(getattr(options, "ckpt_dir", None) or sd_models.model_path)
        # The builtin Lora extension defines --lora-dir; without it, the folder it would default to.
        self.lora_folder = Path(getattr(options, "lora_dir", None) or os.path.join(paths.models_path, "Lora"))
        # Not scanned by either UI: the resumable state must never show up as a checkpoint.
        self.state_folder = Path(paths.models_path) / "rgd"
        self.cache_dir = None
        self.forge = hasattr(sd_models, "forge_model_reload")
        self._last_image = 0.0

    # --- checkpoints ---------------------------------------------------------------------------------------------

    def checkpoint_choices(self) -> list[str]:
        # Names, not titles: a title gains " [hash]" once the UI has hashed the file.
        return sorted({info.name for info in self.sd_models.checkpoints_list.values()}, key=str.lower)

    def checkpoint_path(self, choice: str) -> Path:
        info = self.sd_models.get_closet_checkpoint_match(choice)
        if info is None:
            raise RGDInputError(f"no checkpoint {choice!r} in the list; press the refresh button and choose again.")
        return Path(info.filename)

    def refresh_lists(self) -> None:
        self.sd_models.list_models()
        with contextlib.suppress(ImportError):
            import networks  # the builtin Lora extension (both UIs)

            networks.list_available_networks()

    # --- a run ---------------------------------------------------------------------------------------------------

    def should_stop(self) -> bool:
        return bool(self.shared.state.interrupted)

    def show(self, monitor: RunMonitor) -> None:
        """The run as the UI's own progress machinery shows it: one job per phase, training steps as sampling
        steps, the status as its text and the chart as its live preview."""
        state = self.shared.state
        state.job_count = len(PHASES)
        phase = PHASES.index(monitor.phase) if monitor.phase in PHASES else 0
        while state.job_no < phase:
            state.nextjob()
        if monitor.phase == "data":
            state.sampling_steps, state.sampling_step = monitor.to_sample, monitor.sampled
        elif monitor.phase == "train":
            state.sampling_steps, state.sampling_step = monitor.steps, monitor.step
        state.textinfo = monitor.status()
        now = time.monotonic()
        if monitor.records or monitor.previews:
            if now - self._last_image >= PREVIEW_SECONDS or monitor.step == monitor.steps:
                self._last_image = now
                state.assign_current_image(monitor.chart())

    @contextlib.contextmanager
    def model_out_of_the_way(self):
        """Free the memory of the UI's loaded model while rgd trains; the next generation finds it as before."""
        self._unload()
        try:
            yield
        finally:
            self._restore()

    def _unload(self) -> None:
        sd_models = self.sd_models
        if self.forge:
            # Forge moves every loaded model to its offload device; dropping the model record frees RAM too, and
            # Forge reloads it (lazily, bit-identical) at the next generation.
            sd_models.unload_model_weights()
            model_data = getattr(sd_models, "model_data", None)
            fake = getattr(sd_models, "FakeInitialModel", None)
            if model_data is not None and fake is not None:
                model_data.sd_model = fake()
                if hasattr(model_data, "forge_hash"):
                    model_data.forge_hash = ""
        elif self.shared.sd_model is not None:
            sd_models.unload_model_weights()  # A1111: the model to RAM, its VRAM freed
        gc.collect()
        with contextlib.suppress(Exception):
            from modules import devices

            devices.torch_gc()

    def _restore(self) -> None:
        if self.forge:
            return  # Forge loads the model again at the next generation
        model = self.shared.sd_model
        if model is not None:
            self.sd_models.send_model_to_device(model)


def info(host: WebuiHost) -> dict:
    """What ``GET /rgd/v1/info`` answers: which UI, folders, checkpoints, whether this Python can run rgd."""
    return {"ui": "forge" if host.forge else "a1111", "tab": f"tab_{TAB_ID}",
            "checkpoint_folder": str(host.checkpoint_folder), "lora_folder": str(host.lora_folder),
            "state_folder": str(host.state_folder), "checkpoints": host.checkpoint_choices(),
            "unmet_requirements": unmet_requirements()}


def register() -> None:
    """Register the tab and its route with the UI (called once, when the UI runs scripts/rgd_tab.py)."""
    from modules import script_callbacks

    script_callbacks.on_ui_tabs(_tabs)
    script_callbacks.on_app_started(_routes)


def _tabs():
    import gradio as gr
    from modules import call_queue, shared

    unmet = unmet_requirements()
    if unmet:  # say so in the tab instead of failing at the first click
        with gr.Blocks(analytics_enabled=False) as tab:
            gr.Markdown(unmet_message(unmet))
        return [(tab, "Unlearn", TAB_ID)]
    host = WebuiHost()

    def run(id_task, *values):
        monitor = RunMonitor()
        outcome = run_tab(form_from_values(values), host, monitor)
        # The UI appends its "Time taken" to the last output, which must be HTML.
        return [monitor.chart(), gr.update(choices=host.checkpoint_choices()), outcome.html()]

    wrapped = call_queue.wrap_gradio_gpu_call(run, extra_outputs=[None, gr.update()])
    tab = build_blocks(host, run=wrapped, interrupt=shared.state.interrupt, webui=True)
    return [(tab, "Unlearn", TAB_ID)]


def unmet_message(unmet: list[str]) -> str:
    return ("**rgd cannot run in this UI's Python environment:** " + "; ".join(unmet) + ". The extension's "
            "installer never changes a package the UI pins. Use the standalone tab (`pip install 'rgd[ui]'`, then "
            "`rgd ui --checkpoints <your models/Stable-diffusion folder>`) from its own environment, or see the "
            "README's A1111 section.")


def _routes(_demo, app) -> None:
    host_box: dict = {}

    @app.get("/rgd/v1/info")
    def _info():
        if "host" not in host_box:
            host_box["host"] = WebuiHost()
        return info(host_box["host"])
