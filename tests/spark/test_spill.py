"""Training on more data than a task may hold: a partition past ``memoryBudgetMB`` is
spilled to the executor's local dir and memory-mapped — same weights for a seed, the data
not in the task's anonymous memory, and no spill file left after success or a failure."""

from __future__ import annotations

import glob
import os
import tempfile

import pytest

from sparkvision import ImageClassifier
from tests.nets import failing_once


def _spill_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "sparkvision-spill-*")))


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_spilled_training_gives_the_same_weights_and_leaves_no_file(spark, digits, tmp_path):
    train, val, _ = digits
    before = _spill_dirs()
    common = dict(epochs=2, numWorkers=2, seed=5, validationDf=val)
    in_memory = ImageClassifier(memoryBudgetMB=1000, **common).fit(train)
    spilled = ImageClassifier(memoryBudgetMB=0.01, **common).fit(train)
    assert in_memory.history.memory.spilled == [0, 0]
    assert spilled.history.memory.spilled == [1, 1]
    assert spilled.history.memory.budget_mb == 0.01
    assert spilled.weights == in_memory.weights
    assert _spill_dirs() == before

    # A task that fails (epoch 2, rank 1) is retried; neither attempt leaves its spill.
    clf = ImageClassifier(model="tests.nets:fails_once", memoryBudgetMB=0.01,
                          checkpointDir=str(tmp_path / "ckpt"), **common)
    with failing_once(spark, epoch=2, rank=1, marker=tmp_path / "fault-e2-r1"):
        retried = clf.fit(train)
    assert (tmp_path / "fault-e2-r1").exists()
    assert retried.history.attempts >= 2 and retried.history.memory.spilled == [1, 1]
    assert _spill_dirs() == before


@pytest.mark.slow
def test_a_partition_far_past_the_budget_is_not_loaded_into_memory(spark):
    """40 MB of 64x64 images in one task with an 8 MB budget: the task's RssAnon (read from
    /proc/self/status inside it) grows by far less than the partition while reading it."""
    import numpy as np
    import pyarrow as pa

    rows, side = 10_000, 64

    def make(batches):
        for batch in batches:
            ids = batch.column("id").to_numpy()
            rng = np.random.default_rng(int(ids[0]))
            labels = ids % 2
            images = rng.integers(0, 120, (len(ids), side * side), dtype=np.uint8)
            images += (labels * 100).astype(np.uint8)[:, None]
            yield pa.RecordBatch.from_pydict({
                "image": pa.array([r.tobytes() for r in images], pa.binary()),
                "label": pa.array(labels, pa.int64())})

    df = spark.range(rows, numPartitions=4).mapInArrow(make, "image binary, label bigint")
    key = "spark.sql.execution.arrow.maxBytesPerBatch"
    old = spark.conf.get(key)
    spark.conf.set(key, str(2 << 20))
    try:
        model = ImageClassifier(model="tests.nets:linear", epochs=1, numWorkers=1,
                                batchSize=256, seed=0, imageShape=[side, side, 1],
                                memoryBudgetMB=8, augment="none").fit(df)
    finally:
        spark.conf.set(key, old)
    memory = model.history.memory
    partition_mb = memory.partition_kb[0] / 1024
    growth_mb = memory.rss_anon_growth_kb[0] / 1024
    assert memory.spilled == [1] and partition_mb > 39, memory
    assert growth_mb < partition_mb / 2, memory
    assert model.history.epochs[-1].train_loss < 0.7
