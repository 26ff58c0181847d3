"""``get_spark`` registers the ``tfrecords`` data source when it is first named (by a
reader, a writer or SQL), not when the session starts."""

from __future__ import annotations

from sparkvision.session import _registered


def test_sql_and_readers_name_the_data_source(spark, tmp_path):
    path = str(tmp_path / "ids")
    spark.range(3).write.format("tfrecords").mode("overwrite").save(path)
    assert spark in _registered
    spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW ids USING tfrecords OPTIONS (path '{path}')")
    assert sorted(r.id for r in spark.table("ids").collect()) == [0, 1, 2]
    assert spark.read.format("tfrecords").load(path).count() == 3
