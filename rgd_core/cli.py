"""Command line: `rgd demo`, `rgd bench digits`, `rgd bench shapes`, `rgd unlearn`, `rgd eval`, `rgd ui`.

Every command takes a seed; logs go to stderr so that `--json` output on stdout stays machine-readable.

Errors never end in a traceback (unless `--debug`): bad input is one line and exit code 2, before any model
loads; a failure while running (a full disk, a NaN) is one line and exit 1; Ctrl-C exits 130 (SIGTERM 143). During
`rgd unlearn` training the first Ctrl-C or SIGTERM finishes the current step, saves the resumable state and says how
to resume; a second one stops at once.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from rgd_core.apps import evaluation, unlearn
from rgd_core.edits.scopes import SCOPES
from rgd_core.errors import NonFiniteError, RGDError, RGDInputError, UnlearningCancelled
from rgd_core.files import atomic_write_bytes
from rgd_core.hosts.diffusers_sd import SAMPLERS
from rgd_core.method.unlearner import FLOW_STOP_RATIO, FORGET_OBJECTIVES, PER_CONCEPT_FROM, STOP_RATIO
from rgd_core.preflight import check_not_existing, check_numbers, check_output_folder

EXIT_INPUT, EXIT_FAILURE, EXIT_INTERRUPT = 2, 1, 130


def _add_forgetting_options(parser: argparse.ArgumentParser, samples_per_class: int) -> None:
    from rgd_bench.class_forgetting import ClassForgettingConfig, EvalConfig

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
    parser.add_argument("--stop-ratio", type=float, default=d.stop_ratio,
                        help="adaptive stop: finish once the probe's forget loss is this many times the retain loss, "
                        "--steps being the cap (default 0: the paper's fixed steps)")
    parser.add_argument("--stop-every", type=int, default=d.stop_every,
                        help=f"probe the adaptive stop every this many steps (default {d.stop_every})")
    parser.add_argument("--samples-per-class", type=int, default=samples_per_class,
                        help=f"generated images per class for evaluation (default {samples_per_class})")
    parser.add_argument("--sampling-steps", type=int, default=e.sampling_steps,
                        help=f"DDIM steps for evaluation samples (default {e.sampling_steps})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"run seed (default {d.seed})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--report", default=None, help="also write the full report (every run) to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace existing figures and report")


def _configs(args):
    from rgd_bench.class_forgetting import ClassForgettingConfig, EvalConfig

    check_numbers(vars(args), {"steps": (1, None), "lr": (None, 0.0), "retain_weight": (0.0, None),
                               "truncation_threshold": (None, 0.0), "forget_batch": (1, None),
                               "retain_batch": (0, None), "retain_per_class": (1, None),
                               "samples_per_class": (2, None), "sampling_steps": (1, None), "seed": (0, None),
                               "threads": (1, None), "stop_every": (1, None)})
    config = ClassForgettingConfig(
        forget_class=getattr(args, "forget_class", 0), steps=args.steps, lr=args.lr,
        retain_weight=args.retain_weight, truncation=args.truncation,
        truncation_threshold=args.truncation_threshold, forget_batch=args.forget_batch,
        retain_per_class=args.retain_per_class, retain_batch=args.retain_batch or None, seed=args.seed,
        stop_ratio=args.stop_ratio, stop_every=args.stop_every,
    )
    config.unlearn_config("rgd")  # validates the settings now, before minutes of work
    return config, EvalConfig(samples_per_class=args.samples_per_class, sampling_steps=args.sampling_steps)


def _check_outputs(args, figures: list[str]) -> None:
    """The figures and report a demo or bench will write: a writable --out, and nothing replaced unless asked."""
    paths = []
    if figures:
        out = check_output_folder(args.out)
        paths += [out / name for name in figures]
    if args.report:
        check_output_folder(Path(args.report).parent or Path("."), "--report")
        paths.append(Path(args.report))
    check_not_existing(paths, args.overwrite)


def cmd_demo(args) -> None:
    from rgd_bench.digits_demo import format_demo_table, run_demo, set_threads

    config, eval_config = _configs(args)
    _check_outputs(args, [f"digits_forget{config.forget_class}_{kind}.png" for kind in ("samples", "losses")])
    set_threads(args.threads)
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
    from rgd_bench.digits_demo import METHODS, format_bench_table, run_bench, set_threads

    config, eval_config = _configs(args)
    try:
        classes = tuple(int(c) for c in args.classes.split(","))
    except ValueError:
        classes = (-1,)
    if not classes or any(not 0 <= c <= 9 for c in classes):
        raise RGDInputError(f"--classes takes digits 0..9, e.g. --classes 0,3,8, not {args.classes!r}.")
    methods = _method_names(args.methods, METHODS)
    unknown = [name for name in methods if name not in METHODS]
    if not methods or unknown:
        raise RGDInputError(f"--methods takes names from {', '.join(METHODS)} (comma-separated), not {args.methods!r}.")
    _check_outputs(args, [])
    set_threads(args.threads)
    report = run_bench(config, eval_config, classes=classes, methods=methods, log=_log)
    _write_report(report, args.report)
    if args.json:
        print(json.dumps({name: {k: v["mean"] for k, v in s.items()} | {f"{k}_std": v["std"] for k, v in s.items()}
                          for name, s in report["summary"].items()}, indent=2))
        return
    print(format_bench_table(report))
    print(f"wall time {report['wall_seconds']:.0f} s")


def _method_names(text: str, known) -> tuple[str, ...]:
    """Comma-separated row names, where a known name may itself hold a comma ("RGD, Adam metric")."""
    names: list[str] = []
    for part in (piece.strip() for piece in text.split(",")):
        if names and f"{names[-1]}, {part}" in known:
            names[-1] = f"{names[-1]}, {part}"
        elif part:
            names.append(part)
    return tuple(names)


def _add_shapes_bench_options(parser: argparse.ArgumentParser) -> None:
    from rgd_bench.shapes_bench import JOINT_ABLATIONS, JUDGE_STOP, METHODS, MODELS, ShapesBenchConfig

    d = ShapesBenchConfig()
    add = parser.add_argument
    add("--concepts", default=",".join(d.concepts), help=f"concepts to erase, comma-separated (default "
        f"{','.join(d.concepts)}; any shape, colour or non-plain modifier word; 'striped+triangle' erases both in "
        "one run, beside RGD run on each in turn)")
    add("--methods", default="", help=f"comma-separated, from: {', '.join(METHODS)} (default: all the model "
        f"takes; ESD not on the flow model), {JUDGE_STOP!r} (the classifier decides the stop, --stop-share); with "
        f"joint concepts also the ablations {', '.join(map(repr, JOINT_ABLATIONS))}")
    add("--model", choices=sorted(MODELS), default=d.model, help="the shapes model: v_prediction (default) or flow "
        "(the same world trained with the rectified-flow objective, as SD3 and Flux are)")
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
    add("--data-sampler", choices=sorted(SAMPLERS), default=d.data_sampler,
        help=f"sampler of the self-sampled training data (default {d.data_sampler})")
    add("--data-steps", type=int, default=None, help="that sampler's steps (default: --sample-steps)")
    add("--stop-ratio", type=float, default=None, help="adaptive stop: finish once the probe's forget loss "
        f"reaches this times its retain loss, --steps being the cap (0: fixed steps; default {STOP_RATIO:g}, "
        f"{FLOW_STOP_RATIO:g} for the flow model)")
    add("--stop-every", type=int, default=d.stop_every, help=f"probe every N steps (default {d.stop_every})")
    add("--stop-share", type=float, default=d.stop_share, help=f"{JUDGE_STOP}: stop once at most this share of the "
        f"judge's probe shows the concept (default {d.stop_share})")
    add("--neighbour-share", type=float, default=d.neighbour_share, help="share of retain prompts naming one of the "
        f"concept's neighbours instead of dropping it (default {d.neighbour_share})")
    add("--seed", type=int, default=d.seed, help=f"seed for prompts, data, training and samples (default {d.seed})")
    add("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add("--out", default="rgd_outputs", help="folder for the grid and loss-curve figures (default rgd_outputs)")
    add("--cache-dir", default=None, help="cache for the self-sampled training data (default: none)")
    add("--json", action="store_true", help="print the table as JSON on stdout")
    add("--report", default=None, help="also write the full report to this JSON file")
    add("--overwrite", action="store_true", help="replace existing figures and report")


def cmd_bench_shapes(args) -> None:
    from rgd_bench.digits_demo import set_threads
    from rgd_bench.shapes_bench import ShapesBenchConfig, format_table, run_shapes_bench

    check_numbers(vars(args), {"steps": (1, None), "lr": (None, 0.0), "retain_weight": (0.0, None),
                               "truncation_threshold": (None, 0.0), "batch_size": (1, None), "train_pairs": (1, None),
                               "test_prompts": (1, None), "sample_steps": (1, None), "seed": (0, None),
                               "threads": (1, None), "data_steps": (1, None), "stop_every": (1, None),
                               "neighbour_share": (0.0, None)})
    config = ShapesBenchConfig(
        concepts=tuple(c.strip() for c in args.concepts.split(",") if c.strip()),
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), model=args.model, steps=args.steps,
        lr=args.lr,
        retain_weight=args.retain_weight, truncation=args.truncation,
        truncation_threshold=args.truncation_threshold, batch_size=args.batch_size, scope=args.scope,
        train_pairs=args.train_pairs, test_prompts=args.test_prompts, sample_steps=args.sample_steps, seed=args.seed,
        data_sampler=args.data_sampler, data_steps=args.data_steps, stop_ratio=args.stop_ratio,
        stop_every=args.stop_every, stop_share=args.stop_share, neighbour_share=args.neighbour_share,
    )
    _check_outputs(args, [f"shapes_{concept}_{kind}.png" for concept in config.concepts
                          for kind in ("grid", "losses")])
    set_threads(args.threads)
    report = run_shapes_bench(config, out=args.out, cache_dir=args.cache_dir, log=_log, progress=not args.json)
    _write_report(report, args.report)
    if args.json:
        print(json.dumps(report["rows"], indent=2))
        return
    print(format_table(report))
    for concept, paths in report["figures"].items():
        print(f"{concept}: {paths['grid']}, {paths['losses']}")
    print(f"wall time {report['wall_seconds']:.0f} s")


class GracefulStop:
    """SIGINT / SIGTERM handling for a run that can save its state: while ``training`` is set, the first signal
    only asks the loop to stop after the current step (``__call__`` turns true); before or after training, or on a
    second signal, the run is interrupted at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.training = False
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "GracefulStop":
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test runner thread): keep Python's default
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        first = self.signal is None
        self.signal = signum
        if self.training and first:
            _log("rgd: stopping after this step and saving the state (press Ctrl-C again to quit at once)")
            return
        raise KeyboardInterrupt

    def __call__(self) -> bool:
        return self.signal is not None

    def phase(self, name: str) -> None:
        self.training = name == "train"


