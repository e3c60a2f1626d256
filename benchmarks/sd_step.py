"""Benchmark one RGD step on SD1.5- and SDXL-sized UNets with random weights: time and peak memory per scope.

    .venv/bin/python benchmarks/sd_step.py --model tiny,tiny-sdxl          # few-MB UNets: checks the script
    .venv/bin/python benchmarks/sd_step.py --model sd15,sdxl               # CPU: 8x8 latents by default
    python benchmarks/sd_step.py --model sd15,sdxl --device cuda           # GPU: 64x64 latents by default

One step is what the Unlearner does: forget fwd+bwd, retain fwd+bwd, update rule, Adam (lr 1e-5, lambda 1.6,
paired batches of ``--batch`` forget + ``--batch`` retain examples). Each scope is timed three ways:

- ours: rgd_core's Unlearner on cached data (prompts encoded once, latents ready), restricted gradient in place;
- uncached: the same Unlearner, but both loss callables run the text encoder(s) on their prompts every step;
- reference: a straightforward loop, the way a naive implementation does it: re-encode every step, clone both
  gradient lists, flatten them into vectors, project with the formula (tests/reference_update.py), unflatten
  into .grad, optimizer.step.

Every model is built from the shipped diffusers configs (rgd_core/checkpoints/configs: UNet and text encoder(s)
at real size, the real CLIP tokenizer) with seeded random weights; nothing is downloaded. "tiny" and "tiny-sdxl"
are few-MB UNets and text encoders of the SD1 and SDXL patterns that check the script without real-size memory
(a row still pays the ~10 s of importing diffusers in its fresh process). The latents are random (a step costs
the same whatever they show), so no VAE is built; "uncached" re-runs only the text encoders, not the sampling
that made the latents.

Each row runs in a fresh subprocess, so its memory is its own. CUDA: "peak" is torch.cuda.max_memory_allocated
over the warm-up and timed steps, "base" the memory allocated after setup. CPU: "peak" is the row's process-wide
peak RSS (resource.getrusage ru_maxrss), which also covers importing torch and building the model; "base" is the
RSS after setup. "est" is the estimate used to skip rows: weights of the UNet and text encoders, plus per
trainable weight 4 parameter-sized buffers for ours/uncached (.grad, the kept forget gradient, Adam's two
moments) or 11 for the reference (two gradient clones, .grad, the flat vectors and projections, the unflattened
copy, Adam); activations are not counted. A row whose estimate exceeds the memory available (CPU: MemAvailable
at start; CUDA: the GPU's total memory; or --max-gib) is skipped with "skipped: needs ~N GiB". SDXL at full scope
in float32 with Adam needs ~40 GiB for ours alone, so on a 24 GiB CPU machine those rows are skipped.

On a CPU whose cores other jobs keep busy, pass --threads 1: torch's OpenMP threads wait on each other when a
core is taken away, and a 2-thread SD1.5 forward measured 4x slower than a 1-thread one on a loaded 2-core machine.

Prints a table (and with --json PATH also writes the rows); asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: never let a library reach for the hub

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from reference_update import flatten_restricted_gradient  # noqa: E402

from rgd_core.edits.scopes import LORA_SCOPE, SCOPES as ALL_SCOPES, scope_filter  # noqa: E402

# benchmark model -> family of its shipped configs
MODELS = {"tiny": "sd1", "tiny-sdxl": "sdxl", "sd15": "sd1", "sdxl": "sdxl"}
VARIANTS = ("ours", "uncached", "reference")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RETAIN_WEIGHT = 1.6  # the paper's lambda for SD
LEARNING_RATE = 1e-5
BUFFERS_PER_TRAINABLE = {"ours": 4, "uncached": 4, "reference": 11}  # see the module docstring
ROW_MARKER = "SD_STEP_ROW "
GIB = 2**30

# The tests' tiny SD1 UNet (tests/sd_fixtures.py): two resolutions, cross-attention at the top one.
TINY_UNET = {
    "sample_size": 16,
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}
# The tests' tiny SDXL UNet: no attention at the top resolution, two transformer layers below, the text_time
# add-embedding fed by the second encoder's pooled 32-wide projection and six size numbers of 8 each.
TINY_SDXL_UNET = {
    "sample_size": 16,
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "cross_attention_dim": 32 + 64,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2],
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
}
# Two-layer CLIP text encoders; they keep the real 49408-token vocabulary, since the real tokenizer feeds them.
TINY_TEXT_ENCODERS = {
    "text_encoder": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                     "projection_dim": 32},
    "text_encoder_2": {"hidden_size": 64, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "projection_dim": 32},
}
TINY_UNETS = {"tiny": TINY_UNET, "tiny-sdxl": TINY_SDXL_UNET}


# --- building the model --------------------------------------------------------------------------------------


def text_encoder_names(model: str) -> tuple[str, ...]:
    return ("text_encoder", "text_encoder_2") if MODELS[model] == "sdxl" else ("text_encoder",)


def build_models(model: str, device: str | torch.device) -> dict:
    """UNet and text encoder(s) from the shipped configs, created directly on ``device`` ("meta": shapes only)."""
    import transformers
    from diffusers import UNet2DConditionModel

    from rgd_core.checkpoints.configs import component_config

    family = MODELS[model]
    unet_config = component_config(family, "unet")
    unet_config.update(TINY_UNETS.get(model, {}))
    models = {}
    with torch.device(device):
        models["unet"] = UNet2DConditionModel.from_config(unet_config)
        for name in text_encoder_names(model):
            config = component_config(family, name)
            if model in TINY_UNETS:
                config.update(TINY_TEXT_ENCODERS[name])
            text_class = getattr(transformers, config["architectures"][0])
            models[name] = text_class(transformers.CLIPTextConfig.from_dict(config))
    return models


def trainable_filter(scope: str):
    from rgd_core.edits.lora import lora_parameters_filter

    return lora_parameters_filter if scope == LORA_SCOPE else scope_filter(scope)


def add_scope_adapters(unet: torch.nn.Module, scope: str, lora_rank: int, seed: int) -> None:
    """The LoRA scope trains adapters on the attention projections, as unlearn_sd does (rank 4 by default)."""
    from rgd_core.edits.lora import add_lora

    if scope == LORA_SCOPE:
        add_lora(unet, lora_rank, seed=seed)


def parameter_counts(model: str, scopes: list[str], lora_rank: int) -> dict:
    """Total UNet and text-encoder parameters and the trainable count per scope, counted on the meta device."""
    models = build_models(model, "meta")
    counts = {"unet": sum(p.numel() for p in models["unet"].parameters())}
    counts["text"] = sum(p.numel() for name in text_encoder_names(model) for p in models[name].parameters())
    for scope in scopes:
        unet = build_models(model, "meta")["unet"] if scope == "lora" else models["unet"]
        add_scope_adapters(unet, scope, lora_rank, seed=0)
        keep = trainable_filter(scope)
        counts[scope] = sum(p.numel() for name, p in unet.named_parameters() if keep(name, p))
    return counts


def estimated_bytes(counts: dict, scope: str, variant: str, element_size: int) -> int:
    weights = counts["unet"] + counts["text"]
    if scope == "lora":
        weights += counts[scope]
    return (weights + BUFFERS_PER_TRAINABLE[variant] * counts[scope]) * element_size


def pipeline_components(model: str, models: dict):
    """A PipelineComponents around the built models, with the family's shipped tokenizer(s) and scheduler."""
    import diffusers

    from rgd_core.checkpoints.configs import clip_tokenizer, component_config
    from rgd_core.checkpoints.load import PipelineComponents

    family = MODELS[model]
    scheduler_config = component_config(family, "scheduler")
    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    extra = {}
    if family == "sdxl":
        extra = {"text_encoder_2": models["text_encoder_2"], "tokenizer_2": clip_tokenizer(family, 2)}
    return PipelineComponents(
        family=family, unet=models["unet"], vae=None, text_encoder=models["text_encoder"],
        tokenizer=clip_tokenizer(family, 1), scheduler=scheduler, **extra,
    )


