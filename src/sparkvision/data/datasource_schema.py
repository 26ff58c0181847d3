"""Spark schemas of the ``tfrecords`` source against ``tf.train.Example`` features: the
schema inferred from the first records, the column plan that reads and writes share (which
feature kind each column holds), and the check of a schema given for a read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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

from sparkvision.data.datasource_options import TFRecordOptions
from sparkvision.data.tf_example import Kind, decode_example
from sparkvision.data.tfrecord import read_file_records
from sparkvision.errors import DataError, InvalidParameterError

INFER_RECORDS = 100
BYTE_ARRAY_SCHEMA = StructType([StructField("record", BinaryType())])
_INT_TYPES = (LongType, IntegerType, ShortType, ByteType, BooleanType)
_FLOAT_TYPES = (FloatType, DoubleType)
_BYTES_TYPES = (StringType, BinaryType)
_CONTROL = bytes(c for c in range(32) if c not in (9, 10, 13)) + b"\x7f"


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
    kinds: dict[str, Kind] = {}
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


# --------------------------------------------------------------------------- columns


def _kind_for(dtype: DataType) -> Kind | None:
    if isinstance(dtype, _INT_TYPES):
        return "int64"
    if isinstance(dtype, _FLOAT_TYPES):
        return "float"
    if isinstance(dtype, _BYTES_TYPES):
        return "bytes"
    return None


@dataclass(frozen=True)
class ColumnPlan:
    """How one schema field maps to an Example feature: its kind, array or not, boolean or not."""

    name: str
    kind: Kind
    is_list: bool
    is_bool: bool


def plan_columns(schema: StructType) -> list[ColumnPlan]:
    """Map each schema field to the feature kind it holds; reject unsupported types."""
    columns = []
    for f in schema.fields:
        is_list = isinstance(f.dataType, ArrayType)
        element = f.dataType.elementType if isinstance(f.dataType, ArrayType) else f.dataType
        kind = _kind_for(element)
        if kind is None:
            raise InvalidParameterError(
                f"column {f.name!r}",
                f.dataType.simpleString(),
                "TFRecord Examples hold long/int/short/byte/boolean, float/double, "
                "string/binary or arrays of those",
            )
        columns.append(ColumnPlan(f.name, kind, is_list, isinstance(element, BooleanType)))
    return columns


def check_read_schema(schema: StructType, opts: TFRecordOptions) -> None:
    if opts.record_type == "ByteArray":
        if len(schema.fields) != 1 or not isinstance(schema.fields[0].dataType, BinaryType):
            raise InvalidParameterError(
                "schema", schema.simpleString(), "recordType=ByteArray reads one binary column"
            )
    else:
        plan_columns(schema)
