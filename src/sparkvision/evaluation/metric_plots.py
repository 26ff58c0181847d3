"""Evaluation plots (matplotlib, Agg backend: no display needed).

``plot_confusion`` (counts or row-normalised), ``plot_per_class`` (precision / recall / F1
bars), ``plot_reliability`` (accuracy against confidence per bin, with the ECE) and
``plot_samples`` (a grid of images with true vs predicted label; the rows for it come from
``sample_predictions``, which collects at most a few hundred predicted rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Wrong and right predictions ``plot_samples`` shows at most, and the rows they come from.
SAMPLE_WRONG = 8
SAMPLE_RIGHT = 8
SAMPLE_ROWS = 256
_WRONG = "#c62828"
_RIGHT = "#2e7d32"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    """Lay out, write ``fig`` as a PNG (dpi 100) and close it."""
    plt = _pyplot()
    try:
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out


def normalize_rows(confusion: list[list[int]]) -> list[list[float]]:
    """Each row divided by its sum (rows = true class: the share of each prediction); an
    empty row (no rows of that class) stays all zero."""
    out = []
    for row in confusion:
        total = sum(row)
        out.append([v / total if total else 0.0 for v in row])
    return out


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path,
                   title: str = "Confusion matrix", normalize: bool = False) -> Path:
    """Write a confusion-matrix heat map (rows = true class) as a PNG; ``normalize`` divides
    each row by its sum, so a cell is the share of that true class predicted as the column."""
    import numpy as np

    plt = _pyplot()
    matrix = np.asarray(normalize_rows(confusion) if normalize else confusion)
    k = len(classes)
    size = min(12.0, 2.5 + 0.6 * k)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    try:
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalize else None)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(k), labels=classes, rotation=45 if k > 8 else 0, ha="right")
        ax.set_yticks(range(k), labels=classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title)
        if k <= 30:
            threshold = (0.5 if normalize else matrix.max() / 2) if matrix.size else 0
            for i in range(k):
                for j in range(k):
                    text = f"{matrix[i, j]:.2f}" if normalize else str(matrix[i, j])
                    ax.text(j, i, text, ha="center", va="center", fontsize=7 if normalize else 8,
                            color="white" if matrix[i, j] > threshold else "black")
    except BaseException:
        plt.close(fig)
        raise
    return _save(fig, path)


def plot_per_class(per_class: dict[str, dict[str, Any]], path: str | Path,
                   title: str = "Per-class precision, recall and F1") -> Path:
    """Grouped bars of precision, recall and F1 for every class (``per_class`` as in
    ``EvaluationResult.per_class``), with each class's support under its name."""
    import numpy as np

    plt = _pyplot()
    names = list(per_class)
    k = len(names)
    x = np.arange(k)
    width = 0.27
    fig, ax = plt.subplots(figsize=(min(16.0, 3.0 + 0.7 * k), 4.2))
    try:
        for i, (key, color) in enumerate((("precision", "#1f77b4"), ("recall", "#ff7f0e"),
                                          ("f1", "#2ca02c"))):
            values = [float(per_class[n].get(key) or 0.0) for n in names]
            ax.bar(x + (i - 1) * width, values, width, label=key, color=color)
        labels = [f"{n}\n(n={per_class[n].get('support', '?')})" for n in names]
        ax.set_xticks(x, labels=labels, rotation=45 if k > 12 else 0,
                      ha="right" if k > 12 else "center", fontsize=8)
        ax.set_ylim(0, 1.18)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_ylabel("score")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper center", ncol=3, fontsize=8, frameon=False)
    except BaseException:
        plt.close(fig)
        raise
    return _save(fig, path)


