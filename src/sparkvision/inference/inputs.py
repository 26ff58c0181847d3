"""Turn a prediction input (prepared folder, split, TFRecords, Parquet, image folder) into a
DataFrame with raw ``image`` bytes of the model's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparkvision.data.images import ImageSpec
from sparkvision.data.prepare import _DECODED_DDL, MANIFEST, _decode_batches, _looks_like_tfrecords
from sparkvision.errors import DataError


def _is_parquet(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".parquet"
    return any(p.suffix == ".parquet" for p in path.rglob("*.parquet"))


def load_prediction_input(
    spark, source: str, image_shape: tuple[int, int, int], classes: list[str], split: str
) -> tuple[Any, list[dict[str, str]]]:
    """Return (DataFrame with image/path[/label], rejected files)."""
    from pyspark.sql import functions as F

    from sparkvision.data.loading import load_prepared

    path = Path(source)
    if not path.exists():
        raise DataError(
            f"prediction input {source!r} does not exist: give a prepared folder, a split "
            "folder, TFRecord/Parquet files or an image folder"
        )
    if (path / MANIFEST).exists():
        return load_prepared(spark, str(path), split), []
    h, w, c = image_shape
    if _is_parquet(path) or _looks_like_tfrecords(path):
        if _is_parquet(path):
            df = spark.read.parquet(str(path))
        else:
            from sparkvision.data.schema import prepared_schema

            probe = spark.read.format("tfrecords").load(str(path))
            if {"height", "width", "channels", "image"} <= set(probe.columns):
                df = spark.read.format("tfrecords").schema(prepared_schema()).load(str(path))
            else:
                df = probe
        if "image" not in df.columns:
            raise DataError(f"{source} has no 'image' column (columns: {df.columns})")
        if {"height", "width", "channels"} <= set(df.columns):
            bad = df.filter(
                (F.col("height") != h) | (F.col("width") != w) | (F.col("channels") != c)
            ).limit(1).count()
            if bad:
                raise DataError(
                    f"images in {source} are not {h}x{w}x{c} as the model expects: re-run "
                    f"`sparkvision prepare` with --image-size {h}x{w} --channels {c}"
                )
        return df, []
    # A folder of images (optionally in class sub-folders): decode on executors.
    root = str(path.resolve())
    spec = ImageSpec(h, w, c)
    raw = (
        spark.read.format("binaryFile").option("recursiveFileLookup", "true")
        .option("ignoreCorruptFiles", "true").load(root).select("path", "content")
    )
    decoded = raw.mapInArrow(
        lambda it: _decode_batches(it, root, spec, need_class=False), _DECODED_DDL
    )
    decoded = decoded.persist()
    rejected = [
        {"path": r.path, "reason": r.error}
        for r in decoded.filter(F.col("error").isNotNull()).select("path", "error").collect()
    ]
    index = F.create_map(*[x for i, name in enumerate(classes) for x in (F.lit(name), F.lit(i))])
    good = decoded.filter(F.col("error").isNull()).withColumn(
        "label", index[F.col("class_name")].cast("bigint")
    ).drop("class_name", "error")
    return good, rejected
