"""One run of the tab: the form's settings through ``run_unlearn``, watched by a ``RunMonitor``, with the host's
model out of the way while it trains. Every outcome is one line for the page; nothing here does maths.

A host (``rgd_ui.webui.WebuiHost``, ``rgd_ui.standalone.StandaloneHost``) provides ``Places`` plus:
``should_stop()`` (its Interrupt), ``show(monitor)`` (progress as the UI shows it), ``model_out_of_the_way()``
(a context manager entered once the settings passed their checks, just before the checkpoint loads) and
``refresh_lists()`` (so the new files can be picked at once).
"""

from __future__ import annotations

import contextlib
import html
import io
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import ContextManager, Protocol

from rgd_core.apps.unlearn import run_unlearn
from rgd_core.errors import NonFiniteError, RGDError, RGDInputError, UnlearningCancelled

from rgd_ui.form import Places, TabForm, settings_for

PHASE_TITLES = {"load": "Loading the checkpoint", "data": "Sampling the forget/retain data", "train": "Training",
                "write": "Saving"}
PHASES = tuple(PHASE_TITLES)


class UiHost(Places, Protocol):
    def should_stop(self) -> bool: ...

    def show(self, monitor: RunMonitor) -> None: ...

    def model_out_of_the_way(self) -> ContextManager: ...

    def refresh_lists(self) -> None: ...


