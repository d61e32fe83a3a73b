"""The picture each fine-tuning command leaves beside its metrics: a confusion matrix, per-class AP bars, or
predicted change masks beside the truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, out: Path, dpi: int = 100) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def confusion_matrix_figure(matrix, classes: list[str], out: Path, title: str = "") -> Path:
    """Rows = true class, columns = predicted; cells coloured by the row's share, labelled with the count."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.int64)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(classes)
    side = max(4.0, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, out)


def per_class_ap_figure(aps: list[float], names: list[str], out: Path, title: str = "") -> Path:
    """Horizontal bars, one per class (NaN: no positive example, drawn as an empty row)."""
    plt = _pyplot()
    n = len(names)
    fig, ax = plt.subplots(figsize=(9, 0.32 * n + 1.5))
    values = [0.0 if math.isnan(a) else a for a in aps]
    ax.barh(range(n), values, color="tab:blue")
    for i, a in enumerate(aps):
        ax.text((0 if math.isnan(a) else a) + 1, i, "no positives" if math.isnan(a) else f"{a:.1f}", va="center",
                fontsize=7)
    ax.set_yticks(range(n), [name if len(name) <= 48 else name[:45] + "..." for name in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("average precision (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, out)


def change_masks_figure(rows: list[dict], out: Path, title: str = "", max_rows: int = 6) -> Path:
    """One row per image pair: image 1, image 2, true change mask, predicted mask (at the threshold)."""
    plt = _pyplot()
    rows = rows[:max_rows]
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        panels = [(row["image1"], "image 1"), (row["image2"], "image 2"), (row["truth"], "truth"),
                  (row["prediction"], f"prediction (F1 {row['f1']:.1f})")]
        for c, (pixels, caption) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(pixels, cmap="gray" if np.ndim(pixels) == 2 else None, vmin=0, vmax=1 if c >= 2 else None)
            ax.set_title(f"{row['name']}: {caption}" if c == 0 else caption, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, out)
