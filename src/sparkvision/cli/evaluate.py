"""`sparkvision evaluate`: every metric of a model on labelled data, computed by Spark."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from sparkvision import storage
from sparkvision.cli.common import add_common, emit
from sparkvision.cli.mlflow_flags import Tracking, add_mlflow_flags, tracked
from sparkvision.cli.predict import (
    add_backend_flag,
    add_input_flags,
    add_trust_flag,
    load_model_and_predictions,
)

METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_NORMALIZED_PNG = "confusion_matrix_normalized.png"
PER_CLASS_PNG = "per_class.png"
RELIABILITY_PNG = "reliability.png"
SAMPLES_PNG = "samples.png"


@tracked
def run(args: argparse.Namespace, tracking: Tracking) -> int:
    from sparkvision.errors import InvalidParameterError
    from sparkvision.ml.evaluator import evaluate_predictions

    if args.top_k < 1:
        raise InvalidParameterError("top-k", args.top_k, "use 1 or more")
    started = time.monotonic()
    _spark, model, df, rejected = load_model_and_predictions(args, image=not args.no_plots)
    result = evaluate_predictions(model, df, k=args.top_k)
    out = args.out or storage.join(args.model_dir, "evaluation", args.split)
    payload = result.to_dict()
    payload["rejected"] = rejected
    # a model trained with privacy="dp": the (ε, δ) its training data is protected by
    privacy = model.history.privacy
    payload["privacy"] = privacy.to_dict() if privacy else None
    # the model's probabilities are softmax(logits / temperature) (1: not calibrated)
    payload["temperature"] = model.getOrDefault("temperature")
    with storage.staged_folder(out) as local:  # uploaded at the end when OUT is a URL
        with open(os.path.join(local, METRICS_FILE), "w", encoding="utf-8") as fh:
            fh.write(json.dumps(payload, indent=2) + "\n")
        plots = []
        if not args.no_plots:
            plots = _plots(model, df, result, Path(local),
                           f"{storage.basename(args.model_dir)} on {args.split}")
        payload.update(tracking.evaluated(Path(local), plots))  # --mlflow: a run + its id
    if not storage.is_local(out):
        plots = [storage.join(out, os.path.relpath(p, local)) for p in plots]
    payload.update(out=str(out), plots=plots, seconds=round(time.monotonic() - started, 3))
    lines = [
        f"evaluated {args.model_dir} on {result.n} rows → {out}",
        f"  accuracy {result.accuracy:.4f}  macro F1 {result.macro_f1:.4f}  "
        f"log-loss {result.log_loss:.4f}  top-{result.top_k} {result.top_k_accuracy:.4f}  "
        f"ECE {result.ece:.4f} (temperature {payload['temperature']:g})",
        f"  {'class':>12s} {'precision':>9s} {'recall':>7s} {'f1':>7s} {'support':>7s} "
        f"{'roc_auc':>7s}",
    ]
    for name, m in result.per_class.items():
        auc = "-" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
        lines.append(f"  {name[:12]:>12s} {m['precision']:9.4f} {m['recall']:7.4f} "
                     f"{m['f1']:7.4f} {m['support']:7d} {auc:>7s}")
    emit(args, payload, "\n".join(lines))
    return 0


def _plots(model, df, result, out: Path, title: str) -> list[str]:
    """The PNGs of an evaluation: confusion matrix (counts, row-normalised), per-class bars,
    the reliability diagram and a grid of sample images (from at most ``SAMPLE_ROWS`` rows
    of ``df``)."""
    from sparkvision.evaluation.metric_plots import (
        plot_confusion,
        plot_per_class,
        plot_reliability,
        plot_samples,
        sample_predictions,
    )

    written = [
        plot_confusion(result.confusion, result.classes, out / CONFUSION_PNG, title=title),
        plot_confusion(result.confusion, result.classes, out / CONFUSION_NORMALIZED_PNG,
                       title=f"{title} (row-normalised)", normalize=True),
        plot_per_class(result.per_class, out / PER_CLASS_PNG, title=title),
        plot_reliability(result.reliability, result.ece, out / RELIABILITY_PNG, title=title),
    ]
    samples = sample_predictions(model, df, tuple(model.getImageShape()))
    if samples:
        written.append(plot_samples(samples, result.classes, out / SAMPLES_PNG,
                                    title=f"{title}: true → predicted"))
    else:  # no labelled rows: no grid, and none left from an earlier run
        (out / SAMPLES_PNG).unlink(missing_ok=True)
    return [str(p) for p in written]


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics, per-class report and confusion matrix")
    add_input_flags(p)
    p.add_argument("--out", default=None,
                   help="folder for metrics.json and plots (default MODEL_DIR/evaluation/SPLIT)")
    p.add_argument("--top-k", type=int, default=5, help="k of top_k_accuracy (default 5)")
    p.add_argument("--no-plots", action="store_true",
                   help="skip the PNGs (confusion matrices, per-class bars, sample images)")
    add_backend_flag(p)
    add_trust_flag(p)
    add_mlflow_flags(p)
    add_common(p)
    p.set_defaults(func=run)
