"""The ``tfrecords`` data source on a local[2] SparkSession: read, write, stream."""

from __future__ import annotations

import os
import time

import pytest
from pyspark.sql import Row
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from sparkvision.data import tf_example, tfrecord
from sparkvision.data.datasource import save_tfrecords

SCHEMA = StructType(
    [
        StructField("id", LongType()),
        StructField("score", FloatType()),
        StructField("name", StringType()),
        StructField("blob", BinaryType()),
        StructField("ints", ArrayType(LongType())),
        StructField("floats", ArrayType(FloatType())),
        StructField("tags", ArrayType(StringType())),
    ]
)


def _rows(n: int, start: int = 0) -> list[tuple]:
    rows = []
    for i in range(start, start + n):
        rows.append(
            (
                i,
                None if i % 7 == 3 else i / 4 - 10,
                f"name-{i} \u00e9\t" if i % 5 else None,
                bytes([i % 256, 0, 255]) * (i % 4),
                [i, -i, -(2**63), 2**63 - 1][: i % 5],
                [0.5 * i] * (i % 3),
                None if i % 6 == 1 else [f"t{j}" for j in range(i % 3)],
            )
        )
    return rows


def _sorted(rows) -> list[tuple]:
    return sorted((tuple(r) for r in rows), key=lambda r: r[0])


