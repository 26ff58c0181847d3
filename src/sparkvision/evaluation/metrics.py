"""Classification metrics computed by Spark on a predictions DataFrame.

Only small aggregates reach the driver: a K×K confusion matrix, a few sums, and per-class
curve areas. ROC-AUC and PR-AUC are exact (no binning): one sort of the (class, score) pairs
per class, whose RANGE window frames count the positives and negatives at or below and tied
with each score (Mann-Whitney with ties counted half; average precision as scikit-learn's
``average_precision_score``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sparkvision.errors import DataError, InvalidParameterError
from sparkvision.evaluation.calibration import expected_calibration_error, reliability_bins

#: Smallest probability used in log-loss (scikit-learn's: float64 machine epsilon).
LOG_LOSS_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Columns:
    label: str = "label"
    prediction: str = "prediction"
    probability: str = "probability"


@dataclass
class EvaluationResult:
    """Every metric of one evaluation; ``to_dict()`` is what ``--json`` prints."""

    classes: list[str]
    n: int
    accuracy: float
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    per_class: dict[str, dict[str, Any]]
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    log_loss: float | None = None
    top_k: int = 5
    top_k_accuracy: float | None = None
    macro_roc_auc: float | None = None
    macro_pr_auc: float | None = None
    #: expected calibration error over ``ECE_BINS`` equal-width confidence bins, and the
    #: bins (``ReliabilityBin.to_dict``) the reliability diagram draws
    ece: float | None = None
    reliability: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("extra"))
        return data


def _require(df, *names: str) -> None:
    for name in names:
        if name not in df.columns:
            raise InvalidParameterError(
                "column", name, f"the predictions have columns {df.columns}; run the model's "
                "transform first, or name the right column (labelCol/predictionCol/"
                "probabilityCol)",
            )


def _probability_array(df, column: str):  # -> Column of array<double>
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType

    kind = df.schema[column].dataType
    if isinstance(kind, ArrayType):
        return F.col(column).cast("array<double>")
    if not isinstance(kind, VectorUDT):
        raise InvalidParameterError(
            "probabilityCol", column, f"it holds {kind.simpleString()}, not a vector of class "
            "probabilities: use the model's probability column",
        )
    return vector_to_array(F.col(column))


def labelled(df, cols: Columns):
    """Rows with a label, as (y int, yhat int[, p array<double>])."""
    from pyspark.sql import functions as F

    _require(df, cols.label, cols.prediction)
    picked = [F.col(cols.label).cast("int").alias("y"),
              F.col(cols.prediction).cast("int").alias("yhat")]
    if cols.probability and cols.probability in df.columns:
        picked.append(_probability_array(df, cols.probability).alias("p"))
    return df.filter(F.col(cols.label).isNotNull()).select(*picked)


def confusion_matrix(rows, num_classes: int | None = None) -> np.ndarray:
    """K×K counts (rows = true class) from ``labelled`` rows; K from the data if not given."""
    from pyspark.sql import functions as F

    cells = rows.groupBy("y", "yhat").agg(F.count(F.lit(1)).alias("n")).collect()
    if not cells:
        raise DataError("no labelled predictions to evaluate: give rows with a label")
    seen = max(max(r.y, r.yhat) for r in cells) + 1
    k = max(num_classes or 0, seen)
    matrix = np.zeros((k, k), dtype=np.int64)
    for r in cells:
        if r.y < 0 or r.yhat < 0:
            raise DataError(f"labels and predictions must be class indexes >= 0 (found "
                            f"label {r.y}, prediction {r.yhat})")
        matrix[r.y, r.yhat] = r.n
    return matrix


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b with 0 where b == 0 (scikit-learn's zero_division=0)."""
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b != 0)


