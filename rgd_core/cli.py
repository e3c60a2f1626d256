"""Command line: `rgd demo`, `rgd bench digits`.

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
