"""The shapes world's judge: a small CNN that reads shape, colour, background and modifier from a 16x16 image.

It plays two roles of the SD benchmark: NudeNet (is the erased concept, e.g. "striped", still there?) and CLIP
alignment (does the image show what the prompt asks for?). Its penultimate layer is the feature space of the
Frechet distance (FD, not FID: no Inception weights offline; ``rgd_bench.class_metrics.frechet_distance``).

Trained on fresh renders of rgd_bench/worlds/shapes.py with Gaussian pixel noise (sigma up to 0.15 in [-1, 1]
units), so that the slightly noisy samples of a diffusion model are read by what they show, not rejected as
strange. The weights are committed (``rgd_bench/weights/shapes_classifier.safetensors``, 0.65 MB), because the
benchmark's numbers must not move with a torch version or thread count that changes a retraining;
``python -m rgd_bench.shapes_classifier`` retrains them deterministically for a seed on a given machine
and prints the held-out accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from rgd_bench.worlds import shapes
from rgd_core.errors import RGDInputError
from rgd_core.files import save_safetensors_atomic

CLASSIFIER_PATH = Path(__file__).resolve().parent / "weights" / "shapes_classifier.safetensors"
FORMAT = "rgd-shapes-classifier-1"
FEATURE_DIM = 128
MAX_NOISE = 0.15


class ShapesClassifier(nn.Module):
    """Conv layers, a 128-unit ReLU feature layer, and one linear head per attribute (shapes.ATTRIBUTES)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (shapes.IMAGE_SIZE // 4) ** 2, FEATURE_DIM), nn.ReLU(),
        )
        self.heads = nn.ModuleDict(
            {name: nn.Linear(FEATURE_DIM, len(shapes.VALUES[name])) for name in shapes.ATTRIBUTES}
        )

    def forward(self, pixels: Tensor) -> dict[str, Tensor]:
        """Logits per attribute for (N, 3, 16, 16) images in [-1, 1]."""
        hidden = self.body(pixels)
        return {name: head(hidden) for name, head in self.heads.items()}

    @torch.no_grad()
    def _run(self, images: np.ndarray, batch_size: int = 512):
        images = _checked(images)
        logits, features = {name: [] for name in shapes.ATTRIBUTES}, []
        for start in range(0, images.shape[0], batch_size):
            hidden = self.body(shapes.to_model_space(images[start : start + batch_size]))
            features.append(hidden)
            for name, head in self.heads.items():
                logits[name].append(head(hidden))
        return {name: torch.cat(value) for name, value in logits.items()}, torch.cat(features)

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """{attribute: (N,) index of the most likely value} for (N, 16, 16, 3) uint8 images."""
        return self.predict_and_features(images)[0]

    def predict_and_features(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``predict`` and ``features`` of the same images from one pass through the network."""
        logits, hidden = self._run(images)
        return {name: value.argmax(-1).numpy() for name, value in logits.items()}, hidden.double().numpy()

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, 128) float64 ReLU features, the space of the Frechet distance."""
        _, hidden = self._run(images)
        return hidden.double().numpy()


def _checked(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    size = shapes.IMAGE_SIZE
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise RGDInputError(
            f"the shapes classifier takes (N, {size}, {size}, 3) uint8 images, got {images.shape} {images.dtype}; "
            "convert model outputs with shapes.to_uint8."
        )
    return images


def _labelled_batch(rng: np.random.Generator, count: int) -> tuple[np.ndarray, dict[str, Tensor]]:
    attributes = shapes.random_attributes(rng, count)
    images = np.stack([shapes.render(a, rng) for a in attributes])
    labels = {name: torch.tensor([a.label(name) for a in attributes]) for name in shapes.ATTRIBUTES}
    return images, labels


def train_classifier(steps: int = 800, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     log=print) -> ShapesClassifier:
    """Fit on fresh noisy renders (deterministic for ``seed``): Adam under a one-cycle schedule."""
    torch.manual_seed(seed)
    model = ShapesClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        images, labels = _labelled_batch(np.random.default_rng([seed, step]), batch_size)
        pixels = shapes.to_model_space(images)
        sigma = MAX_NOISE * torch.rand(batch_size, 1, 1, 1, generator=generator)
        pixels = pixels + sigma * torch.randn(pixels.shape, generator=generator)
        logits = model(pixels)
        loss = sum(nn.functional.cross_entropy(logits[name], labels[name]) for name in shapes.ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"step {step:4d}  loss {loss.item():.4f}")
    return model.eval()


def held_out_accuracy(model: ShapesClassifier, count: int = 2000, seed: int = 12345) -> dict[str, float]:
    """Per-attribute accuracy on ``count`` fresh renders (a seed no training step uses)."""
    images, labels = _labelled_batch(np.random.default_rng([seed, 10**9]), count)
    predicted = model.predict(images)
    return {name: float(np.mean(predicted[name] == labels[name].numpy())) for name in shapes.ATTRIBUTES}


def save_classifier(model: ShapesClassifier, path: str | Path = CLASSIFIER_PATH, metadata: dict | None = None) -> Path:
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    return save_safetensors_atomic(state, path, {"format": FORMAT, **{k: str(v) for k, v in (metadata or {}).items()}})


def load_classifier(path: str | Path = CLASSIFIER_PATH) -> ShapesClassifier:
    """The committed classifier (eval mode, no gradients)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RGDInputError(f"no shapes classifier at {path}; train one with "
                            "`python -m rgd_bench.shapes_classifier`.")
    with safe_open(str(path), framework="pt") as handle:
        if (handle.metadata() or {}).get("format") != FORMAT:
            raise RGDInputError(f"{path} is not a shapes classifier file ({FORMAT}).")
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    model = ShapesClassifier()
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the shapes attribute classifier and write its weights.")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(CLASSIFIER_PATH))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    model = train_classifier(args.steps, seed=args.seed)
    accuracy = held_out_accuracy(model)
    print(f"trained {args.steps} steps in {time.time() - start:.0f} s")
    print("held-out accuracy on 2000 fresh renders " + "  ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
    save_classifier(model, args.out, {"steps": args.steps, "seed": args.seed,
                                      **{f"held_out_{k}": f"{v:.4f}" for k, v in accuracy.items()}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
