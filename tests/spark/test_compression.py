"""``gradCompression`` in a Spark training on local[2]: both ranks share the host, so they
average through shared memory and nothing is compressed — the history says so; with the
shared-memory all-reduce turned off on the executors the same fit averages through gloo in
float16, and the history says that."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from sparkvision import ImageClassifier
from sparkvision.training.history import TrainingHistory

#: The executors' switch for the shared-memory all-reduce (``shm_allreduce.supported``).
SHM_ENV = "SPARKVISION_SHM_ALLREDUCE"


@contextlib.contextmanager
def executor_env(spark, name: str, value: str) -> Iterator[None]:
    """``name=value`` in the environment of the Python workers of the jobs started in the
    block (pyspark hands ``SparkContext.environment`` to each Python function it ships)."""
    env = spark.sparkContext.environment
    before = env.get(name)
    env[name] = value
    try:
        yield
    finally:
        if before is None:
            env.pop(name, None)
        else:
            env[name] = before


def _fit(digits) -> TrainingHistory:
    train, val, _ = digits
    clf = ImageClassifier(epochs=1, numWorkers=2, seed=4, validationDf=val,
                          gradCompression="fp16")
    model = clf.fit(train)
    assert model.getOrDefault("gradCompression") == "fp16"  # what was asked for
    history = model.history
    assert TrainingHistory.from_json(history.to_json()) == history
    assert json.loads(history.to_json())["topology"]["compression"] == history.topology.compression
    return history


def test_ranks_on_one_host_average_through_shared_memory_uncompressed(digits):
    history = _fit(digits)
    assert history.world_size == 2 and history.allreduce == "shm"
    assert history.topology.intra_host == "shm" and history.topology.compression == "none"
    assert history.epochs[-1].val_accuracy >= 0.8


def test_through_gloo_the_gradients_travel_in_float16(spark, digits):
    with executor_env(spark, SHM_ENV, "0"):
        history = _fit(digits)
    assert history.world_size == 2 and history.allreduce == "gloo"
    assert history.topology.intra_host == "gloo" and history.topology.compression == "fp16"
    assert history.epochs[-1].val_accuracy >= 0.8
