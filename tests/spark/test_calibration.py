"""Calibration on real data (digits): a deliberately over-trained network is over-confident;
``calibration="temperature"`` fits one temperature on the validation split that lowers the
expected calibration error on the test split, and changes no prediction — in ``transform``,
the saved model folder, the exported ONNX graph, a stream and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sparkvision.cli import main
from sparkvision.errors import InvalidParameterError
from tests.spark.test_streaming import drop_images


@pytest.fixture(scope="module")
def overtrained(digits):
    """A network trained far past the point of over-confidence: 300 training images, 40
    epochs at a constant, high learning rate, no weight decay, no augmentation; then its
    temperature fitted on the validation split."""
    from sparkvision import ImageClassifier

    train, val, _ = digits
    small = train.orderBy("path").limit(300).cache()
    clf = ImageClassifier(epochs=40, numWorkers=1, batchSize=32, learningRate=0.01,
                          lrSchedule="constant", weightDecay=0.0, augment="none", seed=0,
                          calibration="temperature", validationDf=val)
    clf.setShowProgress(False)
    return clf.fit(small)


def _rows(predictions):
    return predictions.orderBy("path").select("path", "prediction", "probability",
                                              "rawPrediction").collect()


def test_temperature_lowers_test_ece_and_changes_no_prediction(overtrained, digits):
    from sparkvision.ml.evaluator import ImageClassificationEvaluator, evaluate

    test = digits[2]
    temperature = overtrained.getTemperature()
    assert temperature > 1.0  # over-confident: its logits must be softened
    raw = overtrained.copy({overtrained.temperature: 1.0})
    before, after = evaluate(raw, test), evaluate(overtrained, test)
    print(f"temperature {temperature:.4f}: test ECE {before.ece:.4f} → {after.ece:.4f}, "
          f"log-loss {before.log_loss:.4f} → {after.log_loss:.4f}, accuracy "
          f"{before.accuracy:.4f} → {after.accuracy:.4f}")
    assert after.ece < before.ece
    assert after.accuracy == before.accuracy and after.confusion == before.confusion
    # the bins add up to the test rows; ECE recomputed from them on the driver agrees
    assert sum(b["count"] for b in after.reliability) == after.n == test.count()
    assert len(after.reliability) == 15
    # every row: same prediction and logits, softer probabilities = softmax(logits / T)
    cold, warm = _rows(raw.transform(test)), _rows(overtrained.transform(test))
    for c, w in zip(cold, warm, strict=True):
        assert (c.path, c.prediction) == (w.path, w.prediction)
        assert np.array_equal(c.rawPrediction.toArray(), w.rawPrediction.toArray())
        z = w.rawPrediction.toArray() / temperature
        expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(w.probability.toArray(), expected, rtol=1e-9, atol=1e-12)
        assert w.probability.toArray().max() <= c.probability.toArray().max()
    # the pyspark.ml Evaluator gives the same number, smaller is better
    ece = ImageClassificationEvaluator(metricName="ece")
    assert not ece.isLargerBetter()
    assert ece.evaluate(overtrained.transform(test)) == pytest.approx(after.ece, abs=1e-12)


def test_saved_model_keeps_its_temperature_and_an_old_folder_loads_at_one(overtrained,
                                                                          tmp_path):
    from sparkvision import ImageClassificationModel

    folder = tmp_path / "model"
    overtrained.save(str(folder))
    loaded = ImageClassificationModel.load(str(folder))
    assert loaded.getTemperature() == overtrained.getTemperature()
    assert loaded.getCalibration() == "temperature"
    # a folder written before the temperature existed: no such Param in its metadata
    meta_file = folder / "metadata" / "part-00000"
    meta = json.loads(meta_file.read_text())
    for key in ("paramMap", "defaultParamMap"):
        meta[key].pop("temperature", None)
        meta[key].pop("calibration", None)
    meta_file.write_text(json.dumps(meta) + "\n")
    old = ImageClassificationModel.load(str(folder))
    assert old.getTemperature() == 1.0 and old.getCalibration() == "none"


def test_exported_onnx_probabilities_equal_transform(overtrained, digits, tmp_path):
    import onnxruntime as ort

    test = digits[2]
    path = overtrained.export(str(tmp_path / "model.onnx"))
    sidecar = json.loads(Path(path + ".json").read_text())
    assert sidecar["temperature"] == overtrained.getTemperature()
    rows = overtrained.transform(test).orderBy("path").select(
        "image", "probability", "prediction").collect()
    h, w, c = overtrained.getImageShape()
    images = np.stack([np.frombuffer(r.image, np.uint8).reshape(h, w, c) for r in rows])
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(["probability"], {"image": images})[0]
    want = np.array([r.probability.toArray() for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.array_equal(got.argmax(axis=1), [int(r.prediction) for r in rows])
    # and they are the calibrated ones, not the network's own softmax
    raw = overtrained.copy({overtrained.temperature: 1.0}).transform(test).orderBy("path")
    own = np.array([r.probability.toArray() for r in raw.select("probability").collect()])
    assert np.abs(got - own).max() > 1e-3


def test_stream_serves_calibrated_probabilities(spark, overtrained, digits, tmp_path):
    from sparkvision.streaming import start

    folder = tmp_path / "model"
    overtrained.save(str(folder))
    rows = digits[2].orderBy("path").select("image", "label").limit(12).collect()
    inbox, out = tmp_path / "in", tmp_path / "out"
    written = drop_images(rows, inbox, tuple(overtrained.getImageShape()))
    q = start(str(folder), str(inbox), str(out), str(tmp_path / "ckpt"), available_now=True,
              spark=spark)
    q.awaitTermination(120)
    got = {r.path: r for r in spark.read.parquet(str(out)).collect()}
    assert set(got) == set(written)
    df = spark.createDataFrame([(r.image,) for r in rows], "image BINARY")
    want = [r.probability.toArray() for r in overtrained.transform(df).collect()]
    for path, probability in zip(written, want, strict=True):
        np.testing.assert_allclose(got[path].probability.toArray(), probability, atol=1e-9)


def test_calibration_without_validation_rows_is_refused(digits):
    from sparkvision import ImageClassifier

    with pytest.raises(InvalidParameterError, match="calibration.*validationDf"):
        ImageClassifier(epochs=1, calibration="temperature").fit(digits[0])
    with pytest.raises(InvalidParameterError, match="temperature"):
        ImageClassifier(temperature=0.0).validateInferenceParams()


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_train_calibrate_then_evaluate_json_shows_ece(spark, digits_dir, tmp_path,
                                                          capsys):
    model_dir = tmp_path / "model"
    assert main(["train", str(digits_dir), "--out", str(model_dir), "--epochs", "12",
                 "--workers", "1", "--lr", "0.01", "--lr-schedule", "constant",
                 "--augment", "none", "--calibrate", "temperature", "--json"]) == 0
    trained = _last_json(capsys)
    assert trained["temperature"] != 1.0
    assert main(["evaluate", str(model_dir), str(digits_dir), "--json"]) == 0
    result = _last_json(capsys)
    assert result["temperature"] == trained["temperature"]
    assert 0.0 <= result["ece"] < 0.5
    assert sum(b["count"] for b in result["reliability"]) == result["n"]
    assert (Path(result["out"]) / "reliability.png").stat().st_size > 0
    # no validation split to fit on: one line, exit 2, before any JVM work
    no_val = tmp_path / "no_val"
    shutil.copytree(digits_dir, no_val)
    manifest = json.loads((no_val / "dataset.json").read_text())
    manifest["splits"]["val"] = 0
    (no_val / "dataset.json").write_text(json.dumps(manifest))
    assert main(["train", str(no_val), "--out", str(tmp_path / "m2"), "--calibrate",
                 "temperature"]) == 2
    assert "no val split" in capsys.readouterr().err
