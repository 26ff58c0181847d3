"""A small ``tf.train.Example`` codec, without TensorFlow.

The codec is hand written for the handful of messages involved (``Example``,
``Features``, ``Feature``, ``BytesList``, ``FloatList``, ``Int64List``). Decoded and
encoded features are ``(kind, values)`` pairs where ``kind`` is one of ``"bytes"``,
``"float"`` or ``"int64"`` and ``values`` is a list. The framing of the records that hold
the serialized Examples is :mod:`sparkvision.data.tfrecord`.

This module imports no pyspark: executors and plain Python loops both use it.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from sparkvision.errors import DataError, InvalidParameterError

Kind = Literal["bytes", "float", "int64"]
#: One feature of an Example: its kind and its list of values.
Feature = tuple[Kind, list[Any]]

KINDS: tuple[str, ...] = ("bytes", "float", "int64")

_F32 = struct.Struct("<f")
_MASK64 = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
# Past this many values numpy beats struct/Python loops for packed lists.
_NUMPY_MIN = 16


def _encode_varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [bytes((i,)) for i in range(0x80)]


def _len_field(tag: bytes, payload: bytes) -> bytes:
    return tag + _encode_varint(len(payload)) + payload


def _as_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview | np.ndarray):
        return bytes(value)
    raise InvalidParameterError(f"feature {name!r}", type(value).__name__, "use bytes or str")


def _pack_floats(values: Sequence[Any]) -> bytes:
    if len(values) < _NUMPY_MIN and not isinstance(values, np.ndarray):
        try:
            return struct.pack(f"<{len(values)}f", *values)
        except OverflowError:
            pass  # out of float32 range: numpy rounds to +-inf like TensorFlow does
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype="<f4").tobytes()


def _pack_int64s(values: Sequence[Any], name: str) -> bytes:
    parts = []
    for value in values:
        value = int(value)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidParameterError(f"feature {name!r}", value, "int64 values must fit 64 bits")
        parts.append(_encode_varint(value & _MASK64))
    return b"".join(parts)


def encode_feature(kind: Kind, values: Sequence[Any], name: str = "?") -> bytes:
    """Serialize one ``tf.train.Feature`` holding ``values`` of ``kind`` (lists packed)."""
    if kind == "bytes":
        payload = b"".join(_len_field(b"\x0a", _as_bytes(v, name)) for v in values)
        return _len_field(b"\x0a", payload)
    if kind == "float":
        packed = _pack_floats(values)
        return _len_field(b"\x12", _len_field(b"\x0a", packed) if packed else b"")
    if kind == "int64":
        packed = _pack_int64s(values, name)
        return _len_field(b"\x1a", _len_field(b"\x0a", packed) if packed else b"")
    raise InvalidParameterError(f"kind of feature {name!r}", kind, f"use one of {KINDS}")


def encode_example(features: Mapping[str, Feature]) -> bytes:
    """Serialize a ``tf.train.Example`` from ``{name: (kind, values)}``.

    ``kind`` is ``"bytes"`` (bytes or str values, str encoded as UTF-8), ``"float"``
    (stored as float32) or ``"int64"``. Float and int64 lists are written packed, as
    TensorFlow does.
    """
    entries = []
    for name, (kind, values) in features.items():
        if kind == "int64" and len(values) == 1 and type(values[0]) is int:
            entries.append(_int64_entry(name, values[0]))  # shapes, labels: a few values
        else:
            entries.append(_entry(name, kind, values))
    return _len_field(b"\x0a", b"".join(entries))


def _entry(name: str, kind: Kind, values: Sequence[Any]) -> bytes:
    """One ``features`` map entry (name → Feature)."""
    return _len_field(b"\x0a", _len_field(b"\x0a", name.encode("utf-8"))
                      + _len_field(b"\x12", encode_feature(kind, values, name)))


@functools.lru_cache(maxsize=4096)
def _int64_entry(name: str, value: int) -> bytes:
    return _entry(name, "int64", [value])


def _bad(reason: str) -> DataError:
    return DataError(f"malformed tf.train.Example: {reason}")


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _bad("varint longer than 10 bytes")


def _skip_field(buf: bytes, pos: int, wire: int, end: int) -> int:
    """Return the position after an unknown field's value."""
    if wire == 0:
        pos = _read_varint(buf, pos)[1]
    elif wire == 1:
        pos += 8
    elif wire == 2:
        pos = _field_end(buf, pos, end)[1]
    elif wire == 5:
        pos += 4
    else:
        raise _bad(f"unsupported wire type {wire}")
    if pos > end:
        raise _bad("field runs past its message")
    return pos


def _signed(value: int) -> int:
    return value - (1 << 64) if value > _INT64_MAX else value


def _decode_varints(buf: bytes, pos: int, end: int, out: list[int]) -> None:
    if end - pos >= _NUMPY_MIN:
        arr = np.frombuffer(buf, dtype=np.uint8, count=end - pos, offset=pos)
        if int(arr.max()) < 0x80:  # every value is a one-byte varint
            out.extend(arr.tolist())
            return
    while pos < end:
        b = buf[pos]
        if b < 0x80:
            out.append(b)
            pos += 1
        else:
            value, pos = _read_varint(buf, pos)
            out.append(_signed(value))
    if pos != end:
        raise _bad("packed varints run past their field")


