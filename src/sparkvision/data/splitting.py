"""The stratified, seeded train/val/test split of prepared rows.

Rows of each class are ranked by a seeded hash of their path; the split sizes follow from
the class counts alone (every non-empty split keeps at least one image of a class of 3 or
more), and ``--imbalance`` thins the training rows of the first half of the classes.
"""

from __future__ import annotations

import math


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Sizes of train/val/test for a class of ``n`` images.

    Every split with a non-zero fraction gets at least one image when ``n >= 3``.
    """
    _, fv, ft = fractions
    val = round(n * fv)
    test = round(n * ft)
    if n >= 3:
        val = max(val, 1 if fv > 0 else 0)
        test = max(test, 1 if ft > 0 else 0)
    while val + test > n - 1 and (val > 0 or test > 0) and n >= 1:
        if val >= test and val > 0:
            val -= 1
        else:
            test -= 1
    return n - val - test, val, test


def minority_classes(num_classes: int) -> list[int]:
    """The classes ``--imbalance`` thins out: the first half (by class index)."""
    return list(range(num_classes // 2))


def split_bounds(class_counts: dict[int, int], fractions: tuple[float, float, float],
                 imbalance: float | None = None) -> dict[int, tuple[int, int, int]]:
    """Per class, the ranks where ``dropped``, ``val`` and ``test`` start (rows ranked by
    the seeded hash): train is ``[0, a)``, dropped ``[a, b)``, val ``[b, c)``, test the
    rest."""
    thinned = set(minority_classes(len(class_counts))) if imbalance else set()
    bounds = {}
    for label, n in class_counts.items():
        tr, va, _ = split_counts(n, fractions)
        keep = max(1, math.ceil(tr / imbalance)) if label in thinned and imbalance else tr
        bounds[label] = (keep, tr, tr + va)
    return bounds


def assign_splits(df, class_counts: dict[int, int], fractions, seed: int,
                   imbalance: float | None = None):
    """Stratified, deterministic split: rank rows in each class by a seeded hash.

    With ``imbalance``, minority training rows past 1/imbalance of the class's training
    share get the split ``dropped`` (they are not written)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    bounds = split_bounds(class_counts, fractions, imbalance)
    # Rank only (label, path, hash) — not the images — and keep the rows where a split
    # starts (at most 3 per class); each image row is then placed by comparing its (hash,
    # path) with those boundaries: the same assignment as ranking every row, without
    # shuffling the image bytes.
    order = F.xxhash64(F.col("path"), F.lit(seed))
    narrow = df.select("label", "path", order.alias("_h"))
    rank = F.row_number().over(Window.partitionBy("label").orderBy("_h", "path")) - 1
    names = ("dropped", "val", "test")  # the splits that start at the ranks in bounds
    wanted = F.lit(False)
    for label, ends in bounds.items():
        wanted = wanted | ((F.col("label") == label) & F.col("_rank").isin(*set(ends)))
    found: dict[int, dict[str, tuple[int, str]]] = {label: {} for label in bounds}
    for r in narrow.withColumn("_rank", rank).filter(wanted).collect():
        label = int(r.label)
        for name, start in zip(names, bounds[label], strict=True):
            if start == int(r._rank):
                found[label][name] = (int(r._h), str(r.path))
    cols = [f"_{name}_{part}" for name in names for part in ("h", "p")]
    rows = [(label, *[v for name in names for v in found[label].get(name, (None, None))])
            for label in bounds]
    starts = df.sparkSession.createDataFrame(
        rows, "label BIGINT, " + ", ".join(f"{c} {'BIGINT' if c.endswith('h') else 'STRING'}"
                                           for c in cols))
    def before(name: str):
        """The row comes before the first row of split ``name`` of its class (there is no
        such row: every row of the class does)."""
        bh, bp = F.col(f"_{name}_h"), F.col(f"_{name}_p")
        return bh.isNull() | (order < bh) | ((order == bh) & (F.col("path") < bp))

    split = (
        F.when(before("dropped"), F.lit("train"))
        .when(before("val"), F.lit("dropped"))
        .when(before("test"), F.lit("val"))
        .otherwise(F.lit("test"))
    )
    return df.join(F.broadcast(starts), "label", "left").withColumn("split", split).drop(*cols)
