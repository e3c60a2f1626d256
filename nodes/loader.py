"""RGD Load Checkpoint: ComfyUI's checkpoint loader plus the file's name and sha256 for the saved metadata."""

from __future__ import annotations

from comfy_api.latest import io

from .common import CATEGORY, CheckpointInfo


class RGDCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        return io.Schema(
            node_id="RGDCheckpointLoader",
            display_name="RGD Load Checkpoint",
            category=CATEGORY,
            description="Loads a checkpoint like Load Checkpoint and also gives its name and sha256, which RGD Save "
                        "writes into the cleaned file's metadata. The standard loader's outputs work as well.",
            inputs=[io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("checkpoints"))],
            outputs=[
                io.Model.Output(display_name="MODEL"),
                io.Clip.Output(display_name="CLIP"),
                io.Vae.Output(display_name="VAE"),
                CheckpointInfo.Output(display_name="checkpoint_info"),
            ],
        )

    @classmethod
    def execute(cls, ckpt_name: str) -> io.NodeOutput:
        import comfy.sd
        import folder_paths

        from rgd_core.checkpoints.load import file_sha256

        path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            path, output_vae=True, output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings"))
        info = {"name": ckpt_name, "sha256": file_sha256(path)}
        return io.NodeOutput(model, clip, vae, info)
