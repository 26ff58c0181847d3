"""The report's sections of the folders the other jobs write: ``dataset`` (a prepared data
set: classes, per-split per-class counts, rejected files), ``tuning`` (a study: best trial,
every trial, its plots) and ``streaming`` (a stream output: summary, latency, micro-batches)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sparkvision.reporting import plots
from sparkvision.reporting.artefacts import Dataset, Stream, Study
from sparkvision.reporting.html import (
    Markup,
    Section,
    cards,
    heading,
    image,
    kv_table,
    paragraph,
    span,
    table,
)
from sparkvision.reporting.section_common import figure, section_id, where

#: Rejected files listed at most (the total is always given).
MAX_REJECTED = 50
#: Per-micro-batch rows listed at most (the latency plot shows all).
MAX_BATCH_ROWS = 100
STREAM_KEYS = ("batches", "rows", "rejected", "model_versions", "p50_ms", "p95_ms",
               "rows_per_s", "stopped", "seconds")


# --- dataset ---------------------------------------------------------------------------------

def dataset(data: Dataset, index: int, root: Path) -> Section:
    """Classes, per-split per-class counts, rejected files, source, seed, shape, format."""
    m = data.manifest
    classes = [str(c) for c in m.get("classes") or []]
    splits = m.get("splits") or {}
    parts = [kv_table([
        ("found at", [where(p, root) for p in data.paths]),
        ("classes", f"{len(classes)}: {', '.join(classes)}"),
        ("image shape (H, W, C)", m.get("image_shape")),
        ("format", m.get("format")),
        ("source", m.get("source")),
        ("seed", m.get("seed")),
        ("split fractions", m.get("split_fractions", ...)),
        ("images per split", ", ".join(f"{k} {v}" for k, v in splits.items()) or None),
        ("imbalance", m.get("imbalance", ...)),
        ("seconds", m.get("seconds", ...)),
    ])]
    per_class = m.get("per_class") or {}
    if per_class:
        names = list(per_class)
        rows = []
        for c in classes or sorted({k for v in per_class.values() for k in v}):
            counts = [int((per_class.get(s) or {}).get(c, 0)) for s in names]
            rows.append([c, *counts, sum(counts)])
        totals = [sum(int(v) for v in (per_class.get(s) or {}).values()) for s in names]
        rows.append([Markup("<strong>total</strong>"), *totals, sum(totals)])
        parts += [heading(3, "Images per split and class"),
                  table(("class", *names, "all"), rows)]
    rejected = m.get("rejected") or []
    total = int(m.get("rejected_count") or len(rejected))
    listing = m.get("rejected_file") or "dataset.json"
    parts.append(heading(3, "Rejected files", f"{total} in all"))
    if rejected:
        shown = rejected[:MAX_REJECTED]
        listed = [(r.get("path"), r.get("reason")) if isinstance(r, dict) else (r, "")
                  for r in shown]
        parts.append(table(("file", "reason"), listed))
        if total > len(shown):
            parts.append(paragraph(f"… and {total - len(shown)} more (see "
                                   f"{where(data.paths[0], root)}/{listing})", "muted"))
    else:
        parts.append(paragraph("none", "muted"))
    return Section(section_id("dataset", index), "Data set" + _suffix(index, data.paths[0],
                                                                      root), "\n".join(parts))


def _suffix(index: int, path: Path, root: Path) -> str:
    return f" — {where(path, root)}" if index or path.resolve() != root.resolve() else ""


# --- tuning ----------------------------------------------------------------------------------

def tuning(study: Study, index: int, root: Path) -> Section:
    """Best trial, every trial, Optuna's PNGs and the metric per epoch of each trial."""
    best = study.best_trial()
    states = Counter(str(t.get("state")) for t in study.trials)
    parts = [kv_table([
        ("study", where(study.path, root)),
        ("metric", study.metric or "unknown (no study.db)"),
        ("direction", study.direction or "unknown (larger taken as better)"),
        ("trials", ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"),
        ("best trial", best.get("number") if best else None),
        ("best value", best.get("value") if best else None),
        ("best model", where(study.best.path, root) if study.best else None),
    ])]
    if best and best.get("params"):
        parts += [heading(3, "Best params"),
                  table(("Param", "value"), sorted(best["params"].items()))]
    rows = []
    for t in sorted(study.trials, key=lambda t: t.get("number", 0)):
        state = str(t.get("state"))
        cls = {"failed": "bad", "complete": "good"}.get(state, "muted")
        params = "; ".join(f"{k}={v}" for k, v in (t.get("params") or {}).items())
        error = t.get("error")
        rows.append([t.get("number"), span(state, cls), t.get("value"),
                     f"{t.get('epochs_run')}/{t.get('epochs')}" if t.get("epochs") else
                     t.get("epochs_run"), t.get("workers"), t.get("seconds"), params,
                     (str(error)[:300] if error else None)])
    parts += [heading(3, "Trials"),
              table(("#", "state", "value", "epochs run", "workers", "seconds", "params",
                     "error"), rows)]
    parts += [figure(p, root) for p in study.pngs]
    curves = plots.trial_curves(study.trials, study.metric)
    if curves:
        parts.append(image(curves, "trial curves", "metric per epoch of every trial"))
    return Section(section_id("tuning", index), "Tuning — " + where(study.path, root),
                   "\n".join(p for p in parts if p))


# --- streaming -------------------------------------------------------------------------------

def _drift_cell(window: object) -> str:
    """A window's drift in the micro-batch table: its score and, when it warned, why."""
    if not isinstance(window, dict) or not isinstance(window.get("score"), int | float):
        return ""
    text = f"{window['score']:.3f}"
    return f"{text} ⚠ {window.get('feature')}" if window.get("warning") else text


def _drift(name: str, summary: object, batches: list[dict]) -> list[Markup]:
    """The drift part of a stream's section: how it was watched, the warnings, the plot."""
    if not isinstance(summary, dict):
        return []
    if not summary.get("watched"):
        return [heading(3, "Drift"), paragraph(f"Not watched: {summary.get('note')}", "muted")]
    reference = summary.get("reference") or {}
    rows = [("threshold (PSI)", summary.get("threshold")),
            ("window (micro-batches)", summary.get("window")),
            ("reference", f"{reference.get('source')} ({reference.get('rows')} rows)"),
            ("largest score", summary.get("max_score")),
            ("warning windows", summary.get("warnings")),
            ("first warning at batch", summary.get("first_warning_batch"))]
    parts = [heading(3, "Drift", "the last micro-batches against the model's reference "
                     "profile"), kv_table(rows)]
    threshold = summary.get("threshold")
    plot = plots.stream_drift(batches, float(threshold) if isinstance(threshold, int | float)
                              else 0.2, title=f"{name}: drift per window")
    if plot:
        parts.append(image(plot, "stream drift", "the largest PSI of each window (class "
                           "distribution, confidence, per-channel pixel mean and std); red: "
                           "a warning"))
    return parts


def streaming(stream: Stream, index: int, root: Path) -> Section:
    """The stream's setup, summary numbers, latency plot and per-micro-batch table."""
    stats = stream.stats
    summary_ = stats.get("summary") or {}
    batches = [b for b in stats.get("batches") or [] if isinstance(b, dict)]
    parts = [
        cards([(k.replace("_", " "), summary_.get(k)) for k in
               ("rows", "batches", "p50_ms", "p95_ms", "rows_per_s") if k in summary_]),
        kv_table([("output", where(stream.path, root)), ("model", stats.get("model")),
                  ("input", stats.get("input")), ("format", stats.get("format")),
                  ("checkpoint", stats.get("checkpoint"))]
                 + [(k.replace("_", " "), summary_.get(k)) for k in STREAM_KEYS
                    if k in summary_]),
    ]
    latency = plots.stream_latency(batches, title=f"{stream.path.name}: micro-batch latency")
    if latency:
        parts.append(image(latency, "stream latency", "latency (line) and rows (bars) per "
                           "micro-batch"))
    parts += _drift(stream.path.name, summary_.get("drift"), batches)
    if batches:
        shown = batches[:MAX_BATCH_ROWS]
        columns = ("batch", "rows", "ms", "rows_per_s", "rejected", "model_version")
        drift = [_drift_cell(b.get("drift")) for b in shown]
        head = columns + (("drift",) if any(drift) else ())
        parts += [heading(3, "Micro-batches", f"{len(batches)} in all"),
                  table(head, [[b.get(c) for c in columns] + ([d] if any(drift) else [])
                               for b, d in zip(shown, drift, strict=True)])]
        if len(batches) > len(shown):
            parts.append(paragraph(f"… and {len(batches) - len(shown)} more", "muted"))
    return Section(section_id("streaming", index), "Streaming — " + where(stream.path, root),
                   "\n".join(parts))
