"""The ``tfrecords`` Spark data source (pyspark Python Data Source API).

Batch read, batch write and streaming read of TFRecord files on a local or shared file
system (executors open the paths directly; ``file:`` URIs are accepted)::

    spark.read.format("tfrecords").load(path)                 # typed columns
    spark.read.format("tfrecords").option("recordType", "ByteArray").load(path)
    df.write.format("tfrecords").mode("overwrite").save(path)
    spark.readStream.format("tfrecords").schema(ddl).load(folder)

Options (case-insensitive): ``recordType`` ``Example`` (default) or ``ByteArray`` (one
binary column ``record``); ``compression`` ``none`` / ``gzip`` (read: detected from the
``.gz`` suffix by default); ``verifyChecksums`` (default true); ``skipCorrupt`` (default
false); write only: ``saveMode`` ``error`` / ``ignore`` (Spark lets Python data sources
run only ``append`` and ``overwrite``; use ``mode("append")`` with this option, or
:func:`save_tfrecords`); stream only: ``maxFilesPerTrigger``, ``maxBytesPerTrigger``.

A path is one file or a folder read recursively; names starting with ``.`` or ``_``
(and ``*.tmp``) are skipped. One input partition per file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    DataSourceStreamReader,
    InputPartition,
    WriterCommitMessage,
)
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxBytes,
    ReadMaxFiles,
    SupportsTriggerAvailableNow,
)
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

from sparkvision.data.tfrecord import (
    Feature,
    decode_example,
    encode_example,
    normalize_compression,
    open_for_write,
    read_file_records,
    write_record,
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
        )


# --------------------------------------------------------------------------- files


def _hidden(name: str) -> bool:
    return name.startswith((".", "_")) or name.endswith(_TEMP_SUFFIXES)


def list_data_files(path: str) -> list[str]:
    """Return the TFRecord files at ``path`` (a file, or a folder walked recursively), sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"TFRecord path {path} does not exist; check the path (local or shared)")
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        found.extend(os.path.join(root, f) for f in files if not _hidden(f))
    return sorted(found)


def list_input_files(opts: TFRecordOptions) -> list[str]:
    """The files of every path of a read, in order, without duplicates."""
    files = (f for p in opts.paths or (opts.path,) for f in list_data_files(p))
    return list(dict.fromkeys(files))


