"""Executor side: Arrow record batches → uint8 image tensors (no pyspark import)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from sparkvision.errors import DataError

#: Threads that decode encoded images in a task (Pillow releases the GIL).
DECODE_THREADS = 2


def binary_column_to_array(column: Any, row_bytes: int,
                           shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """A pyarrow Binary column of images → (N, row_bytes) uint8: a view of raw pixels when
    every value has ``row_bytes`` bytes, else (with ``shape``) the values decoded in a
    thread pool (``prepare --store encoded``: PNG/JPEG bytes)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise DataError("image column has null values: drop or fix those rows first")
    offsets_dtype: type[np.signedinteger[Any]] = (
        np.int64 if pa.types.is_large_binary(column.type) else np.int32)
    n = len(column)
    if n == 0:
        return np.empty((0, row_bytes), dtype=np.uint8)
    buffers = column.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offsets_dtype)[column.offset : column.offset + n + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8)
    lengths = np.diff(offsets)
    raw = bool(np.all(lengths == row_bytes))
    if not raw and shape is not None:
        return decode_stored(column.to_pylist(), shape)
    if not raw:
        bad = int(lengths[np.argmax(lengths != row_bytes)])
        raise DataError(
            f"an image has {bad} bytes but the image shape needs {row_bytes}: "
            "re-run `sparkvision prepare` so every image has the same size"
        )
    start = int(offsets[0])
    return data[start : start + n * row_bytes].reshape(n, row_bytes)


_POOL: Any = None


def decode_stored(values: list[bytes], shape: tuple[int, int, int]) -> np.ndarray:
    """Stored images (raw or encoded) → (N, H·W·C) uint8, decoded by a small thread pool
    (Pillow releases the GIL while decoding)."""
    from concurrent.futures import ThreadPoolExecutor

    from sparkvision.data.images import stored_to_array

    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="sparkvision-decode")
    h, w, c = shape
    out = np.empty((len(values), h * w * c), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = stored_to_array(values[i], shape).reshape(-1)

    try:
        list(_POOL.map(one, range(len(values)), chunksize=64))
    except ValueError as exc:
        raise DataError(f"{exc}: re-run `sparkvision prepare` so every image has the "
                        "model's shape") from None
    return out


def batches_to_sink(batches: Iterable[Any], sink: Any, image_col: str, label_col: str,
                    flag_col: str, image_shape: tuple[int, int, int]) -> None:
    """Feed a training partition's Arrow batches into a ``data.spill.PartitionSink``, one
    at a time (none is held past the next); then the memory Arrow's allocator kept for them
    goes back to the system."""
    import pyarrow as pa

    h, w, c = image_shape
    for batch in batches:
        if batch.num_rows == 0:
            continue
        images = binary_column_to_array(batch.column(image_col), h * w * c, image_shape)
        sink.add(images.reshape(-1, h, w, c),
                 batch.column(label_col).to_numpy(zero_copy_only=False),
                 batch.column(flag_col).to_numpy(zero_copy_only=False))
        del batch, images
    pa.default_memory_pool().release_unused()
