"""The report's sections of a trained model: ``training`` (Params, the distributed run,
balancing, privacy, transfer, per-epoch table and curves), ``evaluation`` (metrics, per-class
table and PNGs of each evaluation folder) and ``explanations`` (what the model looks at)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparkvision.reporting import plots
from sparkvision.reporting.artefacts import Evaluation, Explanation, Model
from sparkvision.reporting.html import (
    Markup,
    Section,
    heading,
    image,
    kv_table,
    paragraph,
    span,
    table,
    thumbs,
)
from sparkvision.reporting.reading import read_png
from sparkvision.reporting.section_common import figure, section_id, where
from sparkvision.training.history import EpochRecord, TrainingHistory

#: The per-epoch table's columns (``_epoch_row``), then ``epsilon`` under privacy="dp".
EPOCH_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                 "seconds", "samples_per_second", "steps_per_rank")
METRIC_KEYS = ("n", "accuracy", "macro_precision", "macro_recall", "macro_f1",
               "weighted_precision", "weighted_recall", "weighted_f1", "log_loss",
               "top_k_accuracy", "macro_roc_auc", "macro_pr_auc", "ece")
PER_CLASS_KEYS = ("precision", "recall", "f1", "support", "roc_auc", "pr_auc")
#: Explained images shown per class and group (right, wrong, unlabelled); explain.json
#: lists them all.
MAX_EXPLAINED_SHOWN = 4


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
    labels = {"top_k_accuracy": f"top-{top_k} accuracy" if top_k else "top-k accuracy",
              "ece": "expected calibration error"}
    if isinstance(m.get("temperature"), int | float) and m["temperature"] != 1:
        labels["ece"] += f" (temperature {m['temperature']:.4g})"
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
    parts += [figure(p, root) for p in evaluation.pngs]
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
