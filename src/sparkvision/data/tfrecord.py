"""TFRecord framing, without TensorFlow: reading and writing the records of a file.

A TFRecord file is a sequence of records, each framed exactly as TensorFlow writes it::

    uint64  length          (little endian)
    uint32  masked_crc32c(length bytes)
    bytes   data[length]
    uint32  masked_crc32c(data)

The mask is ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` modulo 2**32, and the CRC is
CRC-32C (Castagnoli), computed by the ``google_crc32c`` package. Files may be
gzip-compressed; uncompressed ones can be read by byte range.

What a record holds (a serialized ``tf.train.Example``) is :mod:`sparkvision.data.tf_example`.

This module imports no pyspark: executors and plain Python loops both use it.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from collections.abc import Iterator, MutableMapping
from typing import IO, cast

import google_crc32c

from sparkvision import storage
from sparkvision.errors import CorruptRecordError, InvalidParameterError

log = logging.getLogger(__name__)

COMPRESSIONS: tuple[str, ...] = ("none", "gzip")

_MASK_DELTA = 0xA282EAD8
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<QI")
_HEADER_SIZE = 12
_FOOTER_SIZE = 4
_READ_BUFFER = 1 << 20
WRITE_BUFFER = 1 << 20


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
        return cast(IO[bytes], gzip.open(path, "wb", compresslevel=6))
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
