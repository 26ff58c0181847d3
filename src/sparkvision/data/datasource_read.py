"""Options, file listing, schema inference and the batch reader of the ``tfrecords`` source."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyspark.sql.datasource import (
    DataSourceReader,
    InputPartition,
)
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    ByteType,
    DataType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
    StructField,
    StructType,
)

from sparkvision import storage
from sparkvision.data.tf_example import Feature, decode_example
from sparkvision.data.tfrecord import (
    is_gzip_path,
    normalize_compression,
    read_file_records,
    read_range_records,
    split_offsets,
)
from sparkvision.errors import DataError, InvalidParameterError

log = logging.getLogger(__name__)

RECORD_TYPES = ("Example", "ByteArray")
SAVE_MODES = ("append", "overwrite", "error", "errorifexists", "ignore")
BATCH_ROWS = 1024
INFER_RECORDS = 100
BYTE_ARRAY_SCHEMA = StructType([StructField("record", BinaryType())])
_TEMP_SUFFIXES = (".tmp", "._COPYING_")
_INT_TYPES = (LongType, IntegerType, ShortType, ByteType, BooleanType)
_FLOAT_TYPES = (FloatType, DoubleType)
_BYTES_TYPES = (StringType, BinaryType)
_CONTROL = bytes(c for c in range(32) if c not in (9, 10, 13)) + b"\x7f"


# --------------------------------------------------------------------------- options


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


def _is_text(value: bytes) -> bool:
    """True for valid UTF-8 without NUL or control characters other than tab, CR, LF."""
    if len(value.translate(None, _CONTROL)) != len(value):
        return False
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def infer_schema(files: Sequence[str], opts: TFRecordOptions) -> StructType:
    """Infer a schema from the first :data:`INFER_RECORDS` Examples of ``files``."""
    kinds: dict[str, str] = {}
    repeated: set[str] = set()
    binary: set[str] = set()
    seen = 0
    for path in files:
        records = read_file_records(
            path, opts.compression, opts.verify_checksums, opts.skip_corrupt
        )
        for record in records:
            for name, (kind, values) in decode_example(record).items():
                if kinds.setdefault(name, kind) != kind:
                    raise DataError(
                        f"feature {name!r} is {kinds[name]} in some records and {kind} in "
                        f"others ({path}); pass a schema with .schema(...)"
                    )
                if len(values) != 1:
                    repeated.add(name)
                if kind == "bytes" and name not in binary and not all(map(_is_text, values)):
                    binary.add(name)
            seen += 1
            if seen >= INFER_RECORDS:
                break
        if seen >= INFER_RECORDS:
            break
    if not kinds:
        raise DataError(
            f"cannot infer a schema: no features in the TFRecords at {opts.path}; "
            "pass one with .schema(...)"
        )
    fields = []
    for name in sorted(kinds):
        kind = kinds[name]
        dtype: DataType = LongType() if kind == "int64" else FloatType()
        if kind == "bytes":
            dtype = BinaryType() if name in binary else StringType()
        fields.append(StructField(name, ArrayType(dtype) if name in repeated else dtype))
    return StructType(fields)


# --------------------------------------------------------------------------- reading


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


def _kind_for(dtype: DataType) -> str | None:
    if isinstance(dtype, _INT_TYPES):
        return "int64"
    if isinstance(dtype, _FLOAT_TYPES):
        return "float"
    if isinstance(dtype, _BYTES_TYPES):
        return "bytes"
    return None


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str
    is_list: bool
    is_bool: bool


def plan_columns(schema: StructType) -> list[_Column]:
    """Map each schema field to the feature kind it holds; reject unsupported types."""
    columns = []
    for f in schema.fields:
        is_list = isinstance(f.dataType, ArrayType)
        element = f.dataType.elementType if is_list else f.dataType
        kind = _kind_for(element)
        if kind is None:
            raise InvalidParameterError(
                f"column {f.name!r}",
                f.dataType.simpleString(),
                "TFRecord Examples hold long/int/short/byte/boolean, float/double, "
                "string/binary or arrays of those",
            )
        columns.append(_Column(f.name, kind, is_list, isinstance(element, BooleanType)))
    return columns


def _to_arrays(
    values: list[list[Any]], columns: list[_Column], schema: pa.Schema, path: str
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


def read_batches(
    path: str,
    opts: TFRecordOptions,
    schema: StructType,
    byte_range: tuple[int, int | None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yield the records of one file (or of one byte range of it) as Arrow batches."""
    arrow_schema = to_arrow_schema(schema, timezone="UTC")  # exactly what Spark checks
    stats: dict[str, int] = {}
    if byte_range is None:
        records = read_file_records(
            path, opts.compression, opts.verify_checksums, opts.skip_corrupt, stats
        )
    else:
        records = read_range_records(
            path, byte_range[0], byte_range[1], opts.verify_checksums, opts.skip_corrupt, stats
        )
    if opts.record_type == "ByteArray":
        for chunk in _chunks(records):
            yield pa.record_batch([pa.array(chunk, pa.binary())], schema=arrow_schema)
    else:
        columns = plan_columns(schema)
        examples = _examples(records, path, opts.skip_corrupt, stats)
        for chunk in _chunks(examples):
            yield _to_batch(chunk, columns, arrow_schema, path)
    if set(stats) - {"records"}:
        log.warning("read %s with skipCorrupt: %s", path, stats)


def _chunks(items: Iterator[Any]) -> Iterator[list[Any]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == BATCH_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _examples(
    records: Iterator[bytes], path: str, skip_corrupt: bool, stats: dict[str, int]
) -> Iterator[tuple[int, dict[str, Feature]]]:
    """Decode records to ``(index, features)``; a malformed one raises, or is skipped."""
    for index, record in enumerate(records):
        try:
            yield index, decode_example(record)
        except DataError as exc:
            if not skip_corrupt:
                raise DataError(f"record {index} of {path}: {exc}") from exc
            stats["malformed_examples"] = stats.get("malformed_examples", 0) + 1


def _to_batch(
    examples: list[tuple[int, dict[str, Feature]]],
    columns: list[_Column],
    schema: pa.Schema,
    path: str,
) -> pa.RecordBatch:
    values: list[list[Any]] = [[] for _ in columns]
    for index, features in examples:
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


def check_read_schema(schema: StructType, opts: TFRecordOptions) -> None:
    if opts.record_type == "ByteArray":
        if len(schema.fields) != 1 or not isinstance(schema.fields[0].dataType, BinaryType):
            raise InvalidParameterError(
                "schema", schema.simpleString(), "recordType=ByteArray reads one binary column"
            )
    else:
        plan_columns(schema)


def read_partition(
    partition: InputPartition, opts: TFRecordOptions, schema: StructType
) -> Iterator[pa.RecordBatch]:
    path = getattr(partition, "path", None)
    if path is None:  # Spark plans InputPartition(None) when there are no files
        return iter(())
    return read_batches(path, opts, schema, getattr(partition, "byte_range", None))


class TFRecordReader(DataSourceReader):
    """Batch reader: one partition per file, Arrow batches of :data:`BATCH_ROWS` rows."""

    def __init__(self, opts: TFRecordOptions, schema: StructType, files: list[str]) -> None:
        self.opts = opts
        self.schema = schema
        self.files = files

    def partitions(self) -> list[InputPartition]:
        return list(plan_partitions(self.files, self.opts))

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        return read_partition(partition, self.opts, self.schema)
