"""`sparkvision stream` / ``sparkvision.streaming.start``: image files dropped into a folder
are predicted exactly once, bad files land in ``_rejected``, a newer model is picked up
without a restart, and user errors are one line with exit code 2."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparkvision.cli import main


def drop_images(rows, folder: Path, shape, start: int = 0) -> dict[str, int]:
    """Write each row's image as a PNG under ``folder/<label>/`` (temp name, then rename, as
    a stream's writer must). Returns {path: label}."""
    h, w, c = shape
    written = {}
    for i, row in enumerate(rows, start):
        pixels = np.frombuffer(row.image, np.uint8).reshape(h, w, c)
        target = folder / str(row.label) / f"img_{i:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp_{i}.png"
        Image.fromarray(pixels[:, :, 0] if c == 1 else pixels).save(tmp)
        os.replace(tmp, target)
        written[str(target)] = int(row.label)
    return written


def drop_corrupt(folder: Path, names: list[str]) -> set[str]:
    bad = set()
    for name in names:
        p = folder / name
        p.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        bad.add(str(p))
    return bad


@pytest.fixture(scope="module")
def test_rows(digits):
    return digits[2].select("image", "label").orderBy("path").limit(45).collect()


def expected_predictions(spark, model, rows) -> list[float]:
    df = spark.createDataFrame([(r.image,) for r in rows], "image BINARY")
    return [r.prediction for r in model.transform(df).select("prediction").collect()]


# None: Spark writes each micro-batch and the driver splits the files; 100: the bounded
# micro-batch's rows come to the driver as Arrow and are written there (BatchWriter.collect)
@pytest.mark.parametrize("max_files", [None, 100])
def test_available_now_two_waves_exactly_once_with_rejected(spark, trained, tmp_path,
                                                            test_rows, max_files):
    from sparkvision.streaming import start

    model = trained[0]
    shape = tuple(model.getImageShape())
    inbox, out, ckpt = tmp_path / "in", tmp_path / "out", tmp_path / "ckpt"
    inbox.mkdir()
    first = drop_images(test_rows[:20], inbox, shape)
    bad = drop_corrupt(inbox, ["broken_a.png", "broken_b.png", "broken_c.jpg"])
    q = start(model, str(inbox), str(out), str(ckpt), available_now=True, spark=spark,
              max_files_per_trigger=max_files)
    q.awaitTermination(120)
    assert not q.isActive
    assert q.sparkvision_writer.collect is (max_files is not None)
    second = drop_images(test_rows[20:], inbox, shape, start=20)
    bad |= drop_corrupt(inbox / "3", ["broken_d.png", "broken_e.png"])
    q = start(model, str(inbox), str(out), str(ckpt), available_now=True, spark=spark,
              max_files_per_trigger=max_files)
    q.awaitTermination(120)

    got = spark.read.parquet(str(out))
    from pyspark.ml.linalg import VectorUDT

    assert got.schema["probability"].dataType == VectorUDT()  # as transform writes it
    rows = got.collect()
    paths = [r.path for r in rows]
    assert len(paths) == len(set(paths)) == 45  # each good file once, over both waves
    assert set(paths) == set(first) | set(second)
    assert {r.batch for r in rows} == {0, 1}
    # same predictions as transform on the very same pixels; labels from the class folders
    want = dict(zip(list(first) + list(second),
                    expected_predictions(spark, model, test_rows), strict=True))
    for r in rows:
        assert r.prediction == want[r.path]
        assert r.label == (first | second)[r.path]
        assert abs(sum(r.probability) - 1) < 1e-9
        assert r.predictedLabel == model.getClasses()[int(r.prediction)]
        assert r.eventTime is not None and r.processedTime >= r.eventTime
    assert {r.modelVersion for r in rows} == {q.sparkvision_writer.summary()["model_versions"][0]}
    rejected_df = spark.read.parquet(str(out / "_rejected"))
    assert rejected_df.columns == ["path", "reason", "eventTime", "processedTime", "batch"]
    rejected = rejected_df.collect()
    assert {r.path for r in rejected} == bad
    assert all("decod" in r.reason or "image" in r.reason for r in rejected), rejected


def _perturbed(model, scale: float):
    import torch
    from safetensors.torch import save

    from sparkvision.models.weights import load_state_dict_bytes

    state = load_state_dict_bytes(model.weights)
    torch.manual_seed(0)
    # weights and biases only: a batch norm's running variance pushed below 0 gives NaN
    changed = {k: (v + scale * torch.randn_like(v)
                   if v.is_floating_point() and "running_" not in k else v)
               for k, v in state.items()}
    other = model.copy()
    other.weights = save(changed)
    other.history = model.history
    return other