@dataclass
class RunMonitor:
    """What the page shows while a run goes: the phase, the step, every step's losses and the previews. Written by
    the run's thread, read by the page's; ``version`` grows with every change."""

    steps: int = 0
    phase: str = ""
    sampled: int = 0  # prompts of the data phase sampled so far, of to_sample
    to_sample: int = 0
    records: list = field(default_factory=list)
    previews: dict = field(default_factory=dict)  # step -> {"forget", "retain", "prompts"}
    log_lines: list = field(default_factory=list)
    version: int = 0
    started: float = field(default_factory=time.monotonic)
    on_change: object = None  # called with the monitor after each change (the host's ``show``)
    _chart: tuple = (-1, None)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _changed(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change(self)

    def enter_phase(self, name: str) -> None:
        self.phase = name
        self._changed()

    def add_sampled(self, done: int, total: int) -> None:
        self.sampled, self.to_sample = done, total
        self._changed()

    def add_record(self, record: dict) -> None:
        self.records.append(record)
        self._changed()

    def add_preview(self, step: int, images: dict) -> None:
        self.previews[step] = images
        self._changed()

    def log(self, message: str) -> None:
        self.log_lines.append(message)
        print(f"[rgd] {message}", file=sys.stderr, flush=True)

    @property
    def step(self) -> int:
        return self.records[-1]["step"] + 1 if self.records else 0

    def status(self) -> str:
        """One line: the phase, the step and the latest losses."""
        title = PHASE_TITLES.get(self.phase, "Starting")
        if self.phase == "data" and self.to_sample:
            return f"{title}: {self.sampled}/{self.to_sample} prompts"
        if self.phase != "train" or not self.records:
            return f"{title}…"
        last = self.records[-1]
        conflicts = sum(bool(r.get("conflict")) for r in self.records) / len(self.records)
        return (f"{title} {self.step}/{self.steps}: forget loss {last['forget_loss']:.4f}, retain loss "
                f"{last['retain_loss']:.4f}, conflict rate {conflicts:.2f}")

    def chart(self):
        """A PIL image: forget/retain loss and the running conflict rate per step, and under it the previews
        (before, latest) of the forget and the retain prompt. Re-drawn only when something changed."""
        with self._lock:
            version, image = self._chart
            if version != self.version or image is None:
                image = draw_chart(list(self.records), dict(self.previews))
                self._chart = (self.version, image)
            return image


def draw_chart(records: list, previews: dict):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from PIL import Image

    figure = Figure(figsize=(6.4, 2.6), dpi=100)
    losses, conflicts = figure.subplots(1, 2)
    if records:
        steps = [r["step"] + 1 for r in records]
        losses.plot(steps, [r["forget_loss"] for r in records], label="forget", color="tab:red")
        losses.plot(steps, [r["retain_loss"] for r in records], label="retain", color="tab:blue")
        losses.legend(loc="best", fontsize=8)
        running, seen = [], 0
        for i, r in enumerate(records, 1):
            seen += bool(r.get("conflict"))
            running.append(seen / i)
        conflicts.plot(steps, running, color="tab:purple")
        conflicts.set_ylim(-0.02, 1.02)
    losses.set_title("loss", fontsize=9)
    conflicts.set_title("conflict rate (<g_f, g_r> < 0)", fontsize=9)
    for axes in (losses, conflicts):
        axes.set_xlabel("step", fontsize=8)
        axes.tick_params(labelsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plot = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if not previews:
        return plot
    return _with_previews(plot, previews)


def _with_previews(plot, previews: dict):
    from PIL import Image, ImageDraw

    first, last = min(previews), max(previews)
    columns = [("forget", first), ("forget", last), ("retain", first), ("retain", last)]
    cell = plot.width // 4
    canvas = Image.new("RGB", (plot.width, plot.height + cell + 14), "white")
    canvas.paste(plot, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (side, step) in enumerate(columns):
        image = Image.fromarray(previews[step][side]).resize((cell, cell))
        canvas.paste(image, (i * cell, plot.height + 14))
        draw.text((i * cell + 2, plot.height + 1), f"{side}, step {step}", fill="black")
    return canvas


@dataclass
class Outcome:
    """How a run ended, for the page: ``ok``, one line of text, what was written (the report's paths)."""

    ok: bool
    message: str
    report: dict | None = None

    def html(self) -> str:
        kind = "rgd-ok" if self.ok else "rgd-error"
        return f"<div class='{kind}'>{html.escape(self.message)}</div>"


def run_tab(form: TabForm, host: UiHost, monitor: RunMonitor) -> Outcome:
    """Run the form's unlearning on ``host``; never raises (the page shows the one line of the outcome)."""
    freed = contextlib.ExitStack()

    def on_phase(name: str) -> None:
        if name == "load":  # the checks passed: now it is worth moving the UI's model away
            freed.enter_context(host.model_out_of_the_way())
        monitor.enter_phase(name)

    monitor.on_change = host.show
    try:
        settings = settings_for(form, host)
        monitor.steps = settings["steps"]
        with freed:
            report = run_unlearn(settings, log=monitor.log, should_stop=host.should_stop, on_phase=on_phase,
                                 callbacks=[monitor.add_record], preview_every=int(form.preview_every or 0),
                                 on_preview=monitor.add_preview, on_sampled=monitor.add_sampled)
    except RGDInputError as error:
        return Outcome(False, f"rgd: {error}")
    except UnlearningCancelled:
        if monitor.phase == "data":
            return Outcome(False, f"Interrupted while sampling the training data ({monitor.sampled} of "
                                  f"{monitor.to_sample} prompts); nothing was written.")
        return Outcome(False, f"Interrupted after {monitor.step} of {monitor.steps} steps; no checkpoint or LoRA was written. Tick "
                              "Resume and run again to go on from there, or Overwrite to start over.")
    except (RGDError, NonFiniteError) as error:
        return Outcome(False, f"rgd: {error}")
    except MemoryError:
        return Outcome(False, "rgd: out of memory; lower the batch size, use the lora scope, or free memory.")
    except OSError as error:
        return Outcome(False, f"rgd: {error.strerror or error}" + (f" ({error.filename})" if error.filename else ""))
    except Exception as error:  # a bug of ours: one line on the page, the traceback in the console
        traceback.print_exc()
        first = str(error).splitlines()[0] if str(error) else ""
        return Outcome(False, f"rgd: {type(error).__name__}: {first} (the console shows the traceback)")
    finally:
        monitor.on_change = None
        with contextlib.suppress(Exception):
            host.refresh_lists()
    saved = [report[key] for key in ("output", "lora") if report.get(key)]
    saved = list(dict.fromkeys(saved))
    summary = report["summary"]
    ended = f"; ended: {summary['stop_reason']}" if summary.get("stop_reason") else ""
    return Outcome(True, f"Saved {' and '.join(saved)} ({summary.get('steps', 0)} steps, forget loss "
                         f"{summary.get('final_forget_loss', float('nan')):.4f}, retain loss "
                         f"{summary.get('final_retain_loss', float('nan')):.4f}{ended}).", report)
