"""The ``tfrecords`` data source is registered when a reader, writer or SQL statement
first names it, not when ``get_spark`` starts the session (no JVM here: fake sessions)."""

from __future__ import annotations

from types import SimpleNamespace

from pyspark.sql.readwriter import DataFrameReader, DataFrameWriter
from pyspark.sql.session import SparkSession
from pyspark.sql.streaming.readwriter import DataStreamReader

from sparkvision.session import _registered, register_data_sources, register_when_named


class _FakeSession:
    """Records what ``spark.dataSource.register`` received."""

    def __init__(self) -> None:
        self.registered: list[str] = []
        self.dataSource = SimpleNamespace(register=lambda ds: self.registered.append(ds.name()))


class _FakeJava:
    def format(self, source):  # what pyspark's format forwards to
        return self


def _reader(cls, session):
    reader = object.__new__(cls)
    reader._spark = session
    for name in ("_jreader", "_jwrite"):
        setattr(reader, name, _FakeJava())
    return reader


def test_naming_the_format_registers_it_once_per_session():
    register_when_named()
    register_when_named()  # idempotent: one wrapper, not two
    first, second = _FakeSession(), _FakeSession()
    _reader(DataFrameReader, first).format("parquet")
    assert first.registered == [] and first not in _registered
    _reader(DataFrameReader, first).format("TFRecords")
    _reader(DataStreamReader, first).format("tfrecords")
    _reader(DataFrameWriter, first).format(" tfrecords ")
    assert first.registered == ["tfrecords"] and first in _registered
    assert second.registered == []
    register_data_sources(second)
    register_data_sources(second)
    assert second.registered == ["tfrecords"]


def _sql(session, query: str) -> None:
    try:
        SparkSession.sql(session, query)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001, S110 - the fake has no JVM: only the registration counts
        pass


def test_sql_naming_the_format_registers_it():
    register_when_named()
    session = _FakeSession()
    _sql(session, "SELECT 1")
    assert session.registered == []
    _sql(session, "CREATE TEMP VIEW v USING tfrecords OPTIONS (path 'x')")
    assert session.registered == ["tfrecords"]
