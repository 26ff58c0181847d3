"""The session helpers that replace ``sparkContext``/``rdd`` calls (so that a Spark Connect
session works too), on the classic local[2] session: their job-based fallbacks agree with
the classic values."""

from __future__ import annotations

from pyspark.sql import functions as F

from sparkvision import session


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


def test_job_group_sets_and_clears_group_and_tag(spark):
    sc = spark.sparkContext
    with session.job_group(spark, "sv-test-group", "a test"):
        assert sc.getLocalProperty("spark.jobGroup.id") == "sv-test-group"
        assert "sv-test-group" in spark.getTags()
        assert spark.range(3).count() == 3
    assert sc.getLocalProperty("spark.jobGroup.id") is None
    assert "sv-test-group" not in spark.getTags()