def _write_file(path, start: int, n: int) -> None:
    """Write Examples {id, value} with our tfrecord module, atomically (tmp + rename)."""
    tmp = f"{path}.tmp"
    with tfrecord.open_for_write(tmp) as f:
        for i in range(start, start + n):
            example = {"id": ("int64", [i]), "value": ("bytes", [f"v{i}".encode()])}
            tfrecord.write_record(f, tf_example.encode_example(example))
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def written(spark, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tf") / "data")
    rows = _rows(300)
    df = spark.createDataFrame(rows, SCHEMA).repartition(3)
    df.write.format("tfrecords").mode("overwrite").save(path)
    return path, rows


def test_round_trip_with_given_schema(spark, written):
    path, rows = written
    parts = sorted(os.listdir(path))
    assert parts[0] == "_SUCCESS"
    assert len(parts) == 4 and all(p.startswith("part-") for p in parts[1:])
    back = spark.read.format("tfrecords").schema(SCHEMA).load(path)
    assert back.rdd.getNumPartitions() == 3  # one per file
    assert _sorted(back.collect()) == _sorted(rows)


def test_round_trip_with_inferred_schema(spark, written):
    path, rows = written
    back = spark.read.format("tfrecords").load(path)
    expected = StructType(sorted(SCHEMA.fields, key=lambda f: f.name))
    assert back.schema == expected
    assert _sorted(back.select(*SCHEMA.fieldNames()).collect()) == _sorted(rows)


def test_inference_of_scalars_vs_lists_and_text_vs_binary(spark, tmp_path):
    path = tmp_path / "one.tfrecord"
    with tfrecord.open_for_write(str(path)) as f:
        for i in range(5):
            example = {
                "label": ("int64", [i]),
                "maybe_list": ("int64", [i] * (2 if i == 4 else 1)),
                "text": ("bytes", [b"line\n"]),
                "raw": ("bytes", [b"ok" if i else b"\x00\x01"]),
                "w": ("float", [1.0, 2.0]),
            }
            tfrecord.write_record(f, tf_example.encode_example(example))
    df = spark.read.format("tfrecords").load(str(path))
    assert df.schema == StructType(
        [
            StructField("label", LongType()),
            StructField("maybe_list", ArrayType(LongType())),
            StructField("raw", BinaryType()),
            StructField("text", StringType()),
            StructField("w", ArrayType(FloatType())),
        ]
    )
    assert df.orderBy("label").first() == Row(
        label=0, maybe_list=[0], raw=b"\x00\x01", text="line\n", w=[1.0, 2.0]
    )


def test_read_with_narrower_and_wider_types(spark, written):
    path, rows = written
    schema = "id int, score double, name string"
    back = spark.read.format("tfrecords").schema(schema).load(path)
    got = _sorted(back.collect())
    assert [r[0] for r in got] == [r[0] for r in _sorted(rows)]
    assert got[1][1] == pytest.approx(_sorted(rows)[1][1])
    assert dict(back.dtypes) == {"id": "int", "score": "double", "name": "string"}


def test_modes(spark, tmp_path):
    path = str(tmp_path / "modes")
    first = spark.createDataFrame(_rows(10), SCHEMA).coalesce(2)
    second = spark.createDataFrame(_rows(5, start=100), SCHEMA).coalesce(1)
    first.write.format("tfrecords").mode("overwrite").save(path)
    old_parts = {p for p in os.listdir(path) if p.startswith("part-")}
    read = spark.read.format("tfrecords").schema(SCHEMA)

    second.write.format("tfrecords").mode("append").save(path)
    assert sorted(r.id for r in read.load(path).collect()) == list(range(10)) + list(
        range(100, 105)
    )

    second.write.format("tfrecords").mode("overwrite").save(path)
    assert sorted(r.id for r in read.load(path).collect()) == list(range(100, 105))
    now = set(os.listdir(path))
    assert not old_parts & now and "_SUCCESS" in now and len(now) == 2

    with pytest.raises(Exception, match="already exists"):
        save_tfrecords(first, path, mode="error")
    with pytest.raises(Exception, match="already exists"):
        first.write.format("tfrecords").mode("append").option("saveMode", "error").save(path)
    save_tfrecords(first, path, mode="ignore")
    assert read.load(path).count() == 5
    save_tfrecords(first, str(tmp_path / "fresh"), mode="error")
    assert read.load(str(tmp_path / "fresh")).count() == 10
    # Spark itself refuses ErrorIfExists/Ignore for every Python data source.
    with pytest.raises(Exception, match="UNSUPPORTED_DATA_SOURCE_SAVE_MODE"):
        first.write.format("tfrecords").mode("error").save(path)


def test_overwrite_can_replace_the_data_it_reads(spark, tmp_path):
    path = str(tmp_path / "self")
    spark.createDataFrame(_rows(20), SCHEMA).write.format("tfrecords").mode("overwrite").save(path)
    df = spark.read.format("tfrecords").schema(SCHEMA).load(path).filter("id < 5")
    df.write.format("tfrecords").mode("overwrite").save(path)
    assert sorted(r.id for r in spark.read.format("tfrecords").load(path).collect()) == list(
        range(5)
    )


def test_unsupported_column_type_is_named(spark, tmp_path):
    df = spark.sql("select 1L as id, current_timestamp() as ts")
    with pytest.raises(Exception, match="column 'ts'.*timestamp"):
        df.write.format("tfrecords").mode("overwrite").save(str(tmp_path / "bad"))


def test_byte_array_records(spark, tmp_path):
    path = str(tmp_path / "raw")
    payloads = [bytes([i]) * i for i in range(1, 40)] + [b""]
    df = spark.createDataFrame([(p,) for p in payloads], "record binary").repartition(2)
    df.write.format("tfrecords").option("recordType", "ByteArray").mode("overwrite").save(path)
    back = spark.read.format("tfrecords").option("recordType", "bytearray").load(path)
    assert back.schema == StructType([StructField("record", BinaryType())])
    assert sorted(r.record for r in back.collect()) == sorted(payloads)
    raw_files = [os.path.join(path, p) for p in os.listdir(path) if p.startswith("part-")]
    from_disk = [r for p in raw_files for r in tfrecord.read_file_records(p)]
    assert sorted(from_disk) == sorted(payloads)


def test_byte_array_of_examples_reads_as_examples(spark, written):
    path, rows = written
    raw = spark.read.format("tfrecords").option("recordType", "ByteArray").load(path)
    decoded = [tf_example.decode_example(r.record) for r in raw.collect()]
    assert sorted(d["id"][1][0] for d in decoded) == [r[0] for r in _sorted(rows)]


def test_gzip(spark, tmp_path):
    path = str(tmp_path / "gz")
    rows = _rows(50)
    df = spark.createDataFrame(rows, SCHEMA).coalesce(2)
    df.write.format("tfrecords").option("compression", "gzip").mode("overwrite").save(path)
    parts = [p for p in os.listdir(path) if p.startswith("part-")]
    assert parts and all(p.endswith(".tfrecord.gz") for p in parts)
    with open(os.path.join(path, parts[0]), "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    back = spark.read.format("tfrecords").schema(SCHEMA).load(path)  # detected from suffix
    assert _sorted(back.collect()) == _sorted(rows)
    forced = spark.read.format("tfrecords").schema(SCHEMA).option("compression", "gzip")
    assert forced.load(path).count() == 50


def _corrupt_file(folder) -> tuple[str, int]:
    """Five records of 3 ints; the third record's data is flipped. Returns (path, offset)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "broken.tfrecord")
    framed = [
        tfrecord.frame_record(tf_example.encode_example({"id": ("int64", [i])})) for i in range(5)
    ]
    offset = len(framed[0]) + len(framed[1])
    data = bytearray(b"".join(framed))
    data[offset + 14] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)
    return path, offset


def test_corrupt_file_error_names_file_and_offset(spark, tmp_path):
    path, offset = _corrupt_file(tmp_path / "c")
    with pytest.raises(Exception) as info:
        spark.read.format("tfrecords").schema("id long").load(str(tmp_path / "c")).collect()
    message = str(info.value)
    assert "broken.tfrecord" in message
    assert f"byte offset {offset}" in message
    assert "data checksum mismatch" in message


def test_skip_corrupt_returns_good_records(spark, tmp_path):
    _corrupt_file(tmp_path / "c")
    df = (
        spark.read.format("tfrecords")
        .option("skipCorrupt", "true")
        .schema("id long")
        .load(str(tmp_path / "c"))
    )
    assert sorted(r.id for r in df.collect()) == [0, 1, 3, 4]
    unchecked = spark.read.format("tfrecords").option("verifyChecksums", "false")
    assert unchecked.schema("id long").load(str(tmp_path / "c")).count() == 5


def test_malformed_example_is_named_or_skipped(spark, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    with tfrecord.open_for_write(str(folder / "bad-example.tfrecord")) as f:
        for i in range(4):
            good = tf_example.encode_example({"id": ("int64", [i])})
            tfrecord.write_record(f, good if i != 2 else b"\x0a\x7f\x01")  # framed, not protobuf
    with pytest.raises(Exception, match="record 2 of .*bad-example.tfrecord: malformed"):
        spark.read.format("tfrecords").schema("id long").load(str(folder)).collect()
    lenient = spark.read.format("tfrecords").option("skipCorrupt", "true").schema("id long")
    assert sorted(r.id for r in lenient.load(str(folder)).collect()) == [0, 1, 3]


def test_truncated_file_error_offset(spark, tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    record = tfrecord.frame_record(tf_example.encode_example({"id": ("int64", [1])}))
    (folder / "cut.tfrecord").write_bytes(record * 3 + record[:7])
    (folder / "_ignored").write_bytes(b"not a tfrecord")
    (folder / ".hidden").write_bytes(b"not a tfrecord")
    with pytest.raises(Exception, match=f"cut.tfrecord at byte offset {3 * len(record)}"):
        spark.read.format("tfrecords").schema("id long").load(str(folder)).collect()
    lenient = spark.read.format("tfrecords").option("skipCorrupt", "true").schema("id long")
    assert lenient.load(str(folder)).count() == 3


def test_missing_path_is_named(spark, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(Exception, match=f"TFRecord path {missing} does not exist"):
        spark.read.format("tfrecords").load(missing).collect()
    with pytest.raises(Exception, match=f"TFRecord path {missing} does not exist"):
        spark.read.format("tfrecords").schema("id long").load(missing).collect()


def test_bad_option_is_named(spark, written):
    path, _ = written
    with pytest.raises(Exception, match="recordType"):
        spark.read.format("tfrecords").option("recordType", "SequenceExample").load(path)


def test_nested_folders_and_gz_mixed(spark, tmp_path):
    root = tmp_path / "nested"
    (root / "a" / "b").mkdir(parents=True)
    (root / "_tmp").mkdir()
    _write_file(str(root / "a" / "one.tfrecord"), 0, 3)
    _write_file(str(root / "a" / "b" / "two.tfrecord"), 3, 4)
    _write_file(str(root / "_tmp" / "skipped.tfrecord"), 100, 4)
    with tfrecord.open_for_write(str(root / "three.tfrecord.gz"), "gzip") as f:
        tfrecord.write_record(f, tf_example.encode_example({"id": ("int64", [7])}))
    df = spark.read.format("tfrecords").load(str(root))
    assert df.columns == ["id", "value"]
    assert sorted(r.id for r in df.collect()) == list(range(8))
    two = spark.read.format("tfrecords").load(
        [str(root / "a" / "b"), str(root / "three.tfrecord.gz")]
    )
    assert sorted(r.id for r in two.collect()) == [3, 4, 5, 6, 7]


# --------------------------------------------------------------------------- streaming

STREAM_SCHEMA = "id long, value string"


def _stream(spark, folder, **options):
    reader = spark.readStream.format("tfrecords").schema(STREAM_SCHEMA)
    return reader.options(**options).load(str(folder))


@pytest.mark.stream_source
def test_stream_available_now_exactly_once_across_restarts(spark, tmp_path):
    landing, out, checkpoint = tmp_path / "landing", tmp_path / "out", tmp_path / "ckpt"
    landing.mkdir()
    for k in range(3):
        _write_file(str(landing / f"f{k}.tfrecord"), k * 10, 10)
    (landing / ".incoming.tfrecord").write_bytes(b"partial garbage")
    (landing / "_meta").write_bytes(b"garbage")

    def run() -> list:
        query = (
            _stream(spark, landing)
            .writeStream.format("parquet")
            .option("checkpointLocation", str(checkpoint))
            .trigger(availableNow=True)
            .start(str(out))
        )
        query.awaitTermination(120)
        assert not query.isActive and query.exception() is None
        return query.recentProgress

    progress = run()
    ids = sorted(r.id for r in spark.read.parquet(str(out)).collect())
    assert ids == list(range(30))
    assert sum(p["numInputRows"] for p in progress) == 30

    time.sleep(0.01)
    for k in range(3, 5):
        _write_file(str(landing / f"f{k}.tfrecord"), k * 10, 10)
    progress = run()
    assert sum(p["numInputRows"] for p in progress) == 20  # only the new files
    rows = spark.read.parquet(str(out)).collect()
    assert sorted(r.id for r in rows) == list(range(50))  # every record exactly once
    assert {r.value for r in rows if r.id == 42} == {"v42"}

    assert sum(p["numInputRows"] for p in run()) == 0  # nothing new: nothing read
    assert spark.read.parquet(str(out)).count() == 50


@pytest.mark.stream_source
def test_stream_max_files_per_trigger(spark, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    for k in range(4):
        _write_file(str(landing / f"f{k}.tfrecord"), k * 100, k + 1)
    batches: list[tuple[int, list[int]]] = []

    def collect(batch_df, batch_id: int) -> None:
        batches.append((batch_id, sorted(r.id for r in batch_df.collect())))

    query = (
        _stream(spark, landing, maxFilesPerTrigger="1")
        .writeStream.foreachBatch(collect)
        .option("checkpointLocation", str(tmp_path / "ckpt"))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination(120)
    assert query.exception() is None
    non_empty = [ids for _, ids in batches if ids]
    assert non_empty == [[k * 100 + j for j in range(k + 1)] for k in range(4)]
    assert [p["numInputRows"] for p in query.recentProgress if p["numInputRows"]] == [1, 2, 3, 4]


@pytest.mark.stream_source
def test_stream_memory_sink_sees_each_record_once(spark, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    _write_file(str(landing / "a.tfrecord"), 0, 5)
    _write_file(str(landing / "b.tfrecord"), 5, 5)
    query = (
        _stream(spark, landing, maxBytesPerTrigger="1")
        .writeStream.format("memory")
        .queryName("tfrecords_stream_test")
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination(120)
    ids = [r.id for r in spark.table("tfrecords_stream_test").collect()]
    assert sorted(ids) == list(range(10))
    assert len([p for p in query.recentProgress if p["numInputRows"]]) == 2


@pytest.mark.stream_source
def test_stream_schema_check(spark, tmp_path):
    (tmp_path / "landing").mkdir()
    bad = spark.readStream.format("tfrecords").schema("id long, ts timestamp")
    with pytest.raises(Exception, match="column 'ts'"):
        bad.load(str(tmp_path / "landing")).writeStream.format("memory").queryName(
            "bad_stream"
        ).start().awaitTermination(60)


def test_write_int_and_double_columns(spark, tmp_path):
    path = str(tmp_path / "num")
    schema = StructType([StructField("i", IntegerType()), StructField("d", DoubleType())])
    df = spark.createDataFrame([(1, 0.1), (None, None), (-3, 2.5)], schema)
    df.write.format("tfrecords").mode("overwrite").save(path)
    back = spark.read.format("tfrecords").schema(schema).load(path).collect()
    assert sorted((r.i for r in back), key=lambda v: (v is None, v)) == [-3, 1, None]
    # doubles are stored as float32, as in tf.train.FloatList
    assert {r.d for r in back} == {0.10000000149011612, 2.5, None}
    inferred = spark.read.format("tfrecords").load(path)
    assert dict(inferred.dtypes) == {"d": "float", "i": "bigint"}


def _write_numbered(path, n: int) -> list[int]:
    """Write n Example records {i: int64} to one uncompressed file; return record offsets."""
    offsets = []
    with tfrecord.open_for_write(str(path)) as fh:
        pos = 0
        for i in range(n):
            offsets.append(pos)
            pos += tfrecord.write_record(fh, tf_example.encode_example({"i": ("int64", [i])}))
    return offsets


def test_split_offsets_and_ranges_cover_every_record_once(tmp_path):
    path = tmp_path / "big.tfrecord"
    offsets = _write_numbered(path, 1000)
    starts = tfrecord.split_offsets(str(path), 300)
    assert starts == [offsets[0], offsets[300], offsets[600], offsets[900]]
    seen = []
    for a, b in zip(starts, [*starts[1:], None], strict=True):
        recs = list(tfrecord.read_range_records(str(path), a, b))
        seen += [tf_example.decode_example(r)["i"][1][0] for r in recs]
    assert seen == list(range(1000))


def test_large_file_split_by_record_count(spark, tmp_path):
    path = tmp_path / "big.tfrecord"
    offsets = _write_numbered(path, 1000)
    whole = spark.read.format("tfrecords").load(str(path))
    split = spark.read.format("tfrecords").option("recordsPerPartition", "300").load(str(path))
    assert whole.rdd.getNumPartitions() == 1 and split.rdd.getNumPartitions() == 4
    assert sorted(r.i for r in split.collect()) == list(range(1000))
    # Corruption inside the last range is reported with its exact byte offset.
    data = bytearray(path.read_bytes())
    data[offsets[950] + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match=f"byte offset {offsets[950]}"):
        spark.read.format("tfrecords").option("recordsPerPartition", "300").schema(
            "i BIGINT").load(str(path)).collect()


def _write_blobs(path, sizes: list[int]) -> list[bytes]:
    """Examples {i, blob of the given size}; return their serialized records."""
    records = [tf_example.encode_example({"i": ("int64", [i]), "blob": ("bytes", [b"x" * n])})
               for i, n in enumerate(sizes)]
    with tfrecord.open_for_write(str(path)) as fh:
        for record in records:
            tfrecord.write_record(fh, record)
    return records


@pytest.mark.parametrize("record_type", ["Example", "ByteArray"])
def test_read_batches_are_capped_by_bytes_as_well_as_rows(tmp_path, record_type):
    """The reader's Arrow batches (executor side, no Spark here): at most maxBytesPerBatch
    record bytes (a larger record alone), at most 1,024 rows, every record once, in order."""
    from pyspark.sql.types import StructType as ST

    from sparkvision.data.datasource_options import BATCH_ROWS, TFRecordOptions
    from sparkvision.data.datasource_read import read_batches

    sizes = [3000] * 10 + [20_000] + [10] * 3000 + [3000] * 5
    records = _write_blobs(tmp_path / "blobs.tfrecord", sizes)
    schema = (ST([StructField("record", BinaryType())]) if record_type == "ByteArray"
              else ST([StructField("i", LongType()), StructField("blob", BinaryType())]))
    opts = TFRecordOptions.parse({"path": str(tmp_path), "recordType": record_type,
                                  "maxBytesPerBatch": "10000"})
    batches = list(read_batches(str(tmp_path / "blobs.tfrecord"), opts, schema))
    got, at = [], 0
    for batch in batches:
        chunk = records[at : at + batch.num_rows]
        assert batch.num_rows <= BATCH_ROWS
        assert sum(map(len, chunk)) <= 10_000 or batch.num_rows == 1
        at += batch.num_rows
        got += batch.column(0).to_pylist()
    assert got == (records if record_type == "ByteArray" else list(range(len(sizes))))
    # 3 x ~3 KB three times, the 10th alone (the 20 KB one follows), the 20 KB one alone
    assert [b.num_rows for b in batches][:5] == [3, 3, 3, 1, 1]
    default = TFRecordOptions.parse({"path": str(tmp_path), "recordType": record_type})
    assert default.max_bytes_per_batch == 4 << 20  # 3,016 rows in 140 KB: the row cap closes
    rows = [b.num_rows for b in read_batches(str(tmp_path / "blobs.tfrecord"), default,
                                              schema)]
    assert rows == [1024, 1024, 968]


def test_max_bytes_per_batch_option_reads_the_same_rows(spark, tmp_path):
    path = tmp_path / "blobs.tfrecord"
    _write_blobs(path, [500, 70_000, 0, 3] * 50)
    whole = spark.read.format("tfrecords").load(str(path))
    tiny = spark.read.format("tfrecords").option("maxBytesPerBatch", "1").load(str(path))
    assert sorted(tuple(r) for r in tiny.collect()) == sorted(tuple(r) for r in whole.collect())
    with pytest.raises(Exception, match="maxBytesPerBatch"):
        spark.read.format("tfrecords").option("maxBytesPerBatch", "0").load(str(path))
