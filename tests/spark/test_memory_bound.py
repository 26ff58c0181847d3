"""Memory that stays bounded with big images: a training on big images with a memory budget
small enough to spill leaves its training workers (reused Python workers, glibc's trimming
off) with little more anonymous memory than a training on a few images, because the
``tfrecords`` reader's batches are capped by bytes (``maxBytesPerBatch``) as well as rows.

The fits run in a fresh session in a child process (its only Python workers are the ones
these fits use), control first; the training workers' process ids come from
``model.history.memory.pid`` and their memory from ``/proc/PID/status``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparkvision.data.tf_example import encode_example
from sparkvision.data.tfrecord import open_for_write, write_record

REPO = Path(__file__).resolve().parents[2]
SIDE = 256  # 196,608 bytes an image
ROWS = 800  # a file, and a training partition: 150 MB

_PROBE = """
import json, sys
from sparkvision import ImageClassifier
from sparkvision.session import get_spark

side = int(sys.argv[1])
spark = get_spark("local[2]", app_name="sparkvision-memory-bound")

def status(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in fh)
                if k in ("VmRSS", "RssAnon", "PPid")}

for path, epochs in json.loads(sys.argv[2]):
    df = spark.read.format("tfrecords").load(path)
    model = ImageClassifier(model="tests.nets:linear_only", epochs=epochs, numWorkers=2,
                            batchSize=8, seed=0, imageShape=[side, side, 3], augment="none",
                            normalize="none", memoryBudgetMB=1).fit(df)
    memory = model.history.memory
    workers = {pid: status(pid) for pid in memory.pid}
    print("FIT " + json.dumps({"memory": memory.to_dict(), "workers": workers}), flush=True)
spark.stop()
"""


def _write(folder: Path, rows_per_file: int) -> None:
    """Two TFRecord files of ``rows_per_file`` Examples each: a SIDExSIDEx3 image whose
    brightness is its label, and the label."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for part in range(2):
        with open_for_write(str(folder / f"part-{part}.tfrecord")) as fh:
            for i in range(rows_per_file):
                label = i % 2
                image = rng.integers(0, 120, SIDE * SIDE * 3, dtype=np.uint8) + label * 100
                write_record(fh, encode_example({
                    "image": ("bytes", [image.astype(np.uint8).tobytes()]),
                    "label": ("int64", [label])}))


def _fits(*runs: tuple[Path, int], timeout_s: float = 600) -> list[dict]:
    """Fit on each (folder, epochs) in turn in one new session; what each left in memory."""
    environ = dict(os.environ)
    for key in ("SPARK_MASTER", "SPARK_REMOTE", "PYSPARK_GATEWAY_PORT",
                "PYSPARK_GATEWAY_SECRET"):
        environ.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(SIDE), json.dumps([(str(f), e) for f, e in runs])],
        capture_output=True, text=True, timeout=timeout_s, env=environ, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fits = [json.loads(line[4:]) for line in proc.stdout.splitlines()
            if line.startswith("FIT ")]
    assert len(fits) == len(runs), proc.stdout[-2000:] + proc.stderr[-2000:]
    return fits


@pytest.mark.slow
def test_training_workers_hold_little_more_memory_with_big_images(tmp_path):
    """2 x 800 images of 256x256x3 (150 MB a partition), spilled with a 1 MB budget, against
    2 x 32 of them trained 25 epochs (the same 100 steps a rank: glibc's heap grows with the
    steps too): the training workers' RssAnon after the fit grows by less than a quarter of
    the partition. Without the byte cap the reader's batch is the whole file (800 < 1,024
    rows), and a worker that reads it and then trains keeps much of it."""
    _write(tmp_path / "control", 32)
    _write(tmp_path / "big", ROWS)
    control, big = _fits((tmp_path / "control", 25), (tmp_path / "big", 1))

    partition_kb = max(big["memory"]["partition_kb"])
    assert big["memory"]["spilled"] == [1, 1] and partition_kb >= 150_000, big["memory"]

    def anon_kb(fit: dict) -> int:
        return max(w["RssAnon"] for w in fit["workers"].values())

    growth_kb = anon_kb(big) - anon_kb(control)
    assert growth_kb < partition_kb / 4, (growth_kb, partition_kb, control, big)
    # the history has each task's RssAnon from its start (before its first batch) on
    memory = big["memory"]
    for key in ("rss_anon_start_kb", "rss_anon_read_kb", "rss_anon_end_kb"):
        assert all(0 < v <= peak for v, peak in zip(memory[key], memory["rss_anon_peak_kb"],
                                                    strict=True)), memory
