"""Benchmark one in-graph RGD step on Flux- and SD3-sized transformers (real widths, random weights, few blocks):
time and peak memory per scope, with the whole model extrapolated from two depths.

    RGD_COMFYUI=/path/ComfyUI /path/ComfyUI-venv/bin/python benchmarks/flow_step.py              # CPU, 256 px
    RGD_COMFYUI=/path/ComfyUI python benchmarks/flow_step.py --device cuda --size 1024           # a GPU

ComfyUI builds the models (its Flux and MMDiT classes at Flux.1's 3072 width / 24 heads and SD3.5 large's 2432 /
38 heads) and the step runs through the pack's own path: ComfyHost, the recipe (``run_unlearning``) on paired
data passed in (random latents at ``--size``, random text states: 512 T5 tokens for Flux, 154 for SD3), RGD with
Adam, batch 1 + 1, LoRA rank 16 on the scope "lora", full-rank deltas on "cross-attn" and "full". The data phase
(sampling) is not timed: it costs what ComfyUI's sampler costs.

Each row runs in a fresh subprocess at two depths (``--blocks`` and twice as many): per-block time and memory are
the difference, and "whole" extrapolates to the real depth (Flux.1: 19 double + 38 single blocks, counted as 19 +
19 double-block equivalents by parameters; SD3.5 large: 38 joint blocks). CPU: "peak" is the process-wide peak RSS
(ru_maxrss); CUDA: torch.cuda.max_memory_allocated. "weights" is the whole model's parameter memory at ``--dtype``
from the parameter count, what must fit before any activation. Prints a table, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {
    # name: (real block count, text tokens, text width, pooled width)
    "flux": (19 + 38, 512, 4096, 768),
    "sd35-large": (38, 154, 4096, 2048),
}
REAL_PARAMS = {"flux": 11.9e9, "sd35-large": 8.1e9}  # whole transformer, for the weights column


def build(family: str, blocks: int, dtype):
    """A MODEL (ModelPatcher) at the family's real width with ``blocks`` blocks of random weights."""
    import torch

    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.ops

    if family == "flux":
        from comfy.ldm.flux.model import Flux as network

        config = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                      hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=blocks, depth_single_blocks=blocks,
                      axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
    else:
        from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper as network

        # SD3.5 large: width 64 * 38, RMS QK-norm; num_blocks builds fewer blocks at that width
        config = dict(in_channels=16, out_channels=16, pos_embed_scaling_factor=None, patch_size=2, depth=38,
                      num_blocks=blocks, adm_in_channels=2048, pos_embed_max_size=192, num_patches=192 * 192,
                      qk_norm="rms", context_embedder_config={
                          "target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 2432}})
    model_config = comfy.model_detection.model_config_from_unet_config(config)
    model_config.set_inference_dtype(dtype, None)
    meta = network(**{k: v for k, v in config.items() if k != "image_model"}, device="meta",
                   operations=comfy.ops.disable_weight_init)
    state = {}
    generator = torch.Generator().manual_seed(0)
    for name, tensor in meta.state_dict().items():
        if name.endswith((".scale", "ln_q.weight", "ln_k.weight")):
            state[name] = torch.ones(tensor.shape, dtype=dtype)
        else:
            state[name] = (torch.randn(tensor.shape, generator=generator) * 0.02).to(dtype)
    with torch.inference_mode():
        base = model_config.get_model(state, "")
        base.load_model_weights(state, "")
        device = comfy.model_management.get_torch_device()
        return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=torch.device("cpu"))


def row(family: str, blocks: int, scope: str, size: int, dtype_name: str, steps: int, checkpointing: bool) -> dict:
    """One configuration in this process: build, one warm-up step, ``steps`` timed steps."""
    import torch

    if os.environ.get("RGD_COMFYUI"):
        sys.path.insert(0, os.environ["RGD_COMFYUI"])
    sys.path.insert(0, str(ROOT))
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()
    import importlib.util

    spec = importlib.util.spec_from_file_location("rgd_nodes_glue", ROOT / "nodes" / "glue.py")
    glue = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = glue
    spec.loader.exec_module(glue)
    from rgd_core.hosts.base import RecipeSettings, run_unlearning
    from rgd_core.method.paired_data import PairedData
    from rgd_core.method.unlearner import UnlearnConfig

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype_name]
    model = build(family, blocks, dtype)
    _, tokens, width, pooled = FAMILIES[family]
    generator = torch.Generator().manual_seed(1)
    entries = [[torch.randn(1, tokens, width, generator=generator).to(dtype),
                {"pooled_output": torch.randn(1, pooled, generator=generator).to(dtype)}] for _ in range(2)]
    latent = (16, size // 8, size // 8)
    with torch.inference_mode(False):
        cond = {k: v.clone() for k, v in glue.model_conds(model, entries, latent).items()}
        latents = torch.randn(2, *latent, generator=generator)
    data = PairedData(latents[:1], latents[1:], {k: v[:1] for k, v in cond.items()},
                      {k: v[1:] for k, v in cond.items()})
    host = glue.ComfyHost(model, None, glue.SamplerSettings(), gradient_checkpointing=checkpointing)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    settings = RecipeSettings(UnlearnConfig(method="rgd", steps=1 + steps, lr=1e-5, retain_weight=1.6, seed=0), scope,
                              1, 16, data_seed=0)
    start = time.perf_counter()
    with torch.inference_mode(False):
        result = run_unlearning(host, None, None, settings, data=data)
    total = time.perf_counter() - start
    seconds = [record["seconds"] for record in result.records[1:]]
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    parameters = sum(p.numel() for p in model.model.diffusion_model.parameters())
    trainable = sum(p.numel() for p in result.module.parameters())
    return {"family": family, "blocks": blocks, "scope": scope, "checkpointing": checkpointing, "size": size,
            "dtype": dtype_name,
            "device": "cuda" if cuda else "cpu", "parameters": parameters, "trainable": trainable,
            "step_seconds": sum(seconds) / len(seconds), "total_seconds": total, "base_bytes": base,
            "peak_bytes": peak}


def run_row(family, blocks, scope, size, dtype, steps, threads, checkpointing) -> dict:
    command = [sys.executable, __file__, "--row", json.dumps([family, blocks, scope, size, dtype, steps,
                                                               checkpointing])]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"family": family, "blocks": blocks, "scope": scope, "error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="flux,sd35-large")
    parser.add_argument("--scopes", default="lora,lora+checkpointing,full",
                        help="scopes to time; '+checkpointing' adds gradient checkpointing")
    parser.add_argument("--blocks", type=int, default=1, help="blocks of the small build (the other has twice)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent side / 8)")
    parser.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default="bf16",
                        help="weights and compute (a CPU computes bf16 slowly: use fp32 there)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(row(*json.loads(args.row))))
        return
    rows = []
    header = (f"{'family':11s} {'scope':24s} {'trainable':>11s} {'s/step':>8s} {'s/block':>8s} {'whole s':>8s} "
              f"{'GiB/block':>9s} {'weights GiB':>11s}")
    print(f"{args.size}x{args.size} px, {args.dtype}, batch 1+1, blocks {args.blocks} and {2 * args.blocks}")
    print(header)
    gib = 2 ** 30
    for family in args.family.split(","):
        real_blocks = FAMILIES[family][0]
        per_block_count = 2 if family == "flux" else 1  # a Flux build of n has n double and n single blocks
        for label in args.scopes.split(","):
            scope, checkpointing = label.removesuffix("+checkpointing"), label.endswith("+checkpointing")
            small = run_row(family, args.blocks, scope, args.size, args.dtype, args.steps, args.threads, checkpointing)
            large = run_row(family, 2 * args.blocks, scope, args.size, args.dtype, args.steps, args.threads,
                            checkpointing)
            if "error" in small or "error" in large:
                print(f"{family:11s} {label:24s} failed: {small.get('error') or large.get('error')}")
                rows.append({"small": small, "large": large})
                continue
            blocks_added = per_block_count * args.blocks
            per_block = (large["step_seconds"] - small["step_seconds"]) / blocks_added
            memory_per_block = (large["peak_bytes"] - small["peak_bytes"]) / blocks_added
            whole = small["step_seconds"] + per_block * (real_blocks - per_block_count * args.blocks)
            bytes_per = {"bf16": 2, "fp16": 2, "fp32": 4}[args.dtype]
            weights = REAL_PARAMS[family] * bytes_per / gib
            print(f"{family:11s} {label:24s} {large['trainable']:>11,d} {large['step_seconds']:8.2f} {per_block:8.2f} "
                  f"{whole:8.1f} {memory_per_block / gib:9.2f} {weights:11.1f}")
            rows.append({"small": small, "large": large, "per_block_seconds": per_block,
                         "per_block_peak_bytes": memory_per_block, "whole_step_seconds": whole,
                         "whole_weights_gib": weights})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
