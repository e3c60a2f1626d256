"""Where the adaptive stop should stop: the probe's forget/retain loss ratio beside what the classifier sees.

    .venv/bin/python benchmarks/stop_calibration.py --model v_prediction --concepts striped,triangle,red \
        --steps 100 --every 10 [--neighbour-share 0.5] --json docs/results/stop_calibration_v.json
    .venv/bin/python benchmarks/stop_calibration.py --world digits --concepts 0,4,7 --steps 200 --every 20 \
        --json docs/results/stop_calibration_digits.json

For each concept of the shapes world, one RGD run of the bench's settings that never stops early; every ``--every``
steps the Unlearner's fixed probe gives the forget/retain loss ratio (what ``UnlearnConfig.stop_ratio`` is compared
with) and the bench's scorer gives erasure, in-prompt, retain, collateral and FD of the model as it is at that step.
The first ratio at which every concept is erased, and what alignment costs there, chooses the default target
(README: Adaptive stop). ``--world digits`` does the same for the Table-1 protocol (the digits named by
``--concepts``, RGD with the bench's settings; UA, RA and FD at each probe). Prints the table, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from rgd_bench.class_forgetting import ClassForgettingConfig, Evaluator, forget_and_retain_losses
from rgd_bench.shapes_bench import MODELS, EvalSet, ShapesBenchConfig, score, unlearn
from rgd_bench.shapes_classifier import load_classifier
from rgd_bench.worlds import digits, shapes_model
from rgd_core.method.unlearner import Unlearner

MEASURES = ("erasure", "in_prompt", "retain", "collateral", "fd")


def trajectory(components, classifier, concept: str, config: ShapesBenchConfig, every: int, log=print) -> list[dict]:
    """Rows (step, probe ratio, the bench's measures) from step 0 (the original model) every ``every`` steps."""
    eval_set = EvalSet.build(concept, config.test_prompts, config.seed, classifier)
    original, _ = score(components, None, eval_set, classifier, config)
    rows = [{"concept": concept, "step": 0, "probe_ratio": None, **_measures(original)}]
    live: dict = {}

    def after_step(record: dict) -> None:
        step = record["step"] + 1
        if step % every == 0:
            with torch.no_grad():
                scores, _ = score(components, live["module"], eval_set, classifier, config)
            rows.append({"concept": concept, "step": step, "probe_ratio": record.get("probe_ratio"),
                         **_measures(scores)})
            log(_row_text(rows[-1]))

    # a target that is never reached: the run goes to the cap, probing every ``every`` steps
    unlearn(components, "RGD", concept, replace(config, stop_ratio=1e12, stop_every=every), None,
            callbacks=[after_step], watch=lambda module: live.update(module=module))
    return rows


def digits_trajectory(base, evaluator: Evaluator, config: ClassForgettingConfig, every: int, log=print) -> list[dict]:
    """Rows (step, probe ratio, UA, RA, FD) for forgetting ``config.forget_class`` with RGD, from step 0 every
    ``every`` steps, the run going to ``config.steps``."""
    def row(step: int, ratio, model) -> dict:
        with torch.no_grad():
            scores = evaluator.score(evaluator.samples(model), config.forget_class)
        return {"concept": str(config.forget_class), "step": step, "probe_ratio": ratio, "ua": scores.ua,
                "ra": scores.ra, "fd": scores.fd}

    rows = [row(0, None, base)]
    images, labels = digits.load_digits_data()
    forget_loss, retain_loss = forget_and_retain_losses(config, images, labels)
    unlearner = Unlearner(base, forget_loss, retain_loss,
                          replace(config.unlearn_config("rgd"), stop_ratio=1e12, stop_every=every))

    def after_step(record: dict) -> None:
        if (record["step"] + 1) % every == 0:
            rows.append(row(record["step"] + 1, record.get("probe_ratio"), unlearner.model))
            log(_digits_row_text(rows[-1]))

    log(_digits_row_text(rows[0]))
    unlearner.run(callbacks=[after_step])
    return rows


def _digits_row_text(row: dict) -> str:
    ratio = "   -  " if row["probe_ratio"] is None else f"{row['probe_ratio']:6.2f}"
    return f"digit {row['concept']} step {row['step']:4d}  ratio {ratio}  UA {row['ua']:.3f}  RA {row['ra']:.3f}  " \
           f"FD {row['fd']:.2f}"


def _measures(scores: dict) -> dict:
    return {measure: scores[measure] for measure in MEASURES}


def _row_text(row: dict) -> str:
    ratio = "   -  " if row["probe_ratio"] is None else f"{row['probe_ratio']:6.2f}"
    return (f"{row['concept']:9s} step {row['step']:4d}  ratio {ratio}  erasure {row['erasure']:.3f}  "
            f"in-prompt {row['in_prompt']:.3f}  retain {row['retain']:.3f}  collateral {row['collateral']:.3f}  "
            f"FD {row['fd']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=["shapes", "digits"], default="shapes")
    parser.add_argument("--model", choices=sorted(MODELS), default="v_prediction")
    parser.add_argument("--concepts", default="striped,triangle,red")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=None, help="default: the bench's")
    parser.add_argument("--retain-weight", type=float, default=None, help="lambda (default: the bench's)")
    parser.add_argument("--neighbour-share", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.world == "digits":
        return calibrate_digits(args)
    config = ShapesBenchConfig(model=args.model, steps=args.steps, seed=args.seed, methods=("RGD",),
                               neighbour_share=args.neighbour_share, **({"lr": args.lr} if args.lr else {}),
                               **({"retain_weight": args.retain_weight} if args.retain_weight is not None else {}))
    start = time.perf_counter()
    components = shapes_model.load_model(MODELS[args.model])
    classifier = load_classifier()
    rows = []
    for concept in args.concepts.split(","):
        rows += trajectory(components, classifier, concept.strip(), config, args.every)
    result = {"config": {**config.__dict__, "every": args.every}, "rows": rows,
              "wall_seconds": time.perf_counter() - start}
    print("\n".join(_row_text(row) for row in rows))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def calibrate_digits(args) -> None:
    start = time.perf_counter()
    config = ClassForgettingConfig(steps=args.steps, seed=args.seed, **({"lr": args.lr} if args.lr else {}))
    base, evaluator = digits.load_base_model(), Evaluator.build()
    rows = []
    for digit in args.concepts.split(","):
        rows += digits_trajectory(base, evaluator, replace(config, forget_class=int(digit)), args.every)
    result = {"config": {**config.__dict__, "every": args.every}, "rows": rows,
              "wall_seconds": time.perf_counter() - start}
    print("\n".join(_digits_row_text(row) for row in rows))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
