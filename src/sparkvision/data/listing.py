"""What ``prepare`` reads, listed once on the driver without holding it: the files of an
image folder (or the rows of a built-in data set), counted and hashed per class, and
written in numbered chunks the decoding tasks read their share from.

The driver keeps per class only the 8-byte hash of each file (to find where the splits
start, :func:`sparkvision.data.splitting.split_starts`), never a list of paths: 1M files
cost it ~8 MB. Spark's own file listing is not used: its index of 1M files lives in the
driver JVM's heap.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from sparkvision import storage
from sparkvision.data.splitting import path_hash

#: Paths per listing chunk file (a task reads the chunks that cover its range of files).
CHUNK_FILES = 1000
#: Where the listing chunks go, under the temporary folder of a run.
LISTING_DIR = "_listing"
_SEP = b"\0"  # file names may hold newlines, never NUL


def encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@dataclass
class Listing:
    """The rows ``prepare`` will read: ``count`` of them, in chunks under ``chunk_dir`` (a
    folder) or numbered ``0..count-1`` (a built-in data set: ``chunk_dir`` is None)."""

    count: int
    #: per class name: the seeded hash of each of its rows
    hashes: dict[str, np.ndarray]
    #: (path, reason) of files rejected by the listing itself (empty, unreadable, outside a
    #: class folder), by path
    rejected: list[tuple[str, str]] = field(default_factory=list)
    chunk_dir: str | None = None


def walk_files(root: str) -> Iterator[tuple[str, str | None]]:
    """``(path, reason)`` of every file under ``root`` (not hidden), ``reason`` None for a
    file that may be read, else why it cannot (Spark's ``binaryFile`` skips such files
    silently): empty, a broken link, no read permission. ``stat`` only, no reads."""
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(entry.path)
                    continue
                try:
                    size = entry.stat().st_size  # follows links: a broken one raises
                except OSError as exc:
                    yield entry.path, f"unreadable: {exc.strerror or exc}"
                    continue
                if not os.access(entry.path, os.R_OK):
                    yield entry.path, "unreadable: Permission denied"
                elif size == 0:
                    yield entry.path, "empty file (0 bytes)"
                else:
                    yield entry.path, None


class _ChunkWriter:
    """Paths written ``CHUNK_FILES`` at a time as ``chunk-NNNNNN`` files."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.buffer: list[bytes] = []
        self.chunks = 0
        storage.makedirs(folder)

    def add(self, name: str) -> None:
        self.buffer.append(encode_name(name))
        if len(self.buffer) == CHUNK_FILES:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            storage.write_bytes(chunk_path(self.folder, self.chunks), _SEP.join(self.buffer))
            self.chunks += 1
            self.buffer = []


def chunk_path(folder: str, index: int) -> str:
    return storage.join(folder, f"chunk-{index:06d}")


def list_folder(root: str, seed: int, chunk_dir: str) -> Listing:
    """List the image folder ``root`` (an absolute local path): each readable file inside a
    class sub-folder is hashed under its class and its path (relative to ``root``) written to
    the chunks under ``chunk_dir``."""
    hashes: dict[str, array] = {}
    rejected: list[tuple[str, str]] = []
    writer = _ChunkWriter(chunk_dir)
    count = 0
    prefix = len(root.rstrip("/")) + 1
    for path, reason in walk_files(root):
        rel = path[prefix:]
        if reason is None and "/" not in rel:
            reason = "not inside a class sub-folder"
        if reason is not None:
            rejected.append((path, reason))
            continue
        hashes.setdefault(rel.split("/", 1)[0], array("Q")).append(path_hash(rel, seed))
        writer.add(rel)
        count += 1
    writer.flush()
    return Listing(count, {c: np.frombuffer(h, dtype=np.uint64) if len(h) else
                           np.zeros(0, np.uint64) for c, h in hashes.items()},
                   sorted(rejected), chunk_dir)


def read_names(chunk_dir: str, start: int, stop: int) -> list[str]:
    """The relative paths of files ``start..stop-1`` of a folder listing (executors)."""
    names: list[str] = []
    for index in range(start // CHUNK_FILES, -(-stop // CHUNK_FILES)):
        first = index * CHUNK_FILES
        chunk = storage.read_bytes(chunk_path(chunk_dir, index)).split(_SEP)
        names.extend(decode_name(raw) for raw in
                     chunk[max(start - first, 0):max(stop - first, 0)])
    return names


def builtin_row_name(source: str, index: int) -> str:
    """The ``path`` of row ``index`` of a built-in data set (its hash key too)."""
    return f"{source}/{index:05d}"


def list_builtin(source: str, labels: np.ndarray, classes: list[str], seed: int) -> Listing:
    """The rows of a built-in data set, hashed per class (no chunks: rows are numbered)."""
    hashes = {name: [] for name in classes}  # type: dict[str, list[int]]
    for index, label in enumerate(labels.tolist()):
        hashes[classes[label]].append(path_hash(builtin_row_name(source, index), seed))
    return Listing(len(labels), {c: np.array(h, dtype=np.uint64) for c, h in hashes.items()})
