"""Evaluation plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path,
                   title: str = "Confusion matrix") -> Path:
    """Write a confusion-matrix heat map (rows = true class) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = np.asarray(confusion)
    k = len(classes)
    size = min(12.0, 2.5 + 0.6 * k)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    try:
        image = ax.imshow(matrix, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(k), labels=classes, rotation=45 if k > 8 else 0, ha="right")
        ax.set_yticks(range(k), labels=classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title)
        if k <= 30:
            threshold = matrix.max() / 2 if matrix.size else 0
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if matrix[i, j] > threshold else "black")
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out
