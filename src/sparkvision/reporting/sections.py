"""The report's sections, each built from found artefacts: ``summary``, ``dataset``,
``training``, ``evaluation``, ``explanations``, ``tuning`` and ``streaming`` (a second model,
data set, … gets
``training-2``, ``dataset-2``, …). A section exists only when its artefacts do."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sparkvision.reporting import plots
from sparkvision.reporting.artefacts import (
    Artefacts,
    Dataset,
    Evaluation,
    Explanation,
    Model,
    Stream,
    Study,
)
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
    thumbs,
)
from sparkvision.reporting.reading import read_png
from sparkvision.training.history import EpochRecord, TrainingHistory

#: Rejected files listed at most (the total is always given).
MAX_REJECTED = 50
#: Per-micro-batch rows listed at most (the latency plot shows all).
MAX_BATCH_ROWS = 100
#: The per-epoch table's columns (``_epoch_row``), then ``epsilon`` under privacy="dp".
EPOCH_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                 "seconds", "samples_per_second", "steps_per_rank")
METRIC_KEYS = ("n", "accuracy", "macro_precision", "macro_recall", "macro_f1",
               "weighted_precision", "weighted_recall", "weighted_f1", "log_loss",
               "top_k_accuracy", "macro_roc_auc", "macro_pr_auc")
PER_CLASS_KEYS = ("precision", "recall", "f1", "support", "roc_auc", "pr_auc")
#: Explained images shown per class and group (right, wrong, unlabelled); explain.json
#: lists them all.
MAX_EXPLAINED_SHOWN = 4
STREAM_KEYS = ("batches", "rows", "rejected", "model_versions", "p50_ms", "p95_ms",
               "rows_per_s", "stopped", "seconds")


def section_id(base: str, index: int) -> str:
    """``base`` for the first of a kind, ``base-2``, ``base-3``, … after it."""
    return base if index == 0 else f"{base}-{index + 1}"


def where(path: Path, root: Path) -> str:
    """``path`` relative to the report's folder (``.`` for the folder itself)."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return str(path)
    return str(rel) if str(rel) != "." else f". ({root.resolve().name})"


def _figure(path: Path, root: Path) -> str:
    png = read_png(path)
    return image(png, path.stem.replace("_", " "), where(path, root)) if png else ""


def _val_accuracy(model: Model) -> float | None:
    """The last epoch's validation accuracy (None without epochs or validation)."""
    last = model.history.last_epoch
    return last.val_accuracy if last else None


def _epoch_row(e: EpochRecord, dp: bool) -> list[Any]:
    """One row of the per-epoch table: ``EPOCH_COLUMNS``, then ε when ``dp``."""
    row = [e.epoch, e.train_loss, e.train_accuracy, e.val_loss, e.val_accuracy, e.lr,
           e.seconds, e.samples_per_second, e.steps_per_rank]
    return [*row, e.epsilon] if dp else row


def _distribution(h: TrainingHistory) -> list[tuple[str, Any]]:
    """The "Distributed run" table: where and how the training ran (empty when the history
    is: a model that was not trained)."""
    if not h.world_size:
        return []
    return [("world_size", h.world_size), ("ranks", h.ranks),
            ("train_rows_per_rank", h.train_rows_per_rank),
            ("val_rows_per_rank", h.val_rows_per_rank), ("steps_per_epoch", h.steps_per_epoch),
            ("backend", h.backend), ("allreduce", h.allreduce), ("device", h.device),
            ("attempts", h.attempts), ("resumed_from_epoch", h.resumed_from_epoch),
            ("stopped_early", h.stopped_early), ("diverged", h.diverged),
            ("progress_events", h.progress_events), ("checkpoint_dir", h.checkpoint_dir),
            ("seconds", h.seconds)]


# --- summary ---------------------------------------------------------------------------------