def _single_path(opts: TFRecordOptions, what: str) -> None:
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
    """One input partition: one TFRecord file."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


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


def read_batches(path: str, opts: TFRecordOptions, schema: StructType) -> Iterator[pa.RecordBatch]:
    """Yield the records of one file as Arrow batches matching ``schema``."""
    arrow_schema = to_arrow_schema(schema, timezone="UTC")  # exactly what Spark checks
    stats: dict[str, int] = {}
    records = read_file_records(
        path, opts.compression, opts.verify_checksums, opts.skip_corrupt, stats
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


def _check_read_schema(schema: StructType, opts: TFRecordOptions) -> None:
    if opts.record_type == "ByteArray":
        if len(schema.fields) != 1 or not isinstance(schema.fields[0].dataType, BinaryType):
            raise InvalidParameterError(
                "schema", schema.simpleString(), "recordType=ByteArray reads one binary column"
            )
    else:
        plan_columns(schema)


def _read_partition(
    partition: InputPartition, opts: TFRecordOptions, schema: StructType
) -> Iterator[pa.RecordBatch]:
    path = getattr(partition, "path", None)
    if path is None:  # Spark plans InputPartition(None) when there are no files
        return iter(())
    return read_batches(path, opts, schema)


class TFRecordReader(DataSourceReader):
    """Batch reader: one partition per file, Arrow batches of :data:`BATCH_ROWS` rows."""

    def __init__(self, opts: TFRecordOptions, schema: StructType, files: list[str]) -> None:
        self.opts = opts
        self.schema = schema
        self.files = files

    def partitions(self) -> list[InputPartition]:
        return [TFRecordPartition(path) for path in self.files]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        return _read_partition(partition, self.opts, self.schema)


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
        return _read_partition(partition, self.opts, self.schema)

    def commit(self, end: dict) -> None:
        log.debug("stream %s committed %s", self.opts.path, end)


# --------------------------------------------------------------------------- writing


@dataclass
class TFRecordCommitMessage(WriterCommitMessage):
    """What one write task produced."""

    files: list[str] = field(default_factory=list)
    records: int = 0


def _example_encoder(schema: StructType) -> Callable[[pa.RecordBatch], Iterator[bytes]]:
    columns = plan_columns(schema)

    def encode(batch: pa.RecordBatch) -> Iterator[bytes]:
        data = [batch.column(col.name).to_pylist() for col in columns]
        for row in range(batch.num_rows):
            features = {}
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


def _entries(path: str) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return list(it)


def _has_data(path: str) -> bool:
    return os.path.isfile(path) or (os.path.isdir(path) and bool(_entries(path)))


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
        part, attempt = (ctx.partitionId(), ctx.attemptNumber()) if ctx else (0, 0)
        suffix = ".tfrecord.gz" if self.opts.compression == "gzip" else ".tfrecord"
        final = os.path.join(self.opts.path, f"part-{part:05d}-{self.job}{suffix}")
        temp = os.path.join(self.opts.path, f".part-{part:05d}-{self.job}-{attempt}.tmp")
        if self.opts.record_type == "ByteArray":
            encode = _record_encoder
        else:
            encode = _example_encoder(self.schema)
        fileobj, count = None, 0
        try:
            for batch in iterator:
                for record in encode(batch):
                    if fileobj is None:
                        fileobj = open_for_write(temp, self.opts.compression or "none")
                    write_record(fileobj, record)
                    count += 1
            if fileobj is None:
                return TFRecordCommitMessage()
            fileobj.close()
            os.replace(temp, final)
        except BaseException:
            if fileobj is not None:
                fileobj.close()
                _remove(temp)
            raise
        return TFRecordCommitMessage([final], count)

    def _clean_temp(self) -> None:
        for entry in _entries(self.opts.path):
            if entry.name.startswith(".part-") and self.job in entry.name:
                _remove(entry.path)

    def commit(self, messages: list[WriterCommitMessage | None]) -> None:
        written = {f for m in messages if isinstance(m, TFRecordCommitMessage) for f in m.files}
        if self.skip:
            return
        self._clean_temp()
        if self.overwrite:
            for entry in _entries(self.opts.path):
                if entry.path not in written:
                    _remove(entry.path)
        with open(os.path.join(self.opts.path, "_SUCCESS"), "wb"):
            pass
        log.info("wrote %d TFRecord files to %s", len(written), self.opts.path)

    def abort(self, messages: list[WriterCommitMessage | None]) -> None:
        for message in messages:
            if isinstance(message, TFRecordCommitMessage):
                for path in message.files:
                    _remove(path)
        if os.path.isdir(self.opts.path):
            self._clean_temp()


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


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


# --------------------------------------------------------------------------- source


class TFRecordDataSource(DataSource):
    """``spark.read.format("tfrecords")``: see the module docstring for the options."""

    @classmethod
    def name(cls) -> str:
        return "tfrecords"

    def _opts(self) -> TFRecordOptions:
        return TFRecordOptions.parse(self.options)

    def schema(self) -> StructType:
        opts = self._opts()
        if opts.record_type == "ByteArray":
            return BYTE_ARRAY_SCHEMA
        return infer_schema(list_input_files(opts), opts)

    def reader(self, schema: StructType) -> TFRecordReader:
        opts = self._opts()
        _check_read_schema(schema, opts)
        return TFRecordReader(opts, schema, list_input_files(opts))

    def streamReader(self, schema: StructType) -> TFRecordStreamReader:
        opts = self._opts()
        _check_read_schema(schema, opts)
        _single_path(opts, "a stream")
        if not os.path.isdir(opts.path):
            raise DataError(f"stream source folder {opts.path} does not exist; create it first")
        return TFRecordStreamReader(opts, schema)

    def writer(self, schema: StructType, overwrite: bool) -> TFRecordWriter:
        opts = self._opts()
        _single_path(opts, "a write")
        mode = opts.save_mode or ("overwrite" if overwrite else "append")
        if overwrite and mode != "overwrite":
            raise InvalidParameterError(
                "saveMode", mode, "conflicts with mode('overwrite'); drop one of them"
            )
        if os.path.isfile(opts.path):
            raise DataError(f"cannot write TFRecords to {opts.path}: it is a file, not a folder")
        exists = _has_data(opts.path)
        if exists and mode in ("error", "errorifexists"):
            raise DataError(
                f"path {opts.path} already exists and has data; use mode('overwrite') or "
                "mode('append'), or write somewhere else"
            )
        os.makedirs(opts.path, exist_ok=True)
        return TFRecordWriter(opts, schema, mode == "overwrite", skip=exists and mode == "ignore")
