"""Train the digits base model and write it to rgd_bench/weights/digits_unet.safetensors.

    python -m rgd_bench.worlds.train_digits [--steps 1500] [--seed 0] [--out PATH]

Deterministic for a seed on a given machine (CPU, fixed thread count). Prints the per-class accuracy of the
model's own samples as judged by the evaluation classifier, the check that the base model follows its labels.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rgd_bench.class_metrics import DigitClassifier
from rgd_bench.worlds import digits
from rgd_core.files import save_safetensors_atomic


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(digits.BASE_MODEL_PATH))
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    start = time.time()
    unet = digits.train_base_model(steps=args.steps, seed=args.seed)
    print(f"trained {args.steps} steps in {time.time() - start:.0f} s")
    state = {k: v.detach().contiguous() for k, v in unet.state_dict().items()}
    save_safetensors_atomic(state, args.out, {"world": "digits", "steps": str(args.steps), "seed": str(args.seed)})
    print(f"wrote {args.out}")

    images, labels = digits.load_digits_data()
    classifier = DigitClassifier.fit(digits.to_pixels(images), labels.numpy())
    wanted = torch.arange(digits.NUM_CLASSES).repeat_interleave(100)
    predicted = classifier.predict(digits.to_pixels(digits.sample(unet, wanted, seed=1)))
    per_class = [float(np.mean(predicted[wanted.numpy() == c] == c)) for c in range(digits.NUM_CLASSES)]
    print(f"classifier held-out accuracy {classifier.held_out_accuracy:.3f}")
    print("sample accuracy per class", " ".join(f"{a:.2f}" for a in per_class), f"mean {np.mean(per_class):.3f}")


if __name__ == "__main__":
    main()
