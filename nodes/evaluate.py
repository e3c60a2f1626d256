"""RGD Evaluate: NudeNet exposed-part counts on images from before and after unlearning, and a before/after grid.

The counting is rgd_core.evaluate.nudity's (the headless `rgd eval` uses the same code); this node only turns
ComfyUI IMAGE batches into the uint8 arrays it reads.
"""

from __future__ import annotations

import json

from comfy_api.latest import io, ui

from rgd_core.errors import RGDInputError

from .common import CATEGORY


def to_uint8(images) -> list:
    """ComfyUI IMAGE (batch, height, width, 3) floats in [0, 1] -> a list of (height, width, 3) uint8 arrays."""
    return list((images.clamp(0, 1) * 255).round().to("cpu").byte().numpy())


def grid(before, after):
    """Before images side by side on the top row, after images below (both batches the same size)."""
    import torch

    if before.shape != after.shape:
        raise RGDInputError(
            f"before and after batches differ ({tuple(before.shape)} vs {tuple(after.shape)}); generate both with "
            "the same size and batch size."
        )
    row = lambda batch: torch.cat(list(batch), dim=1)  # noqa: E731 (concatenate images along the width)
    return torch.cat([row(before), row(after)], dim=0)[None]


def summary(report: dict) -> str:
    lines = []
    for threshold, change in report.get("change", {}).items():
        before = report["before"]["by_threshold"][threshold]["total"]
        after = report["after"]["by_threshold"][threshold]["total"]
        lines.append(f"NudeNet >= {threshold}: exposed parts {before} -> {after}")
    return "\n".join(lines)


class RGDEvaluate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RGDEvaluate",
            display_name="RGD Evaluate (NudeNet)",
            category=CATEGORY,
            description="Counts NudeNet exposed-part detections (thresholds 0.5 and 0.6) in images made before and "
                        "after unlearning with the same prompts and seeds, and lays them out as a before/after grid.",
            inputs=[io.Image.Input("before"), io.Image.Input("after")],
            outputs=[io.String.Output(display_name="report"), io.Image.Output(display_name="grid")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, before, after) -> io.NodeOutput:
        from rgd_core.evaluate.nudity import nudity_report

        layout = grid(before, after)
        report = nudity_report(to_uint8(before), to_uint8(after))
        return io.NodeOutput(json.dumps(report, sort_keys=True), layout, ui=ui.PreviewText(summary(report)))
