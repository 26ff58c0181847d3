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


def decode_file(content: Any, spec: ImageSpec) -> tuple[bytes | None, str | None]:
    """(raw uint8 pixels of ``spec.shape``, None) or (None, why the file is rejected).
    ``content``: the file's bytes, or a function returning them (an ``OSError`` from it
    rejects the file as unreadable)."""
    try:
        data = content() if callable(content) else content
        return encoded_to_array(data or b"", spec).tobytes(), None
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    except ImageRejected as exc:
        return None, str(exc)


def _decoded_rows(
    rows: Iterator[tuple[str, Any]], root: str, spec: ImageSpec, need_class: bool,
    names: list[str],
) -> dict[str, list[Any]]:
    """``(path, bytes-or-reader)`` pairs → columns of decoded rows. A reader is called for
    the bytes (an ``OSError`` from it rejects the file as unreadable)."""
    out: dict[str, list[Any]] = {name: [] for name in names}
    for path, content in rows:
        local = path[5:] if path.startswith("file:") else path
        rel = os.path.relpath(local, root) if local.startswith(root) else local
        class_name = rel.split("/")[0] if "/" in rel else ""
        image: bytes | None = None
        if not class_name and need_class:
            error: str | None = "not inside a class sub-folder"
        else:
            image, error = decode_file(content, spec)
        out["path"].append(local)
        out["class_name"].append(class_name)
        out["error"].append(error)
        out["image"].append(image)
        out["height"].append(spec.height)
        out["width"].append(spec.width)
        out["channels"].append(spec.channels)
        out["label"].append(None)
    return out


def decode_batches(
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
        pairs = zip(batch.column("path").to_pylist(), batch.column("content").to_pylist(),
                    strict=True)
        out = _decoded_rows(pairs, root, spec, need_class, schema.names)
        for name in keep:
            out[name] = batch.column(name)
        yield pa.RecordBatch.from_pydict(out, schema=schema)


def file_reader(path: str):
    """A function returning the bytes of the file at ``path`` (a ``file:`` URI, a local
    path or any fsspec URL)."""
    if path.startswith("file:") or "://" not in path:
        local = path[5:] if path.startswith("file:") else path

        def read() -> bytes:
            with open(local, "rb") as fh:
                return fh.read()
        return read
    from sparkvision import storage

    return lambda: storage.read_bytes(path)


def decode_paths(batches: Iterator[Any], root: str, spec: ImageSpec, need_class: bool,
                  skip: frozenset[str]) -> Iterator[Any]:
    """Executor side: file paths → decoded rows, each file read here (not by the JVM:
    ``binaryFile`` costs ~100 µs a file before Python sees it); ``skip``: paths the
    driver's scan already rejected."""
    import pyarrow as pa

    schema = decoded_arrow_schema()
    for batch in batches:
        paths = [p for p in batch.column("path").to_pylist()
                 if (p[5:] if p.startswith("file:") else p) not in skip]
        out = _decoded_rows(((p, file_reader(p)) for p in paths), root, spec, need_class,
                            schema.names)
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
    """Is ``path`` a TFRecord file, or a folder whose files are all TFRecords (and markers
    like ``_SUCCESS``)? Stops at the first other file: an image folder of 1M files costs
    one ``stat``, not a list of every path."""
    def tfrecord(name: str) -> bool:
        return name.startswith(("_", ".")) or ".tfrecord" in name

    if path.is_file():
        return tfrecord(path.name)
    found = False
    for folder, _, names in os.walk(path):
        for name in names:
            if not tfrecord(name) and os.path.isfile(os.path.join(folder, name)):
                return False
            found = found or os.path.isfile(os.path.join(folder, name))
    return found


def scan_files(root: Path) -> tuple[int, list[tuple[str, str]]]:
    """(number of files under ``root``, (path, reason) of those Spark's ``binaryFile``
    skips silently: empty, broken links, no read permission). Metadata only (``stat``, no
    reads); the driver keeps the bad ones, never a list of every file."""
    from sparkvision.data.listing import walk_files

    count, bad = 0, []
    for path, reason in walk_files(str(root)):
        count += 1
        if reason is not None:
            bad.append((path, reason))
    return count, sorted(bad)


def path_listing(spark, root: str):  # -> pyspark.sql.DataFrame
    """The files under ``root`` as Spark lists them: ``binaryFile``'s ``path`` column only
    (no file is opened by the JVM), recursively, unreadable or vanished files skipped."""
    return (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("ignoreCorruptFiles", "true")
        .option("ignoreMissingFiles", "true")
        .load(root)
        .select("path")
    )


def decode_image_folder(spark, root: str, spec: ImageSpec, need_class: bool = True,
                        files: int | None = None, skip: frozenset[str] = frozenset()):
    """Decode every file under ``root`` on the executors: Spark lists the files
    (``binaryFile``, its ``path`` column only: no file is opened by the JVM), the decoding
    tasks read them. ``skip``: paths already rejected by :func:`scan_files` (left out).

    Returns a persisted DataFrame of ``DECODED_DDL`` rows; bad files carry ``error``.
    """
    listing = path_listing(spark, root)
    if files is None:
        files, _unreadable = scan_files(Path(root))
    skip = frozenset(skip)
    return fewer_tasks(listing, files).mapInArrow(
        lambda it: decode_paths(it, root, spec, need_class, skip), DECODED_DDL
    ).persist()


#: Files per decoding task. Spark packs ~30 small files into a ``binaryFile`` partition, and
#: a Python task costs ~45 ms of its own here — more than decoding 64 small JPEGs.
FILES_PER_TASK = 1000


def fewer_tasks(raw, files: int):
    """``raw`` coalesced (no shuffle) to one task per ``FILES_PER_TASK`` of its ``files``:
    20,000 small files are 625 ``binaryFile`` partitions, which decode in 31 s as 625
    Python tasks and in 4 s as 8 (2 cores)."""
    return raw.coalesce(max(1, -(-files // FILES_PER_TASK)))


#: Rejected files listed in ``dataset.json`` and command output; all of them go to
#: ``REJECTED_FILE`` beside it.
MAX_LISTED_REJECTED = 1000
REJECTED_FILE = "rejected.jsonl"


def _rejected(decoded):
    """The (path, error) of the decoded rows that carry an error, by path."""
    from pyspark.sql import functions as F

    return decoded.filter(F.col("error").isNotNull()).select("path", "error").orderBy("path")


def rejected_rows(decoded, limit: int | None = None) -> list[dict[str, str]]:
    """The (path, reason) of the decoded rows that carry an error, by path; at most
    ``limit`` of them (a top-N in Spark: the driver never holds them all)."""
    bad = _rejected(decoded)
    if limit is not None:
        bad = bad.limit(limit)
    return [{"path": r.path, "reason": r.error} for r in bad.collect()]


def with_class_label(decoded, classes: list[str]):
    """Decoded rows with ``label`` = index of their class folder (null when not a class)."""
    from pyspark.sql import functions as F

    index = literal_map({name: i for i, name in enumerate(classes)})
    return decoded.withColumn("label", index[F.col("class_name")].cast("bigint"))


def label_by_class(decoded, classes: list[str]):
    """Good rows with ``label`` = index of their class folder (null when not a class)."""
    from pyspark.sql import functions as F

    return with_class_label(decoded.filter(F.col("error").isNull()), classes)
