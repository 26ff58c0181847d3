"""TFRecord framing and a small ``tf.train.Example`` codec, without TensorFlow.

A TFRecord file is a sequence of records, each framed exactly as TensorFlow writes it::

    uint64  length          (little endian)
    uint32  masked_crc32c(length bytes)
    bytes   data[length]
    uint32  masked_crc32c(data)

The mask is ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` modulo 2**32, and the CRC is
CRC-32C (Castagnoli), computed by the ``google_crc32c`` package.

The ``tf.train.Example`` codec is hand written for the handful of messages involved
(``Example``, ``Features``, ``Feature``, ``BytesList``, ``FloatList``, ``Int64List``).
Decoded and encoded features are ``(kind, values)`` pairs where ``kind`` is one of
``"bytes"``, ``"float"`` or ``"int64"`` and ``values`` is a list.

This module imports no pyspark: executors and plain Python loops both use it.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import IO, Any, Literal

import google_crc32c
import numpy as np

from sparkvision import storage
from sparkvision.errors import CorruptRecordError, DataError, InvalidParameterError

log = logging.getLogger(__name__)

Kind = Literal["bytes", "float", "int64"]
#: One feature of an Example: its kind and its list of values.
Feature = tuple[Kind, list[Any]]

KINDS: tuple[str, ...] = ("bytes", "float", "int64")
COMPRESSIONS: tuple[str, ...] = ("none", "gzip")

_MASK_DELTA = 0xA282EAD8
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F32 = struct.Struct("<f")
_HEADER = struct.Struct("<QI")
_HEADER_SIZE = 12
_FOOTER_SIZE = 4
_MASK64 = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_READ_BUFFER = 1 << 20
WRITE_BUFFER = 1 << 20
# Past this many values numpy beats struct/Python loops for packed lists.
_NUMPY_MIN = 16


# --------------------------------------------------------------------------- framing


def masked_crc32c(data: bytes) -> int:
    """Return TensorFlow's masked CRC-32C of ``data``."""
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """Return ``data`` framed as one TFRecord (header, data, footer)."""
    data = bytes(data)
    length = _U64.pack(len(data))
    return b"".join(
        (length, _U32.pack(masked_crc32c(length)), data, _U32.pack(masked_crc32c(data)))
    )


def write_record(fileobj: IO[bytes], data: bytes) -> int:
    """Append one framed record to ``fileobj``; return the number of bytes written."""
    framed = frame_record(data)
    fileobj.write(framed)
    return len(framed)


def _count(stats: MutableMapping[str, int] | None, key: str) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + 1


def _read(fileobj: IO[bytes], size: int) -> tuple[bytes, str | None]:
    """Read up to ``size`` bytes; a broken gzip stream gives ``(b"", reason)``."""
    try:
        return fileobj.read(size), None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        return b"", f"cannot decompress: {exc}"


def iter_records(
    fileobj: IO[bytes],
    path: str,
    verify_checksums: bool = True,
    skip_corrupt: bool = False,
    stats: MutableMapping[str, int] | None = None,
    offset: int = 0,
    end: int | None = None,
) -> Iterator[bytes]:
    """Yield the data of every record in ``fileobj`` (already opened, see :func:`open_for_read`).

    ``fileobj`` is positioned at byte ``offset`` (a record boundary); reading stops at the
    first record that starts at or after ``end`` (None: end of file).

    ``path`` only names the file in errors. Byte offsets in errors are offsets of the
    record header in the (decompressed) stream.

    A bad length checksum or a truncated record raises :class:`CorruptRecordError`; with
    ``skip_corrupt`` reading stops there instead (the rest of the file cannot be framed) and
    ``stats["unreadable_tails"]`` is incremented. A bad data checksum raises too; with
    ``skip_corrupt`` the record is skipped (its length is trustworthy) and
    ``stats["skipped_records"]`` is incremented. ``stats["records"]`` counts records yielded.
    """
    while end is None or offset < end:
        header, reason = _read(fileobj, _HEADER_SIZE)
        if not header and reason is None:
            return  # clean end of file
        length = 0
        if reason is None and len(header) < _HEADER_SIZE:
            reason = f"truncated record header ({len(header)} of {_HEADER_SIZE} bytes)"
        elif reason is None:
            length, length_crc = _HEADER.unpack(header)
            if verify_checksums and masked_crc32c(header[:8]) != length_crc:
                reason = "length checksum mismatch"
        if reason is None:
            body, reason = _read(fileobj, length + _FOOTER_SIZE)
            if reason is None and len(body) < length + _FOOTER_SIZE:
                reason = (
                    f"truncated record: expected {length + _FOOTER_SIZE} bytes of data and "
                    f"checksum after the header, found {len(body)}"
                )
        if reason is not None:
            if skip_corrupt:
                log.warning("skipping the rest of %s from byte %d: %s", path, offset, reason)
                _count(stats, "unreadable_tails")
                return
            raise CorruptRecordError(path, offset, reason)
        data = body[:length]
        if verify_checksums and masked_crc32c(data) != _U32.unpack_from(body, length)[0]:
            if not skip_corrupt:
                raise CorruptRecordError(path, offset, "data checksum mismatch")
            log.warning("skipping corrupt record in %s at byte %d", path, offset)
            _count(stats, "skipped_records")
        else:
            _count(stats, "records")
            yield data
        offset += _HEADER_SIZE + length + _FOOTER_SIZE