def test_hot_swap_uses_the_new_model_from_the_next_batch(spark, trained, tmp_path, test_rows):
    from sparkvision.streaming import start
    from sparkvision.streaming.model_source import weights_version

    model = trained[0]
    shape = tuple(model.getImageShape())
    model_dir = tmp_path / "model"
    model.write().save(str(model_dir))
    newer = _perturbed(model, 0.5)
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    q = start(str(model_dir), str(inbox), str(out), str(tmp_path / "ckpt"),
              trigger_seconds=0.2, spark=spark)
    try:
        drop_images(test_rows[:10], inbox, shape)
        writer = q.sparkvision_writer
        deadline = time.monotonic() + 90
        while sum(r.rows for r in writer.records) < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        # swap atomically: write elsewhere, move the old folder away, move the new one in
        staged = tmp_path / "staged"
        newer.write().save(str(staged))
        os.replace(model_dir, tmp_path / "model.old")
        os.replace(staged, model_dir)
        drop_images(test_rows[10:20], inbox, shape, start=10)
        while sum(r.rows for r in writer.records) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        q.stop()
    rows = spark.read.parquet(str(out)).collect()
    assert len(rows) == 20 and len({r.path for r in rows}) == 20
    by_version = {r.modelVersion for r in rows}
    assert by_version == {weights_version(model.weights), weights_version(newer.weights)}
    for r in rows:  # the wave dropped after the swap is served by the new model only
        wave2 = int(Path(r.path).stem.split("_")[1]) >= 10
        assert r.modelVersion == weights_version((newer if wave2 else model).weights)


def test_cli_stream_json_summary_and_parquet_input(spark, trained_dir, digits_dir, tmp_path,
                                                  capsys):
    inbox = tmp_path / "in"
    inbox.mkdir()
    # Parquet files with an image column (here: the prepared test split, in two files)
    test = spark.read.format("tfrecords").load(str(digits_dir / "test"))
    test.select("image", "label", "path", "height", "width", "channels").coalesce(2) \
        .write.parquet(str(tmp_path / "staged"))
    for f in (tmp_path / "staged").glob("*.parquet"):
        os.replace(f, inbox / f.name)
    n = test.count()
    code = main(["stream", str(trained_dir), "--input", str(inbox), "--out",
                 str(tmp_path / "out"), "--checkpoint", str(tmp_path / "ckpt"),
                 "--format", "parquet", "--available-now", "--max-files-per-trigger", "1",
                 "--json", "--timeout", "120", "--backend", "torch"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == n and summary["rejected"] == 0
    assert summary["batches"] == 2 and summary["stopped"] == "done"
    assert summary["p50_ms"] > 0 and summary["p95_ms"] >= summary["p50_ms"]
    assert summary["rows_per_s"] > 0
    assert spark.read.parquet(str(tmp_path / "out")).count() == n


def test_stream_user_errors_exit_2_with_one_line(trained_dir, tmp_path, capsys):
    inbox = tmp_path / "in"
    inbox.mkdir()
    common = ["--out", str(tmp_path / "out"), "--available-now"]

    def run(*argv: str) -> str:
        assert main(["stream", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    assert "model" in run(str(tmp_path / "nope"), "--input", str(inbox), "--checkpoint",
                          str(tmp_path / "c0"), *common)
    assert "does not exist" in run(str(trained_dir), "--input", str(tmp_path / "missing"),
                                   "--checkpoint", str(tmp_path / "c1"), *common)
    assert "--format" in run(str(trained_dir), "--input", str(inbox), "--checkpoint",
                             str(tmp_path / "c2"), "--format", "jpeg", *common)
    assert "--backend" in run(str(trained_dir), "--input", str(inbox), "--checkpoint",
                              str(tmp_path / "c2"), "--backend", "tensorrt", *common)
    other = tmp_path / "other-ckpt"
    (other / "offsets").mkdir(parents=True)
    assert "checkpoint" in run(str(trained_dir), "--input", str(inbox), "--checkpoint",
                               str(other), *common)
    # a checkpoint claimed by one stream cannot serve another input
    from sparkvision.streaming.query import StreamSpec, claim_checkpoint

    claim_checkpoint(str(tmp_path / "c3"), StreamSpec(str(tmp_path / "elsewhere"), "x"))
    assert "belongs to the stream" in run(str(trained_dir), "--input", str(inbox),
                                          "--checkpoint", str(tmp_path / "c3"), *common)
