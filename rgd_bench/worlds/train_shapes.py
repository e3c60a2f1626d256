"""Train the shapes text-to-image model and write it to rgd_bench/weights/shapes_t2i.safetensors.

    python -m rgd_bench.worlds.train_shapes [--steps N] [--batch-size 64] [--seed 0] [--out PATH] [--init PATH]

The committed model is one run of the defaults on both cores with the UNet compiled (torch.compile needs a C
compiler; here it made a UNet training step 1.46x faster at one thread, after about three minutes of compiling):

    python -m rgd_bench.worlds.train_shapes --threads 2 --compile

and its flow-matching twin (rgd_bench/weights/shapes_t2i_flow.safetensors) the same with ``--objective flow``.

UNet and text encoder train together from scratch on fresh renders every step (infinite data, captions from
``shapes.random_caption``, none of the held-out phrasings of ``shapes.is_held_out``), with the plain MSE in the
model's parameterisation (v-prediction) at t ~ U{0..999}; 10% of captions are empty so the model learns the
unconditional branch of classifier-free guidance. AdamW under a one-cycle schedule (warm-up, then cosine decay: a
constant lr stalled on the digits world, docs/offline.md section 6) and an EMA of the weights, which is what gets
saved.

Deterministic for a seed on a given machine (CPU, fixed thread count). At the end it samples every held-out
phrasing through the SD backend (DDIM, CFG; shapes_model.SAMPLE_STEPS and GUIDANCE_SCALE) and prints the attribute
accuracy of the samples as judged by the attribute classifier: the check that the model follows its prompts.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rgd_bench.shapes_classifier import load_classifier
from rgd_bench.worlds import ema_update, shapes, shapes_model
from rgd_core.hosts.diffusers_sd import model_call, noise_schedule
from rgd_core.hosts.text_encoding import tokenize
from rgd_core.method.losses import denoising_error


def train(
    steps: int = 3000,
    batch_size: int = 64,
    max_lr: float = 2e-3,
    warmup: float = 0.05,
    ema_decay: float = 0.995,
    caption_dropout: float = 0.1,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
    init: str | Path | None = None,
    compile_unet: bool = False,
    objective: str = "v_prediction",
):
    """Train UNet and text encoder; returns their EMA copies (eval mode). With ``checkpoint``, the EMA weights
    are also saved there every ``checkpoint_every`` steps, so a long run can be judged while it goes on. ``init``
    starts from a saved model instead of random weights (a second stage with its own schedule). ``compile_unet``
    runs the UNet through torch.compile (same maths and weights, faster steps after minutes of compiling)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if init is not None:
        start_from = shapes_model.load_model(init)
        unet, text_encoder = start_from.unet, start_from.text_encoder
    else:
        unet, text_encoder = shapes_model.make_unet(), shapes_model.make_text_encoder()
    unet, text_encoder = unet.train().requires_grad_(True), text_encoder.train().requires_grad_(True)
    tokenizer = shapes_model.make_tokenizer()
    ema_unet = copy.deepcopy(unet).eval().requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).eval().requires_grad_(False)
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    ema_parameters = [*ema_unet.parameters(), *ema_text.parameters()]
    schedule_of = shapes_model.make_components(unet, text_encoder, objective=objective)
    noise_levels, prediction_type = noise_schedule(schedule_of), schedule_of.prediction_type
    call = model_call(schedule_of)
    optimizer = torch.optim.AdamW(parameters, lr=max_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps, pct_start=warmup)
    forward = torch.compile(unet) if compile_unet else unet
    start, losses = time.time(), []
    for step in range(steps):
        images, captions = shapes.training_batch(seed, step, batch_size, caption_dropout)
        ids = tokenize(tokenizer, captions)

        def denoiser(x_t, t):
            return call(forward, x_t, t, {"encoder_hidden_states": text_encoder(ids).last_hidden_state})

        loss = denoising_error(denoiser, images, noise_levels, generator, prediction_type).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        ema_update(ema_parameters, parameters, step, ema_decay)
        losses.append(loss.item())
        if log and (step % 50 == 0 or step == steps - 1):
            rate = (step + 1) / (time.time() - start)
            log(f"step {step:5d}  loss {np.mean(losses[-50:]):.4f}  lr {schedule.get_last_lr()[0]:.2e}  "
                f"{rate:.2f} steps/s  {time.time() - start:.0f} s")
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            shapes_model.save_model(ema_unet, ema_text, checkpoint, {"steps": str(step + 1), "seed": str(seed)},
                                    objective=objective)
    return ema_unet, ema_text


