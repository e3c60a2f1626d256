"""A small random checkpoint that ComfyUI itself detects as SD1.5, in the original single-file layout.

ComfyUI names a checkpoint SD1.5 from the UNet's width (model_channels 320) and text width (context 768) and always
builds the full CLIP-L text encoder and SD VAE for it, so those two are full size (random weights); the UNet is one
resolution level deep (about 20M parameters), so a training step takes a second or so on a CPU. The weights are
written with tests/sd_fixtures.py's diffusers->original key mapping, and the config-only diffusers folder beside the
file lets diffusers read it back.

Run as a script to write one: ``python tests/comfyui/fixture.py FOLDER``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_fixtures import byte_level_tokenizer, original_state_dict, save_diffusers_folder, tiny_scheduler  # noqa: E402

NAME = "rgd_tiny_sd15.safetensors"


def components(seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(320,), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
        attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=4, norm_num_groups=32, sample_size=64, scaling_factor=0.18215,
    ).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, projection_dim=768,
    )).eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": byte_level_tokenizer(),
            "scheduler": tiny_scheduler("sd1")}


def write(folder: Path, seed: int = 0) -> Path:
    """``folder/rgd_tiny_sd15.safetensors`` (fp16) and ``folder/rgd_tiny_sd15_config/``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = components(seed)
    with torch.no_grad():
        state = {key: value.to(torch.float16).contiguous() for key, value in original_state_dict("sd1", parts).items()}
    path = folder / NAME
    save_file(state, str(path))
    save_diffusers_folder(folder / "rgd_tiny_sd15_config", "sd1", parts)
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1])))