def cmd_unlearn(args) -> None:
    settings = unlearn.resolve_settings(vars(args), args.config)
    with GracefulStop() as stop:
        args.stop = stop
        report = unlearn.run_unlearn(settings, log=_log, should_stop=stop, on_phase=stop.phase)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    summary = report["summary"]
    model = report["output"]
    for path in [model] + [report[key] for key in ("diffusers_folder", "lora", "diff")
                           if report.get(key, model) != model]:
        print(f"wrote {path}")
    print(f"method {settings['method']}, {summary.get('steps', 0)} steps, "
          f"forget loss {summary.get('final_forget_loss', float('nan')):.4f}, "
          f"retain loss {summary.get('final_retain_loss', float('nan')):.4f}, "
          f"conflict rate {summary.get('conflict_rate', float('nan')):.2f}")
    if summary.get("stop_reason"):
        print(f"ended: {summary['stop_reason']}")
    print("time: " + ", ".join(f"{name} {values['seconds']:.1f} s ({values['evaluations']} UNet evaluations)"
                               for name, values in report.get("phases", {}).items()))


def cmd_ui(args) -> None:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise RGDInputError("rgd ui needs Gradio, an optional extra: pip install 'rgd[ui]' (or pip install gradio).")
    check_numbers(vars(args), {"port": (1, None)}, integers=["port"])
    from rgd_ui.standalone import serve

    print(f"rgd ui: http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    serve(args.checkpoints, args.loras, args.cache_dir, host=args.host, port=args.port)


def cmd_eval(args) -> None:
    report = evaluation.run_eval(vars(args), log=_log)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(evaluation.format_summary(report))


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    d = evaluation.DEFAULTS
    add = parser.add_argument
    add("--before", metavar="FILE", required=True, help="the original single-file SD checkpoint")
    add("--after", metavar="FILE", required=True, help="the unlearned checkpoint (e.g. what rgd unlearn wrote)")
    add("--prompts", metavar="FILE", required=True,
        help="prompt file: an I2P-style CSV (a 'prompt' column), or .txt (one per line) / .json (a list)")
    add("--i2p-min-nudity", type=float, metavar="X",
        help="keep only CSV rows with nudity_percentage > X (0 gives the paper's 854 I2P nudity prompts)")
    add("--limit", type=int, metavar="N", help="use only the first N prompts")
    add("--family", choices=unlearn.CLI_FAMILIES, help="model family (default: detected from the file's keys)")
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
    add("--overwrite", action="store_true", help="replace an existing eval.json / grid.png in --out")
    add("--allow-pickle", action="store_true",
        help="allow reading pickle checkpoints (.ckpt/.pt); they can run code, use only trusted files")


def _add_unlearn_options(parser: argparse.ArgumentParser) -> None:
    d = unlearn.DEFAULTS
    # Every default is None here: a flag counts only when given, so that --preset and --config values can sit
    # underneath it (apps.unlearn.resolve_settings); the real defaults are shown in the help.
    add = parser.add_argument
    add("--checkpoint", metavar="FILE", help="single-file checkpoint (.safetensors) to edit: SD1/SD2/SDXL, or a "
        "Flux.1 / SD3.x diffusion model with --text-encoders (required)")
    add("--concept", metavar="NAME", action="append", help="the concept to erase, e.g. nudity or 'Van Gogh' "
        "(required); repeat it to erase several in one run")
    add("--out", metavar="DIR", help="folder for <name>.safetensors (or the diffusers folder <name>/) and "
        "<name>.json (required)")
    add("--preset", choices=sorted(unlearn.PRESETS), help="a named set of hyper-parameters; paper-nudity-sd14 is the "
        "paper's SD v1.4 nudity run (rgd, lambda 1.6, skip truncation at 1.1, lr 1e-5, 100 steps, batch 8, full); "
        "fast samples the data with DPM++ 2M at 20 steps instead of DDIM at 50 (README: Time to erase)")
    add("--prompt-preset", choices=unlearn.PROMPT_PRESETS,
        help="prompt templates for the forget/retain pairs (default: nudity for nudity-like concepts, else object; "
             "custom with --custom-template)")
    add("--synonyms", metavar="WORDS", help="comma-separated other names of the concept (removed from retain "
        "prompts too), e.g. 'Vincent van Gogh'")
    add("--custom-template", metavar="TEXT", help="your own forget-prompt template with {concept} and {slot} "
        "names, e.g. 'a photo of {concept} {place}' (implies --prompt-preset custom)")
    add("--slot", action="append", metavar="'NAME: WORD, WORD'",
        help="the words of one slot of --custom-template; repeat for each slot")
    add("--neighbours", metavar="WORDS", help="comma-separated concepts next to this one that must stay, e.g. "
        "'Claude Monet, Paul Cezanne' (default: the prompt preset's own list; the object preset has none)")
    add("--neighbour-share", type=float, help=f"share of retain prompts naming a neighbour instead of dropping the "
        f"concept; 0: none (default {d['neighbour_share']})")
    add("--stop-ratio", type=float, help=f"adaptive stop: finish once the forget loss on a fixed probe reaches this "
        f"times the retain loss (for every concept, when several are given), --steps being the cap; 0: always --steps "
        f"(default {STOP_RATIO:g}; {FLOW_STOP_RATIO:g} for Flux.1 and SD3.x)")
    add("--stop-every", type=int, help=f"probe every N steps for the adaptive stop (default {d['stop_every']})")
    add("--forget-objective", choices=tuple(FORGET_OBJECTIVES), help="with several --concept: one-mean ascends "
        "one forget mean over the batch, per-concept the sum of each concept's own mean; auto (default): per-concept "
        f"with --judge and {PER_CONCEPT_FROM} concepts or more, else one-mean (measured on the shapes bench; README, "
        "'Several concepts')")
    add("--judge", choices=unlearn.JUDGES, help="let a judge of the model's own images decide the adaptive stop "
        "instead of the loss ratio: every --stop-every steps the model draws --judge-prompts held-out forget prompts "
        "per concept, and the run ends once at most --stop-share of them show it (--steps still caps it). clip: the "
        "image is closer in CLIP to its forget prompt than to the retain twin (any concept; --judge-clip); nudenet: "
        "an exposed body part scored above 0.6 (nudity only)")
    add("--judge-clip", metavar="DIR", help="local transformers CLIP folder (config.json + model.safetensors) for "
        "--judge clip, e.g. the one given to rgd eval --clip")
    add("--judge-prompts", type=int, help=f"probe images per concept for --judge (default {d['judge_prompts']})")
    add("--stop-share", type=float, help=f"with --judge: stop once at most this share of each concept's probe images "
        f"shows it (default {d['stop_share']}: none)")
    add("--device", help="where to sample and train: auto (a CUDA GPU when torch sees one, else the CPU), cpu, "
        "cuda, cuda:N or mps (default auto)")
    add("--precision", choices=unlearn.PRECISIONS, help="how the model's forward computes while sampling and "
        "training: fp32, or bf16 (bfloat16 autocast for GPUs that have it; the weights, the edit and Adam stay "
        "float32; on a CPU it is usually slower) (default fp32)")
    add("--gradient-checkpointing", action="store_true", default=None, help="recompute each block's activations "
        "in the backward pass instead of keeping them: less memory, more training time")
    add("--forget-prompts", metavar="FILE", help="your own forget prompts, one a line (with --retain-prompts: "
        "line i of one pairs with line i of the other); replaces the prompt preset")
    add("--retain-prompts", metavar="FILE", help="the retain twin of each --forget-prompts line, one a line")
    add("--config", metavar="FILE.toml", help="TOML file of settings; keys are the long option names with "
        "underscores; explicit flags override it, it overrides --preset")
    add("--family", choices=unlearn.CLI_FAMILIES, help="model family (default: detected from the file's keys); sd2-v "
        "selects SD 2.x 768-v (v-prediction), which the keys cannot tell")
    add("--config-folder", metavar="DIR",
        help="diffusers config folder for the checkpoint (default: the shipped one of its family)")
    add("--method", choices=unlearn.METHODS, help=f"update rule (default {d['method']})")
    add("--scope", choices=SCOPES,
        help=f"UNet parameters to edit; lora also writes <name>-lora.safetensors (kohya format) "
             f"(default {d['scope']})")
    add("--lora-rank", type=int, help=f"LoRA rank for --scope lora (default {d['lora_rank']})")
    add("--steps", type=int, help=f"unlearning steps (default {d['steps']})")
    add("--lr", type=float, help=f"Adam learning rate (default {d['lr']})")
    add("--retain-weight", type=float, help=f"lambda, the retain weight (default {d['retain_weight']})")
    add("--truncation", choices=unlearn.TRUNCATIONS, help=f"forget-loss truncation (default {d['truncation']})")
    add("--truncation-threshold", type=float,
        help=f"m for skip (skip ascent above it), alpha for elementwise (default {d['truncation_threshold']})")
    add("--batch-size", type=int, help=f"forget (and paired retain) examples per step (default {d['batch_size']})")
    add("--train-prompts", type=int, help=f"forget/retain prompt pairs to sample (default {d['train_prompts']})")
    add("--sample-steps", type=int, help="sampler steps when sampling the training data (default 50 for SD; SD3 28, "
        "Flux dev 20, schnell 4)")
    add("--guidance", type=float, help="classifier-free guidance when sampling the data (default 7.5 for SD; SD3 "
        "4.5, Flux 1 with dev's distilled guidance 3.5)")
    add("--sampler", choices=sorted(SAMPLERS), help="sampler of the data (default ddim for SD, euler for SD3/Flux; "
        "dpm++2m needs fewer --sample-steps for the same quality)")
    add("--retain-guidance", type=float, help="classifier-free guidance of the retain side's data (default: "
        "--guidance; 1 samples it without guidance, at half its cost)")
    add("--trajectory-points", type=int, help="trajectory reuse: keep this many of the noisy latents each sampled "
        "image passes through as extra training points at their own timesteps (default 0: x0 only)")
    add("--width", type=int, help="width of the sampled training data in pixels (default: the model's native size)")
    add("--height", type=int, help="height of the sampled training data in pixels (default: the native size)")
    add("--text-encoders", nargs="+", metavar="PATH", help="Flux.1 / SD3.x only: the text encoder files (CLIP-L, "
        "CLIP-G for SD3, T5-XXL) and T5 tokenizer, or folders holding them, e.g. ComfyUI's models/text_encoders and "
        "comfy/text_encoders/t5_tokenizer (default: those inside the checkpoint)")
    add("--seed", type=int, help=f"seed for prompts, data and training (default {d['seed']})")
    add("--forget-images", metavar="DIR", help="train on your own images of the concept instead of samples: "
        "a folder of .png/.jpg/.webp files, each captioned by a .txt of the same name (else a forget prompt); "
        "VAE-encoded once and cached")
    add("--retain-images", metavar="DIR", help="your own images of what must stay, as for --forget-images; "
        "image i pairs with forget example i (file-name order); with both folders, they must hold as many images")
    add("--cache-dir", metavar="DIR", help="cache for sampled data and config folders (default: rgd's cache dir)")
    add("--name", help="output file name without folders (default <checkpoint stem>-rgd-<concept>)")
    add("--format", choices=unlearn.MODEL_FORMATS, help=f"single-file: one original-layout .safetensors (A1111, Forge, "
        f"ComfyUI); diffusers: a diffusers folder <name>/; both; none: no model, only the LoRA (--scope lora) or "
        f"difference file (--scope cross-attn) (default {d['format']})")
    add("--lora-out", metavar="DIR", help="folder for the LoRA of --scope lora, e.g. a UI's models/Lora (default: --out)")
    add("--lora-format", choices=unlearn.LORA_FORMATS, help="names in the LoRA file: kohya (lora_unet_<original "
        "module>, A1111/Forge/ComfyUI) or, for Flux.1 / SD3.x, diffusers (transformer.<module>.lora_A/B, which "
        "diffusers' load_lora_weights and ComfyUI read) (default kohya)")
    add("--no-save-lora", dest="save_lora", action="store_false", default=None,
        help="with --scope lora, write only the merged model, not the LoRA file")
    add("--state-dir", metavar="DIR", help="folder for the resumable training state (default: --out)")
    add("--overwrite", action="store_true", default=None,
        help="replace existing outputs of the same name (checkpoint, LoRA, diff, report, diffusers folder) and "
             "discard an interrupted run's state")
    add("--checkpoint-every", type=int, metavar="N", help=f"save the resumable training state every N steps "
        f"(and on Ctrl-C); 0: only on Ctrl-C (default {d['checkpoint_every']})")
    add("--resume", action="store_true", default=None, help="continue the interrupted run of the same settings "
        "and --out from its saved state (same weights as an uninterrupted run)")
    add("--allow-pickle", action="store_true", default=None,
        help="allow reading pickle checkpoints (.ckpt/.pt); they can run code, use only trusted files")
    add("--json", action="store_true", help="print the JSON report on stdout instead of a summary")


def _write_report(report: dict, path: str | None) -> None:
    if path:
        atomic_write_bytes(json.dumps(report, indent=2).encode(), path)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other error of rgd (argparse's own prints the whole usage
    first, thirty lines for `rgd unlearn`, with the error last). Subcommands inherit the class."""

    def error(self, message: str):
        self.exit(2, f"rgd: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rgd", description="RGD concept unlearning for diffusion models.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the Python traceback of an error")
    commands.add_parser = _with_parent(commands.add_parser, debug)

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
    bench_digits.add_argument("--methods", default="GradDiff,RGD,RGD (narrow retain),RGD, Adam metric",
                              help="rows to run, comma-separated, from: GradDiff, RGD, RGD (narrow retain), "
                              "RGD, Adam metric")
    bench_digits.set_defaults(out=None)
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

    ui = commands.add_parser("ui", help="the Unlearn tab as a page of its own (needs the ui extra: Gradio)",
                             description="Serve the A1111/Forge Unlearn tab on its own: clean the checkpoints of one "
                             "folder in the browser, with live losses, previews and Interrupt.")
    ui.add_argument("--checkpoints", metavar="DIR", required=True,
                    help="folder of .safetensors checkpoints to list; the cleaned checkpoint is saved into it")
    ui.add_argument("--loras", metavar="DIR", help="folder for the LoRA files (default: --checkpoints)")
    ui.add_argument("--cache-dir", metavar="DIR", help="cache for sampled data (default: rgd's cache dir)")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=7870, help="port (default 7870)")
    ui.set_defaults(run=cmd_ui)
    return parser


def _with_parent(add_parser, parent):
    """Every subcommand (and sub-subcommand) takes the common options, so `rgd unlearn ... --debug` works."""

    def add(*args, **kwargs):
        kwargs["parents"] = [*kwargs.get("parents", []), parent]
        sub = add_parser(*args, **kwargs)
        original = sub.add_subparsers

        def add_subparsers(*a, **k):
            group = original(*a, **k)
            group.add_parser = _with_parent(group.add_parser, parent)
            return group

        sub.add_subparsers = add_subparsers
        return sub

    return add


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error, with what to do where the cause is clear."""
    where = f" ({error.filename})" if error.filename else ""
    if error.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free some space or write to another --out."
    if error.errno == errno.ENAMETOOLONG:
        return f"a file name is too long for this file system{where}; choose a shorter --name or --out."
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where}; choose a folder you can write to."
    return f"{error.strerror or error}{where}."


