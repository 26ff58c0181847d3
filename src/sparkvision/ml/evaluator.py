"""``ImageClassificationEvaluator`` (a pyspark.ml Evaluator) and ``evaluate(model, df)``."""

from __future__ import annotations

from typing import Any

from pyspark import keyword_only
from pyspark.ml.evaluation import Evaluator
from pyspark.ml.param.shared import HasLabelCol, HasPredictionCol, HasProbabilityCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from sparkvision.errors import InvalidParameterError
from sparkvision.evaluation.calibration import expected_calibration_error, reliability_bins
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
from sparkvision.ml.params import TableParams, declare_params
from sparkvision.settings import EVALUATOR_METRICS, EvaluatorSettings

METRICS = EVALUATOR_METRICS
_NEEDS_PROBABILITY = {"logLoss", "topKAccuracy", "rocAUC", "prAUC", "ece"}


class ImageClassificationEvaluator(Evaluator, TableParams, HasLabelCol, HasPredictionCol,
                                   HasProbabilityCol, DefaultParamsReadable,
                                   DefaultParamsWritable):
    """Multi-class metrics computed by Spark aggregates (nothing but counts reaches the
    driver). Works with ``CrossValidator`` / ``TrainValidationSplit`` on any model that
    writes pyspark.ml's prediction (double) and probability (vector) columns."""

    _tables: tuple[type, ...] = (EvaluatorSettings,)  # its Params: these rows

    @keyword_only
    def __init__(self, **params: Any) -> None:
        """Params by keyword (the rows of ``settings.EvaluatorSettings``)."""
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **params: Any) -> ImageClassificationEvaluator:
        """Set Params by keyword (None leaves a Param as it is), checked."""
        super().setParams(**self._input_kwargs)
        self._check_metric()
        return self

    def setMetricName(self, value: str) -> ImageClassificationEvaluator:
        self._set(metricName=value)
        self._check_metric()
        return self

    def _check_metric(self) -> None:
        self.checkTables()

    def isLargerBetter(self) -> bool:
        self._check_metric()
        return METRICS[self.getOrDefault("metricName")][1]

    def _evaluate(self, dataset) -> float:
        self._check_metric()
        name = self.getOrDefault("metricName")
        needs_p = name in _NEEDS_PROBABILITY
        cols = Columns(self.getOrDefault("labelCol"), self.getOrDefault("predictionCol"),
                       self.getOrDefault("probabilityCol") if needs_p else "")
        if needs_p and cols.probability not in dataset.columns:
            raise InvalidParameterError(
                "probabilityCol", cols.probability,
                f"metric {name} needs class probabilities but the predictions have columns "
                f"{dataset.columns}: set probabilityCol or use a model's transform output",
            )
        rows = labelled(dataset, cols)
        key = METRICS[name][0]
        if name in ("logLoss", "topKAccuracy"):
            return probability_metrics(rows, self.getOrDefault("k"))[key]
        if name == "ece":
            ece = expected_calibration_error(reliability_bins(rows))
            return float("nan") if ece is None else ece
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
    return evaluate_predictions(model, model.transform(df), k=k, curves=curves)


def evaluate_predictions(model, predictions, k: int = 5, curves: bool = True
                         ) -> EvaluationResult:
    """Every metric of ``model``'s ``predictions`` (its transform output, or what
    ``inference.predictions.load_predictions`` returns), computed by Spark."""
    get = model.getOrDefault
    cols = Columns(
        label=get("labelCol") if model.hasParam("labelCol") else "label",
        prediction=get("predictionCol"),
        probability=get("probabilityCol") if model.hasParam("probabilityCol") else "probability",
    )
    classes = list(get("classes")) if model.hasParam("classes") else None
    return compute_metrics(predictions, classes or None, cols, k=k, curves=curves)


declare_params(ImageClassificationEvaluator, EvaluatorSettings)
