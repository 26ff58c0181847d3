"""Decode image files on Spark executors into the rows ``prepare`` and ``predict`` share.

A decoded row holds the prepared columns plus ``class_name`` (the first folder under the
root) and ``error`` (why a file was rejected, or null).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparkvision.data.images import ImageRejected, ImageSpec, encoded_to_array
from sparkvision.data.schema import PREPARED_DDL, literal_map

#: Side of the square images an image folder is resized to when no size is given.
DEFAULT_FOLDER_SIZE = 32
DECODED_DDL = PREPARED_DDL + ", class_name STRING, error STRING"


def _decode_batches(
    batches: Iterator[Any], root: str, spec: ImageSpec, need_class: bool = True,
    keep: tuple[str, ...] = (),
) -> Iterator[Any]:
    """Executor side: binaryFile rows → decoded uint8 images (or a rejection reason).

    The class is the first folder under ``root``; files directly in ``root`` are rejected
    when ``need_class`` (prepare) and kept with no class otherwise (predict). ``keep`` names
    BIGINT input columns passed through unchanged."""
    import pyarrow as pa

    schema = decoded_arrow_schema(keep)
    for batch in batches:
        paths = batch.column("path").to_pylist()
        contents = batch.column("content").to_pylist()
        out: dict[str, list[Any]] = {name: [] for name in schema.names}
        for path, content in zip(paths, contents, strict=True):
            local = path[5:] if path.startswith("file:") else path
            rel = os.path.relpath(local, root) if local.startswith(root) else local
            class_name = rel.split("/")[0] if "/" in rel else ""
            image, error = None, None
            if not class_name and need_class:
                error = "not inside a class sub-folder"
            else:
                try:
                    image = encoded_to_array(content or b"", spec)
                except ImageRejected as exc:
                    error = str(exc)
            out["path"].append(local)
            out["class_name"].append(class_name)
            out["error"].append(error)
            out["image"].append(image.tobytes() if image is not None else None)
            out["height"].append(spec.height)
            out["width"].append(spec.width)
            out["channels"].append(spec.channels)
            out["label"].append(None)
        for name in keep:
            out[name] = batch.column(name)
        yield pa.RecordBatch.from_pydict(out, schema=schema)


def decoded_arrow_schema(keep: tuple[str, ...] = ()):
    """Arrow schema of ``DECODED_DDL`` plus ``keep`` BIGINT columns (built without the JVM:
    runs on executors)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("channels", pa.int64()), ("height", pa.int64()), ("image", pa.binary()),
            ("label", pa.int64()), ("path", pa.string()), ("width", pa.int64()),
            ("class_name", pa.string()), ("error", pa.string()),
        ]
        + [(name, pa.int64()) for name in keep]
    )


def looks_like_tfrecords(path: Path) -> bool:
    names = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return bool(names) and all(
        p.name.startswith(("_", ".")) or ".tfrecord" in p.name for p in names
    )


def unreadable_files(root: Path) -> Iterator[tuple[str, str]]:
    """(path, reason) of every file under ``root`` that is empty or cannot be opened and read
    (broken links, no permission): Spark's ``binaryFile`` skips those silently. Readable files are
    not kept, so the driver's memory does not grow with the number of files."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            try:
                with open(full, "rb") as fh:
                    if not fh.read(1):
                        yield full, "empty file (0 bytes)"  # Spark skips empty files
            except OSError as exc:
                yield full, f"unreadable: {exc.strerror or exc}"


def decode_image_folder(spark, root: str, spec: ImageSpec, need_class: bool = True):
    """Read every file under ``root`` with ``binaryFile`` and decode it on the executors.

    Returns a persisted DataFrame of ``DECODED_DDL`` rows; bad files carry ``error``.
    """
    raw = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("ignoreCorruptFiles", "true")
        .option("ignoreMissingFiles", "true")
        .load(root)
    )
    return decode_files(raw, root, spec, need_class).persist()


def decode_files(raw, root: str, spec: ImageSpec, need_class: bool = True,
                 keep: tuple[str, ...] = ()):
    """``binaryFile``-shaped rows (``path``, ``content``, and the BIGINT ``keep`` columns)
    → ``DECODED_DDL`` rows (+ ``keep``), decoded on the executors; bad files carry
    ``error``. Works on batch and streaming DataFrames."""
    ddl = DECODED_DDL + "".join(f", {name} BIGINT" for name in keep)
    return raw.select("path", "content", *keep).mapInArrow(
        lambda it: _decode_batches(it, root, spec, need_class, keep), ddl
    )


#: Rejected files listed in ``dataset.json`` and command output; all of them go to
#: ``REJECTED_FILE`` beside it.
MAX_LISTED_REJECTED = 1000
REJECTED_FILE = "rejected.jsonl"


def rejected_rows(decoded, limit: int | None = None) -> list[dict[str, str]]:
    """The (path, reason) of the decoded rows that carry an error, by path; at most
    ``limit`` of them (a top-N in Spark: the driver never holds them all)."""
    from pyspark.sql import functions as F

    bad = decoded.filter(F.col("error").isNotNull()).select("path", "error").orderBy("path")
    if limit is not None:
        bad = bad.limit(limit)
    return [{"path": r.path, "reason": r.error} for r in bad.collect()]


def write_rejected(decoded, extra: list[tuple[str, str]], path: str) -> int:
    """Write every rejected file as JSON lines (``{"path", "reason"}``, by path) to
    ``path`` (atomically, any filesystem), streaming them partition by partition; return
    how many. ``extra``: files Spark could not read at all."""
    import json

    from pyspark.sql import functions as F

    from sparkvision import storage

    bad = decoded.filter(F.col("error").isNotNull()).select("path", "error").orderBy("path")
    count = 0
    with storage.atomic_writer(path) as fh:
        for p, reason in sorted(extra):
            fh.write((json.dumps({"path": p, "reason": reason}, ensure_ascii=False)
                      + "\n").encode())
            count += 1
        for row in bad.toLocalIterator():
            fh.write((json.dumps({"path": row.path, "reason": row.error}, ensure_ascii=False)
                      + "\n").encode())
            count += 1
    return count


def with_class_label(decoded, classes: list[str]):
    """Decoded rows with ``label`` = index of their class folder (null when not a class)."""
    from pyspark.sql import functions as F

    index = literal_map({name: i for i, name in enumerate(classes)})
    return decoded.withColumn("label", index[F.col("class_name")].cast("bigint"))


def label_by_class(decoded, classes: list[str]):
    """Good rows with ``label`` = index of their class folder (null when not a class)."""
    from pyspark.sql import functions as F

    return with_class_label(decoded.filter(F.col("error").isNull()), classes)
