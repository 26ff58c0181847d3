"""``ImageFeaturizer``: features of a network trained on MNIST feed MLlib's
LogisticRegression on digits in a Pipeline (saved and reloaded); the features equal a
plain PyTorch forward with a hook; errors on the driver; `sparkvision featurize`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.linalg import DenseVector, VectorUDT

from sparkvision import (
    ImageFeaturizer,
    InvalidParameterError,
    load_prepared,
)
from sparkvision.cli import main
from sparkvision.ml.evaluator import ImageClassificationEvaluator
from sparkvision.models import build_model
from sparkvision.models.weights import load_state_dict_bytes

SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def mnist_model(mnist_model_dir):
    """``cnn`` trained 3 epochs on 2 workers on the built-in MNIST (28x28x1; conftest)."""
    from sparkvision import ImageClassificationModel

    return ImageClassificationModel.load(str(mnist_model_dir))


@pytest.fixture(scope="module")
def model_dir(mnist_model_dir):
    return mnist_model_dir


@pytest.fixture(scope="module")
def digits28(spark, digits28_dir):
    return tuple(load_prepared(spark, str(digits28_dir), s).cache()
                 for s in ("train", "test"))


def _features(df, col: str = "features") -> dict[str, np.ndarray]:
    return {r.path: r[col].toArray() for r in df.select("path", col).collect()}


def _hooked_features(weights: bytes, images: np.ndarray, layer: str,
                     mean: float, std: float) -> np.ndarray:
    """Plain PyTorch: the network with the weights, one forward with a hook on ``layer``
    ("" = the input of the last Linear, the classifier head of ``cnn``), the images
    normalised with the model's statistics."""
    net = build_model("cnn", 10, SHAPE)
    net.load_state_dict(load_state_dict_bytes(weights))
    net.eval()
    got: list[torch.Tensor] = []
    modules = dict(net.named_modules())
    if layer:
        handle = modules[layer].register_forward_hook(
            lambda _m, _i, out: got.append(out.flatten(1)))
    else:
        head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        handle = head.register_forward_pre_hook(lambda _m, inp: got.append(inp[0].flatten(1)))
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        net(x)
    handle.remove()
    return got[0].numpy()


@pytest.mark.slow
def test_mnist_features_feed_logistic_regression_on_digits(mnist_model, digits28, tmp_path):
    """Transfer: a cnn trained on MNIST, frozen, gives features on which MLlib's
    LogisticRegression learns scikit-learn's digits; the Pipeline survives save/load."""
    train, test = digits28
    featurizer = ImageFeaturizer.fromModel(mnist_model)
    assert featurizer.getLayer() == "" and featurizer.featureDimension() == 128
    pipeline = Pipeline(stages=[
        featurizer,
        LogisticRegression(featuresCol="features", labelCol="label", maxIter=200,
                           regParam=0.001),
    ])
    fitted = pipeline.fit(train)
    preds = fitted.transform(test)
    assert set(test.columns) < set(preds.columns)
    assert isinstance(preds.schema["features"].dataType, VectorUDT)
    accuracy = ImageClassificationEvaluator(metricName="accuracy").evaluate(preds)
    print(f"digits test accuracy on MNIST cnn features + LogisticRegression: {accuracy:.4f}")
    assert accuracy >= 0.95

    fitted.write().overwrite().save(str(tmp_path / "pipe"))
    reloaded = PipelineModel.load(str(tmp_path / "pipe"))
    stage = reloaded.stages[0]
    assert isinstance(stage, ImageFeaturizer) and stage.uid == featurizer.uid
    assert stage.weights == mnist_model.weights
    cols = ["path", "prediction", "probability"]
    before = preds.select(*cols).orderBy("path").collect()
    after = reloaded.transform(test).select(*cols).orderBy("path").collect()
    assert after == before


@pytest.mark.parametrize("layer,dim", [("", 128), ("0", 3136)])
def test_features_equal_a_plain_pytorch_forward_with_a_hook(mnist_model, digits28, layer,
                                                            dim):
    test = digits28[1]
    rows = test.select("path", "image").orderBy("path").collect()
    images = np.stack([np.frombuffer(r.image, np.uint8) for r in rows]).reshape(-1, *SHAPE)
    (mean,), (std,) = mnist_model.getInputMean(), mnist_model.getInputStd()
    expected = _hooked_features(mnist_model.weights, images, layer, mean, std)
    featurizer = ImageFeaturizer.fromModel(mnist_model, layer=layer)
    assert featurizer.featureDimension() == dim
    got = _features(featurizer.setInferenceBatchSize(7).transform(test))
    ours = np.stack([got[r.path] for r in rows])
    assert ours.shape == expected.shape == (len(rows), dim)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    if layer == "":  # PNG bytes (prepare --store encoded) give the same features
        def png(b: bytes) -> bytes:
            buf = io.BytesIO()
            Image.fromarray(np.frombuffer(b, np.uint8).reshape(28, 28)).save(buf, "PNG")
            return buf.getvalue()

        encoded = test.sparkSession.createDataFrame(
            [(r.path, png(r.image)) for r in rows], "path string, picture binary")
        out = featurizer.copy().setImageCol("picture").setOutputCol("f").transform(encoded)
        assert out.columns == ["path", "picture", "f"]
        got_png = _features(out, "f")  # other partitions: other batches, float noise only
        assert got_png.keys() == got.keys()
        np.testing.assert_allclose(np.stack([got_png[r.path] for r in rows]), ours,
                                   atol=1e-5, rtol=0)


