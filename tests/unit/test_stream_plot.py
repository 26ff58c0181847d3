"""The report's stream latency plot: its x axis shows whole micro-batch numbers, for a
one-batch stream too (it was drawn from -0.4 to 0.4 with fractional ticks)."""

from __future__ import annotations

import json

import pytest

from sparkvision.reporting import plots
from sparkvision.streaming.monitor import BatchProgress, write_stats


def _stats_batches(tmp_path, ids: list[int]) -> list[dict]:
    """The ``batches`` of the ``_stream.json`` that ``sparkvision stream`` writes for a
    stream whose micro-batches are ``ids``."""
    progress = [BatchProgress(i, 100, 400 + 10 * i, 250.0) for i in ids]
    path = write_stats(str(tmp_path), {"batches": len(ids)}, progress, [])
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)["batches"]


def _x_labels(fig) -> tuple[tuple[float, float], list[str]]:
    """The x view and the tick labels drawn inside it."""
    ax = fig.axes[0]
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    return (lo, hi), [t.get_text() for t in ax.get_xticklabels()
                      if lo <= t.get_position()[0] <= hi]


@pytest.mark.parametrize("ids", [[0], [7], [0, 1], [3, 4, 5], list(range(20)),
                                 list(range(5, 300))])
def test_stream_plot_axis_is_whole_batch_numbers(tmp_path, ids):
    fig = plots.stream_latency_figure(_stats_batches(tmp_path, ids))
    try:
        (lo, hi), labels = _x_labels(fig)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    assert labels, "no tick on the micro-batch axis"
    numbers = [int(t.replace("\N{MINUS SIGN}", "-")) for t in labels]  # "0.4" raises here
    assert all(min(ids) <= n <= max(ids) for n in numbers), (numbers, ids)
    assert lo < min(ids) - 0.4 and hi > max(ids) + 0.4  # every bar drawn whole
    if len(ids) <= 3:
        assert numbers == ids  # a short stream: every batch named


def test_stream_plot_one_batch_in_the_report_png(tmp_path):
    png = plots.stream_latency(_stats_batches(tmp_path, [0]))
    assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n")
    assert plots.stream_latency([{"batch": 0, "rows": 3, "ms": None}]) is None
