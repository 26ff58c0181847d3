"""Executor side of ``audit``: each image → its content hash, two 64-bit perceptual hashes,
two small grey fingerprints and its statistics, in the tasks that decode it.

* ``content``: BLAKE2b (128 bits) of the decoded pixels and their shape — equal for exact
  duplicates whatever file format held them;
* ``phash``: imagehash's pHash (DCT of the 32×32 grey image) — survives re-encoding
  (JPEG at quality 90 moves it by 0–2 bits on MNIST);
* ``chash``: pHash of the image moved so that its brightness centroid is at the centre —
  a one-pixel shift moves pHash by up to 18 of 64 bits on a 28×28 digit, and the centred
  hash by none (measured on MNIST, docs/guides/audit.md);
* ``thumb``/``thumb_centred``: the grey image (and the centred one) at
  ``FINGERPRINT_SIDE``² pixels: candidate pairs are verified on them
  (:func:`pixel_distance`), since different digits often share a pHash;
* ``brightness``/``contrast``: mean and standard deviation of the grey pixels (0..255).

Module-level functions over plain arguments (no JVM, no ``self``): they run on executors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

FINGERPRINT_SIDE = 16
#: The columns one image gives (``id`` added by the driver's job afterwards).
FINGERPRINT_DDL = (
    "split STRING, path STRING, label BIGINT, class_name STRING, height BIGINT, "
    "width BIGINT, channels BIGINT, content STRING, phash BIGINT, chash BIGINT, "
    "thumb BINARY, thumb_centred BINARY, brightness DOUBLE, contrast DOUBLE, error STRING"
)
_NAMES = [part.split()[0] for part in FINGERPRINT_DDL.split(", ")]


def _signed(value: int) -> int:
    """An unsigned 64-bit hash as the signed BIGINT Spark stores."""
    return value - (1 << 64) if value >= 1 << 63 else value


def centred(grey: np.ndarray) -> np.ndarray:
    """``grey`` (uint8 HW) moved by whole pixels so that its brightness centroid is at the
    centre (zeros shifted in); an all-black image as it is."""
    total = float(grey.sum(dtype=np.float64))
    if total == 0.0:
        return grey
    h, w = grey.shape
    ys = np.arange(h, dtype=np.float64)
    xs = np.arange(w, dtype=np.float64)
    cy = float(grey.sum(axis=1, dtype=np.float64) @ ys) / total
    cx = float(grey.sum(axis=0, dtype=np.float64) @ xs) / total
    dy, dx = int(round((h - 1) / 2 - cy)), int(round((w - 1) / 2 - cx))
    out = np.zeros_like(grey)
    src = grey[max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)]
    out[max(0, dy): max(0, dy) + src.shape[0], max(0, dx): max(0, dx) + src.shape[1]] = src
    return out


def fingerprint(pixels: np.ndarray) -> dict[str, Any]:
    """The hashes, fingerprints and statistics of one uint8 HWC image."""
    import imagehash
    from PIL import Image

    h, w, c = pixels.shape
    content = hashlib.blake2b(pixels.tobytes(), digest_size=16,
                              person=f"{h}x{w}x{c}".encode()[:16]).hexdigest()
    if c == 1:
        grey_img = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0]), mode="L")
    else:
        grey_img = Image.fromarray(np.ascontiguousarray(pixels[:, :, :3]), mode="RGB").convert("L")
    grey = np.asarray(grey_img, dtype=np.uint8)
    moved = centred(grey)
    moved_img = Image.fromarray(moved, mode="L")
    side = (FINGERPRINT_SIDE, FINGERPRINT_SIDE)

    def small(img: Image.Image) -> bytes:
        return np.asarray(img.resize(side, Image.Resampling.BILINEAR), np.uint8).tobytes()

    return {
        "height": h, "width": w, "channels": c, "content": content,
        "phash": _signed(int(str(imagehash.phash(grey_img)), 16)),
        "chash": _signed(int(str(imagehash.phash(moved_img)), 16)),
        "thumb": small(grey_img), "thumb_centred": small(moved_img),
        "brightness": float(grey.mean()), "contrast": float(grey.std()),
    }


def _empty_row() -> dict[str, Any]:
    return dict.fromkeys(_NAMES)


def arrow_schema():
    """The Arrow schema of ``FINGERPRINT_DDL`` (built without the JVM)."""
    import pyarrow as pa

    kinds = {"STRING": pa.string(), "BIGINT": pa.int64(), "BINARY": pa.binary(),
             "DOUBLE": pa.float64()}
    return pa.schema([(name, kinds[kind]) for name, kind in
                      (part.split() for part in FINGERPRINT_DDL.split(", "))])


def _batch(rows: list[dict[str, Any]]):
    import pyarrow as pa

    return pa.RecordBatch.from_pydict({n: [r[n] for r in rows] for n in _NAMES},
                                      schema=arrow_schema())


def prepared_batches(batches: Iterator[Any], split: str) -> Iterator[Any]:
    """Rows of a prepared split (raw or encoded ``image`` + its shape, ``label``, ``path``)
    → fingerprint rows."""
    from sparkvision.data.images import stored_to_array

    for batch in batches:
        cols = batch.to_pydict()
        rows = []
        for i, data in enumerate(cols["image"]):
            row = _empty_row()
            row.update(split=split, path=cols["path"][i], label=cols["label"][i])
            shape = (int(cols["height"][i]), int(cols["width"][i]), int(cols["channels"][i]))
            try:
                row.update(fingerprint(stored_to_array(data or b"", shape)))
            except ValueError as exc:
                row["error"] = str(exc)
            rows.append(row)
        yield _batch(rows)


def folder_place(path: str, root: str) -> tuple[str, str]:
    """(split, class) of an image folder's file: ``ROOT/SPLIT/CLASS/…`` when its first
    folder is ``train``, ``val`` or ``test``; else ``ROOT/CLASS/…`` in the split ``all``;
    a file directly in ``ROOT`` (or its split) has the class ``""``."""
    from sparkvision.data.manifest import SPLITS

    rel = os.path.relpath(path, root)
    parts = rel.split(os.sep)[:-1]
    split = "all"
    if parts and parts[0] in SPLITS:
        split, parts = parts[0], parts[1:]
    return split, parts[0] if parts else ""


def folder_batches(batches: Iterator[Any], root: str) -> Iterator[Any]:
    """An image folder's file paths → fingerprint rows at each image's own size (a file
    that is not an image gives its reason in ``error``)."""
    from sparkvision.data.decoding import file_reader
    from sparkvision.data.images import ImageRejected, decode_image, to_mode

    for batch in batches:
        rows = []
        for uri in batch.column("path").to_pylist():
            path = uri[5:] if uri.startswith("file:") else uri
            row = _empty_row()
            split, class_name = folder_place(path, root)
            row.update(split=split, path=path, class_name=class_name)
            try:
                img = decode_image(file_reader(path)(), path)
                channels = 1 if img.mode in ("L", "1", "I;16", "I", "F") else 3
                arr = np.asarray(to_mode(img, channels), dtype=np.uint8)
                row.update(fingerprint(arr[:, :, None] if arr.ndim == 2 else arr))
            except OSError as exc:
                row["error"] = f"unreadable: {exc.strerror or exc}"
            except ImageRejected as exc:
                row["error"] = str(exc)
            rows.append(row)
        yield _batch(rows)


def pixel_distance(a: bytes, b: bytes, a_centred: bytes, b_centred: bytes) -> float:
    """Mean absolute grey difference (0..1) of two images' fingerprints, as they are or
    both centred, whichever is smaller."""
    def d(x: bytes, y: bytes) -> float:
        u = np.frombuffer(x, np.uint8).astype(np.int16)
        v = np.frombuffer(y, np.uint8).astype(np.int16)
        return float(np.abs(u - v).mean()) / 255.0

    return min(d(a, b), d(a_centred, b_centred))


def distance_batches(batches: Iterator[Any]) -> Iterator[Any]:
    """Candidate pairs with both sides' fingerprints → the pairs with ``pixel_distance``
    (the fingerprints dropped)."""
    import pyarrow as pa

    for batch in batches:
        cols = batch.to_pydict()
        dist = [pixel_distance(*v) for v in zip(cols["thumb_a"], cols["thumb_b"],
                                                 cols["centred_a"], cols["centred_b"],
                                                 strict=True)]
        keep = [n for n in batch.schema.names
                if n not in ("thumb_a", "thumb_b", "centred_a", "centred_b")]
        out = {n: batch.column(n) for n in keep}
        out["pixel_distance"] = pa.array(dist, pa.float64())
        yield pa.RecordBatch.from_pydict(out)
