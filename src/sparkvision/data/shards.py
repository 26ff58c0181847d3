"""The shards of a prepared folder, written by the tasks that decode the images.

Each ``prepare`` task writes its rows of each split to ``<tmp>/<split>/part-NNNNN.<ext>``
(NNNNN = the task's number, so a retried task rewrites the same file, atomically) and its
rejected files to ``<tmp>/_rejected/part-NNNNN.jsonl``. When every task succeeded the
driver swaps the split folders into place (:func:`commit_splits`): a failed run leaves the
previous output as it was.
"""

from __future__ import annotations

import contextlib
import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sparkvision import storage
from sparkvision.data.images import encode_array
from sparkvision.data.manifest import SPLITS
from sparkvision.data.schema import PREPARED_DDL

#: The columns of a prepared row, in the order they are stored.
PREPARED_COLUMNS = tuple(part.split()[0] for part in PREPARED_DDL.split(", "))
REJECTED_PARTS = "_rejected"
EXTENSIONS = {"tfrecords": ".tfrecord", "parquet": ".parquet"}


@dataclass(frozen=True)
class ShardFormat:
    """How shards are stored: ``fmt`` tfrecords|parquet, ``store`` raw|encoded (then
    ``encoding`` png|jpeg)."""

    fmt: str = "tfrecords"
    store: str = "raw"
    encoding: str = "png"


def arrow_schema():
    """The Arrow schema of prepared rows (``PREPARED_DDL``), built without a JVM."""
    import pyarrow as pa

    kinds = {"BIGINT": pa.int64(), "BINARY": pa.binary(), "STRING": pa.string()}
    return pa.schema([(name, kinds[kind]) for name, kind in
                      (part.split() for part in PREPARED_DDL.split(", "))])


def shard_path(folder: str, split: str, task: int, fmt: str) -> str:
    return storage.join(folder, split, f"part-{task:05d}{EXTENSIONS[fmt]}")


class ShardWriter:
    """One task's files, one per split, opened on the first row of that split."""

    def __init__(self, folder: str, task: int, shape: ShardFormat) -> None:
        self.folder, self.task, self.shape = folder, task, shape
        self.stack = contextlib.ExitStack()
        self.files: dict[str, Any] = {}
        self.schema = arrow_schema()
        self.encode: Any = None
        if shape.fmt == "tfrecords":
            from sparkvision.data.datasource_write import example_encoder
            from sparkvision.data.schema import prepared_schema

            self.encode = example_encoder(prepared_schema())

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stack.__exit__(*exc)  # an exception: no file appears

    def _open(self, split: str) -> Any:
        from sparkvision.data.tfrecord import WRITE_BUFFER

        if split not in self.files:
            fh = self.stack.enter_context(storage.atomic_writer(
                shard_path(self.folder, split, self.task, self.shape.fmt),
                buffering=WRITE_BUFFER))
            if self.shape.fmt == "parquet":
                import pyarrow.parquet as pq

                fh = self.stack.enter_context(pq.ParquetWriter(fh, self.schema))
            self.files[split] = fh
        return self.files[split]

    def write(self, split: str, columns: dict[str, list[Any]]) -> None:
        """Write rows (``PREPARED_COLUMNS``, ``image`` raw bytes) to ``split``."""
        import numpy as np
        import pyarrow as pa

        if not columns["path"]:
            return
        if self.shape.store == "encoded":
            columns = dict(columns)
            columns["image"] = [
                encode_array(np.frombuffer(raw, np.uint8).reshape(h, w, c), self.shape.encoding)
                for raw, h, w, c in zip(columns["image"], columns["height"], columns["width"],
                                        columns["channels"], strict=True)]
        batch = pa.RecordBatch.from_pydict({name: columns[name] for name in PREPARED_COLUMNS},
                                           schema=self.schema)
        fh = self._open(split)
        if self.encode is None:
            fh.write_batch(batch)
            return
        from sparkvision.data.tfrecord import write_record

        for record in self.encode(batch):
            write_record(fh, record)


def write_rejected_part(folder: str, task: int, rejected: list[tuple[str, str]]) -> None:
    """A task's rejected files, by path, as JSON lines (nothing when there are none)."""
    if rejected:
        storage.write_bytes(storage.join(folder, REJECTED_PARTS, f"part-{task:05d}.jsonl"),
                            b"".join(_json_line(p, r) for p, r in sorted(rejected)))


def _json_line(path: str, reason: str) -> bytes:
    return (json.dumps({"path": path, "reason": reason}, ensure_ascii=False) + "\n").encode()


def _read_parts(folder: str) -> Iterator[Iterator[tuple[str, str]]]:
    parts = storage.join(folder, REJECTED_PARTS)
    if not storage.isdir(parts):
        return
    for name in sorted(storage.listdir(parts)):
        if name.endswith(".jsonl"):
            yield _part_rows(storage.join(parts, name))


def _part_rows(path: str) -> Iterator[tuple[str, str]]:
    with storage.open_read(path) as fh:
        for line in fh:
            row = json.loads(line)
            yield row["path"], row["reason"]


def merge_rejected(folder: str, extra: Iterable[tuple[str, str]], target: str,
                   listed: int) -> tuple[int, list[dict[str, str]]]:
    """Merge the tasks' rejected parts and ``extra`` (sorted) by path into the JSON lines
    file ``target``; return how many and the first ``listed`` of them. Streams: the
    driver never holds them all."""
    count, first = 0, []
    merged = heapq.merge(iter(extra), *_read_parts(folder))
    with storage.atomic_writer(target) as fh:
        for path, reason in merged:
            fh.write(_json_line(path, reason))
            if count < listed:
                first.append({"path": path, "reason": reason})
            count += 1
    if not count:
        storage.remove(target)
    return count, first


def commit_splits(folder: str, out: str, fmt: str) -> None:
    """Swap the split folders written under ``folder`` into ``out`` (replacing old ones),
    each with a ``_SUCCESS`` marker; a split no task wrote gets an empty folder (Parquet:
    an empty file with the schema, so Spark can read it)."""
    for split in SPLITS:
        written = storage.join(folder, split)
        if not storage.isdir(written):
            storage.makedirs(written)
            if fmt == "parquet":
                import pyarrow.parquet as pq

                with storage.atomic_writer(shard_path(folder, split, 0, fmt)) as fh:
                    pq.ParquetWriter(fh, arrow_schema()).close()
        storage.write_bytes(storage.join(written, "_SUCCESS"), b"")
        target = storage.join(out, split)
        storage.remove(target)
        storage.move(written, target)
