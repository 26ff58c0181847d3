"""``prepare --store encoded``: PNG/JPEG bytes at the target size instead of raw pixels —
smaller shards, the same weights and predictions for lossless PNG, close ones for JPEG."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sparkvision import ImageClassifier, PrepareConfig, load_prepared, prepare


def _shard_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("part-*"))


@pytest.fixture(scope="module")
def mnist_raw_png(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("encoded")
    raw, png = root / "raw", root / "png"
    # two shards per split: each of the two ranks trains on one (repartition=False below)
    prepare(spark, PrepareConfig(source="mnist", out=str(raw), seed=4, num_shards=2))
    prepare(spark, PrepareConfig(source="mnist", out=str(png), seed=4, store="encoded",
                                 encoding="png", num_shards=2))
    return raw, png


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_png_storage_is_smaller_and_trains_and_predicts_the_same(spark, mnist_raw_png):
    raw, png = mnist_raw_png
    assert json.loads((raw / "dataset.json").read_text())["storage"] == "raw"
    assert json.loads((png / "dataset.json").read_text())["storage"] == "png"
    assert _shard_bytes(png) < 0.6 * _shard_bytes(raw), (_shard_bytes(png), _shard_bytes(raw))

    def fit(folder):
        # repartition=False: each rank trains on one shard, the same rows in the same order
        # for both storages (Spark's round-robin repartition sorts rows by their bytes
        # first, so it would deal the same rows to the ranks differently).
        return ImageClassifier(epochs=1, numWorkers=2, seed=2, repartition=False).fit(
            load_prepared(spark, str(folder), "train"))

    from_raw, from_png = fit(raw), fit(png)
    assert from_png.weights == from_raw.weights

    def predictions(model, folder):
        rows = model.transform(load_prepared(spark, str(folder), "test")).select(
            "path", "probability").collect()
        return {r.path: r.probability.toArray().tolist() for r in rows}

    assert predictions(from_raw, png) == predictions(from_raw, raw)


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_jpeg_storage_predicts_almost_the_same(spark, mnist_raw_png, tmp_path):
    raw, _ = mnist_raw_png
    jpeg = tmp_path / "jpeg"
    result = prepare(spark, PrepareConfig(source="mnist", out=str(jpeg), seed=4,
                                          store="encoded", encoding="jpeg"))
    assert result.storage == "jpeg"
    model = ImageClassifier(epochs=2, numWorkers=2, seed=2).fit(
        load_prepared(spark, str(raw), "train"))

    def accuracy(folder):
        from pyspark.sql import functions as F

        out = model.transform(load_prepared(spark, str(folder), "test"))
        return out.select(F.avg((F.col("prediction") == F.col("label")).cast("double"))).first()[0]

    assert abs(accuracy(jpeg) - accuracy(raw)) < 0.02


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_stream_predicts_encoded_rows_and_rejects_broken_ones(spark, mnist_raw_png, tmp_path,
                                                              capsys):
    """A Parquet stream of PNG-stored rows (+ one row of junk bytes and one of the wrong
    raw size): the PNGs are predicted like their raw twins, the two bad rows rejected with
    a reason."""
    from sparkvision.cli import main

    raw, png = mnist_raw_png
    train = load_prepared(spark, str(raw), "train")
    model = ImageClassifier(epochs=1, numWorkers=2, seed=0).fit(train)
    model_dir = tmp_path / "model"
    model.write().save(str(model_dir))
    rows = load_prepared(spark, str(png), "test").limit(40).select("image", "label", "path")
    bad = spark.createDataFrame([(b"not an image", 0, "junk"), (bytes(10), 1, "short")],
                                "image binary, label bigint, path string")
    inbox, staged = tmp_path / "in", tmp_path / "staged"
    rows.unionByName(bad).coalesce(1).write.parquet(str(staged))
    inbox.mkdir()
    for f in staged.glob("*.parquet"):
        os.replace(f, inbox / f.name)
    assert main(["stream", str(model_dir), "--input", str(inbox), "--out", str(tmp_path / "out"),
                 "--checkpoint", str(tmp_path / "ckpt"), "--format", "parquet",
                 "--available-now", "--json", "--timeout", "120", "--backend", "torch"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 42 and summary["rejected"] == 2  # rows: every input row
    got = {r.path: r.prediction for r in spark.read.parquet(str(tmp_path / "out")).collect()}
    expected = {r.path: r.prediction for r in model.transform(
        load_prepared(spark, str(raw), "test")).select("path", "prediction").collect()}
    assert got == {p: expected[p] for p in got} and len(got) == 40
    reasons = {r.path: r.reason for r in
               spark.read.parquet(str(tmp_path / "out" / "_rejected")).collect()}
    assert set(reasons) == {"junk", "short"}
    assert all("neither 28x28x1 raw pixels nor a readable PNG/JPEG" in r
               for r in reasons.values()), reasons
