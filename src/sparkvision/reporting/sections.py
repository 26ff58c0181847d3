"""The report's sections in report order (:func:`build_sections`): the ``summary`` (what was
found and the headline numbers, built here), then ``dataset``, ``training``, ``evaluation``,
``explanations``, ``tuning`` and ``streaming`` (a second model, data set, … gets
``training-2``, ``dataset-2``, …). A section exists only when its artefacts do."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sparkvision.reporting.artefacts import Artefacts, Evaluation, Explanation, Model
from sparkvision.reporting.audit_section import audit
from sparkvision.reporting.html import Section, cards, table
from sparkvision.reporting.model_sections import evaluation, explanations, training
from sparkvision.reporting.output_sections import dataset, streaming, tuning
from sparkvision.reporting.section_common import where


def _val_accuracy(model: Model) -> float | None:
    """The last epoch's validation accuracy (None without epochs or validation)."""
    last = model.history.last_epoch
    return last.val_accuracy if last else None


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


def build_sections(found: Artefacts) -> list[Section]:
    """Every section for ``found``, in report order."""
    root = found.root
    sections = [summary(found)]
    sections += [dataset(d, i, root) for i, d in enumerate(found.datasets)]
    sections += [audit(a, i, root) for i, a in enumerate(found.audits)]
    models = found.all_models()
    sections += [training(m, i, root) for i, m in enumerate(models)]
    evaluated: list[tuple[list[Evaluation], Path | None]] = [
        (m.evaluations, m.path) for m in models if m.evaluations]
    if found.evaluations:
        evaluated.append((found.evaluations, None))
    sections += [evaluation(evals, i, root, owner) for i, (evals, owner) in enumerate(evaluated)]
    explained: list[tuple[list[Explanation], Path | None]] = [
        (m.explanations, m.path) for m in models if m.explanations]
    if found.explanations:
        explained.append((found.explanations, None))
    sections += [explanations(e, i, root, owner) for i, (e, owner) in enumerate(explained)]
    sections += [tuning(s, i, root) for i, s in enumerate(found.studies)]
    sections += [streaming(s, i, root) for i, s in enumerate(found.streams)]
    return sections
