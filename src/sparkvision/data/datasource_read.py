"""The batch reader of the ``tfrecords`` source: input partitions (a file, or the records
starting in a byte range of one) read into Arrow batches of typed columns or raw records.

A batch closes at :data:`BATCH_ROWS` rows or before its records pass ``maxBytesPerBatch``
bytes (default 4 MB; a larger record is a batch of its own): Python workers are reused
and run with glibc's trimming off (``session.conf.GLIBC_TUNABLES``), so what one batch
needs stays in the worker — and in the training task that runs in it next."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import pyarrow as pa
from pyspark.sql.datasource import (
    DataSourceReader,
    InputPartition,
)
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from sparkvision.data.datasource_options import BATCH_ROWS, TFRecordOptions
from sparkvision.data.datasource_schema import ColumnPlan, plan_columns
from sparkvision.data.tf_example import Feature, decode_example
from sparkvision.data.tfrecord import (
    is_gzip_path,
    read_file_records,
    read_range_records,
    split_offsets,
)
from sparkvision.errors import DataError

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class TFRecordPartition(InputPartition):
    """One input partition: one TFRecord file, or the records starting in a byte range."""

    def __init__(self, path: str, start: int = 0, end: int | None = None) -> None:
        super().__init__(path)
        self.path = path
        self.start = start
        self.end = end

    @property
    def byte_range(self) -> tuple[int, int | None] | None:
        return None if self.start == 0 and self.end is None else (self.start, self.end)


def plan_partitions(files: Sequence[str], opts: TFRecordOptions) -> list[TFRecordPartition]:
    """One partition per file; uncompressed files are split every ``recordsPerPartition``."""
    if not opts.records_per_partition:
        return [TFRecordPartition(path) for path in files]
    parts: list[TFRecordPartition] = []
    for path in files:
        if opts.compression == "gzip" or is_gzip_path(path):
            parts.append(TFRecordPartition(path))  # a gzip stream cannot be entered midway
            continue
        offsets = split_offsets(path, opts.records_per_partition)
        ends: list[int | None] = [*offsets[1:], None]
        parts += [TFRecordPartition(path, a, b) for a, b in zip(offsets, ends, strict=True)]
    return parts


def _to_arrays(
    values: list[list[Any]], columns: list[ColumnPlan], schema: pa.Schema, path: str
) -> pa.RecordBatch:
    arrays = []
    for col, data, target in zip(columns, values, schema, strict=True):
        if col.is_bool:
            data = [
                None if v is None else ([bool(x) for x in v] if col.is_list else bool(v))
                for v in data
            ]
        try:
            arrays.append(pa.array(data, type=target.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise DataError(
                f"feature {col.name!r} in {path} does not fit column type {target.type}: {exc}; "
                "pass a schema with .schema(...) (e.g. binary instead of string)"
            ) from exc
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def spark_arrow_schema(schema: StructType) -> pa.Schema:
    """The Arrow schema Spark checks a Python data source's batches against (timestamps in
    UTC): pyspark 4.1 takes ``timezone``, 4.0 ``timestamp_utc``."""
    try:
        return to_arrow_schema(schema, timezone="UTC")
    except TypeError:  # pyspark 4.0
        return to_arrow_schema(schema, timestamp_utc=True)  # type: ignore[call-arg]


def read_batches(
    path: str,
    opts: TFRecordOptions,
    schema: StructType,
    byte_range: tuple[int, int | None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yield the records of one file (or of one byte range of it) as Arrow batches."""
    arrow_schema = spark_arrow_schema(schema)
    stats: dict[str, int] = {}
    if byte_range is None:
        records = read_file_records(
            path, opts.compression, opts.verify_checksums, opts.skip_corrupt, stats
        )
    else:
        records = read_range_records(
            path, byte_range[0], byte_range[1], opts.verify_checksums, opts.skip_corrupt, stats
        )
    limit = opts.max_bytes_per_batch
    if opts.record_type == "ByteArray":
        for chunk in _chunks(records, len, limit):
            batch = pa.record_batch([pa.array(chunk, pa.binary())], schema=arrow_schema)
            del chunk  # neither the rows nor the last batch held while the next is built
            yield batch
            del batch
    else:
        columns = plan_columns(schema)
        examples = _examples(records, path, opts.skip_corrupt, stats)
        for example_chunk in _chunks(examples, _example_size, limit):
            batch = _to_batch(example_chunk, columns, arrow_schema, path)
            del example_chunk
            yield batch
            del batch
    pa.default_memory_pool().release_unused()  # what Arrow's allocator kept for the batches
    if set(stats) - {"records"}:
        log.warning("read %s with skipCorrupt: %s", path, stats)


