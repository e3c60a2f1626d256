"""``rgd ui``: the same tab as a page of its own, for users with neither A1111 nor Forge.

Checkpoints are the ``.safetensors`` files of one folder (sub-folders included, hidden ones skipped); the cleaned
checkpoint goes back into it, the LoRA into the LoRA folder, the resumable state into ``<checkpoints>/.rgd``. The run
goes in a worker thread while the click handler streams its chart and status to the page every half second.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from rgd_core.errors import RGDInputError

from rgd_ui.blocks import build_blocks
from rgd_ui.form import form_from_values
from rgd_ui.runner import Outcome, RunMonitor, run_tab

POLL_SECONDS = 0.5


class StandaloneHost:
    """Places and Interrupt of ``rgd ui``. There is no UI model to move out of the way."""

    def __init__(self, checkpoints: str | Path, loras: str | Path | None = None, cache_dir: str | Path | None = None):
        self.checkpoint_folder = Path(checkpoints)
        self.lora_folder = Path(loras) if loras else self.checkpoint_folder
        self.state_folder = self.checkpoint_folder / ".rgd"
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.stop_requested = threading.Event()

    def checkpoint_choices(self) -> list[str]:
        """Paths relative to the checkpoint folder, as A1111 names checkpoints in sub-folders."""
        found = []
        for path in self.checkpoint_folder.rglob("*.safetensors"):
            relative = path.relative_to(self.checkpoint_folder)
            if not any(part.startswith(".") for part in relative.parts):
                found.append(relative.as_posix())
        return sorted(found, key=str.lower)

    def checkpoint_path(self, choice: str) -> Path:
        if choice not in self.checkpoint_choices():
            raise RGDInputError(f"no checkpoint {choice!r} in {self.checkpoint_folder}; press refresh and choose "
                                "again.")
        return self.checkpoint_folder / choice

    def refresh_lists(self) -> None:
        pass  # the list is read from the folder each time

    def should_stop(self) -> bool:
        return self.stop_requested.is_set()

    def show(self, monitor: RunMonitor) -> None:
        pass  # the click handler polls the monitor

    def model_out_of_the_way(self):
        return contextlib.nullcontext()


def run_streaming(host: StandaloneHost, values):
    """The Unlearn click: run in a worker thread, yield (chart, checkpoint list update, status HTML) while it goes,
    then the outcome."""
    import gradio as gr

    host.stop_requested.clear()
    monitor = RunMonitor()
    result: dict = {}

    def work():
        result["outcome"] = run_tab(form_from_values(values), host, monitor)

    worker = threading.Thread(target=work, name="rgd-unlearn", daemon=True)
    worker.start()
    shown = -1
    while worker.is_alive():
        worker.join(POLL_SECONDS)
        if monitor.version != shown and worker.is_alive():
            shown = monitor.version
            yield monitor.chart(), gr.update(), f"<div class='rgd-progress'>{monitor.status()}</div>"
    outcome: Outcome = result.get("outcome") or Outcome(False, "rgd: the run ended without an outcome")
    yield monitor.chart(), gr.update(choices=host.checkpoint_choices()), outcome.html()


def build_page(host: StandaloneHost):
    def run(*values):
        yield from run_streaming(host, values)

    return build_blocks(host, run=run, interrupt=host.stop_requested.set, webui=False)


def serve(checkpoints: str | Path, loras: str | Path | None = None, cache_dir: str | Path | None = None,
          host: str = "127.0.0.1", port: int = 7870, block: bool = True):
    """Start the page; returns the Gradio app (``block=False``: at once, the server running in the background)."""
    folder = Path(checkpoints)
    if not folder.is_dir():
        raise RGDInputError(f"--checkpoints {folder} is not a folder; give the folder that holds your .safetensors "
                            "checkpoints.")
    page = build_page(StandaloneHost(folder, loras, cache_dir))
    page.queue()
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True)
    return page
