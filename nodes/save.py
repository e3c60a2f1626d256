"""RGD Save: the cleaned single-file checkpoint (edit baked in by ComfyUI's own saver) and the edit as a kohya file.

Files go to models/checkpoints and models/loras (or ComfyUI's output folder) as ``<prefix>_<counter>_.safetensors``
and ``<prefix>_lora_<counter>_.safetensors``; a prefix may name sub-folders but never leave those folders. Each
file is written to a temporary name and renamed into place, so a failure leaves nothing half-written.

Without a CLIP and a VAE (a model loaded with "Load Diffusion Model", as Flux and SD3.5 usually are) the checkpoint
is the diffusion model alone, written to the first folder ComfyUI lists for diffusion models (models/unet in
v0.3.64), where "Load Diffusion Model" finds it.
"""

from __future__ import annotations

import json
import os

from comfy_api.latest import io, ui

from rgd_core.checkpoints.export import rgd_version
from rgd_core.errors import RGDInputError

from .common import CATEGORY, CheckpointInfo, first_error

LORA_DTYPES = ("fp16", "fp32", "bf16")


def check_save(filename_prefix: str) -> None:
    from .glue import check_prefix

    check_prefix(filename_prefix)


def file_metadata(edit_metadata: dict, checkpoint_info: dict | None, prompt=None, extra_pnginfo=None) -> dict:
    """The run's metadata, the base checkpoint's name and hash, and (as CheckpointSave does) the workflow."""
    metadata = dict(edit_metadata)
    metadata["rgd_version"] = rgd_version()
    if checkpoint_info:
        metadata["base_name"] = checkpoint_info.get("name", "")
        metadata["base_sha256"] = checkpoint_info.get("sha256", "")
    if prompt is not None:
        metadata["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        metadata[key] = json.dumps(value)
    return metadata


class RGDSave(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RGDSave",
            display_name="RGD Save",
            category=CATEGORY,
            description="Saves the unlearned model as one checkpoint file (ComfyUI, A1111 and Forge load it) and the "
                        "edit as a kohya-format LoRA / difference file, with the run's settings in the metadata.",
            inputs=[
                io.Model.Input("model", tooltip="the MODEL from RGD Unlearn (its edit is baked in)"),
                io.Clip.Input("clip", optional=True,
                              tooltip="with the VAE: one checkpoint file; without both: the diffusion model alone"),
                io.Vae.Input("vae", optional=True),
                io.String.Input("filename_prefix", default="rgd/unlearned"),
                io.Boolean.Input("save_checkpoint", default=True),
                io.Boolean.Input("save_lora", default=True),
                io.Combo.Input("lora_dtype", options=list(LORA_DTYPES), default="fp16"),
                io.Combo.Input("destination", options=["models", "output"], default="models",
                               tooltip="models: models/checkpoints and models/loras, so the loaders list the files "
                                       "at once; output: ComfyUI's output folder"),
                io.LoraModel.Input("edit", optional=True, tooltip="the edit from RGD Unlearn, for the LoRA file"),
                CheckpointInfo.Input("checkpoint_info", optional=True),
            ],
            outputs=[io.String.Output(display_name="checkpoint_path"), io.String.Output(display_name="lora_path")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix=None):
        # only the prefix is declared: ComfyUI repeats a validation message under every declared input
        if filename_prefix is None:
            return True  # linked from another node: checked when it runs
        return first_error(lambda: check_save(filename_prefix))

    @classmethod
    def execute(cls, model, clip=None, vae=None, filename_prefix="rgd/unlearned", save_checkpoint=True,
                save_lora=True, lora_dtype="fp16", destination="models", edit=None,
                checkpoint_info=None) -> io.NodeOutput:
        import torch

        from . import glue

        check_save(filename_prefix)
        if not (save_checkpoint or save_lora):
            return io.NodeOutput("", "", ui=ui.PreviewText("nothing saved: save_checkpoint and save_lora are off"))
        if save_lora and edit is None:
            raise RGDInputError("save_lora is on but no edit is connected; link RGD Unlearn's edit output.")
        if save_checkpoint and (clip is None) != (vae is None):
            raise RGDInputError("connect both clip and vae for a whole checkpoint, or neither to save the diffusion "
                                "model alone.")
        hidden = cls.hidden
        metadata = file_metadata(getattr(edit, "metadata", {}), checkpoint_info,
                                 hidden.prompt if hidden else None, hidden.extra_pnginfo if hidden else None)
        checkpoint_path = lora_path = ""
        if save_lora:
            dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[lora_dtype]
            path = glue.output_path(filename_prefix, "_lora", "loras", destination)
            lora_path = glue.save_lora(edit, path, metadata, dtype)
        if save_checkpoint:
            kind = "checkpoints" if clip is not None else "diffusion_models"
            path = glue.output_path(filename_prefix, "", kind, destination)
            checkpoint_path = glue.save_checkpoint(model, clip, vae, path, metadata)
        saved = [os.path.basename(p) for p in (checkpoint_path, lora_path) if p]
        return io.NodeOutput(checkpoint_path, lora_path, ui=ui.PreviewText("saved: " + ", ".join(saved)))