def summary(found: Artefacts) -> Section:
    """What was found, and the headline numbers."""
    root = found.root
    parts: list[str] = []
    numbers: list[tuple[str, Any]] = []
    models = found.all_models()
    for model in models:
        evaluation = model.headline()
        if evaluation is not None:
            prefix = f"{where(model.path, root)} · {evaluation.name}"
            numbers.append((f"{prefix} accuracy", evaluation.metrics.get("accuracy")))
            numbers.append((f"{prefix} macro F1", evaluation.metrics.get("macro_f1")))
        elif _val_accuracy(model) is not None:
            numbers.append((f"{where(model.path, root)} · val accuracy", _val_accuracy(model)))
    for evaluation in found.evaluations:
        numbers.append((f"{where(evaluation.path, root)} accuracy",
                        evaluation.metrics.get("accuracy")))
        numbers.append((f"{where(evaluation.path, root)} macro F1",
                        evaluation.metrics.get("macro_f1")))
    for study in found.studies:
        best = study.best_trial()
        if best is not None:
            numbers.append((f"{where(study.path, root)} best {study.metric or 'value'}",
                            best.get("value")))
    for stream in found.streams:
        s = stream.stats.get("summary") or {}
        numbers.append((f"{where(stream.path, root)} rows streamed", s.get("rows")))
        numbers.append((f"{where(stream.path, root)} p50 ms", s.get("p50_ms")))
    if numbers:
        parts.append(cards(numbers[:12]))
    rows: list[tuple[Any, ...]] = []
    for data in found.datasets:
        m = data.manifest
        rows.append(("data set", ", ".join(where(p, root) for p in data.paths),
                     f"{len(m.get('classes') or [])} classes, "
                     f"{sum((m.get('splits') or {}).values())} images, "
                     f"source {m.get('source')}"))
    for model in models:
        evals = ", ".join(e.name for e in model.evaluations) or "none"
        rows.append((model.role, where(model.path, root),
                     f"{model.params.get('model', '?')}, {len(model.history.epochs)}"
                     f" epochs on {model.history.world_size or '?'} workers, val accuracy "
                     f"{_num(_val_accuracy(model))}; evaluations: {evals}"))
    for explanation in [e for m in models for e in m.explanations] + found.explanations:
        x = explanation.summary
        rows.append(("explanation", where(explanation.path, root),
                     f"{x.get('method')} (target {x.get('target')}) on {x.get('rows')} rows, "
                     f"{len(x.get('images') or [])} images explained"))
    for evaluation in found.evaluations:
        rows.append(("evaluation", where(evaluation.path, root),
                     f"{evaluation.metrics.get('n')} rows, accuracy "
                     f"{_num(evaluation.metrics.get('accuracy'))}"))
    for study in found.studies:
        states = Counter(str(t.get("state")) for t in study.trials)
        rows.append(("tuning study", where(study.path, root),
                     f"{len(study.trials)} trials ("
                     + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")"))
    for stream in found.streams:
        s = stream.stats.get("summary") or {}
        rows.append(("stream output", where(stream.path, root),
                     f"{s.get('batches')} micro-batches, {s.get('rows')} rows, stopped: "
                     f"{s.get('stopped')}"))
    parts.append(table(("what", "where", "details"), rows))
    return Section("summary", "Summary", "\n".join(parts))


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


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
        rows = [(r.get("path"), r.get("reason")) if isinstance(r, dict) else (r, "")
                for r in shown]
        parts.append(table(("file", "reason"), rows))
        if total > len(shown):
            parts.append(paragraph(f"… and {total - len(shown)} more (see "
                                   f"{where(data.paths[0], root)}/{listing})", "muted"))
    else:
        parts.append(paragraph("none", "muted"))
    return Section(section_id("dataset", index), "Data set" + _suffix(index, data.paths[0],
                                                                      root), "\n".join(parts))


def _suffix(index: int, path: Path, root: Path) -> str:
    return f" — {where(path, root)}" if index or path.resolve() != root.resolve() else ""


# --- training --------------------------------------------------------------------------------

