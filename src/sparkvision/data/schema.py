"""Column names and the Spark schema of prepared image data; small column helpers."""

from __future__ import annotations

from typing import Any

IMAGE_COL = "image"
LABEL_COL = "label"
PATH_COL = "path"
HEIGHT_COL = "height"
WIDTH_COL = "width"
CHANNELS_COL = "channels"

#: DDL of the columns every prepared shard holds. ``image`` is raw uint8 HWC bytes.
PREPARED_DDL = (
    "channels BIGINT, height BIGINT, image BINARY, label BIGINT, path STRING, width BIGINT"
)


def prepared_schema():  # -> pyspark.sql.types.StructType
    """The StructType of ``PREPARED_DDL``, built without a JVM (usable on executors)."""
    from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType

    types = {"BIGINT": LongType(), "BINARY": BinaryType(), "STRING": StringType()}
    fields = [part.split() for part in PREPARED_DDL.split(", ")]
    return StructType([StructField(name, types[kind]) for name, kind in fields])


def literal_map(mapping: dict[Any, Any]):  # -> pyspark Column
    """A ``map`` column literal of a small driver-side dict (class names, split bounds)."""
    from pyspark.sql import functions as F

    return F.create_map(*[F.lit(x) for pair in mapping.items() for x in pair])