def _chunks(items: Iterable[_T], size: Callable[[_T], int], max_bytes: int,
            max_rows: int = BATCH_ROWS) -> Iterator[list[_T]]:
    """``items`` in lists of at most ``max_rows`` items whose sizes add up to at most
    ``max_bytes`` (an item larger than that alone)."""
    chunk: list[_T] = []
    total = 0
    for item in items:
        n = size(item)
        if chunk and total + n > max_bytes:
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += n
        if len(chunk) >= max_rows:
            yield chunk
            chunk, total = [], 0
    if chunk:
        yield chunk


def _examples(
    records: Iterator[bytes], path: str, skip_corrupt: bool, stats: dict[str, int]
) -> Iterator[tuple[int, dict[str, Feature], int]]:
    """Decode records to ``(index, features, record bytes)``; a malformed one raises, or is
    skipped."""
    for index, record in enumerate(records):
        try:
            yield index, decode_example(record), len(record)
        except DataError as exc:
            if not skip_corrupt:
                raise DataError(f"record {index} of {path}: {exc}") from exc
            stats["malformed_examples"] = stats.get("malformed_examples", 0) + 1


def _example_size(example: tuple[int, dict[str, Feature], int]) -> int:
    return example[2]


def _to_batch(
    examples: list[tuple[int, dict[str, Feature], int]],
    columns: list[ColumnPlan],
    schema: pa.Schema,
    path: str,
) -> pa.RecordBatch:
    values: list[list[Any]] = [[] for _ in columns]
    for index, features, _ in examples:
        for col, out in zip(columns, values, strict=True):
            feature = features.get(col.name)
            if feature is None:
                out.append(None)
                continue
            kind, items = feature
            if kind != col.kind:
                raise DataError(
                    f"feature {col.name!r} of record {index} in {path} is a {kind} list, but "
                    f"its column wants {col.kind}; fix the schema"
                )
            if col.is_list:
                out.append(items)
            elif len(items) <= 1:
                out.append(items[0] if items else None)
            else:
                raise DataError(
                    f"feature {col.name!r} of record {index} in {path} has {len(items)} values "
                    "but its column is not an array; use an ArrayType column"
                )
    return _to_arrays(values, columns, schema, path)


def read_partition(
    partition: InputPartition, opts: TFRecordOptions, schema: StructType
) -> Iterator[pa.RecordBatch]:
    path = getattr(partition, "path", None)
    if path is None:  # Spark plans InputPartition(None) when there are no files
        return iter(())
    return read_batches(path, opts, schema, getattr(partition, "byte_range", None))


class TFRecordReader(DataSourceReader):
    """Batch reader: one partition per file (or byte range), Arrow batches of at most
    :data:`BATCH_ROWS` rows and ``maxBytesPerBatch`` record bytes."""

    def __init__(self, opts: TFRecordOptions, schema: StructType, files: list[str]) -> None:
        self.opts = opts
        self.schema = schema
        self.files = files

    def partitions(self) -> list[InputPartition]:
        return list(plan_partitions(self.files, self.opts))

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        return read_partition(partition, self.opts, self.schema)
