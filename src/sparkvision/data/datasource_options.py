"""The options of a ``tfrecords`` read or write, parsed and checked, and the files its
paths name (a file, or a folder walked recursively without hidden and temporary names)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from sparkvision import storage
from sparkvision.data.tfrecord import normalize_compression
from sparkvision.errors import DataError, InvalidParameterError

RECORD_TYPES = ("Example", "ByteArray")
SAVE_MODES = ("append", "overwrite", "error", "errorifexists", "ignore")
_TEMP_SUFFIXES = (".tmp", "._COPYING_")

#: Rows per Arrow batch of a read (at most; ``maxBytesPerBatch`` may close one earlier).
BATCH_ROWS = 1024
#: Default ``maxBytesPerBatch``: the record bytes of one Arrow batch of a read. A reused
#: Python worker keeps about twice its largest batch (the records, then Arrow's copy; glibc
#: trimming is off): 1,024 rows of 192x192x3 images were 108 MB, which the training task
#: that ran next in that worker carried. 4 MB keeps that under what Spark's own 16 MB Arrow
#: batches into a training task cost (``session.conf``), and reads no slower.
BATCH_BYTES = 4 << 20


def _flag(options: Mapping[str, str], name: str, default: bool) -> bool:
    value = options.get(name)
    if value is None:
        return default
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise InvalidParameterError(name, value, "use true or false")


def _positive(options: Mapping[str, str], name: str) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise InvalidParameterError(name, value, "use a whole number >= 1")
    return number


def _local_path(path: str) -> str:
    if path.startswith("file://"):
        return path[len("file://") :]
    return path.removeprefix("file:")


@dataclass(frozen=True)
class TFRecordOptions:
    """The parsed, validated options of one read or write."""

    path: str
    paths: tuple[str, ...] = ()
    record_type: str = "Example"
    compression: str | None = None
    verify_checksums: bool = True
    skip_corrupt: bool = False
    save_mode: str | None = None
    max_files_per_trigger: int | None = None
    max_bytes_per_trigger: int | None = None
    records_per_partition: int | None = None
    max_bytes_per_batch: int = BATCH_BYTES

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> TFRecordOptions:
        paths = [options["path"]] if options.get("path") else []
        if options.get("paths"):  # load([a, b]) passes a JSON list
            paths.extend(json.loads(options["paths"]))
        if not paths:
            raise InvalidParameterError("path", None, "pass a file or folder to load()/save()")
        record_type = options.get("recordType", "Example")
        by_lower = {t.lower(): t for t in RECORD_TYPES}
        if record_type.lower() not in by_lower:
            raise InvalidParameterError("recordType", record_type, f"use one of {RECORD_TYPES}")
        save_mode = options.get("saveMode")
        if save_mode is not None and save_mode.lower() not in SAVE_MODES:
            raise InvalidParameterError("saveMode", save_mode, f"use one of {SAVE_MODES}")
        return cls(
            path=_local_path(paths[0]),
            paths=tuple(_local_path(p) for p in paths),
            record_type=by_lower[record_type.lower()],
            compression=normalize_compression(options.get("compression")),
            verify_checksums=_flag(options, "verifyChecksums", True),
            skip_corrupt=_flag(options, "skipCorrupt", False),
            save_mode=save_mode.lower() if save_mode else None,
            max_files_per_trigger=_positive(options, "maxFilesPerTrigger"),
            max_bytes_per_trigger=_positive(options, "maxBytesPerTrigger"),
            records_per_partition=_positive(options, "recordsPerPartition"),
            max_bytes_per_batch=_positive(options, "maxBytesPerBatch") or BATCH_BYTES,
        )


# --------------------------------------------------------------------------- files


def _hidden(name: str) -> bool:
    return name.startswith((".", "_")) or name.endswith(_TEMP_SUFFIXES)


def list_data_files(path: str) -> list[str]:
    """Return the TFRecord files at ``path`` (a file, or a folder walked recursively), sorted;
    a local path or any fsspec URL."""
    if storage.isfile(path):
        return [path]
    if not storage.isdir(path):
        raise DataError(f"TFRecord path {path} does not exist; check the path (local or shared)")
    return storage.walk_files(path, keep=lambda name: not _hidden(name))


def list_input_files(opts: TFRecordOptions) -> list[str]:
    """The files of every path of a read, in order, without duplicates."""
    files = (f for p in opts.paths or (opts.path,) for f in list_data_files(p))
    return list(dict.fromkeys(files))


def single_path(opts: TFRecordOptions, what: str) -> None:
    if len(opts.paths) > 1:
        raise InvalidParameterError("path", list(opts.paths), f"{what} takes one folder")
