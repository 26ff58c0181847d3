"""Streaming reader of the ``tfrecords`` source: new files in a folder become micro-batches."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql.datasource import (
    DataSourceStreamReader,
    InputPartition,
)
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxBytes,
    ReadMaxFiles,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import (
    StructType,
)

from sparkvision.data.datasource_options import TFRecordOptions, list_data_files
from sparkvision.data.datasource_read import TFRecordPartition, read_partition
from sparkvision.errors import DataError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- streaming


class TFRecordStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Micro-batch reader over a folder where complete TFRecord files appear.

    Offsets are ``{"files": n}``: the first ``n`` files of the list of discovered files.
    New files are appended in (modification time, name) order as they are discovered, so
    the list is stable; files must appear complete (write elsewhere or under a hidden or
    ``.tmp`` name, then rename) and must not be deleted while the stream runs.
    """

    def __init__(self, opts: TFRecordOptions, schema: StructType) -> None:
        self.opts = opts
        self.schema = schema
        self._files: list[str] = []
        self._sizes: list[int] = []
        self._known: set[str] = set()
        self._target: int | None = None

    def _refresh(self) -> None:
        found = []
        for path in list_data_files(self.opts.path):
            if path not in self._known:
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                found.append((st.st_mtime_ns, path, st.st_size))
        for _, path, size in sorted(found):
            self._files.append(path)
            self._sizes.append(size)
            self._known.add(path)
        if found:
            log.info(
                "stream %s: %d new files, %d in all", self.opts.path, len(found), len(self._files)
            )

    def initialOffset(self) -> dict:
        return {"files": 0}

    def getDefaultReadLimit(self) -> ReadLimit:
        if self.opts.max_files_per_trigger:
            return ReadMaxFiles(self.opts.max_files_per_trigger)
        if self.opts.max_bytes_per_trigger:
            return ReadMaxBytes(self.opts.max_bytes_per_trigger)
        return ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        self._refresh()
        self._target = len(self._files)

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict:
        self._refresh()
        begin = int(start["files"])
        end = len(self._files) if self._target is None else self._target
        if isinstance(limit, ReadMaxFiles):
            end = min(end, begin + max(1, limit.max_files))
        elif isinstance(limit, ReadMaxBytes):
            budget, stop = limit.max_bytes, begin
            while stop < end and (stop == begin or budget >= self._sizes[stop]):
                budget -= self._sizes[stop]
                stop += 1
            end = stop
        return {"files": max(begin, end)}

    def reportLatestOffset(self) -> dict:
        return {"files": len(self._files)}

    def partitions(self, start: dict, end: dict) -> list[InputPartition]:
        begin, stop = int(start["files"]), int(end["files"])
        if stop > len(self._files):
            self._refresh()
        if stop > len(self._files):
            raise DataError(
                f"stream source {self.opts.path} has {len(self._files)} files but the "
                f"checkpoint asks for {stop}: files were deleted or renamed; "
                "restore them or start with a new checkpoint"
            )
        return [TFRecordPartition(path) for path in self._files[begin:stop]]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        return read_partition(partition, self.opts, self.schema)

    def commit(self, end: dict) -> None:
        log.debug("stream %s committed %s", self.opts.path, end)


# --------------------------------------------------------------------------- writing
