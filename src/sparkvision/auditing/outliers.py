"""Per-class outliers, in Spark: images whose size, brightness or contrast is far from the
rest of their class (robust z-score: distance from the class median in units of the median
absolute deviation), and near-constant images (almost no contrast)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

#: The statistics compared within each class.
MEASURES = ("height", "width", "brightness", "contrast")
#: A grey standard deviation (0..255) below this makes an image near-constant.
NEAR_CONSTANT = 2.0
#: Scale of the MAD that makes it the standard deviation of a normal distribution.
_MAD_SCALE = 1.4826
#: The z-score written for a value that differs from a class with no spread at all.
UNBOUNDED_Z = 99.0


def outliers(good: DataFrame, z: float) -> DataFrame:
    """``id, split, path, label, class_name, reasons (array), score`` of the images more than
    ``z`` robust z-scores from their class's median on some measure, or near-constant;
    worst first."""
    from pyspark.sql import functions as F

    key = F.coalesce(F.col("class_name"), F.col("label").cast("string"), F.lit(""))
    rows = good.withColumn("cls", key)
    medians = rows.groupBy("cls").agg(*[
        F.percentile_approx(F.col(m).cast("double"), 0.5).alias(f"{m}_med") for m in MEASURES])
    rows = rows.join(medians, "cls")
    mads = rows.groupBy("cls").agg(*[
        F.percentile_approx(F.abs(F.col(m) - F.col(f"{m}_med")), 0.5).alias(f"{m}_mad")
        for m in MEASURES])
    rows = rows.join(mads, "cls")
    scores, reasons = [], []
    for m in MEASURES:
        diff = F.col(m) - F.col(f"{m}_med")
        score = (F.when(F.col(f"{m}_mad") > 0, F.abs(diff) / (F.col(f"{m}_mad") * _MAD_SCALE))
                 .when(diff != 0, F.lit(UNBOUNDED_Z)).otherwise(F.lit(0.0)))
        scores.append(score)
        word = F.when(diff > 0, F.lit(f"high {m}")).otherwise(F.lit(f"low {m}"))
        reasons.append(F.when(score > z, word))
    constant = F.col("contrast") < NEAR_CONSTANT
    reasons.append(F.when(constant, F.lit("near-constant")))
    score = F.greatest(*scores, F.when(constant, F.lit(UNBOUNDED_Z)).otherwise(F.lit(0.0)))
    flagged = rows.select(
        "id", "split", "path", "label", "class_name", *MEASURES,
        F.filter(F.array(*reasons), lambda r: r.isNotNull()).alias("reasons"),
        F.least(score, F.lit(UNBOUNDED_Z)).alias("score"))
    return flagged.filter(F.size("reasons") > 0).orderBy(F.desc("score"), "split", "path")
