"""The streaming inputs of ``sparkvision stream``: image files, TFRecords or Parquet dropped
into a folder, as a streaming DataFrame of raw rows with ``eventMicros`` (the file's
modification time in microseconds, or null where the format has none)."""

from __future__ import annotations

from sparkvision.checks import check_stream_input
from sparkvision.errors import InvalidParameterError

FORMATS = ("image", "tfrecords", "parquet")

#: The fixed schema of Spark's ``binaryFile`` source (a stream must be given it).
BINARY_FILE_DDL = "path STRING, modificationTime TIMESTAMP, length BIGINT, content BINARY"
#: Columns read from Parquet inputs (missing ones come back null).
PARQUET_DDL = "image BINARY, path STRING, label BIGINT, height BIGINT, width BIGINT, " \
    "channels BIGINT"


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidParameterError("format", fmt, f"use one of {', '.join(FORMATS)}")


def image_rows(raw):
    """``binaryFile`` rows (streaming or not) → ``path`` (no ``file:``), ``content``,
    ``eventMicros``."""
    from pyspark.sql import functions as F

    return raw.select(
        F.regexp_replace("path", "^file:", "").alias("path"), "content",
        F.unix_micros("modificationTime").alias("eventMicros"),
    )


def read_stream(spark, source: str, fmt: str, max_files_per_trigger: int | None = None):
    """A streaming DataFrame over the files that appear in ``source``.

    ``image``: ``path``, ``content``, ``eventMicros`` (Spark's ``binaryFile`` source);
    ``tfrecords``/``parquet``: the prepared columns and ``eventMicros``."""
    from pyspark.sql import functions as F

    check_format(fmt)
    check_stream_input(source)
    reader = spark.readStream
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", str(max_files_per_trigger))
    if fmt == "image":
        raw = (
            reader.format("binaryFile")
            .schema(BINARY_FILE_DDL)
            .option("recursiveFileLookup", "true")
            .option("ignoreCorruptFiles", "true")
            .option("ignoreMissingFiles", "true")
            .load(source)
        )
        return image_rows(raw)
    if fmt == "parquet":
        raw = reader.schema(PARQUET_DDL).option("recursiveFileLookup", "true").parquet(source)
        return raw.select(
            "image", F.coalesce("path", F.col("_metadata.file_path")).alias("path"), "label",
            "height", "width", "channels",
            F.unix_micros(F.col("_metadata.file_modification_time")).alias("eventMicros"),
        )
    from sparkvision.data.schema import prepared_schema

    raw = reader.format("tfrecords").schema(prepared_schema()).load(source)
    # TFRecord records carry no file time: eventTime stays null.
    return raw.withColumn("eventMicros", F.lit(None).cast("bigint"))
