"""Column names and the Spark schema of prepared image data."""

from __future__ import annotations

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
    from pyspark.sql.types import StructType

    return StructType.fromDDL(PREPARED_DDL)
