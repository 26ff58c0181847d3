"""Duplicate pairs and groups, in Spark: exact pairs by content hash, near pairs by banding
the perceptual hashes (no all-pairs join), and the groups the pairs connect.

Near pairs: each 64-bit hash (``phash`` and the centred ``chash``) is cut into
``radius + 1`` bands; two hashes within Hamming distance ``radius`` differ in at most
``radius`` bands, so they share at least one band value (pigeonhole) — a self-join on
(hash, band, value) finds every such pair. The candidates are then filtered on the exact
distance (the smaller of the two hashes') and verified on the fingerprints
(``pixel_distance``), since different small images (two MNIST ones) often share a hash.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from sparkvision.auditing.fingerprints import distance_batches

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

HASHES = ("phash", "chash")
#: Buckets (hash, band, value) with more members than this are skipped (counted in
#: ``audit.json``): a flood of blank or near-identical images would make the self-join
#: quadratic; such images are flagged as near-constant outliers instead.
MAX_BUCKET = 5000
#: Split priority of the copy a duplicate group keeps (test first: it keeps the test split
#: as it was and drops the leaked training copy).
KEEP_ORDER = ("test", "val", "train", "all")
PAIR_SIDES = ("split", "path", "label", "class_name")
MAX_COMPONENT_ROUNDS = 50


def band_widths(bands: int) -> list[int]:
    """Bits per band: 64 cut into ``bands`` nearly equal parts."""
    return [64 // bands + (1 if i < 64 % bands else 0) for i in range(bands)]


def banded(unique: DataFrame, bands: int) -> DataFrame:
    """One row per (image, hash, band): ``id, band, value``; ``band`` numbers the bands
    of both hashes."""
    from pyspark.sql import functions as F

    parts, offset = [], 0
    for i, width in enumerate(band_widths(bands)):
        for k, name in enumerate(HASHES):
            value = F.shiftrightunsigned(F.col(name), offset).bitwiseAND(F.lit((1 << width) - 1))
            parts.append(F.struct(F.lit(k * bands + i).alias("band"),
                                  value.cast("bigint").alias("value")))
        offset += width
    return unique.select("id", F.explode(F.array(*parts)).alias("b")).select(
        "id", "b.band", "b.value")


def candidates(unique: DataFrame, bands: int) -> tuple[DataFrame, DataFrame]:
    """(candidate pairs ``id_a < id_b`` sharing a band value, the crowded buckets
    skipped: ``band, value, count``)."""
    from pyspark.sql import functions as F

    rows = banded(unique, bands)
    sizes = rows.groupBy("band", "value").count()
    crowded = sizes.filter(F.col("count") > MAX_BUCKET)
    kept = rows.join(F.broadcast(crowded.select("band", "value")), ["band", "value"],
                     "left_anti")
    a, b = kept.alias("a"), kept.alias("b")
    pairs = a.join(b, (F.col("a.band") == F.col("b.band")) & (F.col("a.value") == F.col("b.value"))
                   & (F.col("a.id") < F.col("b.id"))).select(
        F.col("a.id").alias("id_a"), F.col("b.id").alias("id_b")).distinct()
    return pairs, crowded


def near_candidates(unique: DataFrame, radius: int) -> tuple[DataFrame, DataFrame]:
    """(every candidate pair within ``radius``: ``id_a, id_b, hamming, pixel_distance``;
    the crowded buckets skipped). A near pair is one whose ``pixel_distance`` is small
    enough."""
    from pyspark.sql import functions as F

    cands, crowded = candidates(unique, radius + 1)
    side = unique.select("id", *HASHES, "thumb", "thumb_centred")
    a = side.select(*[F.col(c).alias(f"{c}_a") for c in ("id", *HASHES)],
                    F.col("thumb").alias("thumb_a"), F.col("thumb_centred").alias("centred_a"))
    b = side.select(*[F.col(c).alias(f"{c}_b") for c in ("id", *HASHES)],
                    F.col("thumb").alias("thumb_b"), F.col("thumb_centred").alias("centred_b"))
    hamming = F.least(*[F.bit_count(F.col(f"{h}_a").bitwiseXOR(F.col(f"{h}_b"))) for h in HASHES])
    within = (cands.join(a, "id_a").join(b, "id_b")
              .withColumn("hamming", hamming.cast("int"))
              .filter(F.col("hamming") <= radius)
              .select("id_a", "id_b", "hamming", "thumb_a", "thumb_b", "centred_a", "centred_b"))
    schema = "id_a BIGINT, id_b BIGINT, hamming INT, pixel_distance DOUBLE"
    return within.mapInArrow(functools.partial(distance_batches), schema), crowded


def exact_pairs(good: DataFrame) -> DataFrame:
    """Each exact duplicate with its group's first image: ``id_a`` (the smallest id of the
    content) < ``id_b``; ``hamming`` and ``pixel_distance`` 0."""
    from pyspark.sql import functions as F

    first = good.groupBy("content").agg(F.min("id").alias("id_a"), F.count("*").alias("n"))
    return (good.join(first.filter(F.col("n") > 1), "content")
            .filter(F.col("id") != F.col("id_a"))
            .select("id_a", F.col("id").alias("id_b"), F.lit(0).alias("hamming"),
                    F.lit(0.0).alias("pixel_distance")))


def described(pairs: DataFrame, images: DataFrame) -> DataFrame:
    """``pairs`` with both sides' split, path, label and class, ``leak`` (different splits)
    and ``conflict`` (different labels), worst first: exact pairs, then by pixel distance
    and Hamming distance."""
    from pyspark.sql import functions as F

    info = images.select("id", *PAIR_SIDES)
    out = pairs
    for s in ("a", "b"):
        out = out.join(info.select(*[F.col(c).alias(f"{c}_{s}") for c in ("id", *PAIR_SIDES)]),
                       f"id_{s}")
    return (out.withColumn("leak", F.col("split_a") != F.col("split_b"))
            .withColumn("conflict", F.coalesce(F.col("label_a") != F.col("label_b"),
                                               F.col("class_name_a") != F.col("class_name_b")))
            .orderBy(F.col("kind").asc(), "pixel_distance", "hamming", "id_a", "id_b"))


def components(edges: DataFrame) -> DataFrame:
    """``id, group`` (the smallest id connected to it) of every id in ``edges``
    (``id_a, id_b``): min-label propagation, one join per round, until nothing changes."""
    from pyspark.sql import functions as F

    both = edges.select(F.col("id_a").alias("src"), F.col("id_b").alias("dst")).union(
        edges.select(F.col("id_b").alias("src"), F.col("id_a").alias("dst"))).localCheckpoint()
    group = both.groupBy(F.col("src").alias("id")).agg(
        F.least(F.min("dst"), F.min("src")).alias("group")).localCheckpoint()
    for _ in range(MAX_COMPONENT_ROUNDS):
        seen = (both.join(group.withColumnRenamed("id", "src"), "src")
                .groupBy(F.col("dst").alias("id")).agg(F.min("group").alias("seen")))
        new = (group.join(seen, "id").select(
            "id", F.least("group", "seen").alias("group"),
            (F.col("seen") < F.col("group")).alias("moved"))).localCheckpoint()
        changed = new.filter("moved").limit(1).count()
        group = new.drop("moved")
        if not changed:
            break
    return group


def kept_and_removed(groups: DataFrame, images: DataFrame) -> DataFrame:
    """``id, group, split, path, label, keep``: each group keeps one copy (the first of
    ``KEEP_ORDER``'s splits, then the first path)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = F.array_position(F.array(*[F.lit(s) for s in KEEP_ORDER]), F.col("split"))
    window = Window.partitionBy("group").orderBy(order, "path", "id")
    return (groups.join(images.select("id", "split", "path", "label", "class_name"), "id")
            .withColumn("keep", F.row_number().over(window) == 1))
