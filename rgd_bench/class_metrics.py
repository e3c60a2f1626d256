"""Class-forgetting metrics (Ko et al. 2024, section 4.1) with a digit classifier trained here, offline.

- UA, unlearning accuracy: 1 - share of forget-class samples that the classifier labels as the forget class.
- RA, remaining accuracy: share of other-class samples classified as the label they were generated for.
- FD, Frechet distance between generated and real images in the classifier's hidden-layer feature space: the
  paper reports FID with Inception features, which cannot be had offline, so this is named FD, not FID.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DigitClassifier:
    """A one-hidden-layer MLP on 8x8 digits (0..16 scale); its ReLU hidden layer is the FD feature space."""

    model: object
    held_out_accuracy: float

    @classmethod
    def fit(cls, pixels: np.ndarray, labels: np.ndarray, seed: int = 0) -> "DigitClassifier":
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier

        x_train, x_test, y_train, y_test = train_test_split(
            pixels, labels, test_size=0.3, random_state=seed, stratify=labels
        )
        model = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-2, max_iter=500, random_state=seed)
        model.fit(x_train / 16.0, y_train)
        return cls(model, float(model.score(x_test / 16.0, y_test)))

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.predict(pixels / 16.0)

    def features(self, pixels: np.ndarray) -> np.ndarray:
        hidden = pixels / 16.0 @ self.model.coefs_[0] + self.model.intercepts_[0]
        return np.maximum(hidden, 0.0)


def unlearning_accuracy(predicted: np.ndarray, forget_class: int) -> float:
    return float(1.0 - np.mean(predicted == forget_class))


def remaining_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted == labels))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the FID formula on any features."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    # Tr (S_a S_b)^(1/2) = sum of sqrt(eig(S_a^(1/2) S_b S_a^(1/2))): a symmetric PSD problem, so it stays
    # stable when ReLU features leave the covariances singular (where scipy's sqrtm warns and drifts).
    root_a = _psd_sqrt(cov_a)
    eigenvalues = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_covmean = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_covmean)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T