# --- data ----------------------------------------------------------------------------------------------------


def prompt_pairs(count: int) -> tuple[list[str], list[str]]:
    forget = [f"a painting of a harbour at dusk in the style of Van Gogh, view {i}" for i in range(count)]
    retain = [f"a painting of a harbour at dusk, view {i}" for i in range(count)]
    return forget, retain


def cached_data(components, forget: list[str], retain: list[str], latent: int, seed: int):
    """PairedData with random latents and the prompts encoded once (what build_paired_data's cache holds)."""
    from rgd_core.hosts.diffusers_sd import PairedData, encode_prompts, sdxl_time_ids

    generator = torch.Generator().manual_seed(seed)
    shape = (len(forget), components.unet.config.in_channels, latent, latent)
    forget_latents, retain_latents = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    forget_cond, retain_cond = encode_prompts(components, forget), encode_prompts(components, retain)
    if components.family == "sdxl":
        pixels = latent * 8  # the SD VAEs downscale by 8; no VAE is built here
        forget_cond["time_ids"] = sdxl_time_ids(pixels, pixels, len(forget))
        retain_cond["time_ids"] = sdxl_time_ids(pixels, pixels, len(retain))
    return PairedData(forget_latents, retain_latents, forget_cond, retain_cond)


def reencoding(loss, components, prompts: list[str], cond: dict):
    """``loss`` with its prompts run through the text encoder(s) again on every call.

    paired_losses reads the conditioning from the very dict it was given, so refreshing that dict in place puts
    the new encodings into the step (the same numbers, the encoders being deterministic; the cost is the point).
    """
    from rgd_core.hosts.diffusers_sd import encode_prompts

    def wrapped(unet, generator):
        cond.update(encode_prompts(components, prompts))
        return loss(unet, generator)

    return wrapped


