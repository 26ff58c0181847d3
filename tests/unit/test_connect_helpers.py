"""The Spark Connect helpers of ``sparkvision.session`` and ``sparkvision.session.jobs``
without a server: URL parsing, the reachability check, and the classic/Connect split of
slot counting, partition counting, job tags and cancellation (fake sessions; a fake
Connect session is one whose class lives in ``pyspark.sql.connect``)."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

from sparkvision import session
from sparkvision.errors import (
    ClusterCapacityError,
    ClusterUnreachableError,
    InvalidParameterError,
)
from sparkvision.session import jobs


class FakeConf:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)


class FakeConnect:
    """Stands for a Connect session: conf, range (the probe), tags, interrupts."""

    def __init__(self, conf: dict[str, str], probe_partitions: int = 5) -> None:
        self.conf = FakeConf(conf)
        self.probe_partitions = probe_partitions
        self.calls: list[tuple] = []

    def range(self, start: int, end: int):
        self.calls.append(("range", start, end))
        part = self.probe_partitions

        class Frame:
            def select(self, *cols):
                return self

            def agg(self, *cols):
                return self

            def first(self):
                return SimpleNamespace(p=part - 1)

        return Frame()

    def addTag(self, tag):  # noqa: N802 - pyspark's names
        self.calls.append(("addTag", tag))

    def removeTag(self, tag):  # noqa: N802
        self.calls.append(("removeTag", tag))

    def interruptTag(self, tag):  # noqa: N802
        self.calls.append(("interruptTag", tag))

    def interruptAll(self):  # noqa: N802
        self.calls.append(("interruptAll",))

    @property
    def sparkContext(self):  # noqa: N802 - what Connect does: no SparkContext
        raise AssertionError("a Connect session has no sparkContext")


FakeConnect.__module__ = "pyspark.sql.connect.session"


class FakeFrame:
    def __init__(self, spark, counted: int) -> None:
        self.sparkSession = spark
        self.counted = counted

    def mapInArrow(self, func, schema):  # noqa: N802
        assert schema == "p int"
        return SimpleNamespace(count=lambda: self.counted)

    @property
    def rdd(self):
        raise AssertionError("a Connect DataFrame has no rdd")


def test_connect_address():
    assert session.connect_address("sc://host:1234") == ("host", 1234)
    assert session.connect_address("sc://host") == ("host", session.CONNECT_PORT)
    assert session.connect_address("sc://10.0.0.1:15002/;token=x") == ("10.0.0.1", 15002)
    for bad in ("http://host:1", "host:15002", "sc://:15002", "sc://host:port"):
        with pytest.raises(InvalidParameterError, match="sc://HOST:PORT"):
            session.connect_address(bad)


def test_check_reachable_fails_fast_with_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    started = time.monotonic()
    with pytest.raises(ClusterUnreachableError, match=f"sc://127.0.0.1:{port}.*start it"):
        session.check_reachable(f"sc://127.0.0.1:{port}", timeout_s=2)
    assert time.monotonic() - started < 5


def test_check_reachable_accepts_a_listening_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        session.check_reachable(f"sc://127.0.0.1:{s.getsockname()[1]}", timeout_s=2)


def test_get_spark_refuses_master_with_remote(monkeypatch):
    with pytest.raises(InvalidParameterError, match="exclude each other"):
        session.get_spark("local[1]", remote="sc://127.0.0.1:1")
    monkeypatch.setenv("SPARK_REMOTE", "sc://127.0.0.1:1")
    with pytest.raises(InvalidParameterError, match="SPARK_REMOTE"):
        session.get_spark("local[1]")


def test_get_spark_uses_spark_remote_env(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SPARK_REMOTE", f"sc://127.0.0.1:{port}")
    monkeypatch.setenv("SPARKVISION_CONNECT_TIMEOUT_S", "1")
    with pytest.raises(ClusterUnreachableError):
        session.get_spark()


@pytest.mark.parametrize("master, cores", [
    ("local", 1), ("local[3]", 3), ("local[4,2]", 4), ("local-cluster[2,3,1024]", 6),
    ("local[*]", None), ("spark://h:7077", None), ("yarn", None),
])
def test_local_cores(master, cores):
    assert session._local_cores(master) == cores


def test_default_parallelism_over_connect_fallbacks(monkeypatch):
    from pyspark.sql import functions

    for name in ("spark_partition_id", "max"):  # Column builders need a JVM or Connect
        monkeypatch.setattr(functions, name, lambda *a: SimpleNamespace(alias=lambda n: n))
    # 1. a local[N] master says it; no job
    spark = FakeConnect({"spark.master": "local[3]", "spark.default.parallelism": "9"})
    assert session.default_parallelism(spark) == 3 and spark.calls == []
    # 2. a cluster master with spark.default.parallelism set
    spark = FakeConnect({"spark.master": "spark://h:7077", "spark.default.parallelism": "12"})
    assert session.default_parallelism(spark) == 12 and spark.calls == []
    # 3. otherwise the probe job (range partitions)
    spark = FakeConnect({"spark.master": "spark://h:7077"}, probe_partitions=8)
    assert session.default_parallelism(spark) == 8
    assert spark.calls == [("range", 0, session._PROBE_ROWS)]
    # local[*]: the server's cores are not known to the client either
    spark = FakeConnect({"spark.master": "local[*]"}, probe_partitions=16)
    assert session.default_parallelism(spark) == 16
    assert session.default_parallelism(FakeConnect({"spark.master": "local"})) == 1


def test_slots_and_capacity_error_over_connect():
    from sparkvision.training.launcher import available_slots, check_slots

    spark = FakeConnect({"spark.master": "local[4]", "spark.task.cpus": "2"})
    assert session.task_cpus(spark) == 2
    assert available_slots(spark) == 2
    check_slots(spark, 2)
    with pytest.raises(ClusterCapacityError, match=r"has 2 \(local\[4\]\)"):
        check_slots(spark, 3)


def test_num_partitions_over_connect_counts_with_a_job():
    spark = FakeConnect({"spark.master": "local[2]"})
    assert session.num_partitions(FakeFrame(spark, counted=7)) == 7


def test_tagged_jobs_and_cancel_over_connect_use_session_tags():
    spark = FakeConnect({})
    with jobs.tagged_jobs(spark, "trial-1", "a trial"), jobs.tagged_jobs(spark, "fit-2"):
        jobs.cancel_jobs(spark, "trial-1")
    jobs.cancel_jobs(spark)
    assert spark.calls == [("addTag", "trial-1"), ("addTag", "fit-2"),
                           ("interruptTag", "trial-1"), ("removeTag", "fit-2"),
                           ("removeTag", "trial-1"), ("interruptAll",)]


def test_tagged_jobs_removes_its_tag_on_error():
    spark = FakeConnect({})
    with pytest.raises(RuntimeError), jobs.tagged_jobs(spark, "t"):
        raise RuntimeError("boom")
    assert spark.calls[-1] == ("removeTag", "t")


def test_is_connect():
    assert session.is_connect(FakeConnect({}))
    assert not session.is_connect(SimpleNamespace())
