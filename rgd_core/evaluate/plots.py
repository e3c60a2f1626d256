"""Figures: sample grids and loss curves (matplotlib, no display needed), written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rgd_core.files import atomic_write_bytes


def _figure_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def sample_grid(rows: Mapping[str, np.ndarray], path: str | Path, column_titles: Sequence[str] = ()) -> Path:
    """``rows``: row title -> images, either (columns, H, W) grey in [-1, 1] or (columns, H, W, 3) uint8 RGB.
    One row per model, same columns in each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(images) for images in rows.values())
    longest = max((len(line) for title in column_titles for line in title.splitlines()), default=0)
    width = max(0.55, 0.065 * longest)  # long titles widen the columns instead of overlapping
    title_lines = max((title.count("\n") + 1 for title in column_titles), default=0)
    fig, axes = plt.subplots(len(rows), columns, squeeze=False,
                             figsize=(width * columns + 1.2, 0.62 * len(rows) + 0.3 + 0.12 * title_lines))
    for r, (title, images) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(images) and images[c].ndim == 3:
                ax.imshow(images[c], interpolation="nearest")
            elif c < len(images):
                ax.imshow(images[c], cmap="gray_r", vmin=-1, vmax=1)
            if c == 0:
                ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0 and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=7)
    data = _figure_bytes(fig)
    plt.close(fig)
    return atomic_write_bytes(data, path)


def loss_curves(histories: Mapping[str, Sequence[Mapping]], path: str | Path) -> Path:
    """Forget and retain loss per step for each method (``records`` as the Unlearner returns them). Methods with
    a single objective (ESD's records carry ``loss``) get a third panel of their own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = {name: records for name, records in histories.items() if records and "forget_loss" not in records[0]}
    fig, axes = plt.subplots(1, 3 if single else 2, figsize=(13.5 if single else 9, 3.2))
    ax_f, ax_r = axes[0], axes[1]
    for name, records in histories.items():
        steps = [r["step"] for r in records]
        if name in single:
            axes[2].plot(steps, [r["loss"] for r in records], label=name)
            continue
        ax_f.plot(steps, [r["forget_loss"] for r in records], label=name)
        ax_r.plot(steps, [r["retain_loss"] for r in records], label=name)
    ax_f.set_title("forget loss (ascended)")
    ax_r.set_title("retain loss")
    if single:
        axes[2].set_title("own objective (descended)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    data = _figure_bytes(fig)
    plt.close(fig)
    return atomic_write_bytes(data, path)