def main(argv: list[str] | None = None) -> None:
    """Run one command; exit 0, 2 (bad input), 1 (failed while running) or 130/143 (interrupted)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    debug = args.debug or bool(os.environ.get("RGD_DEBUG"))
    try:
        args.run(args)
    except UnlearningCancelled as stopped:
        print(f"rgd: interrupted: {stopped}", file=sys.stderr)
        stop = getattr(args, "stop", None)
        raise SystemExit(128 + (stop.signal or signal.SIGINT) if stop else EXIT_INTERRUPT) from None
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        stop = getattr(args, "stop", None)
        signum = stop.signal if stop is not None and stop.signal else signal.SIGINT
        print("rgd: interrupted; nothing was written" + (" (an earlier saved state, if any, is kept: add --resume)"
              if args.command == "unlearn" else ""), file=sys.stderr)
        raise SystemExit(128 + signum) from None
    except (RGDInputError, FileNotFoundError, ValueError) as error:
        if debug:
            traceback.print_exc()
        print(f"rgd: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_INPUT) from None
    except (RGDError, NonFiniteError) as error:
        if debug:
            traceback.print_exc()
        print(f"rgd: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None
    except OSError as error:
        if debug:
            traceback.print_exc()
        print(f"rgd: error: {describe_os_error(error)}", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None
    except MemoryError:
        print("rgd: error: out of memory; lower --batch-size, use --scope lora, or free memory.", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None
    except Exception as error:  # a bug of ours: say so in one line; --debug shows where
        if debug:
            raise
        first = str(error).splitlines()[0] if str(error) else ""
        print(f"rgd: error: {type(error).__name__}: {first} (run again with --debug for the traceback)",
              file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None


if __name__ == "__main__":
    main()
