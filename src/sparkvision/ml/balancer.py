"""``ClassBalancer``: over- or under-sampling of an imbalanced labelled DataFrame, by Spark.

A pyspark.ml Transformer, so it composes in a ``Pipeline`` before ``ImageClassifier``. It
resamples every DataFrame it transforms that has the label column; data without that column
(images to score) passes through unchanged. ``ImageClassifier(balance=...)`` uses it on the
training rows only, which is what you want when the same pipeline also scores test data.
"""

from __future__ import annotations

import math

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasLabelCol, HasSeed
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from sparkvision.data.schema import literal_map
from sparkvision.errors import DataError, InvalidParameterError
from sparkvision.ml.params import add_param_accessors

STRATEGIES = ("oversample", "undersample")


def class_counts(df, label_col: str) -> dict[int, int]:
    """Rows per label (one small aggregate; null labels are counted under -1)."""
    from pyspark.sql import functions as F

    rows = df.groupBy(F.coalesce(F.col(label_col).cast("long"), F.lit(-1))).count().collect()
    return {int(r[0]): int(r[1]) for r in rows}


def target_counts(counts: dict[int, int], strategy: str, ratio: float) -> dict[int, int]:
    """Rows each class should have after balancing.

    oversample: every class up to at least ``ratio`` × the majority count (never fewer rows);
    undersample: every class down to at most the minority count / ``ratio``.
    """
    present = {k: v for k, v in counts.items() if v > 0}
    if strategy == "oversample":
        floor = math.ceil(ratio * max(present.values()))
        return {k: max(v, floor) for k, v in present.items()}
    ceiling = math.ceil(min(present.values()) / ratio)
    return {k: min(v, ceiling) for k, v in present.items()}


@add_param_accessors
class ClassBalancer(Transformer, HasLabelCol, HasSeed, DefaultParamsReadable,
                    DefaultParamsWritable):
    """Resample rows so the classes are (more) balanced; deterministic for a seed.

    ``strategy="oversample"`` replicates minority rows (whole copies plus a seeded Bernoulli
    remainder, an ``explode`` of replicas); ``"undersample"`` keeps a seeded ``sampleBy``
    fraction of the majority classes. ``targetRatio`` (0, 1] is the smallest class size
    relative to the largest that the result aims at (1.0 = balanced).
    """

    strategy = Param(Params._dummy(), "strategy", "oversample or undersample",
                     typeConverter=TypeConverters.toString)
    targetRatio = Param(Params._dummy(), "targetRatio",
                        "minority/majority size ratio to reach, in (0, 1]",
                        typeConverter=TypeConverters.toFloat)

    @keyword_only
    def __init__(self, *, strategy: str | None = None, targetRatio: float | None = None,
                 labelCol: str | None = None, seed: int | None = None) -> None:
        super().__init__()
        self._setDefault(strategy="oversample", targetRatio=1.0, labelCol="label", seed=0)
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, strategy: str | None = None, targetRatio: float | None = None,
                  labelCol: str | None = None, seed: int | None = None) -> ClassBalancer:
        """Set Params by keyword (None leaves a Param as it is)."""
        return self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    def _check(self) -> None:
        if self.getStrategy() not in STRATEGIES:
            raise InvalidParameterError("strategy", self.getStrategy(),
                                        f"use one of {', '.join(STRATEGIES)}")
        ratio = self.getTargetRatio()
        if not 0 < ratio <= 1:
            raise InvalidParameterError("targetRatio", ratio, "use a value in (0, 1]")

    def _transform(self, dataset):
        from pyspark.sql import functions as F

        self._check()
        label = self.getLabelCol()
        if label not in dataset.columns:
            return dataset
        counts = class_counts(dataset, label)
        if counts.get(-1):
            raise DataError(f"{counts[-1]} rows have a null {label!r}: drop or label them "
                            "before balancing")
        if not counts:
            return dataset
        targets = target_counts(counts, self.getStrategy(), self.getTargetRatio())
        seed = self.getOrDefault(self.seed)
        if self.getStrategy() == "undersample":
            fractions = {k: targets[k] / v for k, v in counts.items()}
            return dataset.sampleBy(F.col(label), fractions, seed)
        # oversample: each row becomes floor(f) copies, plus one more with probability f % 1
        factor = {k: targets[k] / v for k, v in counts.items()}
        whole = literal_map({k: math.floor(f) for k, f in factor.items()})
        extra = literal_map({k: f - math.floor(f) for k, f in factor.items()})
        key = F.col(label).cast("long")
        copies = whole[key] + (F.rand(seed) < extra[key]).cast("int")
        replica = "_sv_replica"
        return (
            dataset.withColumn(replica, F.explode(F.sequence(F.lit(1), copies)))
            .drop(replica)
        )
