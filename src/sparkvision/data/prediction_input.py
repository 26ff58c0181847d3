"""Turn a prediction input (prepared folder, split, TFRecords, Parquet, image folder) into a
DataFrame with raw ``image`` bytes of the model's shape (``load_prediction_input``); list an
image folder's files (``list_image_files``, decoded and predicted by
``inference/predictions.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparkvision import storage
from sparkvision.checks import check_prediction_input
from sparkvision.data.decoding import (
    decode_image_folder,
    label_by_class,
    looks_like_tfrecords,
    rejected_rows,
)
from sparkvision.data.images import ImageSpec
from sparkvision.data.manifest import MANIFEST
from sparkvision.data.prepared_splits import load_prepared
from sparkvision.errors import DataError


def _is_parquet(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".parquet"
    return any(p.suffix == ".parquet" for p in path.rglob("*.parquet"))


def _prepared_or_raw_tfrecords(spark, path: str):
    """TFRecords at ``path``, with the prepared schema when they hold prepared rows."""
    from sparkvision.data.schema import prepared_schema

    probe = spark.read.format("tfrecords").load(path)
    if {"height", "width", "channels", "image"} <= set(probe.columns):
        return spark.read.format("tfrecords").schema(prepared_schema()).load(path)
    return probe


def load_prediction_input(
    spark, source: str, image_shape: tuple[int, int, int], classes: list[str], split: str
) -> tuple[Any, list[dict[str, str]]]:
    """Return (DataFrame with image/path[/label], rejected files)."""
    from pyspark.sql import functions as F

    check_prediction_input(source)
    if not storage.is_local(source):  # a URL: a prepared folder or TFRecords there
        if storage.exists(storage.join(source, MANIFEST)):
            return load_prepared(spark, source, split), []
        return _prepared_or_raw_tfrecords(spark, source), []
    path = Path(source)
    if (path / MANIFEST).exists():
        return load_prepared(spark, str(path), split), []
    h, w, c = image_shape
    if _is_parquet(path) or looks_like_tfrecords(path):
        if _is_parquet(path):
            df = spark.read.parquet(str(path))
        else:
            df = _prepared_or_raw_tfrecords(spark, str(path))
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
    decoded = decode_image_folder(spark, str(path.resolve()), ImageSpec(h, w, c),
                                  need_class=False)
    good = label_by_class(decoded, classes).drop("class_name", "error")
    return good, rejected_rows(decoded)


def is_image_folder(source: str) -> bool:
    """An image folder: a local folder that is not prepared, Parquet or TFRecords."""
    if not storage.is_local(source):
        return False
    path = Path(source)
    return (path.is_dir() and not (path / MANIFEST).exists() and not _is_parquet(path)
            and not looks_like_tfrecords(path))


def list_image_files(spark, root: str):
    """The files under ``root`` as Spark lists them (``binaryFile``'s ``path`` column only:
    no file is opened by the JVM), one task per ``FILES_PER_TASK`` files."""
    from sparkvision.data.decoding import fewer_tasks, path_listing, scan_files

    listing = path_listing(spark, root)
    files, _unreadable = scan_files(Path(root))
    return fewer_tasks(listing, files)
