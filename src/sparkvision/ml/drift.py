"""A model's reference profile for drift monitoring (``evaluation/drift.py``), computed by
predicting a DataFrame of images once on Spark: ``ImageClassifier.fit`` does it on the
validation split (the profile is saved in the model folder as ``drift_profile.json``), and
``sparkvision stream --drift-reference DATA`` on data it is given."""

from __future__ import annotations

from typing import Any

from sparkvision.evaluation.drift import DriftProfile, profile_of


def reference_profile(model: Any, df: Any, source: str = "validation split") -> DriftProfile:
    """``model``'s profile of the images of ``df`` (its ``imageCol``; raw pixels of the
    model's shape or PNG/JPEG, as prepared splits hold them): one pass of the stream's own
    decode-and-predict UDF with pixel statistics, then one aggregate. Rows that cannot be
    predicted are left out."""
    from pyspark.sql import functions as F

    from sparkvision.inference.files import ERROR, PIXEL_STATS, FilePredictor

    image_col = model.getOrDefault(model.imageCol)
    # the profile reads the default output names, whatever the model's Params say
    scored = model.copy({model.predictionCol: "prediction", model.confidenceCol: "confidence",
                         model.probabilityCol: "probability"})
    predictor = FilePredictor(scored, "stored", raw=False, stats=True)
    missing = F.lit(None).cast("bigint")
    rows = df.select(
        F.col(f"`{image_col}`").alias("image"),
        *[F.col(c) if c in df.columns else missing.alias(c)
          for c in ("height", "width", "channels")])
    predicted = predictor.apply(rows).where(F.col(ERROR).isNull())
    channels = int(model.getOrDefault(model.imageShape)[2])
    return profile_of(predicted, model.numClasses, channels, source=source,
                      stats=PIXEL_STATS)
