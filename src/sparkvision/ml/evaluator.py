"""``ImageClassificationEvaluator`` (a pyspark.ml Evaluator) and ``evaluate(model, df)``."""

from __future__ import annotations

from pyspark import keyword_only
from pyspark.ml.evaluation import Evaluator
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasLabelCol, HasPredictionCol, HasProbabilityCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from sparkvision.errors import InvalidParameterError
from sparkvision.evaluation.metrics import (
    Columns,
    EvaluationResult,
    compute_metrics,
    confusion_matrix,
    count_metrics,
    curve_metrics,
    labelled,
    mean_defined,
    probability_metrics,
)
from sparkvision.ml.params import add_param_accessors

#: metricName → (key in the computed metrics, larger is better)
METRICS: dict[str, tuple[str, bool]] = {
    "accuracy": ("accuracy", True),
    "f1": ("weighted_f1", True),
    "weightedPrecision": ("weighted_precision", True),
    "weightedRecall": ("weighted_recall", True),
    "weightedF1": ("weighted_f1", True),
    "macroPrecision": ("macro_precision", True),
    "macroRecall": ("macro_recall", True),
    "macroF1": ("macro_f1", True),
    "logLoss": ("log_loss", False),
    "topKAccuracy": ("top_k_accuracy", True),
    "rocAUC": ("macro_roc_auc", True),
    "prAUC": ("macro_pr_auc", True),
}
_NEEDS_PROBABILITY = {"logLoss", "topKAccuracy", "rocAUC", "prAUC"}


@add_param_accessors
class ImageClassificationEvaluator(Evaluator, HasLabelCol, HasPredictionCol, HasProbabilityCol,
                                   DefaultParamsReadable, DefaultParamsWritable):
    """Multi-class metrics computed by Spark aggregates (nothing but counts reaches the
    driver). Works with ``CrossValidator`` / ``TrainValidationSplit`` on any model that
    writes pyspark.ml's prediction (double) and probability (vector) columns."""

    metricName = Param(Params._dummy(), "metricName",
                       "metric: " + ", ".join(METRICS), typeConverter=TypeConverters.toString)
    k = Param(Params._dummy(), "k", "k of topKAccuracy", typeConverter=TypeConverters.toInt)

    @keyword_only
    def __init__(self, *, metricName: str | None = None, k: int | None = None,
                 labelCol: str | None = None, predictionCol: str | None = None,
                 probabilityCol: str | None = None) -> None:
        super().__init__()
        self._setDefault(metricName="accuracy", k=5, labelCol="label",
                         predictionCol="prediction", probabilityCol="probability")
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, metricName: str | None = None, k: int | None = None,
                  labelCol: str | None = None, predictionCol: str | None = None,
                  probabilityCol: str | None = None) -> ImageClassificationEvaluator:
        """Set Params by keyword (None leaves a Param as it is)."""
        self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})
        self._check_metric()
        return self

    def setMetricName(self, value: str) -> ImageClassificationEvaluator:
        self._set(metricName=value)
        self._check_metric()
        return self

    def _check_metric(self) -> None:
        name = self.getMetricName()
        if name not in METRICS:
            raise InvalidParameterError("metricName", name, f"use one of {', '.join(METRICS)}")

    def isLargerBetter(self) -> bool:
        self._check_metric()
        return METRICS[self.getMetricName()][1]

    def _evaluate(self, dataset) -> float:
        self._check_metric()
        name = self.getMetricName()
        needs_p = name in _NEEDS_PROBABILITY
        cols = Columns(self.getLabelCol(), self.getPredictionCol(),
                       self.getProbabilityCol() if needs_p else "")
        if needs_p and cols.probability not in dataset.columns:
            raise InvalidParameterError(
                "probabilityCol", cols.probability,
                f"metric {name} needs class probabilities but the predictions have columns "
                f"{dataset.columns}: set probabilityCol or use a model's transform output",
            )
        rows = labelled(dataset, cols)
        key = METRICS[name][0]
        if name in ("logLoss", "topKAccuracy"):
            return probability_metrics(rows, self.getK())[key]
        if name in ("rocAUC", "prAUC"):
            from pyspark.sql import functions as F

            k = rows.agg(F.max(F.size("p"))).first()[0] or 0
            per_class = curve_metrics(rows, int(k)).values()
            mean = mean_defined([v[key.removeprefix("macro_")] for v in per_class])
            return float("nan") if mean is None else mean
        return float(count_metrics(confusion_matrix(rows))[key])


def evaluate(model, df, k: int = 5, curves: bool = True) -> EvaluationResult:
    """Transform ``df`` with ``model`` and compute every metric by Spark.

    ``model`` is an ``ImageClassificationModel`` (its classes name the per-class rows) or
    any pyspark.ml classification model with label/prediction/probability columns.
    """
    predictions = model.transform(df)
    get = model.getOrDefault
    cols = Columns(
        label=get("labelCol") if model.hasParam("labelCol") else "label",
        prediction=get("predictionCol"),
        probability=get("probabilityCol") if model.hasParam("probabilityCol") else "probability",
    )
    classes = list(get("classes")) if model.hasParam("classes") else None
    return compute_metrics(predictions, classes or None, cols, k=k, curves=curves)
