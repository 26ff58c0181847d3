"""The session helpers that replace ``sparkContext``/``rdd`` calls (so that a Spark Connect
session works too), on the classic local[2] session: their job-based fallbacks agree with
the classic values."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pyspark.sql import functions as F

from sparkvision import session
from sparkvision.session import jobs


def test_classic_values(spark):
    assert not session.is_connect(spark)
    assert session.master_url(spark) == "local[2]"
    assert session.default_parallelism(spark) == 2 == spark.sparkContext.defaultParallelism
    assert session.task_cpus(spark) == 1


def test_probe_parallelism_equals_default_parallelism(spark):
    assert session.probe_parallelism(spark) == spark.sparkContext.defaultParallelism


def test_count_partitions_counts_empty_partitions(spark):
    df = spark.range(0, 10, numPartitions=3).filter(F.col("id") < 2)  # 2 of 3 empty
    assert session.num_partitions(df) == 3
    assert session.count_partitions(df) == 3
    assert session.count_partitions(spark.range(0, 100, numPartitions=5)) == 5


def test_tagged_jobs_sets_and_restores_tags_interrupt_and_description(spark):
    sc = spark.sparkContext
    sc.setJobDescription("outer work")
    sc.setInterruptOnCancel(False)  # the thread's own value, which the block must restore
    try:
        with jobs.tagged_jobs(spark, "sv-test-outer", "a test"):
            with jobs.tagged_jobs(spark, "sv-test-inner"):
                assert {"sv-test-outer", "sv-test-inner"} <= sc.getJobTags()
                assert sc.getLocalProperty("spark.job.interruptOnCancel") == "true"
                assert sc.getLocalProperty("spark.job.description") == "a test"
            assert "sv-test-inner" not in sc.getJobTags()
            assert "sv-test-outer" in sc.getJobTags()
            assert spark.range(3).count() == 3
        assert not {"sv-test-outer", "sv-test-inner"} & set(sc.getJobTags())
        assert sc.getLocalProperty("spark.job.interruptOnCancel") == "false"
        assert sc.getLocalProperty("spark.job.description") == "outer work"
    finally:
        sc.setLocalProperty("spark.job.description", None)
        sc.setLocalProperty("spark.job.interruptOnCancel", None)


def _sleep_rows(batches: Iterator[Any]) -> Iterator[Any]:
    """On the executors: holds its task for up to 60 s."""
    import time

    for batch in batches:
        for _ in range(600):
            time.sleep(0.1)
        yield batch


def _nap(batches: Iterator[Any]) -> Iterator[Any]:
    """On the executors: 8 s, then its rows."""
    import time

    time.sleep(8)
    yield from batches


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_cancel_jobs_by_tag_stops_the_tagged_job_only(spark):
    """A job tagged by an outer ``tagged_jobs`` block, started in another thread, is
    cancelled within seconds by ``cancel_jobs(spark, outer_tag)`` from this thread; an
    untagged job running at the same time finishes."""
    outcome: dict[str, str] = {}

    def tagged() -> None:
        with jobs.tagged_jobs(spark, "sv-cancel-outer"), jobs.tagged_jobs(spark, "sv-fit"):
            try:
                spark.range(1, numPartitions=1).mapInArrow(_sleep_rows, "id long").collect()
                outcome["tagged"] = "finished"
            except Exception as exc:  # noqa: BLE001 - the cancellation is what we check
                outcome["tagged"] = str(exc)

    def untagged() -> None:
        rows = spark.range(0, 1000, numPartitions=1).mapInArrow(_nap, "id long")
        outcome["untagged"] = str(rows.agg(F.sum("id").alias("s")).first().s)

    tracker = spark.sparkContext.statusTracker()
    threads = [threading.Thread(target=tagged), threading.Thread(target=untagged)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(tracker.getActiveJobsIds()) < 2:
        assert time.monotonic() < deadline, "the two jobs did not start"
        time.sleep(0.1)
    started = time.monotonic()
    jobs.cancel_jobs(spark, "sv-cancel-outer")
    threads[0].join(45)
    assert not threads[0].is_alive() and time.monotonic() - started < 45
    threads[1].join(60)
    assert "cancelled" in outcome["tagged"] and "sv-cancel-outer" in outcome["tagged"], (
        outcome["tagged"][:500])
    assert outcome["untagged"] == str(sum(range(1000)))
    # no job is left running; the status tracker hears of a job's end through Spark's
    # asynchronous listener bus, so it may lag the threads by a moment
    deadline = time.monotonic() + 30
    while tracker.getActiveJobsIds() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tracker.getActiveJobsIds() == []