# --- the three ways to take a step ---------------------------------------------------------------------------


def unlearner_step(components, data, trainable, batch: int, forget: list[str] | None, retain: list[str] | None):
    """``step(k)`` of an Unlearner on the UNet (in place); with prompts, the losses re-encode them every call."""
    from rgd_core.hosts.diffusers_sd import paired_losses
    from rgd_core.method.unlearner import Unlearner, UnlearnConfig

    forget_loss, retain_loss = paired_losses(components, data, batch)
    if forget is not None:
        forget_loss = reencoding(forget_loss, components, forget, data.forget_cond)
        retain_loss = reencoding(retain_loss, components, retain, data.retain_cond)
    config = UnlearnConfig(method="rgd", steps=0, retain_weight=RETAIN_WEIGHT, lr=LEARNING_RATE, optimizer="adam")
    unlearner = Unlearner(components.unet, forget_loss, retain_loss, config, trainable, in_place=True)
    for parameter in components.unet.parameters():  # what Unlearner.run sets up before its loop
        parameter.requires_grad_(False)
    for parameter in unlearner.params:
        parameter.requires_grad_(True)
    return unlearner.step, len(unlearner.params)


def plain_unet_call(unet, x, t, cond: dict):
    added = None
    if "text_embeds" in cond:
        added = {key: cond[key].to(x.device, unet.dtype) for key in ("text_embeds", "time_ids")}
    hidden = cond["encoder_hidden_states"].to(x.device, unet.dtype)
    return unet(x, t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample


def reference_step(components, data, trainable, forget: list[str], retain: list[str], seed: int):
    """``step(k)`` of the naive loop: re-encode, two backward passes, cloned and flattened gradients."""
    from rgd_core.hosts.diffusers_sd import encode_prompts
    from rgd_core.method.losses import denoising_error
    from rgd_core.method.unlearner import step_seed

    unet = components.unet
    params = [p for name, p in unet.named_parameters() if trainable(name, p)]
    for parameter in unet.parameters():
        parameter.requires_grad_(False)
    for parameter in params:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=LEARNING_RATE)
    alphas_cumprod = torch.as_tensor(components.scheduler.alphas_cumprod, dtype=torch.float32)
    device = next(unet.parameters()).device
    time_ids = data.forget_cond.get("time_ids")

    def loss_on(prompts: list[str], latents, generator):
        cond = encode_prompts(components, prompts)
        if time_ids is not None:
            cond["time_ids"] = time_ids
        x0 = latents.to(device, unet.dtype)
        error = denoising_error(lambda x_t, t: plain_unet_call(unet, x_t, t, cond), x0, alphas_cumprod, generator,
                                components.prediction_type)
        return error.mean()

    def gradients() -> list:
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    def step(k: int) -> None:
        # the Unlearner's per-step seed, so at batch 1 both loops draw the same t and noise (checkable)
        generator = torch.Generator().manual_seed(step_seed(seed, k))
        optimizer.zero_grad(set_to_none=True)
        (-loss_on(forget, data.forget_latents, generator)).backward()
        forget_grads = gradients()
        optimizer.zero_grad(set_to_none=True)
        loss_on(retain, data.retain_latents, generator).backward()
        retain_grads = gradients()
        update = flatten_restricted_gradient(forget_grads, retain_grads, RETAIN_WEIGHT)
        for parameter, direction in zip(params, update):
            parameter.grad = direction
        optimizer.step()

    return step, len(params)


