"""Executor side: a training partition larger than its memory budget is spilled once to the
executor's local dir and memory-mapped (file-backed pages the OS can drop, not anonymous
memory), so a task can train on more data than fits in its memory. No pyspark import."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np


def local_dir() -> str:
    """Where a task may write scratch files: the first of Spark's local dirs
    (``SPARK_LOCAL_DIRS``, i.e. ``spark.local.dir``, set for Python workers), else the
    temporary folder."""
    dirs = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d]
    return dirs[0] if dirs else tempfile.gettempdir()


def rss_anon_bytes(pid: int | str = "self") -> int | None:
    """A process's anonymous resident memory (``RssAnon`` of /proc/PID/status; this
    process's by default), or None where there is no such file."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class AnonMemoryWatch:
    """This process's ``RssAnon`` over a task: at :meth:`start` (before its data is read),
    after every input batch (:meth:`through`), whenever :meth:`sample` is called, and every
    ``interval_s`` from a daemon thread in between, so that :attr:`peak` is the largest
    value seen. Values are bytes (0 where /proc cannot be read)."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.start_bytes = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> AnonMemoryWatch:
        self.start_bytes = self.peak = rss_anon_bytes() or 0
        self._thread = threading.Thread(target=self._run, name="sparkvision-rss-anon",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> int:
        """``RssAnon`` now (and the peak updated)."""
        now = rss_anon_bytes() or 0
        self.peak = max(self.peak, now)
        return now

    def through(self, batches: Iterable[Any]) -> Iterator[Any]:
        """``batches`` unchanged, sampled after each one is used (when the next is asked
        for) and after the last."""
        for batch in batches:
            yield batch
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval_s + 1)
            self._thread = None
        self.sample()


#: Rows are transposed to NCHW and written in slices of about this many bytes, so that
#: adding a batch needs ~1 MB besides the batch itself (not whole-batch copies).
SLICE_BYTES = 1 << 20


def _nchw_slices(images_nhwc: np.ndarray, rows: np.ndarray) -> Iterator[np.ndarray]:
    """The images at the indices ``rows`` as contiguous NCHW uint8 arrays of about
    :data:`SLICE_BYTES` each."""
    n, h, w, c = images_nhwc.shape
    step = max(1, SLICE_BYTES // max(1, h * w * c))
    every = len(rows) == n
    for start in range(0, len(rows), step):
        part = (images_nhwc[start : start + step] if every
                else images_nhwc[rows[start : start + step]])
        yield np.ascontiguousarray(part.transpose(0, 3, 1, 2))


@dataclass
class _Part:
    """The images of one side (train or validation rows) as NCHW uint8."""

    chunks: list[np.ndarray] = field(default_factory=list)
    rows: int = 0
    file: BinaryIO | None = None
    path: str = ""

    def add(self, images_nhwc: np.ndarray, rows: np.ndarray) -> None:
        """The images at the indices ``rows`` of one (N, H, W, C) batch: one NCHW copy in
        memory, or written to the file slice by slice."""
        if not len(rows):
            return
        self.rows += len(rows)
        if self.file is not None:
            for piece in _nchw_slices(images_nhwc, rows):
                self.file.write(piece.data)
            return
        _, h, w, c = images_nhwc.shape
        out = np.empty((len(rows), c, h, w), dtype=np.uint8)
        at = 0
        for piece in _nchw_slices(images_nhwc, rows):
            out[at : at + len(piece)] = piece
            at += len(piece)
        self.chunks.append(out)

    def spill(self, path: str) -> None:
        self.path = path
        self.file = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in finish
        chunks, self.chunks = self.chunks, []
        while chunks:  # each chunk freed once written
            self.file.write(chunks.pop(0).data)

    def finish(self, shape: tuple[int, int, int]) -> np.ndarray:
        c, h, w = shape
        if self.file is None:
            chunks, self.chunks = self.chunks, []  # not held twice while the task trains
            if not chunks:
                return np.empty((0, c, h, w), dtype=np.uint8)
            return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        self.file.close()
        if self.rows == 0:
            return np.empty((0, c, h, w), dtype=np.uint8)
        # copy-on-write mapping: writable for torch.from_numpy, never written, file-backed
        return np.memmap(self.path, dtype=np.uint8, mode="c", shape=(self.rows, c, h, w))


class PartitionSink:
    """Collects a training partition: NCHW uint8 images, labels and the validation flag,
    split into training and validation rows as they arrive. Images stay in memory up to
    ``budget_bytes``; past it everything goes to two files in ``directory`` (default
    :func:`local_dir`) that :meth:`finish` memory-maps. :meth:`cleanup` removes them (call
    it in a ``finally``). ``budget_bytes=None``: no limit."""

    def __init__(self, image_shape: tuple[int, int, int], budget_bytes: int | None,
                 directory: str | None = None) -> None:
        h, w, c = image_shape
        self.shape = (c, h, w)
        self.budget = budget_bytes
        self.directory = directory
        self.folder: str | None = None
        self.bytes = 0
        self._train, self._val = _Part(), _Part()
        self._labels: list[np.ndarray] = []
        self._flags: list[np.ndarray] = []

    @property
    def spilled(self) -> bool:
        return self.folder is not None

    def add(self, images_nhwc: np.ndarray, labels: np.ndarray, is_val: np.ndarray) -> None:
        """One batch: ``images_nhwc`` (N, H, W, C) uint8, ``labels`` (N,), ``is_val`` (N,)."""
        flags = is_val.astype(bool)
        self._labels.append(labels.astype(np.int64))
        self._flags.append(flags)
        self.bytes += images_nhwc.nbytes
        if self.budget is not None and not self.spilled and self.bytes > self.budget:
            self._spill()
        self._train.add(images_nhwc, np.flatnonzero(~flags))
        self._val.add(images_nhwc, np.flatnonzero(flags))

    def _spill(self) -> None:
        base = self.directory or local_dir()
        self.folder = os.path.join(base, f"sparkvision-spill-{uuid.uuid4().hex[:12]}")
        os.makedirs(self.folder)
        self._train.spill(os.path.join(self.folder, "train.u8"))
        self._val.spill(os.path.join(self.folder, "val.u8"))

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(train images NCHW, train labels, validation images, validation labels); the
        images are memory-mapped files when the partition was spilled."""
        labels = np.concatenate(self._labels) if self._labels else np.empty(0, np.int64)
        flags = np.concatenate(self._flags) if self._flags else np.empty(0, bool)
        return (self._train.finish(self.shape), labels[~flags],
                self._val.finish(self.shape), labels[flags])

    def cleanup(self) -> None:
        for part in (self._train, self._val):
            if part.file is not None and not part.file.closed:
                part.file.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def memory_budget(budget_mb: float, tasks_on_host: int) -> int | None:
    """Bytes of images one training task keeps in memory: ``budget_mb`` when > 0, else half
    of the host's available memory (``MemAvailable``) shared by the ``tasks_on_host``
    training tasks there (at least 64 MB); None (no limit) where that cannot be read."""
    if budget_mb > 0:
        return int(budget_mb * (1 << 20))
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    return max(64 << 20, available // (2 * max(1, tasks_on_host)))
    except OSError:
        return None
    return None
