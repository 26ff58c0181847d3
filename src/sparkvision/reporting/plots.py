"""The report's own plots, rendered to PNG bytes in memory (matplotlib, Agg backend):
training curves, class counts before/after balancing, streaming latency, tuning curves."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sparkvision.training.history import EpochRecord


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    """``fig`` as PNG bytes (dpi 100); the figure is closed."""
    plt = _pyplot()
    try:
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _series(epochs: list[EpochRecord], value: Callable[[EpochRecord], float | None]
            ) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for e in epochs:
        v = value(e)
        if v is not None:
            xs.append(e.epoch)
            ys.append(float(v))
    return xs, ys


#: The two panels of the training curves: (name, ((label, value of an epoch), ...)).
_CURVES = (
    ("loss", (("train loss", lambda e: e.train_loss), ("val loss", lambda e: e.val_loss))),
    ("accuracy", (("train accuracy", lambda e: e.train_accuracy),
                  ("val accuracy", lambda e: e.val_accuracy))),
)


def training_curves(epochs: list[EpochRecord], title: str = "Training") -> bytes | None:
    """Train/val loss and train/val accuracy per epoch (``history.epochs``); None when
    no epoch has a number to plot."""
    if not any(_series(epochs, value)[0] for _, curves in _CURVES for _, value in curves):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (name, curves) in zip(axes, _CURVES, strict=True):
        for (label, value), style in zip(curves, ("o-", "s--"), strict=True):
            xs, ys = _series(epochs, value)
            if xs:
                ax.plot(xs, ys, style, label=label, markersize=4)
        ax.set_xlabel("epoch")
        _integer_x(ax)
        ax.set_ylabel(name)
        ax.set_title(f"{title}: {name}")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _png(fig)


def class_distribution(before: dict[str, int], seen: dict[str, int] | None,
                       title: str = "Training rows per class") -> bytes:
    """Bars of the rows per class before balancing and as the training saw them."""
    import numpy as np

    plt = _pyplot()
    names = list(before)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(min(16.0, 3.0 + 0.6 * len(names)), 3.6))
    width = 0.4 if seen else 0.8
    ax.bar(x - (width / 2 if seen else 0), [before[n] for n in names], width,
           label="before balancing", color="#9e9e9e")
    if seen:
        ax.bar(x + width / 2, [seen.get(n, 0) for n in names], width, label="as seen",
               color="#1f77b4")
    ax.set_xticks(x, labels=names, rotation=45 if len(names) > 12 else 0)
    top = max([*before.values(), *(seen or {}).values(), 1])
    ax.set_ylim(0, top * 1.2)
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
    return _png(fig)


def stream_latency_figure(batches: list[dict[str, Any]],
                          title: str = "Micro-batch latency") -> Any | None:
    """The figure of :func:`stream_latency` (open: the caller closes it); None without a
    timed batch. The x axis shows whole micro-batch numbers only, from the first batch to
    the last, each bar drawn whole (a one-batch stream: one tick, its number)."""
    from matplotlib.ticker import MaxNLocator

    points = [(int(b.get("batch", i)), float(b["ms"]), int(b.get("rows") or 0))
              for i, b in enumerate(batches) if isinstance(b.get("ms"), int | float)]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ids = [p[0] for p in points]
    rows_ax = ax.twinx()
    rows_ax.bar(ids, [p[2] for p in points], color="#c8e6c9", label="rows")
    rows_ax.set_ylabel("rows")
    ax.set_zorder(rows_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(ids, [p[1] for p in points], "o-", color="#1f77b4", markersize=3,
            label="latency (ms)")
    ax.set_xlabel("micro-batch")
    # integer ticks even where the view holds one whole number (min_n_ticks=1; the
    # default 2 falls back to fractions: a one-batch stream was drawn from -0.4 to 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(min(ids) - 0.6, max(ids) + 0.6)  # the bars (0.8 wide) whole, no other id
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


def stream_latency(batches: list[dict[str, Any]], title: str = "Micro-batch latency") -> \
        bytes | None:
    """Latency (ms, line) and rows (bars, right axis) per micro-batch of a stream's
    ``_stream.json``; None without a timed batch."""
    fig = stream_latency_figure(batches, title)
    return None if fig is None else _png(fig)


def stream_drift(batches: list[dict[str, Any]], threshold: float,
                 title: str = "Drift per window") -> bytes | None:
    """The drift score (largest PSI against the reference profile) of the window ending at
    each micro-batch of a stream's ``_stream.json``, the threshold as a dashed line and the
    windows that warned in red; None without a window."""
    from matplotlib.ticker import MaxNLocator

    points = [(int(b["batch"]), float(b["drift"]["score"]), bool(b["drift"].get("warning")))
              for b in batches if isinstance(b.get("drift"), dict)
              and isinstance(b["drift"].get("score"), int | float)]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ids = [p[0] for p in points]
    ax.plot(ids, [p[1] for p in points], "o-", color="#1f77b4", markersize=3,
            label="drift score (max PSI)")
    warned = [p for p in points if p[2]]
    if warned:
        ax.plot([p[0] for p in warned], [p[1] for p in warned], "o", color="#d62728",
                label="warning")
    ax.axhline(threshold, color="#d62728", linestyle="--", linewidth=1,
               label=f"threshold {threshold:g}")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(min(ids) - 0.6, max(ids) + 0.6)
    ax.set_xlabel("micro-batch (window's last)")
    ax.set_ylabel("PSI")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return _png(fig)


def trial_curves(trials: list[dict[str, Any]], metric: str | None,
                 title: str = "Trials: metric per epoch") -> bytes | None:
    """One line per trial of its per-epoch metric (pruned dashed, failed dotted); None when
    no trial has a curve."""
    curves = [t for t in trials if t.get("metric_per_epoch")]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    styles = {"pruned": "--", "failed": ":"}
    for t in curves:
        ys = [float(v) for v in t["metric_per_epoch"] if isinstance(v, int | float)]
        ax.plot(range(1, len(ys) + 1), ys, styles.get(str(t.get("state")), "-"), marker="o",
                markersize=3, label=f"#{t.get('number')} {t.get('state')}")
    ax.set_xlabel("epoch")
    _integer_x(ax)
    ax.set_ylabel(metric or "metric")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) <= 12:
        ax.legend(fontsize=7, ncol=2)
    return _png(fig)
