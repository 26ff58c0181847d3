"""What one ``prepare`` task does, on an executor: read its share of the listed files (or
built-in rows), decode, validate and resize them, place each in its split by its hash, and
write the shards and its rejected files itself (:mod:`sparkvision.data.shards`). It returns
only counts. One pass over the images: nothing is cached, shuffled or sent to the driver.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sparkvision.data.decoding import decode_file, file_reader
from sparkvision.data.images import ImageSpec, prepare_array
from sparkvision.data.listing import builtin_row_name, read_names
from sparkvision.data.shards import (
    PREPARED_COLUMNS,
    ShardFormat,
    ShardWriter,
    write_rejected_part,
)
from sparkvision.data.splitting import Starts, path_hash, split_of

#: What each task returns: rows written per (split, label), and files rejected.
COUNTS_DDL = "split STRING, label BIGINT, rows BIGINT"
#: What a checking task returns: the files of the checked classes that do not decode.
CHECKED_DDL = "rel STRING, path STRING, error STRING"
#: Rows decoded and written together (one Arrow batch per split).
ROWS_PER_BATCH = 256
REJECTED_SPLIT = "_rejected"


@dataclass(frozen=True)
class TaskPlan:
    """Everything a task needs, shipped in its closure (small: no per-file data)."""

    count: int  # rows listed
    tasks: int
    seed: int
    spec: ImageSpec | None  # None: a built-in data set kept at its own shape
    #: a folder: its absolute path and the listing's chunks; a built-in: its name
    root: str | None = None
    chunk_dir: str | None = None
    builtin: str | None = None
    labels: dict[str, int] = field(default_factory=dict)
    starts: dict[int, Starts] = field(default_factory=dict)
    #: relative paths already known bad (left out; the driver reports them)
    skip: frozenset[str] = frozenset()
    folder: str = ""  # where the run's shards and rejected parts go
    shape: ShardFormat = ShardFormat()

    def rows_of(self, task: int) -> range:
        return range(task * self.count // self.tasks, (task + 1) * self.count // self.tasks)


@functools.lru_cache(maxsize=1)
def _builtin(name: str) -> Any:
    from sparkvision.data.builtin import load_builtin

    return load_builtin(name)


def _items(plan: TaskPlan, task: int) -> Iterator[tuple[str, str, str, Any]]:
    """(hash key, path, class name, content or reader) of the task's rows."""
    rows = plan.rows_of(task)
    if plan.builtin is not None:
        ds = _builtin(plan.builtin)
        for index in rows:
            name = builtin_row_name(plan.builtin, index)
            yield name, name, ds.classes[int(ds.labels[index])], ds.images[index]
        return
    assert plan.root is not None and plan.chunk_dir is not None
    for rel in read_names(plan.chunk_dir, rows.start, rows.stop):
        path = f"{plan.root}/{rel}"
        yield rel, path, rel.split("/", 1)[0], file_reader(path)


def _pixels(plan: TaskPlan, content: Any) -> tuple[bytes | None, str | None]:
    if plan.builtin is None:
        assert plan.spec is not None
        return decode_file(content, plan.spec)
    if plan.spec is None or plan.spec.shape == content.shape:
        return content.tobytes(), None
    return prepare_array(content, plan.spec).tobytes(), None


def _new_columns() -> dict[str, list[Any]]:
    return {name: [] for name in PREPARED_COLUMNS}


def write_task(plan: TaskPlan, task: int) -> dict[tuple[str, int], int]:
    """Decode and write the rows of ``task``; return rows per (split, label) (label -1:
    rejected files)."""
    counts: dict[tuple[str, int], int] = {}
    rejected: list[tuple[str, str]] = []
    pending: dict[str, dict[str, list[Any]]] = {}
    shape = plan.spec.shape if plan.spec is not None else None
    with ShardWriter(plan.folder, task, plan.shape) as writer:
        for n, (key, path, class_name, content) in enumerate(_items(plan, task), 1):
            if key in plan.skip:
                continue
            image, error = _pixels(plan, content)
            if image is None:
                rejected.append((path, error or "rejected"))
                continue
            label = plan.labels[class_name]
            split = split_of(path_hash(key, plan.seed), plan.starts[label])
            counts[split, label] = counts.get((split, label), 0) + 1
            if split == "dropped":
                continue
            h, w, c = shape if shape is not None else content.shape
            columns = pending.setdefault(split, _new_columns())
            for name, value in (("channels", c), ("height", h), ("image", image),
                                ("label", label), ("path", path), ("width", w)):
                columns[name].append(value)
            if n % ROWS_PER_BATCH == 0:
                for name, cols in pending.items():
                    writer.write(name, cols)
                pending = {}
        for name, cols in pending.items():
            writer.write(name, cols)
    write_rejected_part(plan.folder, task, rejected)
    if rejected:
        counts[REJECTED_SPLIT, -1] = len(rejected)
    return counts


def _counts_batch(counts: dict[tuple[str, int], int]) -> Any:
    import pyarrow as pa

    return pa.RecordBatch.from_pydict(
        {"split": [s for s, _ in counts], "label": [lb for _, lb in counts],
         "rows": list(counts.values())},
        schema=pa.schema([("split", pa.string()), ("label", pa.int64()), ("rows", pa.int64())]))


def run_write_tasks(batches: Iterator[Any], plan: TaskPlan) -> Iterator[Any]:
    """``mapInArrow`` body: task numbers in, ``COUNTS_DDL`` rows out."""
    for batch in batches:
        for task in batch.column(0).to_pylist():
            yield _counts_batch(write_task(plan, int(task)))


def run_check_tasks(batches: Iterator[Any], plan: TaskPlan,
                    classes: frozenset[str]) -> Iterator[Any]:
    """``mapInArrow`` body: task numbers in, the files of ``classes`` that do not decode
    out (``CHECKED_DDL``)."""
    import pyarrow as pa

    schema = pa.schema([("rel", pa.string()), ("path", pa.string()), ("error", pa.string())])
    for batch in batches:
        for task in batch.column(0).to_pylist():
            bad: dict[str, list[str]] = {"rel": [], "path": [], "error": []}
            for key, path, class_name, content in _items(plan, int(task)):
                if class_name not in classes:
                    continue
                image, error = _pixels(plan, content)
                if image is None:
                    bad["rel"].append(key)
                    bad["path"].append(path)
                    bad["error"].append(error or "rejected")
            yield pa.RecordBatch.from_pydict(bad, schema=schema)


def run_write_rows(batches: Iterator[Any], plan: TaskPlan) -> Iterator[Any]:
    """``mapInArrow`` body for rows already decoded by Spark (ingested TFRecords: prepared
    columns, ``label`` set): place each row by the hash of its ``path`` and write it; the
    task's number is its partition's."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    task = ctx.partitionId() if ctx else 0
    counts: dict[tuple[str, int], int] = {}
    with ShardWriter(plan.folder, task, plan.shape) as writer:
        for batch in batches:
            rows = batch.select(list(PREPARED_COLUMNS)).to_pydict()
            placed: dict[str, list[int]] = {}
            for i, (path, label) in enumerate(zip(rows["path"], rows["label"], strict=True)):
                split = split_of(path_hash(path, plan.seed), plan.starts[int(label)])
                counts[split, int(label)] = counts.get((split, int(label)), 0) + 1
                placed.setdefault(split, []).append(i)
            for split, index in placed.items():
                if split != "dropped":
                    writer.write(split, {k: [v[i] for i in index] for k, v in rows.items()})
    yield _counts_batch(counts)
