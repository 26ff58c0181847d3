"""``ClassBalancer``: over- or under-sampling of an imbalanced labelled DataFrame, by Spark.

A pyspark.ml Transformer, so it composes in a ``Pipeline`` before ``ImageClassifier``. It
resamples every DataFrame it transforms that has the label column; data without that column
(images to score) passes through unchanged. ``ImageClassifier(balance=...)`` uses it on the
training rows only, which is what you want when the same pipeline also scores test data.
"""

from __future__ import annotations

import math
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param.shared import HasLabelCol, HasSeed
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from sparkvision.data.schema import literal_map
from sparkvision.errors import DataError
from sparkvision.ml.params import TableParams, declare_params
from sparkvision.settings import BalancerSettings


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


class ClassBalancer(Transformer, TableParams, HasLabelCol, HasSeed, DefaultParamsReadable,
                    DefaultParamsWritable):
    """Resample rows so the classes are (more) balanced; deterministic for a seed.

    ``strategy="oversample"`` replicates minority rows (whole copies plus a seeded Bernoulli
    remainder, an ``explode`` of replicas); ``"undersample"`` keeps a seeded ``sampleBy``
    fraction of the majority classes. ``targetRatio`` (0, 1] is the smallest class size
    relative to the largest that the result aims at (1.0 = balanced).
    """

    _tables: tuple[type, ...] = (BalancerSettings,)  # its Params: these rows

    @keyword_only
    def __init__(self, **params: Any) -> None:
        """Params by keyword (the rows of ``settings.BalancerSettings``)."""
        super().__init__()
        self.setParams(**self._input_kwargs)

    def _check(self) -> None:
        self.checkTables()

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
        get = self.getOrDefault
        strategy = get("strategy")
        targets = target_counts(counts, strategy, get("targetRatio"))
        seed = get("seed")
        if strategy == "undersample":
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


declare_params(ClassBalancer, BalancerSettings)