# --- one row, in its own process -----------------------------------------------------------------------------


def rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_calls(modules) -> list[int]:
    """A one-element counter of forward calls over ``modules`` (how often the text encoders run)."""
    calls = [0]

    def hook(module, inputs, output):
        calls[0] += 1

    for module in modules:
        module.register_forward_hook(hook)
    return calls


def run_row(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)  # the random init draws from the global generator
    start = time.perf_counter()
    models = build_models(args.model, device)
    dtype = DTYPES[args.dtype]
    models = {name: module.to(device, dtype).eval().requires_grad_(False) for name, module in models.items()}
    components = pipeline_components(args.model, models)
    unet = components.unet
    add_scope_adapters(unet, args.scope, args.lora_rank, args.seed)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()  # diffusers checkpoints only in train mode; SD UNets have no dropout
    trainable = trainable_filter(args.scope)
    forget, retain = prompt_pairs(args.batch)
    data = cached_data(components, forget, retain, args.latent, args.seed)
    if args.variant == "ours":
        step, tensors = unlearner_step(components, data, trainable, args.batch, None, None)
    elif args.variant == "uncached":
        step, tensors = unlearner_step(components, data, trainable, args.batch, forget, retain)
    else:
        step, tensors = reference_step(components, data, trainable, forget, retain, args.seed)
    encodes = count_calls(models[name] for name in text_encoder_names(args.model))
    synchronize(device)
    setup_seconds = time.perf_counter() - start
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = rss_bytes()

    times = []
    for k in range(args.warmup + args.steps):
        synchronize(device)
        tick = time.perf_counter()
        step(k)
        synchronize(device)
        if k >= args.warmup:
            times.append(time.perf_counter() - tick)

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    trainable_params = sum(p.numel() for name, p in unet.named_parameters() if trainable(name, p))
    return {
        "trainable_params": trainable_params,
        "trainable_tensors": tensors,
        "seconds_per_step": statistics.median(times),
        "step_seconds": times,
        "peak_bytes": peak,
        "base_bytes": base,
        "setup_seconds": setup_seconds,
        "encodes_per_step": encodes[0] / (args.warmup + args.steps),
        "threads": torch.get_num_threads(),
    }


def one_row_main(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        row = run_row(args)
    except torch.cuda.OutOfMemoryError:
        row = {"error": "CUDA out of memory"}
    except Exception as error:  # a failed row is reported in the table, not fatal to the others
        row = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]}
    print(ROW_MARKER + json.dumps(row), flush=True)