def training(model: Model, index: int, root: Path) -> Section:
    """Params, the distribution record, balancing, per-epoch table and plots."""
    h = model.history
    epochs = h.epochs
    parts = [paragraph(f"{model.role} at {where(model.path, root)}", "muted")]
    curves = plots.training_curves(epochs, title=model.path.name)
    if curves:
        parts.append(image(curves, "training curves", "loss and accuracy per epoch"))
    if epochs:
        dp = any(e.epsilon is not None for e in epochs)
        columns = [*EPOCH_COLUMNS, "epsilon"] if dp else list(EPOCH_COLUMNS)
        parts += [heading(3, "Per epoch"), table(columns, [_epoch_row(e, dp) for e in epochs])]
    parts += [heading(3, "Distributed run"), kv_table(_distribution(h))]
    balance = h.balance
    if balance is not None:
        parts.append(heading(3, "Class balance", f"strategy {balance.strategy}"))
        parts.append(kv_table([("strategy", balance.strategy), ("loss", balance.loss),
                               ("class weights", balance.class_weights)]))
        before, seen = balance.class_counts, balance.class_counts_seen
        if before:
            weights = balance.class_weights
            rows = []
            for i, name in enumerate(before):
                w = weights[i] if weights is not None and i < len(weights) else None
                rows.append((name, before.get(name), seen.get(name), w))
            parts.append(table(("class", "rows before", "rows seen", "loss weight"), rows))
            parts.append(image(plots.class_distribution(before, seen or None),
                               "class distribution", "training rows per class, before "
                               "balancing and as the training saw them"))
    privacy = h.privacy
    if privacy is not None:
        parts.append(heading(3, "Differential privacy",
                             f"ε = {privacy.epsilon} at δ = {privacy.delta}"))
        parts.append(paragraph(
            "Trained with DP-SGD (Opacus): the model behaves almost the same whether or not "
            "any one training image was used — at most a factor e^ε, except with "
            "probability δ.", "muted"))
        budget = privacy.stopped_at_budget  # None: a history from before it was recorded
        parts.append(kv_table([
            ("epsilon", privacy.epsilon), ("delta", privacy.delta),
            ("target_epsilon", privacy.target_epsilon), ("accountant", privacy.accountant),
            ("noise_multiplier", privacy.noise_multiplier),
            ("sample_rate", privacy.sample_rate), ("max_grad_norm", privacy.max_grad_norm),
            ("stopped_at_budget", ... if budget is None else budget)]))
    transfer = h.transfer
    if transfer is not None and (transfer.init is not None or transfer.head):
        init = transfer.init
        parts.append(heading(3, "Transfer learning"))
        parts.append(kv_table([
            ("started from", init and init.source), ("tensors loaded", init and init.loaded),
            ("missing", init and init.missing), ("unexpected", init and init.unexpected),
            ("shape-mismatched", init and init.shape_mismatched),
            ("head re-initialised", init and init.head_reinitialised),
            ("head", transfer.head), ("freeze", transfer.freeze),
            ("frozen tensors", transfer.frozen_tensors),
            ("backbone lr scale", transfer.backbone_lr_scale)]))
    parts.append(heading(3, "Params"))
    parts.append(table(
        ("Param", "value", "set"),
        [(name, model.params[name], "set" if name in model.explicit else "default")
         for name in sorted(model.params)]))
    return Section(section_id("training", index), "Training — " + where(model.path, root),
                   "\n".join(parts))


# --- evaluation ------------------------------------------------------------------------------

def _evaluation_block(evaluation: Evaluation, root: Path) -> str:
    m = evaluation.metrics
    top_k = m.get("top_k")
    labels = {"top_k_accuracy": f"top-{top_k} accuracy" if top_k else "top-k accuracy"}
    rows = [(labels.get(k, k.replace("_", " ")), m.get(k)) for k in METRIC_KEYS if k in m]
    rejected = m.get("rejected")
    if isinstance(rejected, list):
        rows.append(("rejected input files", len(rejected)))
    parts = [heading(3, f"split {evaluation.name}", where(evaluation.path, root)),
             kv_table(rows)]
    per_class = m.get("per_class") or {}
    if per_class:
        body = []
        for name, values in per_class.items():
            recall = values.get("recall")
            label = span(name, "bad") if isinstance(recall, float) and recall < 0.5 else name
            body.append([label, *(values.get(k) for k in PER_CLASS_KEYS)])
        parts += [heading(4, "Per class"), table(("class", *PER_CLASS_KEYS), body)]
    parts += [_figure(p, root) for p in evaluation.pngs]
    return "\n".join(p for p in parts if p)


def evaluation(evaluations: list[Evaluation], index: int, root: Path,
               owner: Path | None) -> Section:
    """Metrics, per-class table and PNGs of each evaluation folder (of one model, or found
    on their own when ``owner`` is None)."""
    title = "Evaluation — " + (where(owner, root) if owner else "other folders")
    parts = [_evaluation_block(e, root) for e in evaluations]
    return Section(section_id("evaluation", index), title, "\n".join(parts))


# --- explanations ------------------------------------------------------------------------

