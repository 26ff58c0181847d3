"""Read a split of a prepared data set back as a DataFrame."""

from __future__ import annotations

from sparkvision import storage
from sparkvision.data.manifest import SPLITS, read_manifest
from sparkvision.data.schema import prepared_schema
from sparkvision.errors import InvalidParameterError


def load_prepared(spark, folder: str, split: str = "train"):
    """DataFrame of one split (``train``, ``val`` or ``test``) of a prepared folder."""
    if split not in SPLITS:
        raise InvalidParameterError("split", split, f"use one of {', '.join(SPLITS)}")
    manifest = read_manifest(folder)
    path = storage.join(folder, manifest.get("paths", {}).get(split, split))
    if manifest["format"] == "parquet":
        return spark.read.parquet(path)
    return spark.read.format("tfrecords").schema(prepared_schema()).load(path)