def count_metrics(matrix: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages."""
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    n = float(support.sum())
    weights = support / n

    def avg(values: np.ndarray) -> tuple[float, float]:
        return float(values.mean()), float((values * weights).sum())

    out: dict[str, Any] = {"n": int(n), "accuracy": float(tp.sum() / n),
                           "precision": precision, "recall": recall, "f1": f1,
                           "support": support.astype(np.int64)}
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[f"macro_{name}"], out[f"weighted_{name}"] = avg(values)
    return out


def probability_metrics(rows, k: int) -> dict[str, float]:
    """Log-loss (natural log, clipped like scikit-learn) and top-k accuracy."""
    from pyspark.sql import functions as F

    p_true = F.element_at("p", F.col("y") + 1)
    clipped = F.least(F.greatest(p_true, F.lit(LOG_LOSS_EPS)), F.lit(1.0 - LOG_LOSS_EPS))
    higher = F.size(F.filter("p", lambda x: x > p_true))
    row = rows.agg(
        F.avg(-F.log(clipped)).alias("log_loss"),
        F.avg((higher < k).cast("double")).alias("top_k"),
        F.min(F.size("p")).alias("k_min"),
        F.max("y").alias("y_max"),
    ).first()
    if row is None or row.log_loss is None:
        raise DataError("no labelled predictions to evaluate: give rows with a label")
    if row.y_max >= row.k_min:
        raise DataError(f"a label ({row.y_max}) has no probability in a vector of "
                        f"{row.k_min} classes: the predictions do not match the labels")
    return {"log_loss": float(row.log_loss), "top_k_accuracy": float(row.top_k)}


def curve_metrics(rows, num_classes: int) -> dict[int, dict[str, float | None]]:
    """Exact one-vs-rest ROC-AUC and average precision (PR-AUC) per class."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    scored = rows.select(F.posexplode("p").alias("cls", "score"), "y").select(
        "cls", "score", (F.col("y") == F.col("cls")).cast("long").alias("pos"))
    scored = scored.withColumn("neg", 1 - F.col("pos"))
    # One sort per class serves every frame (RANGE frames include tied scores):
    # at or below the row's score, at exactly its score, and the whole class.
    ordered = Window.partitionBy("cls").orderBy("score")
    at_or_below = ordered.rangeBetween(Window.unboundedPreceding, Window.currentRow)
    tied = ordered.rangeBetween(Window.currentRow, Window.currentRow)
    whole = ordered.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    neg_le, neg_eq = F.sum("neg").over(at_or_below), F.sum("neg").over(tied)
    pos_le, pos_eq = F.sum("pos").over(at_or_below), F.sum("pos").over(tied)
    # at threshold "score >= s": true and false positives
    tp = F.sum("pos").over(whole) - pos_le + pos_eq
    fp = F.sum("neg").over(whole) - neg_le + neg_eq
    parts = scored.select(
        "cls", "pos", "neg",
        # each positive: the negatives ranked below it, ties counted half (Mann-Whitney)
        (F.col("pos") * (neg_le - 0.5 * neg_eq)).alias("auc_part"),
        # each positive: the precision at its own score (average precision)
        (F.col("pos") * tp / (tp + fp)).alias("ap_part"),
    )
    sums = parts.groupBy("cls").agg(
        F.sum("pos").alias("P"), F.sum("neg").alias("N"),
        F.sum("auc_part").alias("auc"), F.sum("ap_part").alias("ap"),
    ).collect()
    out: dict[int, dict[str, float | None]] = {c: {"roc_auc": None, "pr_auc": None}
                                              for c in range(num_classes)}
    for r in sums:
        if r.cls >= num_classes:
            continue
        if r.P and r.N:
            out[r.cls]["roc_auc"] = float(r.auc) / (float(r.P) * float(r.N))
        if r.P:
            out[r.cls]["pr_auc"] = float(r.ap) / float(r.P)
    return out


def mean_defined(values: list[float | None]) -> float | None:
    """Mean of the values that are defined (a class without positives has no AUC)."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def compute_metrics(
    predictions, classes: list[str] | None = None, cols: Columns | None = None, k: int = 5,
    curves: bool = True,
) -> EvaluationResult:
    """Every metric of a predictions DataFrame (label, prediction, probability vector)."""
    cols = cols or Columns()
    if k < 1:
        raise InvalidParameterError("k", k, "use 1 or more (top-k accuracy)")
    _require(predictions, cols.label, cols.prediction, cols.probability)
    rows = labelled(predictions, cols).persist()
    try:
        matrix = confusion_matrix(rows, len(classes) if classes else None)
        names = list(classes) if classes else [str(i) for i in range(len(matrix))]
        if len(matrix) > len(names):
            raise DataError(f"labels or predictions go up to {len(matrix) - 1} but there are "
                            f"only {len(names)} classes {names}")
        counts = count_metrics(matrix)
        probs = probability_metrics(rows, k)
        areas = curve_metrics(rows, len(names)) if curves else {}
        bins = reliability_bins(rows)
    finally:
        rows.unpersist()
    per_class = {
        name: {
            "precision": float(counts["precision"][i]), "recall": float(counts["recall"][i]),
            "f1": float(counts["f1"][i]), "support": int(counts["support"][i]),
            "roc_auc": areas.get(i, {}).get("roc_auc"), "pr_auc": areas.get(i, {}).get("pr_auc"),
        }
        for i, name in enumerate(names)
    }
    return EvaluationResult(
        classes=names, n=counts["n"], accuracy=counts["accuracy"],
        confusion=matrix.tolist(), per_class=per_class,
        macro_precision=counts["macro_precision"], macro_recall=counts["macro_recall"],
        macro_f1=counts["macro_f1"], weighted_precision=counts["weighted_precision"],
        weighted_recall=counts["weighted_recall"], weighted_f1=counts["weighted_f1"],
        log_loss=probs["log_loss"], top_k=k, top_k_accuracy=probs["top_k_accuracy"],
        macro_roc_auc=mean_defined([v["roc_auc"] for v in per_class.values()]),
        macro_pr_auc=mean_defined([v["pr_auc"] for v in per_class.values()]),
        ece=expected_calibration_error(bins), reliability=[b.to_dict() for b in bins],
    )
