"""Follow a running prediction stream: per-micro-batch latency from the query progress, one
live line, and the summary ``sparkvision stream --json`` prints."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BatchProgress:
    """One micro-batch as the query progress reports it."""

    batch: int
    rows: int
    ms: int  # triggerExecution: planning + reading + predicting + writing
    rows_per_s: float


def batch_progress(query) -> list[BatchProgress]:
    """The micro-batches with input among the query's recent progress updates."""
    found = []
    for p in query.recentProgress:
        rows = int(p.numInputRows or 0)
        if rows:
            ms = int(p.durationMs.get("triggerExecution", 0))
            found.append(BatchProgress(int(p.batchId), rows, ms,
                                       round(float(p.processedRowsPerSecond or 0.0), 1)))
    return found


def summarize(progress: list[BatchProgress], written: dict[str, Any]) -> dict[str, Any]:
    """``batches``, ``rows``, ``rejected`` (from what was written) and latency p50/p95 and
    rows/s (from the progress of the batches this run saw)."""
    ms = np.array([b.ms for b in progress], dtype=np.float64)
    rows = sum(b.rows for b in progress)
    return {
        **written,
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
        "rows_per_s": round(rows / (ms.sum() / 1000.0), 1) if ms.sum() else None,
    }


def drift_text(drift: dict[str, Any] | None) -> str | None:
    """A window's drift in a few words: ``drift 0.04`` or ``DRIFT 3.1 > 0.2 (pixel_mean_c0)``
    (``streaming/drift.py``'s ``DriftWindow`` as a dict); None without one."""
    if not drift:
        return None
    if drift.get("warning"):
        return f"DRIFT {drift['score']:.2f} > {drift['threshold']:g} ({drift['feature']})"
    return f"drift {drift['score']:.2f}"


def live_line(b: BatchProgress, rejected: int | None, version: str | None,
              drift: dict[str, Any] | None = None) -> str:
    parts = [f"batch {b.batch}", f"{b.rows} rows"]
    if rejected:
        parts.append(f"{rejected} rejected")
    parts += [f"{b.ms} ms", f"{b.rows_per_s:.0f} rows/s"]
    if version:
        parts.append(f"model {version}")
    text = drift_text(drift)
    if text:
        parts.append(text)
    return "stream: " + " · ".join(parts)


def follow(query, timeout: float | None, on_batch: Callable[[BatchProgress], None],
           poll_s: float = 0.25) -> bool:
    """Wait until the query ends or ``timeout`` seconds pass, calling ``on_batch`` once per
    new micro-batch. Returns True when the query ended by itself."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: set[int] = set()

    def report() -> None:
        for b in batch_progress(query):
            if b.batch not in seen:
                seen.add(b.batch)
                on_batch(b)

    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            report()
            return False
        ended = query.awaitTermination(min(poll_s, left) if left is not None else poll_s)
        report()
        if ended:
            return True


#: The stats file ``sparkvision stream`` leaves in its output folder for ``report`` (Spark's
#: readers skip names starting with ``_``).
STATS_FILE = "_stream.json"


def write_stats(out: str, summary: dict[str, Any], progress: list[BatchProgress],
                records: Iterable[Any], **about: Any) -> str:
    """Write ``OUT/_stream.json`` (this run: ``about`` — model, input, format, checkpoint —,
    the summary and one entry per micro-batch, with the drift of the window it ends) under a
    temporary name, then rename it."""
    done = {r.batch: r for r in records}
    batches = []
    for b in progress:
        record = done.get(b.batch)
        batches.append({
            "batch": b.batch, "rows": b.rows, "ms": b.ms, "rows_per_s": b.rows_per_s,
            "rejected": record.rejected if record else None,
            "model_version": record.model_version if record else None,
            "drift": getattr(record, "drift", None) if record else None,
        })
    path = os.path.join(out, STATS_FILE)
    os.makedirs(out, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({**about, "summary": summary, "batches": batches}, fh, indent=2, default=str)
        fh.write("\n")
    os.replace(tmp, path)
    return path