# --- the table -----------------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meminfo_bytes(key: str) -> int:
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def probe_gpu(args) -> dict:
    """GPU name and memory, asked in a subprocess so this parent process never holds a CUDA context."""
    code = (
        "import json, torch; d = torch.device(%r); p = torch.cuda.get_device_properties(d); "
        "print(json.dumps({'name': p.name, 'total': p.total_memory, 'cuda': torch.version.cuda}))" % args.device
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def machine_line(args, gpu: dict | None) -> str:
    import diffusers
    import transformers

    versions = f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"
    cores = f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)"
    ram = f"{meminfo_bytes('MemTotal') / GIB:.1f} GiB RAM ({meminfo_bytes('MemAvailable') / GIB:.1f} GiB available)"
    host = f"{cpu_name()}, {cores}, {ram}"
    if gpu:
        return f"{gpu['name']} ({gpu['total'] / GIB:.1f} GiB, CUDA {gpu['cuda']}); host {host}; {versions}"
    threads = args.threads or torch.get_num_threads()
    # Busy cores slow torch's OpenMP threads down badly (they wait on each other), so the load goes on record.
    load = os.getloadavg()[0]
    return f"{host}, {threads} torch threads, load average {load:.1f}; {versions}"


def row_command(args, model: str, scope: str, variant: str) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--one-row", "--model", model, "--scopes", scope,
               "--variant", variant, "--device", args.device, "--dtype", args.dtype, "--latent", str(args.latent),
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--seed", str(args.seed), "--lora-rank", str(args.lora_rank), "--threads", str(args.threads)]
    return command + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])


def run_in_subprocess(command: list[str], timeout: float) -> dict:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(ROW_MARKER):
            return json.loads(line[len(ROW_MARKER):])
    if done.returncode < 0:
        return {"error": f"killed by signal {-done.returncode} (out of memory?)"}
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {done.returncode}: {last}"[:200]}


def format_table(rows: list[dict]) -> str:
    header = (f"{'model':9s} {'scope':14s} {'variant':9s} {'trainable':>10s} {'s/step':>8s} {'x ours':>6s} "
              f"{'peak GiB':>8s} {'base GiB':>8s} {'est GiB':>7s} {'enc/step':>8s}  note")
    lines = [header, "-" * len(header)]
    ours = {(r["model"], r["scope"]): r["seconds_per_step"] for r in rows
            if r["variant"] == "ours" and "seconds_per_step" in r}
    for r in rows:
        trainable = f"{r['trainable_params'] / 1e6:9.2f}M"
        start = f"{r['model']:9s} {r['scope']:14s} {r['variant']:9s} {trainable:>10s}"
        if "seconds_per_step" not in r:
            lines.append(f"{start} {'':>8s} {'':>6s} {'':>8s} {'':>8s} {r['est_bytes'] / GIB:7.2f} {'':>8s}  "
                         f"{r['note']}")
            continue
        reference = ours.get((r["model"], r["scope"]))
        ratio = f"{r['seconds_per_step'] / reference:6.2f}" if reference else f"{'':>6s}"
        lines.append(f"{start} {r['seconds_per_step']:8.3f} {ratio} {r['peak_bytes'] / GIB:8.2f} "
                     f"{r['base_bytes'] / GIB:8.2f} {r['est_bytes'] / GIB:7.2f} {r['encodes_per_step']:8.1f}  "
                     f"setup {r['setup_seconds']:.0f} s")
    return "\n".join(lines)


