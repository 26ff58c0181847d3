"""Temperature scaling of a trained ``ImageClassificationModel`` (``calibration=
"temperature"``): its logits on the validation rows are computed by Spark (the model's own
``transform``, at temperature 1), only (logits, label) of those rows reach the driver, and
one temperature is fitted there (``evaluation.calibration.fit_temperature``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from sparkvision.errors import DataError
from sparkvision.evaluation.calibration import TemperatureFit, fit_temperature

log = logging.getLogger(__name__)


def validation_logits(model: Any, df: Any, label_col: str) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, K) float64, labels (N,) int64) of the labelled rows of ``df`` under
    ``model`` (its rawPrediction; the images stay in the executors)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    scored = model.copy({model.temperature: 1.0, model.rawPredictionCol: "_sv_logits",
                         model.probabilityCol: "", model.predictedLabelCol: "",
                         model.confidenceCol: ""}).transform(
        df.filter(F.col(label_col).isNotNull()))
    rows = scored.select(vector_to_array(F.col("_sv_logits")).alias("z"),
                         F.col(label_col).cast("int").alias("y")).collect()
    if not rows:
        raise DataError("calibration='temperature' found no labelled validation rows: give a "
                        "validation split with rows (validationDf or validationFraction)")
    return (np.asarray([r.z for r in rows], dtype=np.float64),
            np.asarray([r.y for r in rows], dtype=np.int64))


def calibrate_temperature(model: Any, val_df: Any, label_col: str) -> TemperatureFit:
    """Fit ``model``'s temperature on ``val_df`` and set it on the model."""
    logits, labels = validation_logits(model, val_df, label_col)
    fit = fit_temperature(logits, labels)
    model._set(temperature=fit.temperature)
    log.info("calibration: temperature %.4f fitted on %d validation rows (NLL %.4f → %.4f)",
             fit.temperature, fit.rows, fit.nll_before, fit.nll_after)
    return fit