def held_out_prompts(samples_per_pair: int = 2, seed: int = 0) -> tuple[list[str], list[shapes.Attributes], list[int]]:
    """Captions of every held-out (attributes, template) pair, ``samples_per_pair`` phrasings each (random
    synonyms; plain named or left out at random), with their attributes and template indices."""
    rng = np.random.default_rng(seed)
    prompts, wanted, templates = [], [], []
    for attributes, template in shapes.held_out_pairs():
        for _ in range(samples_per_pair):
            values = attributes.as_dict()
            if values["modifier"] == "plain" and rng.random() < shapes.PLAIN_OMITTED:
                values["modifier"] = None
            synonyms = {name: int(rng.integers(0, n)) for name, n in shapes.synonym_counts(values).items() if n}
            prompts.append(shapes.caption(values, template, synonyms))
            wanted.append(attributes)
            templates.append(template)
    return prompts, wanted, templates


def attribute_accuracy(components, classifier, samples_per_pair: int = 2, seed: int = 0, **sampling) -> dict:
    """Per-attribute (and per-template) accuracy of the model's samples of the held-out phrasings."""
    prompts, wanted, templates = held_out_prompts(samples_per_pair, seed)
    images = shapes_model.sample_images(components, prompts, seed=seed, **sampling)
    predicted = classifier.predict(images)
    correct = {name: predicted[name] == np.array([a.label(name) for a in wanted]) for name in shapes.ATTRIBUTES}
    all_correct = np.all(np.stack(list(correct.values())), axis=0)
    templates = np.array(templates)
    return {
        "count": len(prompts),
        "per_attribute": {name: float(ok.mean()) for name, ok in correct.items()},
        "all_four": float(all_correct.mean()),
        "per_template": {int(t): float(all_correct[templates == t].mean()) for t in np.unique(templates)},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--objective", choices=shapes_model.OBJECTIVES, default="v_prediction",
                        help="v_prediction (the committed model) or flow (rectified flow, velocity target)")
    parser.add_argument("--out", default=None, help="default: the committed model's path for the objective")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--init", default=None, help="start from this saved model instead of random weights")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (faster steps, slow start)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.out is None:
        args.out = str(shapes_model.FLOW_MODEL_PATH if args.objective == "flow" else shapes_model.MODEL_PATH)
    start = time.time()
    unet, text_encoder = train(args.steps, args.batch_size, args.lr, ema_decay=args.ema_decay, seed=args.seed,
                               checkpoint=args.out, checkpoint_every=args.checkpoint_every, init=args.init,
                               compile_unet=args.compile, objective=args.objective)
    seconds = time.time() - start
    print(f"trained {args.steps} steps in {seconds:.0f} s ({args.steps / seconds:.2f} steps/s)")
    metadata = {"steps": str(args.steps), "seed": str(args.seed), "batch_size": str(args.batch_size),
                "lr": str(args.lr), "ema_decay": str(args.ema_decay), "train_seconds": f"{seconds:.0f}",
                "init": str(args.init), "compile": str(args.compile), "threads": str(args.threads)}
    shapes_model.save_model(unet, text_encoder, args.out, metadata, objective=args.objective)
    print(f"wrote {args.out}")
    report(args.out)


def report(path) -> None:
    """Print the attribute accuracy of the saved model (after its float16 round trip) on the held-out phrasings."""

    components = shapes_model.load_model(path)
    result = attribute_accuracy(components, load_classifier())
    print(f"held-out phrasings: {result['count']} samples, DDIM {shapes_model.SAMPLE_STEPS} steps, "
          f"CFG {shapes_model.GUIDANCE_SCALE}")
    print("accuracy " + "  ".join(f"{name} {value:.3f}" for name, value in result["per_attribute"].items())
          + f"  all four {result['all_four']:.3f}")
    print("all four, per template " + "  ".join(f"{t}: {v:.2f}" for t, v in result["per_template"].items()))


if __name__ == "__main__":
    main()