def plot_reliability(bins: list[dict[str, Any]], ece: float | None, path: str | Path,
                     title: str = "Reliability diagram") -> Path:
    """A reliability diagram: per equal-width confidence bin (``EvaluationResult.reliability``)
    the accuracy as a bar and the gap to the bin's mean confidence in red, the diagonal of a
    perfectly calibrated model, and under it the share of rows in each bin."""
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.0, 6.0), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    try:
        filled = [b for b in bins if b.get("count")]
        width = [b["upper"] - b["lower"] for b in filled]
        left = [b["lower"] for b in filled]
        acc = [b["accuracy"] for b in filled]
        conf = [b["confidence"] for b in filled]
        ax.bar(left, acc, width, align="edge", color="#1f77b4", edgecolor="white",
               label="accuracy")
        ax.bar(left, [c - a for c, a in zip(conf, acc, strict=True)], width, bottom=acc,
               align="edge", color="#d62728", alpha=0.35, hatch="//", edgecolor="#d62728",
               label="gap to confidence")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        shown = "-" if ece is None else f"{ece:.4f}"
        ax.set_title(f"{title}\nECE {shown} ({len(bins)} bins)")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        total = sum(b.get("count", 0) for b in bins) or 1
        hist.bar(left, [b["count"] / total for b in filled], width, align="edge",
                 color="#7f7f7f", edgecolor="white")
        hist.set_xlabel("confidence (top-class probability)")
        hist.set_ylabel("share of rows")
    except BaseException:
        plt.close(fig)
        raise
    return _save(fig, path)


@dataclass(frozen=True)
class Sample:
    """One predicted image: raw uint8 HWC bytes, its shape, true and predicted class index."""

    image: bytes
    shape: tuple[int, int, int]
    label: int
    prediction: int

    @property
    def wrong(self) -> bool:
        return self.label != self.prediction


def pick_samples(samples: list[Sample], n_wrong: int = SAMPLE_WRONG,
                 n_right: int = SAMPLE_RIGHT) -> list[Sample]:
    """Up to ``n_wrong`` misclassified samples, then up to ``n_right`` right ones (in order)."""
    wrong = [s for s in samples if s.wrong][:n_wrong]
    right = [s for s in samples if not s.wrong][:n_right]
    return wrong + right


def sample_predictions(model: Any, df: Any, image_shape: tuple[int, int, int],
                       limit: int = SAMPLE_ROWS, n_wrong: int = SAMPLE_WRONG,
                       n_right: int = SAMPLE_RIGHT) -> list[Sample]:
    """Transform at most ``limit`` labelled rows of ``df`` with ``model`` and return the
    samples ``plot_samples`` shows (bounded cost: only those rows are predicted and
    collected). ``image_shape`` (H, W, C) is used where the rows carry no shape columns."""
    from pyspark.sql import functions as F

    get = model.getOrDefault
    image_col = get("imageCol") if model.hasParam("imageCol") else "image"
    label_col = get("labelCol") if model.hasParam("labelCol") else "label"
    prediction_col = get("predictionCol")
    if label_col not in df.columns:
        return []
    rows = df.filter(F.col(label_col).isNotNull()).limit(limit)
    shape_cols = [c for c in ("height", "width", "channels") if c in df.columns]
    keep = [image_col, label_col, prediction_col] + (shape_cols if len(shape_cols) == 3 else [])
    found = []
    for row in model.transform(rows).select(*keep).collect():
        shape = ((int(row["height"]), int(row["width"]), int(row["channels"]))
                 if len(keep) == 6 else (image_shape[0], image_shape[1], image_shape[2]))
        found.append(Sample(bytes(row[image_col]), shape, int(row[label_col]),
                            int(row[prediction_col])))
    return pick_samples(found, n_wrong, n_right)


def plot_samples(samples: list[Sample], classes: list[str], path: str | Path,
                 title: str = "Test images: true vs predicted", columns: int = 8) -> Path:
    """A grid of images titled ``true → predicted``; a misclassified one has a red title and
    a thick red border, a right one a green title."""

    from sparkvision.data.images import stored_to_array

    plt = _pyplot()

    def name(i: int) -> str:
        return classes[i] if 0 <= i < len(classes) else str(i)

    n = max(1, len(samples))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.85 * rows + 0.5), squeeze=False)
    try:
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.axis("off")
        for ax, s in zip(axes.flat, samples, strict=False):
            h, w, c = s.shape
            image = stored_to_array(bytes(s.image), (h, w, c))
            ax.axis("on")
            if c == 1:
                ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(image[:, :, :3])
            color = _WRONG if s.wrong else _RIGHT
            mark = "✗ " if s.wrong else ""
            ax.set_title(f"{mark}{name(s.label)} → {name(s.prediction)}", color=color,
                         fontsize=8, fontweight="bold" if s.wrong else "normal")
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(4 if s.wrong else 1)
        wrong = sum(s.wrong for s in samples)
        fig.suptitle(f"{title} ({wrong} wrong in red, {len(samples) - wrong} right)",
                     fontsize=10)
    except BaseException:
        plt.close(fig)
        raise
    return _save(fig, path)
