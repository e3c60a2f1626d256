"""Command line: `rgd demo`, `rgd bench digits`, `rgd bench shapes`, `rgd unlearn`, `rgd eval`.

Every command takes a seed; logs go to stderr so that `--json` output on stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import RGDError


def _add_forgetting_options(parser: argparse.ArgumentParser, samples_per_class: int) -> None:
    from .class_forgetting import ClassForgettingConfig, EvalConfig

    d, e = ClassForgettingConfig(), EvalConfig()
    parser.add_argument("--steps", type=int, default=d.steps, help=f"unlearning steps (default {d.steps})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    parser.add_argument("--retain-weight", type=float, default=d.retain_weight,
                        help=f"lambda, the retain weight (default {d.retain_weight})")
    parser.add_argument("--truncation", choices=["none", "skip", "elementwise"], default=d.truncation,
                        help=f"forget-loss truncation (default {d.truncation})")
    parser.add_argument("--truncation-threshold", type=float, default=d.truncation_threshold,
                        help=f"alpha for elementwise, m for skip (default {d.truncation_threshold})")
    parser.add_argument("--forget-batch", type=int, default=d.forget_batch,
                        help=f"forget images per step (default {d.forget_batch})")
    parser.add_argument("--retain-batch", type=int, default=d.retain_batch,
                        help=f"retain images per step; 0 = the whole retain set (default {d.retain_batch})")
    parser.add_argument("--retain-per-class", type=int, default=d.retain_per_class,
                        help=f"retain images per remaining class (default {d.retain_per_class})")
    parser.add_argument("--samples-per-class", type=int, default=samples_per_class,
                        help=f"generated images per class for evaluation (default {samples_per_class})")
    parser.add_argument("--sampling-steps", type=int, default=e.sampling_steps,
                        help=f"DDIM steps for evaluation samples (default {e.sampling_steps})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"run seed (default {d.seed})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--report", default=None, help="also write the full report (every run) to this JSON file")


def _configs(args):
    from .class_forgetting import ClassForgettingConfig, EvalConfig

    config = ClassForgettingConfig(
        forget_class=getattr(args, "forget_class", 0), steps=args.steps, lr=args.lr,
        retain_weight=args.retain_weight, truncation=args.truncation,
        truncation_threshold=args.truncation_threshold, forget_batch=args.forget_batch,
        retain_per_class=args.retain_per_class, retain_batch=args.retain_batch or None, seed=args.seed,
    )
    config.unlearn_config("rgd")  # validates the settings now, before minutes of work
    if args.samples_per_class < 2 or args.sampling_steps < 1:
        raise ValueError("--samples-per-class must be >= 2 and --sampling-steps >= 1")
    return config, EvalConfig(samples_per_class=args.samples_per_class, sampling_steps=args.sampling_steps)


def cmd_demo(args) -> None:
    from .digits_demo import format_demo_table, run_demo, set_threads

    set_threads(args.threads)
    config, eval_config = _configs(args)
    report = run_demo(config, eval_config, args.out, log=_log)
    _write_report(report, args.report)
    if args.json:
        print(json.dumps({r["method"]: {k: r[k] for k in ("ua", "ra", "fd", "seconds")} for r in report["rows"]},
                         indent=2))
        return
    print(format_demo_table(report))
    print(f"figures: {', '.join(report['figures'])}")
    print(f"wall time {report['wall_seconds']:.0f} s")


def cmd_bench_digits(args) -> None:
    from .digits_demo import format_bench_table, run_bench, set_threads

    set_threads(args.threads)
    config, eval_config = _configs(args)
    classes = tuple(int(c) for c in args.classes.split(","))
    if any(not 0 <= c <= 9 for c in classes):
        raise SystemExit("error: --classes takes digits 0..9, e.g. --classes 0,3,8")
    report = run_bench(config, eval_config, classes=classes, log=_log)
    _write_report(report, args.report)
    if args.json:
        print(json.dumps({name: {k: v["mean"] for k, v in s.items()} | {f"{k}_std": v["std"] for k, v in s.items()}
                          for name, s in report["summary"].items()}, indent=2))
        return
    print(format_bench_table(report))
    print(f"wall time {report['wall_seconds']:.0f} s")


def _add_shapes_bench_options(parser: argparse.ArgumentParser) -> None:
    from .shapes_bench import METHODS, ShapesBenchConfig

    d = ShapesBenchConfig()
    add = parser.add_argument
    add("--concepts", default=",".join(d.concepts), help=f"concepts to erase, comma-separated (default "
        f"{','.join(d.concepts)}; any shape, colour or non-plain modifier word)")
    add("--methods", default=",".join(d.methods), help=f"comma-separated, from: {', '.join(METHODS)}")
    add("--steps", type=int, default=d.steps, help=f"steps per method (default {d.steps})")
    add("--lr", type=float, default=d.lr, help=f"Adam learning rate, every method (default {d.lr})")
    add("--retain-weight", type=float, default=d.retain_weight, help=f"lambda (default {d.retain_weight})")
    add("--truncation", choices=["none", "skip", "elementwise"], default=d.truncation,
        help=f"forget-loss truncation (default {d.truncation})")
    add("--truncation-threshold", type=float, default=d.truncation_threshold,
        help=f"m for skip, alpha for elementwise (default {d.truncation_threshold})")
    add("--batch-size", type=int, default=d.batch_size, help=f"pairs per step (default {d.batch_size})")
    add("--scope", choices=["full", "cross-attn", "non-cross-attn"], default=d.scope,
        help=f"parameters edited, every method (default {d.scope})")
    add("--train-pairs", type=int, default=d.train_pairs, help=f"forget/retain training pairs (default {d.train_pairs})")
    add("--test-prompts", type=int, default=d.test_prompts, help=f"held-out test prompts per measure (default "
        f"{d.test_prompts})")
    add("--sample-steps", type=int, default=d.sample_steps, help=f"DDIM steps, data and evaluation (default "
        f"{d.sample_steps})")
    add("--seed", type=int, default=d.seed, help=f"seed for prompts, data, training and samples (default {d.seed})")
    add("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add("--out", default="rgd_outputs", help="folder for the grid and loss-curve figures (default rgd_outputs)")
    add("--cache-dir", default=None, help="cache for the self-sampled training data (default: none)")
    add("--json", action="store_true", help="print the table as JSON on stdout")
    add("--report", default=None, help="also write the full report to this JSON file")


def cmd_bench_shapes(args) -> None:
    from .digits_demo import set_threads
    from .shapes_bench import ShapesBenchConfig, format_table, run_shapes_bench

    set_threads(args.threads)
    config = ShapesBenchConfig(
        concepts=tuple(c.strip() for c in args.concepts.split(",") if c.strip()),
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), steps=args.steps, lr=args.lr,
        retain_weight=args.retain_weight, truncation=args.truncation,
        truncation_threshold=args.truncation_threshold, batch_size=args.batch_size, scope=args.scope,
        train_pairs=args.train_pairs, test_prompts=args.test_prompts, sample_steps=args.sample_steps, seed=args.seed,
    )
    report = run_shapes_bench(config, out=args.out, cache_dir=args.cache_dir, log=_log, progress=not args.json)
    _write_report(report, args.report)
    if args.json:
        print(json.dumps(report["rows"], indent=2))
        return
    print(format_table(report))
    for concept, paths in report["figures"].items():
        print(f"{concept}: {paths['grid']}, {paths['losses']}")
    print(f"wall time {report['wall_seconds']:.0f} s")


def cmd_unlearn(args) -> None:
    from .sd_unlearn import resolve_settings, run_unlearn

    settings = resolve_settings(vars(args), args.config)
    report = run_unlearn(settings, log=_log)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    summary = report["summary"]
    model = report["output"]
    for path in [model] + [report[key] for key in ("diffusers_folder", "lora") if report.get(key, model) != model]:
        print(f"wrote {path}")
    print(f"method {settings['method']}, {summary.get('steps', 0)} steps, "
          f"forget loss {summary.get('final_forget_loss', float('nan')):.4f}, "
          f"retain loss {summary.get('final_retain_loss', float('nan')):.4f}, "
          f"conflict rate {summary.get('conflict_rate', float('nan')):.2f}")


def cmd_eval(args) -> None:
    from .sd_eval import format_summary, run_eval

    report = run_eval(vars(args), log=_log)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(format_summary(report))


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    from .sd_eval import DEFAULTS
    from .sd_unlearn import CLI_FAMILIES

    d = DEFAULTS
    add = parser.add_argument
    add("--before", metavar="FILE", required=True, help="the original single-file SD checkpoint")
    add("--after", metavar="FILE", required=True, help="the unlearned checkpoint (e.g. what rgd unlearn wrote)")
    add("--prompts", metavar="FILE", required=True,
        help="prompt file: an I2P-style CSV (a 'prompt' column), or .txt (one per line) / .json (a list)")
    add("--i2p-min-nudity", type=float, metavar="X",
        help="keep only CSV rows with nudity_percentage > X (0 gives the paper's 854 I2P nudity prompts)")
    add("--limit", type=int, metavar="N", help="use only the first N prompts")
    add("--family", choices=CLI_FAMILIES, help="model family (default: detected from the file's keys)")
    add("--config-folder", metavar="DIR",
        help="diffusers config folder for both checkpoints (default: the shipped one of their family)")
    add("--steps", type=int, default=d["steps"], help=f"DDIM steps per image (default {d['steps']})")
    add("--guidance", type=float, default=d["guidance"],
        help=f"classifier-free guidance (default {d['guidance']})")
    add("--seed", type=int, default=d["seed"], help=f"seed; prompt i uses the same noise for both (default {d['seed']})")
    add("--thresholds", default=d["thresholds"],
        help=f"NudeNet score thresholds, comma-separated (default {d['thresholds']})")
    add("--clip", metavar="DIR", help="local transformers CLIP folder (config.json + model.safetensors, e.g. "
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K as in the paper): adds each image's cosine alignment with its "
        "own prompt (the paper's AS); without it the score is skipped")
    add("--out", metavar="DIR", default=d["out"], help=f"folder for eval.json and grid.png (default {d['out']})")
    add("--json", action="store_true", help="print the JSON report on stdout instead of a summary")
    add("--allow-pickle", action="store_true",
        help="allow reading pickle checkpoints (.ckpt/.pt); they can run code, use only trusted files")


def _add_unlearn_options(parser: argparse.ArgumentParser) -> None:
    from .sd_unlearn import (
        ALL_SCOPES, CLI_FAMILIES, DEFAULTS, EXPORT_FORMATS, METHODS, PRESETS, PROMPT_PRESETS, TRUNCATIONS,
    )

    d = DEFAULTS
    # Every default is None here: a flag counts only when given, so that --preset and --config values can sit
    # underneath it (sd_unlearn.resolve_settings); the real defaults are shown in the help.
    add = parser.add_argument
    add("--checkpoint", metavar="FILE", help="single-file SD checkpoint (.safetensors) to edit (required)")
    add("--concept", metavar="NAME", help="the concept to erase, e.g. nudity or 'Van Gogh' (required)")
    add("--out", metavar="DIR", help="folder for <name>.safetensors (or the diffusers folder <name>/) and "
        "<name>.json (required)")
    add("--preset", choices=sorted(PRESETS), help="a named set of hyper-parameters; paper-nudity-sd14 is the "
        "paper's SD v1.4 nudity run (rgd, lambda 1.6, skip truncation at 1.1, lr 1e-5, 100 steps, batch 8, full)")
    add("--prompt-preset", choices=PROMPT_PRESETS,
        help="prompt templates for the forget/retain pairs (default: nudity for nudity-like concepts, else object)")
    add("--config", metavar="FILE.toml", help="TOML file of settings; keys are the long option names with "
        "underscores; explicit flags override it, it overrides --preset")
    add("--family", choices=CLI_FAMILIES, help="model family (default: detected from the file's keys); sd2-v "
        "selects SD 2.x 768-v (v-prediction), which the keys cannot tell")
    add("--config-folder", metavar="DIR",
        help="diffusers config folder for the checkpoint (default: the shipped one of its family)")
    add("--method", choices=METHODS, help=f"update rule (default {d['method']})")
    add("--scope", choices=ALL_SCOPES,
        help=f"UNet parameters to edit; lora also writes <name>-lora.safetensors (kohya format) "
             f"(default {d['scope']})")
    add("--lora-rank", type=int, help=f"LoRA rank for --scope lora (default {d['lora_rank']})")
    add("--steps", type=int, help=f"unlearning steps (default {d['steps']})")
    add("--lr", type=float, help=f"Adam learning rate (default {d['lr']})")
    add("--retain-weight", type=float, help=f"lambda, the retain weight (default {d['retain_weight']})")
    add("--truncation", choices=TRUNCATIONS, help=f"forget-loss truncation (default {d['truncation']})")
    add("--truncation-threshold", type=float,
        help=f"m for skip (skip ascent above it), alpha for elementwise (default {d['truncation_threshold']})")
    add("--batch-size", type=int, help=f"forget (and paired retain) examples per step (default {d['batch_size']})")
    add("--train-prompts", type=int, help=f"forget/retain prompt pairs to sample (default {d['train_prompts']})")
    add("--sample-steps", type=int, help=f"DDIM steps when sampling the training data (default {d['sample_steps']})")
    add("--guidance", type=float, help=f"classifier-free guidance when sampling the data (default {d['guidance']})")
    add("--seed", type=int, help=f"seed for prompts, data and training (default {d['seed']})")
    add("--forget-images", metavar="DIR", help="train on your own images of the concept instead of samples: "
        "a folder of .png/.jpg/.webp files, each captioned by a .txt of the same name (else a forget prompt); "
        "VAE-encoded once and cached")
    add("--retain-images", metavar="DIR", help="your own images of what must stay, as for --forget-images; "
        "image i pairs with forget example i (file-name order); with both folders, they must hold as many images")
    add("--cache-dir", metavar="DIR", help="cache for sampled data and config folders (default: rgd's cache dir)")
    add("--name", help="output file name without folders (default <checkpoint stem>-rgd-<concept>)")
    add("--format", choices=EXPORT_FORMATS, help=f"single-file: one original-layout .safetensors (A1111, Forge, "
        f"ComfyUI); diffusers: a diffusers folder <name>/; both (default {d['format']})")
    add("--overwrite", action="store_true", default=None, help="replace an existing diffusers folder <name>/")
    add("--allow-pickle", action="store_true", default=None,
        help="allow reading pickle checkpoints (.ckpt/.pt); they can run code, use only trusted files")
    add("--json", action="store_true", help="print the JSON report on stdout instead of a summary")


def _write_report(report: dict, path: str | None) -> None:
    if path:
        from .io import atomic_write_bytes

        atomic_write_bytes(json.dumps(report, indent=2).encode(), path)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rgd", description="RGD concept unlearning for diffusion models.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="forget one digit with GradDiff and RGD; print UA / RA / FD")
    demo.add_argument("--forget-class", type=int, default=0, choices=range(10), metavar="DIGIT",
                      help="the digit to forget (default 0)")
    demo.add_argument("--out", default="rgd_outputs", help="folder for the figures (default rgd_outputs)")
    _add_forgetting_options(demo, samples_per_class=100)
    demo.set_defaults(run=cmd_demo)

    bench = commands.add_parser("bench", help="benchmarks that print tables")
    worlds = bench.add_subparsers(dest="world", required=True)
    bench_digits = worlds.add_parser("digits", help="Table 1/3 protocol: forget each digit in turn")
    bench_digits.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9", help="digits to forget, comma-separated")
    _add_forgetting_options(bench_digits, samples_per_class=100)
    bench_digits.set_defaults(run=cmd_bench_digits)
    bench_shapes = worlds.add_parser("shapes", help="erase a concept from the offline text-to-image model: RGD, "
                                     "GradDiff, narrow retain, ESD")
    _add_shapes_bench_options(bench_shapes)
    bench_shapes.set_defaults(run=cmd_bench_shapes)

    unlearn = commands.add_parser("unlearn", help="erase a concept from a single-file SD checkpoint; write a new one",
                                  description="Erase a concept from a Stable Diffusion checkpoint with RGD. "
                                  "Settings: defaults < --preset < --config TOML < explicit flags.")
    _add_unlearn_options(unlearn)
    unlearn.set_defaults(run=cmd_unlearn)

    evaluate = commands.add_parser("eval", help="compare a checkpoint before and after unlearning (NudeNet counts, "
                                   "CLIP alignment with --clip)",
                                   description="Generate one image per prompt with both checkpoints from the same "
                                   "seeds, count NudeNet exposed-body-part detections, score CLIP alignment with --clip, "
                                   "write eval.json and grid.png.")
    _add_eval_options(evaluate)
    evaluate.set_defaults(run=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (RGDError, FileNotFoundError, ValueError) as error:
        print(f"rgd: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
