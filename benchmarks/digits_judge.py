"""What the digits classifier answers for images that show no digit, with and without its "not a digit" answer.

    .venv/bin/python benchmarks/digits_judge.py [--samples-per-class 100] [--json docs/results/digits_judge.json]

The digits bench scores UA with this classifier (``rgd_bench.class_metrics``). For each kind of image that shows no
digit (uniform noise, pixel-shuffled and 2x2-block-shuffled real digits, flat grey, blurred noise), it prints how
many the classifier calls each digit or NOT_A_DIGIT, and how many each digit when it must name one (its ten-way
reading, ``forced_choice``): a ten-way judge names a digit for noise too, so a model that draws noise for a
forgotten digit can look as if it still drew it. Then the share of the base model's own samples of each digit that
the classifier calls NOT_A_DIGIT (the price of the extra answer on real samples). Prints the tables, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rgd_bench.class_forgetting import EvalConfig, Evaluator
from rgd_bench.class_metrics import NOT_A_DIGIT, NUM_DIGITS, non_digit_images
from rgd_bench.worlds import digits

COUNT = 300  # images of each kind


def blurred_noise(rng: np.random.Generator, count: int) -> np.ndarray:
    """Uniform noise averaged over each pixel's 3x3 neighbourhood and stretched back to 0..16: smooth blobs."""
    noise = rng.uniform(0.0, 16.0, (count, 10, 10))
    smooth = sum(noise[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)) / 9.0
    low, high = smooth.min(axis=(1, 2), keepdims=True), smooth.max(axis=(1, 2), keepdims=True)
    return ((smooth - low) / (high - low) * 16.0).reshape(count, 64)


def no_digit_kinds(pixels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Images of no digit, ``COUNT`` of each kind, from a stream other than the classifier's training negatives."""
    rng = np.random.default_rng(seed)
    shuffled = non_digit_images(pixels, seed)  # kinds in turn: pixels shuffled, blocks shuffled, uniform noise
    return {
        "uniform noise": rng.uniform(0.0, 16.0, (COUNT, 64)),
        "pixels shuffled": shuffled[0::3][:COUNT],
        "2x2 blocks shuffled": shuffled[1::3][:COUNT],
        "flat grey (8)": np.full((COUNT, 64), 8.0),
        "blurred noise": blurred_noise(rng, COUNT),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="of the images of no digit (the classifier's is 0)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    evaluator = Evaluator.build(EvalConfig(samples_per_class=args.samples_per_class))
    classifier = evaluator.classifier
    images, _ = digits.load_digits_data()
    result = {"held_out_accuracy": classifier.held_out_accuracy, "non_digit_accuracy": classifier.non_digit_accuracy,
              "kinds": {}}
    print(f"held-out real digits {classifier.held_out_accuracy:.3f}, held-out images of no digit "
          f"{classifier.non_digit_accuracy:.3f} called NOT_A_DIGIT")
    print(f"{'images of no digit':22s} {'answer':8s} " + " ".join(f"{d:>4d}" for d in range(NUM_DIGITS)) + "  none")
    for kind, pixels in no_digit_kinds(digits.to_pixels(images), args.seed).items():
        answers = np.bincount(classifier.predict(pixels), minlength=NUM_DIGITS + 1)
        forced = np.bincount(classifier.forced_choice(pixels), minlength=NUM_DIGITS)
        result["kinds"][kind] = {"answers": answers.tolist(), "forced": forced.tolist()}
        print(f"{kind:22s} {'free':8s} " + " ".join(f"{n:4d}" for n in answers))
        print(f"{'':22s} {'forced':8s} " + " ".join(f"{n:4d}" for n in forced))
    samples = evaluator.samples(digits.load_base_model())
    none = [float(np.mean(samples.predicted[samples.labels == d] == NOT_A_DIGIT)) for d in range(NUM_DIGITS)]
    result["base_model_samples_not_a_digit"] = none
    print("base model's samples called NOT_A_DIGIT, per digit: " + " ".join(f"{share:.2f}" for share in none)
          + f"  (mean {np.mean(none):.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