def normalize_compression(compression: str | None) -> str | None:
    """Return ``"none"``, ``"gzip"`` or ``None`` (auto-detect) for a user-given value."""
    if compression is None:
        return None
    value = compression.strip().lower()
    if value in ("none", "", "uncompressed"):
        return "none"
    if value in ("gzip", "gz"):
        return "gzip"
    if value == "auto":
        return None
    raise InvalidParameterError("compression", compression, "use 'none' or 'gzip'")


def is_gzip_path(path: str) -> bool:
    """True when ``path`` names a gzip file by its suffix."""
    return path.lower().endswith(".gz")


def open_for_read(path: str, compression: str | None = None) -> IO[bytes]:
    """Open ``path`` for :func:`iter_records`; ``compression=None`` detects ``.gz`` files."""
    mode = normalize_compression(compression)
    if mode is None:
        mode = "gzip" if is_gzip_path(path) else "none"
    if mode == "gzip":
        return storage.open_read(path, gzip=True)
    return storage.open_read(path, buffering=_READ_BUFFER)


def open_for_write(path: str, compression: str | None = "none") -> IO[bytes]:
    """Open ``path`` for writing records, gzip-compressed when ``compression="gzip"``."""
    mode = normalize_compression(compression)
    if mode is None:
        mode = "gzip" if is_gzip_path(path) else "none"
    if mode == "gzip":
        return gzip.open(path, "wb", compresslevel=6)
    return open(path, "wb", buffering=WRITE_BUFFER)


def read_file_records(
    path: str,
    compression: str | None = None,
    verify_checksums: bool = True,
    skip_corrupt: bool = False,
    stats: MutableMapping[str, int] | None = None,
) -> Iterator[bytes]:
    """Open ``path`` and yield its records (see :func:`iter_records`), closing it at the end."""
    with open_for_read(path, compression) as fileobj:
        yield from iter_records(fileobj, path, verify_checksums, skip_corrupt, stats)


def read_range_records(
    path: str,
    start: int,
    end: int | None,
    verify_checksums: bool = True,
    skip_corrupt: bool = False,
    stats: MutableMapping[str, int] | None = None,
) -> Iterator[bytes]:
    """Records of an uncompressed file whose headers start in ``[start, end)``."""
    with storage.open_read(path) as fileobj:
        fileobj.seek(start)
        yield from iter_records(
            fileobj, path, verify_checksums, skip_corrupt, stats, offset=start, end=end
        )


def split_offsets(path: str, records_per_split: int) -> list[int]:
    """Byte offsets where every ``records_per_split``-th record of an uncompressed file starts.

    Only the 12-byte headers are read (with seeks). Scanning stops quietly at anything
    malformed; the reader of the last range then reports it with the exact offset.
    """
    offsets = [0]
    size = storage.size(path)
    with storage.open_read(path) as fh:
        offset, count = 0, 0
        while offset + _HEADER_SIZE <= size:
            header = fh.read(_HEADER_SIZE)
            if len(header) < _HEADER_SIZE:
                break
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                break
            offset += _HEADER_SIZE + length + _FOOTER_SIZE
            if offset > size:
                break
            fh.seek(offset)
            count += 1
            if count % records_per_split == 0 and offset < size:
                offsets.append(offset)
    return offsets


# --------------------------------------------------------------------------- protobuf


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
        entry = _len_field(b"\x0a", name.encode("utf-8")) + _len_field(
            b"\x12", encode_feature(kind, values, name)
        )
        entries.append(_len_field(b"\x0a", entry))
    return _len_field(b"\x0a", b"".join(entries))


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
