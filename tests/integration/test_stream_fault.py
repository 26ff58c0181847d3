"""`sparkvision stream` killed with SIGKILL (driver and JVM) while files keep arriving, and
restarted on the same checkpoint, twice: every input file is predicted exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparkvision.cli import main


def _feed(inbox: Path, stop: threading.Event, written: list[str]) -> None:
    """Drop small PNGs, 2 every 0.5 s (temp name, then rename), until ``stop`` or 400."""
    rng = np.random.default_rng(0)
    i = 0
    while not stop.is_set() and i < 400:
        tmp = inbox / f".tmp_{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp)
        os.replace(tmp, inbox / f"img_{i:05d}.png")
        written.append(f"img_{i:05d}.png")
        i += 1
        if i % 2 == 0:
            time.sleep(0.5)


def _finished_batches(out: Path) -> int:
    return len(list(out.glob("batch=*/_SUCCESS")))


def _run_until_batches(argv: list[str], out: Path, more: int) -> None:
    """Start the stream in a subprocess, wait until ``more`` new batches are written, kill
    the whole process group (Python driver and JVM) with SIGKILL."""
    before = _finished_batches(out)
    proc = subprocess.Popen([sys.executable, "-m", "sparkvision", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _finished_batches(out) < before + more and time.monotonic() < deadline:
            assert proc.poll() is None, f"stream exited early with {proc.returncode}"
            time.sleep(0.1)
        assert _finished_batches(out) >= before + more, "no new batches before the deadline"
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


@pytest.mark.slow
def test_stream_killed_twice_outputs_every_file_exactly_once(spark, trained_dir, tmp_path):
    inbox, out, ckpt = tmp_path / "in", tmp_path / "out", tmp_path / "ckpt"
    inbox.mkdir()
    argv = ["stream", str(trained_dir), "--input", str(inbox), "--out", str(out),
            "--checkpoint", str(ckpt)]
    small_batches = ["--max-files-per-trigger", "4", "--trigger-seconds", "0.2"]
    stop, written = threading.Event(), []
    feeder = threading.Thread(target=_feed, args=(inbox, stop, written), daemon=True)
    feeder.start()
    try:
        _run_until_batches(argv + small_batches, out, more=2)  # files keep arriving
        _run_until_batches(argv + small_batches, out, more=2)
        time.sleep(1)
    finally:
        stop.set()
        feeder.join(timeout=60)
    files = len(written)
    # drain what is left, in process, on the same checkpoint
    assert main([*argv, "--available-now", "--timeout", "240", "--quiet"]) == 0

    got = spark.read.parquet(str(out))
    paths = [r.path for r in got.select("path").collect()]
    assert len(paths) == files, f"{len(paths)} rows for {files} files"
    assert len(set(paths)) == files
    assert {Path(p).name for p in paths} == set(written)
    assert len({p.parent.name for p in out.glob("batch=*/_SUCCESS")}) >= 5
    assert not (out / "_rejected").exists()
