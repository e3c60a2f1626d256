"""`rgd demo` and `rgd bench digits`: class forgetting on the digits world, original vs GradDiff vs RGD."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rgd_bench.class_forgetting import ClassForgettingConfig, EvalConfig, Evaluator, Scores, run_forgetting
from rgd_bench.worlds import digits
from rgd_core.evaluate import plots
from rgd_core.progress import progress_bar

METHODS = {  # row name -> (update rule, retain set)
    "GradDiff": ("graddiff", "diverse"),
    "RGD": ("rgd", "diverse"),
    "RGD (narrow retain)": ("rgd", "narrow"),
    "RGD, Adam metric": ("rgd-adam", "diverse"),  # extension: projection in Adam's preconditioned metric
}


@dataclass
class Row:
    method: str
    ua: float
    ra: float
    fd: float
    seconds: float  # unlearning time (training only)
    steps: int = 0  # where the run ended (the adaptive stop, or the fixed steps)
    ua_forced: float = 0.0  # UA read by the classifier forced to name a digit (Scores.ua_forced)


def run_demo(
    config: ClassForgettingConfig,
    eval_config: EvalConfig,
    out_dir: str | Path,
    methods: tuple[str, ...] = ("GradDiff", "RGD"),
    log: Callable[[str], None] = print,
) -> dict:
    """Forget one class with each method from the same base model; evaluate; write a grid and loss curves."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    base = digits.load_base_model()
    evaluator = Evaluator.build(eval_config)
    log(f"classifier held-out accuracy {evaluator.classifier.held_out_accuracy:.3f} (real digits), "
        f"{evaluator.classifier.non_digit_accuracy:.3f} (images of no digit)")
    samples = {"original": evaluator.samples(base)}
    rows = [_row("original", evaluator.score(samples["original"], config.forget_class), 0.0)]
    histories = {}
    for name in methods:
        method, retain_set = METHODS[name]
        log(f"unlearning digit {config.forget_class} with {name} ({config.steps} steps)")
        result = run_forgetting(base, method, replace(config, retain_set=retain_set),
                                callbacks=[progress_bar(config.steps, name)])
        seconds = sum(r["seconds"] for r in result.records)
        samples[name] = evaluator.samples(result.model)
        rows.append(_row(name, evaluator.score(samples[name], config.forget_class), seconds, len(result.records)))
        histories[name] = result.records
    grid = plots.sample_grid(
        {name: _first_per_class(s, 2) for name, s in samples.items()},
        out_dir / f"digits_forget{config.forget_class}_samples.png",
        column_titles=[str(c) for c in range(digits.NUM_CLASSES) for _ in range(2)],
    )
    curves = plots.loss_curves(histories, out_dir / f"digits_forget{config.forget_class}_losses.png")
    return {
        "forget_class": config.forget_class,
        "rows": [asdict(r) for r in rows],
        "classifier_accuracy": evaluator.classifier.held_out_accuracy,
        "classifier_non_digit_accuracy": evaluator.classifier.non_digit_accuracy,
        "config": asdict(config),
        "eval": asdict(eval_config),
        "figures": [str(grid), str(curves)],
        "wall_seconds": time.perf_counter() - start,
    }


def run_bench(
    config: ClassForgettingConfig,
    eval_config: EvalConfig,
    classes: tuple[int, ...] = tuple(range(digits.NUM_CLASSES)),
    methods: tuple[str, ...] = ("GradDiff", "RGD", "RGD (narrow retain)", "RGD, Adam metric"),
    log: Callable[[str], None] = print,
) -> dict:
    """Table 1 / Table 3 protocol: forget each class in turn; mean and std over classes per method."""
    start = time.perf_counter()
    base = digits.load_base_model()
    evaluator = Evaluator.build(eval_config)
    original = evaluator.samples(base)  # one sample set serves every forget class
    per_method: dict[str, list[Row]] = {"original": [], **{m: [] for m in methods}}
    for forget_class in classes:
        per_method["original"].append(_row("original", evaluator.score(original, forget_class), 0.0))
        for name in methods:
            method, retain_set = METHODS[name]
            run_config = replace(config, forget_class=forget_class, retain_set=retain_set)
            result = run_forgetting(base, method, run_config,
                                    callbacks=[progress_bar(config.steps, f"digit {forget_class} {name}")])
            seconds = sum(r["seconds"] for r in result.records)
            row = _row(name, evaluator.score(evaluator.samples(result.model), forget_class), seconds,
                       len(result.records))
            per_method[name].append(row)
            log(f"digit {forget_class}  {name:20s} UA {row.ua:.3f} (forced {row.ua_forced:.3f})  RA {row.ra:.3f}  "
                f"FD {row.fd:.2f}  {row.steps} steps")
    summary = {}
    for name, rows in per_method.items():
        summary[name] = {
            key: {"mean": float(np.mean([getattr(r, key) for r in rows])),
                  "std": float(np.std([getattr(r, key) for r in rows]))}
            for key in ("ua", "ra", "fd", "seconds", "steps", "ua_forced")
        }
    return {
        "classes": list(classes),
        "summary": summary,
        "runs": {name: [asdict(r) for r in rows] for name, rows in per_method.items()},
        "classifier_accuracy": evaluator.classifier.held_out_accuracy,
        "classifier_non_digit_accuracy": evaluator.classifier.non_digit_accuracy,
        "config": asdict(config),
        "eval": asdict(eval_config),
        "wall_seconds": time.perf_counter() - start,
    }


def _row(name: str, scores: Scores, seconds: float, steps: int = 0) -> Row:
    return Row(name, scores.ua, scores.ra, scores.fd, seconds, steps, scores.ua_forced)


def _first_per_class(samples, per_class: int) -> np.ndarray:
    picks = [np.flatnonzero(samples.labels == c)[:per_class] for c in range(digits.NUM_CLASSES)]
    return samples.images[np.concatenate(picks), 0].numpy()


def format_demo_table(report: dict) -> str:
    lines = [f"forget digit {report['forget_class']}   (UA, RA: higher is better; FD: lower is better)",
             f"{'method':22s} {'UA':>6s} {'RA':>6s} {'FD':>7s} {'seconds':>8s}"]
    for r in report["rows"]:
        lines.append(f"{r['method']:22s} {r['ua']:6.3f} {r['ra']:6.3f} {r['fd']:7.2f} {r['seconds']:8.1f}")
    return "\n".join(lines)


def format_bench_table(report: dict) -> str:
    lines = [f"forget each of digits {report['classes']}; mean ± std over the runs (UA forced: the classifier made "
             "to name a digit)",
             f"{'method':22s} {'UA':>13s} {'RA':>13s} {'FD':>13s} {'seconds':>8s} {'steps':>6s} {'UA forced':>13s}"]
    for name, s in report["summary"].items():
        cells = " ".join(f"{s[k]['mean']:6.3f}±{s[k]['std']:.3f}" for k in ("ua", "ra"))
        steps = s.get("steps", {}).get("mean", 0.0)
        forced = f"{s['ua_forced']['mean']:6.3f}±{s['ua_forced']['std']:.3f}" if "ua_forced" in s else ""
        lines.append(f"{name:22s} {cells} {s['fd']['mean']:6.2f}±{s['fd']['std']:5.2f} {s['seconds']['mean']:8.1f} "
                     f"{steps:6.1f} {forced}")
    return "\n".join(lines)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
