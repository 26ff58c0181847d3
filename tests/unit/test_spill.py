"""``PartitionSink``: the same arrays in memory and spilled, file-backed when spilled, and
no file left behind."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from sparkvision.data import spill
from sparkvision.data.spill import AnonMemoryWatch, PartitionSink, local_dir, rss_anon_bytes


def _batches(rows: int, shape=(8, 6, 3), size=37, seed=0):
    rng = np.random.default_rng(seed)
    for start in range(0, rows, size):
        n = min(size, rows - start)
        yield (rng.integers(0, 256, (n, *shape), dtype=np.uint8),
               rng.integers(0, 5, n), rng.random(n) < 0.2)


@pytest.mark.parametrize("budget", [None, 10_000, 0])
def test_spilled_and_in_memory_arrays_are_identical(tmp_path, budget):
    ref = PartitionSink((8, 6, 3), None)
    sink = PartitionSink((8, 6, 3), budget, directory=str(tmp_path))
    for images, labels, flags in _batches(500):
        ref.add(images, labels, flags)
        sink.add(images, labels, flags)
    expected, got = ref.finish(), sink.finish()
    assert sink.spilled == (budget is not None)
    for a, b in zip(expected, got, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    x_tr = got[0]
    assert x_tr.shape[1:] == (3, 8, 6) and x_tr.flags.c_contiguous
    if sink.spilled:
        assert isinstance(x_tr, np.memmap)
        assert sorted(os.listdir(sink.folder)) == ["train.u8", "val.u8"]
    sink.cleanup()
    assert os.listdir(tmp_path) == []


def test_cleanup_after_a_failure_half_way(tmp_path):
    sink = PartitionSink((8, 6, 3), 1000, directory=str(tmp_path))
    try:
        for i, (images, labels, flags) in enumerate(_batches(300)):
            sink.add(images, labels, flags)
            if i == 3:
                raise RuntimeError("task killed")
    except RuntimeError:
        pass
    finally:
        sink.cleanup()
    assert sink.spilled and os.listdir(tmp_path) == []


def test_spilled_images_are_not_anonymous_memory(tmp_path):
    """64 MB of images through a 4 MB budget: this process's RssAnon grows by far less
    than the data (the pages are file-backed), and reading every row works."""
    before = rss_anon_bytes()
    assert before is not None
    sink = PartitionSink((64, 64, 4), 4 << 20, directory=str(tmp_path))
    for images, labels, flags in _batches(4096, shape=(64, 64, 4), size=256, seed=1):
        sink.add(images, labels, flags)
        del images
    x_tr, y_tr, x_val, _ = sink.finish()
    assert len(x_tr) + len(x_val) == 4096
    checksum = sum(int(x_tr[i : i + 256].sum(dtype=np.int64)) for i in range(0, len(x_tr), 256))
    assert checksum > 0 and len(y_tr) == len(x_tr)
    grown = rss_anon_bytes() - before
    assert grown < 32 << 20, f"RssAnon grew by {grown >> 20} MB for 64 MB of spilled images"
    sink.cleanup()


def test_local_dir_prefers_spark_local_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARK_LOCAL_DIRS", f"{tmp_path}/a,{tmp_path}/b")
    assert local_dir() == f"{tmp_path}/a"
    monkeypatch.delenv("SPARK_LOCAL_DIRS")
    assert local_dir()


@pytest.mark.parametrize("budget", [None, 0])
def test_rows_are_transposed_and_written_in_slices(tmp_path, monkeypatch, budget):
    """Batches of only training rows, only validation rows, mixed and empty, copied a few
    rows at a time: the same NCHW arrays as numpy's transpose of every row."""
    monkeypatch.setattr(spill, "SLICE_BYTES", 500)  # 3 rows of 8x6x3 a slice
    rng = np.random.default_rng(3)
    sink = PartitionSink((8, 6, 3), budget, directory=str(tmp_path))
    images, labels, flags = [], [], []
    for n, val in ((7, False), (0, False), (5, True), (11, None), (1, None)):
        x = rng.integers(0, 256, (n, 8, 6, 3), dtype=np.uint8)
        y = rng.integers(0, 5, n)
        f = rng.random(n) < 0.5 if val is None else np.full(n, val)
        sink.add(x, y, f)
        images.append(x)
        labels.append(y)
        flags.append(f)
    x_all = np.concatenate(images).transpose(0, 3, 1, 2)
    y_all, f_all = np.concatenate(labels), np.concatenate(flags)
    x_tr, y_tr, x_val, y_val = sink.finish()
    assert sink.spilled == (budget is not None)
    assert np.array_equal(x_tr, x_all[~f_all]) and np.array_equal(y_tr, y_all[~f_all])
    assert np.array_equal(x_val, x_all[f_all]) and np.array_equal(y_val, y_all[f_all])
    assert x_tr.flags.c_contiguous and x_val.flags.c_contiguous
    sink.cleanup()


def test_anon_memory_watch_keeps_the_peak_of_its_samples():
    watch = AnonMemoryWatch(interval_s=3600).start()  # no timed sample during the test
    assert watch.start_bytes == watch.peak > 0
    # fresh anonymous pages, touched: resident (np.ones could reuse memory the allocator
    # freed earlier in the suite and kept resident, so RssAnon need not grow)
    fresh = mmap.mmap(-1, 32 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    np.frombuffer(fresh, np.uint8)[:] = 1
    batches = list(watch.through(iter([fresh])))
    assert watch.peak >= watch.start_bytes + (30 << 20)
    del batches
    fresh.close()
    watch.stop()
    assert watch.peak >= watch.sample() and watch._thread is None