def _decode_floats(buf: bytes, pos: int, end: int, out: list[float]) -> None:
    size = end - pos
    if size % 4:
        raise _bad("packed float list length is not a multiple of 4")
    count = size // 4
    if count >= _NUMPY_MIN:
        out.extend(np.frombuffer(buf, dtype="<f4", count=count, offset=pos).tolist())
    elif count == 1:
        out.append(_F32.unpack_from(buf, pos)[0])
    else:
        out.extend(struct.unpack_from(f"<{count}f", buf, pos))


def _field_end(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a length prefix at ``pos``: return (payload start, payload stop)."""
    n = buf[pos]
    if n < 0x80:
        pos += 1
    else:
        n, pos = _read_varint(buf, pos)
    stop = pos + n
    if stop > end:
        raise _bad("length-delimited field runs past its message")
    return pos, stop


def _decode_list(buf: bytes, pos: int, end: int, kind: Kind, out: list[Any]) -> None:
    """Decode a BytesList/FloatList/Int64List body, packed or not, appending to ``out``."""
    while pos < end:
        tag = buf[pos]
        if tag == 0x0A:  # field 1, length delimited: a bytes value or a packed list
            start, stop = _field_end(buf, pos + 1, end)
            if kind == "bytes":
                out.append(buf[start:stop])
            elif kind == "float":
                _decode_floats(buf, start, stop, out)
            else:
                _decode_varints(buf, start, stop, out)
            pos = stop
        elif tag == 0x0D and kind == "float":  # field 1, fixed32: one unpacked float
            out.append(_F32.unpack_from(buf, pos + 1)[0])
            pos += 5
        elif tag == 0x08 and kind == "int64":  # field 1, varint: one unpacked int64
            value, pos = _read_varint(buf, pos + 1)
            out.append(_signed(value))
        else:
            tag, pos = _read_varint(buf, pos)
            if tag >> 3 == 1:
                raise _bad(f"wire type {tag & 7} for a {kind} list value")
            pos = _skip_field(buf, pos, tag & 7, end)
    if pos != end:
        raise _bad("list runs past its feature")


_KIND_BY_TAG: dict[int, Kind] = {0x0A: "bytes", 0x12: "float", 0x1A: "int64"}


def _decode_feature(buf: bytes, pos: int, end: int) -> Feature | None:
    feature: Feature | None = None
    while pos < end:
        kind = _KIND_BY_TAG.get(buf[pos])
        if kind is None:
            tag, pos = _read_varint(buf, pos)
            pos = _skip_field(buf, pos, tag & 7, end)
            continue
        start, stop = _field_end(buf, pos + 1, end)
        if feature is None or feature[0] != kind:  # a oneof: the last kind set wins
            feature = (kind, [])
        _decode_list(buf, start, stop, kind, feature[1])
        pos = stop
    return feature


def _decode_features(buf: bytes, pos: int, end: int, out: dict[str, Feature]) -> None:
    while pos < end:
        if buf[pos] != 0x0A:  # not a map entry
            tag, pos = _read_varint(buf, pos)
            pos = _skip_field(buf, pos, tag & 7, end)
            continue
        pos, stop = _field_end(buf, pos + 1, end)
        name = ""
        feature: Feature | None = None
        while pos < stop:  # one map entry: key = 1, value = 2
            etag = buf[pos]
            if etag == 0x0A:
                start, pos = _field_end(buf, pos + 1, stop)
                name = buf[start:pos].decode("utf-8")
            elif etag == 0x12:
                start, pos = _field_end(buf, pos + 1, stop)
                feature = _decode_feature(buf, start, pos)
            else:
                etag, pos = _read_varint(buf, pos)
                pos = _skip_field(buf, pos, etag & 7, stop)
        if pos != stop:
            raise _bad("map entry runs past its field")
        if feature is None:
            out.pop(name, None)  # no kind set: TensorFlow treats it as absent
        else:
            out[name] = feature


def decode_example(data: bytes) -> dict[str, Feature]:
    """Parse a serialized ``tf.train.Example`` into ``{name: (kind, values)}``.

    Accepts packed and unpacked repeated fields; int64 values are signed (negative
    numbers are 10-byte varints); floats are float32 values returned as Python floats;
    bytes values are ``bytes``. A feature whose ``kind`` oneof is unset is left out.
    Raises :class:`DataError` on malformed input.
    """
    buf = bytes(data)
    out: dict[str, Feature] = {}
    pos, end = 0, len(buf)
    try:
        while pos < end:
            if buf[pos] == 0x0A:
                start, pos = _field_end(buf, pos + 1, end)
                _decode_features(buf, start, pos, out)
            else:
                tag, pos = _read_varint(buf, pos)
                pos = _skip_field(buf, pos, tag & 7, end)
        if pos != end:
            raise _bad("field runs past the end of the record")
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise _bad(str(exc) or type(exc).__name__) from exc
    return out
