"""Figures: sample grids and loss curves (matplotlib, no display needed), written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..io import atomic_write_bytes


def _figure_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def sample_grid(rows: Mapping[str, np.ndarray], path: str | Path, column_titles: Sequence[str] = ()) -> Path:
    """``rows``: row title -> images (columns, H, W) in [-1, 1]. One row per model, same columns in each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), columns, figsize=(0.55 * columns + 1.2, 0.62 * len(rows) + 0.3),
                             squeeze=False)
    for r, (title, images) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(images):
                ax.imshow(images[c], cmap="gray_r", vmin=-1, vmax=1)
            if c == 0:
                ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0 and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=7)
    data = _figure_bytes(fig)
    plt.close(fig)
    return atomic_write_bytes(data, path)


def loss_curves(histories: Mapping[str, Sequence[Mapping]], path: str | Path) -> Path:
    """Forget and retain loss per step for each method (``records`` as the Unlearner returns them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_f, ax_r) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, records in histories.items():
        steps = [r["step"] for r in records]
        ax_f.plot(steps, [r["forget_loss"] for r in records], label=name)
        ax_r.plot(steps, [r["retain_loss"] for r in records], label=name)
    ax_f.set_title("forget loss (ascended)")
    ax_r.set_title("retain loss")
    for ax in (ax_f, ax_r):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    data = _figure_bytes(fig)
    plt.close(fig)
    return atomic_write_bytes(data, path)