def test_persistence_and_the_ways_to_make_one(mnist_model, model_dir, digits28, tmp_path):
    test = digits28[1].limit(16)
    featurizer = ImageFeaturizer.fromModel(mnist_model, layer="2").setOutputCol("emb")
    expected = _features(featurizer.transform(test), "emb")
    featurizer.save(str(tmp_path / "f"))
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["metadata",
                                                                 "weights.safetensors"]
    loaded = ImageFeaturizer.load(str(tmp_path / "f"))
    assert loaded.getLayer() == "2" and loaded.getOutputCol() == "emb"
    assert loaded.getImageShape() == list(SHAPE) and loaded.getModel() == "cnn"
    for other in (loaded, ImageFeaturizer.fromModelDir(str(model_dir), layer="2"),
                  ImageFeaturizer(modelDir=str(model_dir), layer="2", outputCol="emb")):
        got = _features(other.transform(test), other.getOutputCol())
        assert got.keys() == expected.keys()
        assert all(np.array_equal(got[p], expected[p]) for p in got)
    with pytest.raises(Exception, match="already saved"):
        featurizer.save(str(tmp_path / "f"))
    weights = tmp_path / "f" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(Exception, match="SHA-256"):
        ImageFeaturizer.load(str(tmp_path / "f"))


def test_errors_are_raised_on_the_driver_before_any_job(spark, mnist_model, digits28):
    test = digits28[1]
    sc = spark.sparkContext
    sc.setJobGroup("featurizer-errors", "no job may run")
    try:
        with pytest.raises(InvalidParameterError, match="layer='nope'") as info:
            ImageFeaturizer.fromModel(mnist_model, layer="nope").transform(test)
        assert info.value.name == "layer" and "named_modules" in str(info.value)
        with pytest.raises(InvalidParameterError, match="imageCol") as info:
            ImageFeaturizer.fromModel(mnist_model).setImageCol("pixels").transform(test)
        assert info.value.name == "imageCol" and "image" in str(info.value)
        with pytest.raises(InvalidParameterError, match="inferenceBatchSize"):
            ImageFeaturizer.fromModel(mnist_model).setInferenceBatchSize(0).transform(test)
        with pytest.raises(Exception, match="no weights"):
            ImageFeaturizer().transform(test)
        assert sc.statusTracker().getJobIdsForGroup("featurizer-errors") == []
    finally:
        sc.setJobGroup(None, None)  # type: ignore[arg-type]


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("SPARK_MASTER", "SPARK_REMOTE", "PYSPARK_SUBMIT_ARGS"):
        env.pop(key, None)
    return env


@pytest.mark.slow
def test_cli_featurize_writes_path_label_features(spark, model_dir, digits28_dir, tmp_path,
                                                  capsys):
    out = tmp_path / "features.parquet"
    assert main(["featurize", str(model_dir), str(digits28_dir), "--split", "test",
                 "--out", str(out), "--json"]) == 0  # in this process: the shared session
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["out"] == str(out) and result["dimension"] == 128 and result["layer"] == ""
    assert result["seconds"] > 0
    written = spark.read.parquet(str(out))
    assert written.columns == ["path", "label", "features"]
    assert result["rows"] == written.count() == load_prepared(
        spark, str(digits28_dir), "test").count()
    row = written.first()
    assert isinstance(row.features, DenseVector) and len(row.features) == 128


def test_cli_errors_exit_2_with_one_line(spark, model_dir, digits28_dir, tmp_path, capsys):
    for argv, needle in (
        (["timm:resnet18", str(digits28_dir)], "no model at timm:resnet18"),
        ([str(tmp_path / "not-a-model"), str(digits28_dir)], "not-a-model"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "sparkvision", "featurize", *argv, "--out",
             str(tmp_path / "x.parquet")], capture_output=True, text=True, timeout=120,
            env=dict(_cli_env(), SPARKVISION_LOG_DIR=str(tmp_path / "logs")))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("sparkvision featurize: error:") and needle in lines[0]
    # an unknown layer: one line, exit 2, and no output written
    assert main(["featurize", str(model_dir), str(digits28_dir), "--layer", "nope", "--out",
                 str(tmp_path / "y.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid layer='nope'" in err[0], err
    assert not (tmp_path / "y.parquet").exists()