def table_main(args) -> None:
    models = args.model.split(",")
    if args.device.startswith("cuda"):
        gpu = probe_gpu(args)
        budget = gpu["total"]
    else:
        gpu, budget = None, meminfo_bytes("MemAvailable")
    if args.max_gib:
        budget = int(args.max_gib * GIB)
    element_size = torch.empty((), dtype=DTYPES[args.dtype]).element_size()
    print("rgd: one RGD step (forget fwd+bwd, retain fwd+bwd, restricted gradient, Adam), random weights")
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("machine:", machine_line(args, gpu))
    pixels = args.latent * 8
    print(f"settings: {args.device}, {args.dtype}, latent {args.latent}x{args.latent} ({pixels}x{pixels} px), "
          f"batch {args.batch} forget + {args.batch} retain, {args.warmup} warm-up + {args.steps} timed steps "
          f"(median), lambda {RETAIN_WEIGHT}, lr {LEARNING_RATE}, LoRA rank {args.lora_rank}, gradient "
          f"checkpointing {'on' if args.gradient_checkpointing else 'off'}; memory budget {budget / GIB:.1f} GiB; "
          f"each row in a fresh process", flush=True)
    rows = []
    for model in models:
        counts = parameter_counts(model, args.scopes, args.lora_rank)
        print(f"{model}: UNet {counts['unet'] / 1e6:.1f}M params, text encoder(s) {counts['text'] / 1e6:.1f}M",
              flush=True)
        for scope in args.scopes:
            for variant in args.variants:
                row = {"model": model, "scope": scope, "variant": variant, "trainable_params": counts[scope],
                       "est_bytes": estimated_bytes(counts, scope, variant, element_size)}
                if row["est_bytes"] > budget:
                    row["note"] = f"skipped: needs ~{row['est_bytes'] / GIB:.0f} GiB"
                elif args.dry_run:
                    row["note"] = "would run (--dry-run)"
                else:
                    result = run_in_subprocess(row_command(args, model, scope, variant), args.row_timeout)
                    row.update(result)
                    if "error" in result:
                        row["note"] = f"failed: {result['error']}"
                rows.append(row)
                print(f"  {model} {scope} {variant}: " + (row.get("note") or
                      f"{row['seconds_per_step']:.3f} s/step, peak {row['peak_bytes'] / GIB:.2f} GiB"), flush=True)
    print()
    print(format_table(rows))
    memory = ("peak = torch.cuda.max_memory_allocated over the steps; base = allocated after setup" if gpu else
              "peak = the row process's peak RSS (ru_maxrss: imports and model build included); base = RSS after "
              "setup")
    print(f"\n{memory}; est = weights + {BUFFERS_PER_TRAINABLE['ours']} (ours, uncached) or "
          f"{BUFFERS_PER_TRAINABLE['reference']} (reference) buffers per trainable weight, activations excluded; "
          f"enc/step = text-encoder calls per step; x ours = s/step over ours of the same scope.")
    if args.json:
        from rgd_core.files import atomic_write_bytes

        report = {"command": shlex.join([sys.executable, *sys.argv]), "machine": machine_line(args, gpu),
                  "settings": {key: value for key, value in vars(args).items() if key != "json"}, "rows": rows}
        atomic_write_bytes((json.dumps(report, indent=2) + "\n").encode(), args.json)
        print(f"wrote {args.json}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15,sdxl",
                        help="sd15, sdxl, tiny, tiny-sdxl, or a comma list (default sd15,sdxl)")
    parser.add_argument("--scopes", default=",".join(ALL_SCOPES), help="comma list of " + ", ".join(ALL_SCOPES))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--latent", type=int, default=None, help="latent side (default 8 on CPU, 64 on a GPU)")
    parser.add_argument("--batch", type=int, default=1, help="forget batch = retain batch size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row, after the warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (Adam allocates its state)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); on a machine whose cores other jobs keep busy, "
                             "1 is faster and steadier")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--max-gib", type=float, default=0, help="memory budget for skipping rows (default: see doc)")
    parser.add_argument("--row-timeout", type=float, default=3600, help="seconds before a row is given up")
    parser.add_argument("--dry-run", action="store_true", help="list the rows and estimates, run none")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--one-row", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.scopes = [s for s in args.scopes.split(",") if s]
    args.variants = [v for v in args.variants.split(",") if v]
    bad = ([m for m in args.model.split(",") if m not in MODELS] + [s for s in args.scopes if s not in ALL_SCOPES]
           + [v for v in args.variants + [args.variant] if v not in VARIANTS])
    if bad:
        parser.error(f"unknown model, scope or variant: {', '.join(bad)}")
    if args.latent is None:
        args.latent = 64 if args.device.startswith("cuda") else 8
    if min(args.latent, args.batch, args.steps, args.lora_rank) < 1 or args.warmup < 0:
        parser.error("--latent, --batch, --steps and --lora-rank must be at least 1, --warmup at least 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA GPU; use --device cpu")
    return args


def main() -> None:
    args = parse_args()
    if args.one_row:
        args.scope = args.scopes[0]
        one_row_main(args)
    else:
        table_main(args)


if __name__ == "__main__":
    main()
