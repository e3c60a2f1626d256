"""UNet evaluations and seconds per phase of an `rgd unlearn` run on an SD1.5-sized UNet, per data setting.

    .venv/bin/python benchmarks/sd_time_to_erase.py                 # CPU, 8x8 latents (64 px), SD1.5-sized UNet
    python benchmarks/sd_time_to_erase.py --device cuda --latent 64 # GPU, 512 px
    python benchmarks/sd_time_to_erase.py --device cuda --latent 64 --precision bf16   # the same in bf16

The evaluation counts are exact (they follow from the settings: both sides of every sampled pair, the sampler's
steps, classifier-free guidance doubling each call; training = steps x forget + retain batch). The seconds are
*extrapolated*: this script measures the cost of one sampler step of 8 prompts (with guidance: 16 samples through
the UNet; DDIM's, which every sampler shares up to a few tensor operations per step) and of one RGD training step (batch 8 + 8, full UNet, Adam) on a UNet and text encoder built from rgd's
shipped SD1 configs with random weights, then multiplies. A whole default run at SD1.5 size takes hours on this
project's 2-core CPU machine, which is why it is not run end to end here.

Settings (what the data phase samples; training is the paper's 100 steps of 8 + 8 unless the row stops earlier):
  today:   800 pairs, every pair sampled, DDIM 50 steps at CFG 7.5 (rgd unlearn's defaults before drawn pairs)
  drawn:   the same, sampling only the pairs 100 steps of training draw
  fast:    `--preset fast`: the same pairs, DPM++ 2M 20 steps at CFG 7.5, drawn pairs only
  stop-50, fast-stop-50: drawn / fast, when the adaptive stop ends the run at step 50 (where it stops on real SD is
           not measured: the row shows what sampling on demand saves then): only the pairs of the 50 steps run
           are sampled, and training counts the probe's no-gradient batches (2 x (8 + 8) every 5 steps)

--costs SAMPLER_STEP,TRAINING_STEP prints the table from seconds measured before instead of measuring them.

Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd_step import build_models, pipeline_components  # noqa: E402

from rgd_core.apps.unlearn import PRESETS  # noqa: E402
from rgd_core.devices import PRECISIONS  # noqa: E402
from rgd_core.hosts.diffusers_sd import SamplerSettings, sample_latents, unlearn_sd  # noqa: E402
from rgd_core.method.paired_data import PairedData, drawn_pairs, steps_to_sample  # noqa: E402
from rgd_core.method.unlearner import PROBE_BATCHES, STOP_RATIO, UnlearnConfig  # noqa: E402

STEPS, BATCH, SEED = 100, 8, 0
FAST = PRESETS["fast"]()
STOP_EVERY = UnlearnConfig().stop_every
SETTINGS = {
    "today": dict(pairs=800, sampler="ddim", steps=50, all_pairs=True),
    "drawn": dict(pairs=800, sampler="ddim", steps=50, all_pairs=False),
    "fast": dict(pairs=800, sampler=FAST["sampler"], steps=FAST["sample_steps"], all_pairs=False),
    "stop-50": dict(pairs=800, sampler="ddim", steps=50, all_pairs=False, stops_at=50),
    "fast-stop-50": dict(pairs=800, sampler=FAST["sampler"], steps=FAST["sample_steps"], all_pairs=False,
                         stops_at=50),
}


def counts(setting: dict) -> dict:
    """Exact evaluation counts of a setting: sampled pairs, data evaluations, training evaluations, steps run."""
    trained = setting.get("stops_at", STEPS)
    if setting["all_pairs"]:
        sampled = setting["pairs"]
    elif "stops_at" in setting:  # on demand: the pairs of the steps up to the probe that stopped the run
        config = UnlearnConfig(steps=STEPS, stop_ratio=STOP_RATIO, stop_every=STOP_EVERY)
        sampled = len(drawn_pairs(SEED, steps_to_sample(trained - 1, config), setting["pairs"], BATCH))
    else:
        sampled = len(drawn_pairs(SEED, STEPS, setting["pairs"], BATCH))
    probes = trained // STOP_EVERY * PROBE_BATCHES * 2 * BATCH if "stops_at" in setting else 0
    return {"sampled_pairs": sampled, "data": 2 * sampled * setting["steps"] * 2,
            "training": trained * 2 * BATCH + probes, "steps": trained, "probe": probes}


def measure(device: str, latent: int, repeats: int, precision: str = "fp32") -> dict:
    """Seconds per sampler step of 8 prompts (16 UNet samples with guidance) and per RGD step, the forward in
    ``precision`` (``--precision``)."""
    components = pipeline_components("sd15", build_models("sd15", device))
    # no VAE is built (latents are what is sampled); the sampler only asks it for SD's 8x downscale factor
    vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=(128, 256, 512, 512)))
    components = replace(components, vae=vae)
    prompts = [f"a photo of a harbour at dusk, view {i}" for i in range(BATCH)]
    settings = SamplerSettings(steps=2, guidance_scale=7.5, height=latent * 8, width=latent * 8, batch_size=BATCH,
                               precision=precision)
    sample_latents(components, prompts, SEED, settings)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        sample_latents(components, prompts, SEED, settings)
    per_step = (time.perf_counter() - start) / (repeats * settings.steps)
    channels = components.unet.config.in_channels
    latents = torch.randn(BATCH, channels, latent, latent)
    cond = {"encoder_hidden_states": torch.randn(BATCH, 77, components.unet.config.cross_attention_dim)}
    data = PairedData(latents, latents.clone(), cond, {k: v.clone() for k, v in cond.items()})
    train_steps = 1 + repeats
    config = UnlearnConfig(method="rgd", steps=train_steps, lr=1e-5, retain_weight=1.6, seed=SEED)
    records: list = []
    unlearn_sd(components, None, config=config, scope="full", batch_size=BATCH, data=data,
               callbacks=[lambda record: records.append(record)], precision=precision)
    step_seconds = sum(r["seconds"] for r in records[1:]) / repeats  # the first step warms up
    return {"sampler_step": per_step, "training_step": step_seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--latent", type=int, default=8, help="latent side (8 = 64 px; SD1.5's own is 64 = 512 px)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="the forward's precision (rgd unlearn "
                        "--precision)")
    parser.add_argument("--costs", metavar="SAMPLER_STEP,TRAINING_STEP",
                        help="seconds measured before (one sampler step of 8 prompts, one RGD step); measure nothing")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.costs:
        sampler_step, training_step = (float(value) for value in args.costs.split(","))
        cost = {"sampler_step": sampler_step, "training_step": training_step}
    else:
        cost = measure(args.device, args.latent, args.repeats, args.precision)
    where = ("seconds given with --costs" if args.costs else
             f"{args.latent}x{args.latent} latents, {args.device} ({platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.precision})")
    print(f"SD1.5-sized random UNet, {where}: one sampler step of {BATCH} prompts with CFG {cost['sampler_step']:.2f} s; one RGD step of {BATCH} + {BATCH} (full UNet) {cost['training_step']:.2f} s")
    header = (f"{'setting':12s} {'pairs':>6s} {'sampled':>8s} {'sampler':>10s} {'data ev':>9s} {'train ev':>9s} "
              f"{'data s':>8s} {'train s':>8s} {'erase s':>8s} {'speed-up':>8s}")
    print(header)
    print("-" * len(header))
    today = None
    for name, setting in SETTINGS.items():
        n = counts(setting)
        calls = n["data"] / (2 * BATCH)  # sampler steps of 8 prompts: 16 samples each
        data_s = calls * cost["sampler_step"]
        # a probe batch is a forward without backward: about a third of a training step's cost per sample
        train_s = n["steps"] * cost["training_step"] + n["probe"] / (2 * BATCH) * cost["training_step"] / 3
        total = data_s + train_s
        today = today or total
        print(f"{name:12s} {setting['pairs']:6d} {n['sampled_pairs']:8d} {setting['sampler'] + ' ' + str(setting['steps']):>10s} "
              f"{n['data']:9d} {n['training']:9d} {data_s:8.0f} {train_s:8.0f} {total:8.0f} {today / total:7.1f}x")


if __name__ == "__main__":
    main()