def _explanation_block(explanation: Explanation, root: Path) -> str:
    s = explanation.summary
    images = [r for r in s.get("images") or [] if isinstance(r, dict)]
    means = [r for r in s.get("class_means") or [] if isinstance(r, dict)]
    method = s.get("method")
    parts = [heading(3, f"{method} · target {s.get('target')}", where(explanation.path, root)),
             kv_table([
                 ("method", method),
                 ("layer", s.get("layer") if s.get("layer") else ...),
                 ("class explained", s.get("target")),
                 ("maps", "signed: red for, blue against the class" if s.get("signed")
                  else "≥ 0: red is where the model looks most"),
                 ("data", s.get("data", ...)),
                 ("split", s.get("split", ...)),
                 ("rows", s.get("rows")),
                 ("images explained", len(images)),
                 ("per class and group", s.get("per_class")),
                 ("seconds", s.get("seconds", ...)),
             ])]
    mean_items = []
    for m in means:
        png = explanation.png(m.get("file"))
        data = read_png(png) if png else None
        if data:
            mean_items.append((data, f"mean map of {m.get('class')}",
                               f"{m.get('class')} · {m.get('rows')} rows", ""))
    if mean_items:
        parts += [heading(4, "Mean map per class", "over every row of the class, on its "
                          "mean image"), thumbs(mean_items)]
    by_class: dict[str, list[dict[str, Any]]] = {}
    for r in images:
        by_class.setdefault(str(r.get("true") if r.get("true") is not None
                                else r.get("predicted")), []).append(r)
    rows = []
    for name, records in by_class.items():
        cells: list[Any] = [name]
        for correct, cls in ((True, "good"), (False, "bad"), (None, "muted")):
            shown = [r for r in records if r.get("correct") is correct][:MAX_EXPLAINED_SHOWN]
            items = []
            for r in shown:
                png = explanation.png(r.get("file"))
                data = read_png(png) if png else None
                if data:
                    score = r.get("score")
                    caption = (f"{r.get('true')} → {r.get('predicted')}"
                               if r.get("true") is not None else f"→ {r.get('predicted')}")
                    if isinstance(score, int | float):
                        caption += f" · p={score:.2f}"
                    items.append((data, str(r.get("key")), caption, cls))
            cells.append(thumbs(items) if items else Markup(""))
        rows.append(cells)
    if rows:
        headers = ["class", "right", "wrong"]
        if not any(r.get("correct") is None for r in images):
            rows = [r[:3] for r in rows]
        else:
            headers.append("unlabelled")
        parts += [heading(4, "Right and wrong, per class",
                          f"up to {MAX_EXPLAINED_SHOWN} of each; caption: true → predicted · "
                          "probability of the explained class"),
                  table(headers, rows)]
    return "\n".join(p for p in parts if p)


def explanations(found: list[Explanation], index: int, root: Path,
                 owner: Path | None) -> Section:
    """What the model looks at: each ``explain`` output's per-class mean maps and its right
    and wrong images with their maps (of one model, or found on their own)."""
    title = "What the model looks at — " + (where(owner, root) if owner else "other folders")
    return Section(section_id("explanations", index), title,
                   "\n".join(_explanation_block(e, root) for e in found))


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
    parts += [_figure(p, root) for p in study.pngs]
    curves = plots.trial_curves(study.trials, study.metric)
    if curves:
        parts.append(image(curves, "trial curves", "metric per epoch of every trial"))
    return Section(section_id("tuning", index), "Tuning — " + where(study.path, root),
                   "\n".join(p for p in parts if p))


# --- streaming -------------------------------------------------------------------------------

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
    if batches:
        shown = batches[:MAX_BATCH_ROWS]
        columns = ("batch", "rows", "ms", "rows_per_s", "rejected", "model_version")
        parts += [heading(3, "Micro-batches", f"{len(batches)} in all"),
                  table(columns, [[b.get(c) for c in columns] for b in shown])]
        if len(batches) > len(shown):
            parts.append(paragraph(f"… and {len(batches) - len(shown)} more", "muted"))
    return Section(section_id("streaming", index), "Streaming — " + where(stream.path, root),
                   "\n".join(parts))


def build_sections(found: Artefacts) -> list[Section]:
    """Every section for ``found``, in report order."""
    root = found.root
    sections = [summary(found)]
    sections += [dataset(d, i, root) for i, d in enumerate(found.datasets)]
    models = found.all_models()
    sections += [training(m, i, root) for i, m in enumerate(models)]
    evaluated = [(m.evaluations, m.path) for m in models if m.evaluations]
    if found.evaluations:
        evaluated.append((found.evaluations, None))
    sections += [evaluation(evals, i, root, owner) for i, (evals, owner) in enumerate(evaluated)]
    explained = [(m.explanations, m.path) for m in models if m.explanations]
    if found.explanations:
        explained.append((found.explanations, None))
    sections += [explanations(e, i, root, owner) for i, (e, owner) in enumerate(explained)]
    sections += [tuning(s, i, root) for i, s in enumerate(found.studies)]
    sections += [streaming(s, i, root) for i, s in enumerate(found.streams)]
    return sections

