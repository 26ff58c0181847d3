"""Batch writer of the ``tfrecords`` source (append/overwrite, temp names, _SUCCESS)."""

from __future__ import annotations

import contextlib
import gzip
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pyspark.sql.datasource import (
    DataSourceArrowWriter,
    WriterCommitMessage,
)
from pyspark.sql.types import (
    BinaryType,
    StructType,
)

from sparkvision import storage
from sparkvision.data.datasource_options import SAVE_MODES, TFRecordOptions
from sparkvision.data.datasource_schema import plan_columns
from sparkvision.data.tf_example import Feature, encode_example
from sparkvision.data.tfrecord import WRITE_BUFFER, write_record
from sparkvision.errors import DataError, InvalidParameterError

log = logging.getLogger(__name__)


@dataclass
class TFRecordCommitMessage(WriterCommitMessage):
    """What one write task produced."""

    files: list[str] = field(default_factory=list)
    records: int = 0


def example_encoder(schema: StructType) -> Callable[[pa.RecordBatch], Iterator[bytes]]:
    columns = plan_columns(schema)

    def encode(batch: pa.RecordBatch) -> Iterator[bytes]:
        data = [batch.column(col.name).to_pylist() for col in columns]
        for row in range(batch.num_rows):
            features: dict[str, Feature] = {}
            for col, values in zip(columns, data, strict=True):
                value = values[row]
                if value is None:
                    continue  # nulls are left out of the Example
                if not col.is_list:
                    value = [value]
                elif None in value:
                    raise DataError(f"column {col.name!r} has an array with a null element")
                features[col.name] = (col.kind, value)
            yield encode_example(features)

    return encode


def _record_encoder(batch: pa.RecordBatch) -> Iterator[bytes]:
    for value in batch.column("record").to_pylist():
        if value is None:
            raise DataError("column 'record' has a null; recordType=ByteArray needs bytes")
        yield value


def has_data(path: str) -> bool:
    return storage.isfile(path) or bool(storage.listdir(path))


class TFRecordWriter(DataSourceArrowWriter):
    """Writes one ``part-NNNNN-<job>.tfrecord[.gz]`` file per task; commits on the driver.

    Overwrite removes the old contents in :meth:`commit`, after every task succeeded, so a
    failed job leaves the old data in place (and a job may overwrite the data it reads).
    """

    def __init__(
        self, opts: TFRecordOptions, schema: StructType, overwrite: bool, skip: bool
    ) -> None:
        self.opts = opts
        self.schema = schema
        self.overwrite = overwrite
        self.skip = skip
        self.job = uuid.uuid4().hex
        if opts.record_type == "ByteArray":
            record = next((f for f in schema.fields if f.name == "record"), None)
            if record is None or not isinstance(record.dataType, BinaryType):
                raise InvalidParameterError(
                    "recordType", "ByteArray", "the DataFrame needs a binary column 'record'"
                )
        else:
            plan_columns(schema)

    def write(self, iterator: Iterator[pa.RecordBatch]) -> TFRecordCommitMessage:
        from pyspark import TaskContext

        if self.skip:
            return TFRecordCommitMessage()
        ctx = TaskContext.get()
        part = ctx.partitionId() if ctx else 0
        gz = self.opts.compression == "gzip"
        final = storage.join(self.opts.path,
                             f"part-{part:05d}-{self.job}{'.tfrecord.gz' if gz else '.tfrecord'}")
        encode: Callable[[pa.RecordBatch], Iterator[bytes]]
        if self.opts.record_type == "ByteArray":
            encode = _record_encoder
        else:
            encode = example_encoder(self.schema)
        count = 0
        # The file appears under its final name only when the task finished writing it
        # (temporary name + rename, or one upload to an object store); an empty partition
        # writes nothing.
        with contextlib.ExitStack() as stack:
            fileobj: Any = None
            for batch in iterator:
                for record in encode(batch):
                    if fileobj is None:
                        fileobj = stack.enter_context(
                            storage.atomic_writer(final, buffering=WRITE_BUFFER))
                        if gz:
                            fileobj = stack.enter_context(
                                gzip.GzipFile(fileobj=fileobj, mode="wb", compresslevel=6))
                    write_record(fileobj, record)
                    count += 1
        if not count:
            return TFRecordCommitMessage()
        return TFRecordCommitMessage([final], count)

    def _clean_temp(self) -> None:
        for name in storage.listdir(self.opts.path):
            if name.startswith(".part-") and self.job in name:
                storage.remove(storage.join(self.opts.path, name))

    def commit(self, messages: list[WriterCommitMessage | None]) -> None:
        written = {f for m in messages if isinstance(m, TFRecordCommitMessage) for f in m.files}
        if self.skip:
            return
        self._clean_temp()
        if self.overwrite:
            for name in storage.listdir(self.opts.path):
                path = storage.join(self.opts.path, name)
                if path not in written:
                    storage.remove(path)
        storage.write_bytes(storage.join(self.opts.path, "_SUCCESS"), b"")
        log.info("wrote %d TFRecord files to %s", len(written), self.opts.path)

    def abort(self, messages: list[WriterCommitMessage | None]) -> None:
        for message in messages:
            if isinstance(message, TFRecordCommitMessage):
                for path in message.files:
                    storage.remove(path)
        if storage.isdir(self.opts.path):
            self._clean_temp()


def save_tfrecords(df: Any, path: str, mode: str = "errorifexists", **options: str) -> None:
    """``df.write.format("tfrecords").mode(mode).save(path)`` with every Spark save mode.

    Spark lets Python data sources run only ``append`` and ``overwrite``; this helper
    passes ``error``/``errorifexists``/``ignore`` to the writer through ``saveMode``.
    """
    if mode.lower() not in SAVE_MODES:
        raise InvalidParameterError("mode", mode, f"use one of {SAVE_MODES}")
    spark_mode = "overwrite" if mode.lower() == "overwrite" else "append"
    writer = df.write.format("tfrecords").mode(spark_mode).option("saveMode", mode.lower())
    writer.options(**options).save(path)
