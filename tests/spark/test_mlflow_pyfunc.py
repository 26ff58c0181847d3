"""``train --mlflow --register NAME``: the model is logged as an MLflow pyfunc (the exported
ONNX graph, logged as code: no pickle) and registered; ``mlflow.pyfunc.load_model`` and
``mlflow.pyfunc.spark_udf`` predict what ``ImageClassificationModel.transform`` does."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sparkvision.cli import main

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("onnxruntime")

NAME = "digits-cnn"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-pyfunc")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    return {"uri": uri, "root": root,
            "flags": ["--mlflow", uri, "--mlflow-experiment", "pyfunc-tests",
                      "--mlflow-artifacts", str(root / "artifacts")]}


@pytest.fixture(scope="module")
def logged(digits_dir, store):
    """`sparkvision train --mlflow … --register digits-cnn`: 1 epoch, 1 worker."""
    out = store["root"] / "model"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["train", str(digits_dir), "--out", str(out), "--epochs", "1",
                     "--workers", "1", "--model", "simple_cnn", "--register", NAME,
                     "--json", *store["flags"]])
    assert code == 0
    return json.loads(buffer.getvalue().strip().splitlines()[-1]), out


@pytest.fixture
def tracking_uri(store):
    """MLflow's global tracking URI (what load_model and spark_udf resolve models:/ with)
    set to the test store, then unset."""
    mlflow.set_tracking_uri(store["uri"])
    yield store["uri"]
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def expected(spark, logged, digits_dir):
    """``transform`` on the test split: path → (prediction, probability), and the images."""
    from sparkvision import ImageClassificationModel, load_prepared

    model = ImageClassificationModel.load(str(logged[1]))
    test = load_prepared(spark, str(digits_dir), "test")
    rows = model.transform(test).select("path", "image", "prediction", "probability") \
        .toPandas()
    assert len(rows) > 150  # 10% of 1,797
    rows["probability"] = rows["probability"].map(lambda v: np.asarray(v.toArray()))
    return rows.set_index("path")


def _check_equal(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(got) == len(expected)
    np.testing.assert_array_equal(got["prediction"].to_numpy(),
                                  expected.loc[got.index, "prediction"].to_numpy())
    np.testing.assert_allclose(np.stack(got["probability"].map(np.asarray).to_list()),
                               np.stack(expected.loc[got.index, "probability"].to_list()),
                               atol=1e-5, rtol=0)


def test_train_logs_a_registered_pyfunc_of_the_onnx_graph_without_pickle(logged, store):
    payload, _ = logged
    uri = payload["mlflow_model_uri"]
    assert uri.startswith("models:/") and payload["mlflow_model_version"] == 1
    client = mlflow.MlflowClient(tracking_uri=store["uri"])
    version = client.get_model_version(NAME, "1")
    assert version.source == uri and version.run_id == payload["mlflow_run_id"]
    model_id = uri.removeprefix("models:/")
    logged_model = client.get_logged_model(model_id)
    run = client.get_run(payload["mlflow_run_id"])
    assert logged_model.experiment_id == run.info.experiment_id  # the run's, not Default
    assert logged_model.source_run_id == run.info.run_id
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    files = {a.path for a in client.list_logged_model_artifacts(model_id)}
    files |= {a.path for a in client.list_logged_model_artifacts(model_id, "artifacts")}
    assert {"MLmodel", "pyfunc_model.py", "input_example.json", "requirements.txt",
            "artifacts/model.onnx", "artifacts/model.onnx.json"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]


def test_pyfunc_load_model_predicts_what_transform_does(logged, expected, tracking_uri):
    pyfunc = mlflow.pyfunc.load_model(logged[0]["mlflow_model_uri"])
    schema = pyfunc.metadata.get_input_schema()
    assert schema.input_names() == ["image"]
    assert pyfunc.metadata.get_output_schema().input_names() == [
        "prediction", "predictedLabel", "confidence", "probability"]
    frame = pd.DataFrame({"image": expected["image"].to_list()}, index=expected.index)
    got = pyfunc.predict(frame)
    got.index = expected.index
    _check_equal(got, expected)
    assert (got["predictedLabel"] == got["prediction"].astype(int).astype(str)).all()
    # the input example it was logged with runs through it too
    example = mlflow.models.Model.load(logged[0]["mlflow_model_uri"]) \
        .load_input_example(mlflow.artifacts.download_artifacts(logged[0]["mlflow_model_uri"]))
    assert len(pyfunc.predict(example)) == 1
    with pytest.raises(Exception, match=r"shape \[8, 8, 1\]"):
        pyfunc.predict(pd.DataFrame({"image": [b"\x00" * 10]}))


def _docs_snippet() -> str:
    """The Python block of docs/guides/mlflow.md ("Serving the model with MLflow")."""
    page = (Path(__file__).resolve().parents[2] / "docs/guides/mlflow.md").read_text()
    return page.split("## Serving the model with MLflow", 1)[1] \
        .split("```python\n", 1)[1].split("```", 1)[0]


def test_docs_spark_udf_predicts_what_transform_does(spark, logged, expected, digits_dir,
                                                     store, monkeypatch):
    """The docs' block, run where its ``sqlite:///mlruns.db`` is the test store: the
    registered version through ``load_model`` and ``spark_udf`` on the test split."""
    from sparkvision import load_prepared

    monkeypatch.chdir(store["root"])
    scope = {"spark": spark, "test": load_prepared(spark, str(digits_dir), "test")}
    try:
        exec(compile(_docs_snippet(), "docs/guides/mlflow.md", "exec"), scope)  # noqa: S102
    finally:
        mlflow.set_tracking_uri(None)
    assert list(scope["predictions"].columns) == [
        "prediction", "predictedLabel", "confidence", "probability"]
    assert len(scope["predictions"]) == 8
    rows = scope["scored"].toPandas().set_index("path")
    assert list(rows.columns) == ["prediction", "predictedLabel", "confidence", "probability"]
    _check_equal(rows, expected)


def test_register_without_mlflow_is_a_one_line_error_before_spark(tmp_path, capsys):
    code = main(["train", str(tmp_path / "no-data"), "--out", str(tmp_path / "m"),
                 "--register", NAME])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--mlflow" in err[0], err


def test_a_torchscript_graph_logs_and_predicts_the_same(logged, expected, store,
                                                       tracking_uri, tmp_path):
    """``log_pyfunc`` over the TorchScript export (what `train --mlflow` logs where ONNX is
    missing or cannot export the network): the same predictions, torch in the pyfunc."""
    from sparkvision import ImageClassificationModel
    from sparkvision.tracking.mlflow_run import MlflowRun
    from sparkvision.tracking.serving import log_pyfunc, pip_requirements

    model = ImageClassificationModel.load(str(logged[1]))
    graph = model.export(str(tmp_path / "model.pt"), format="torchscript")
    frame = pd.DataFrame({"image": expected["image"].to_list()}, index=expected.index)
    with MlflowRun.start(store["uri"], "pyfunc-tests", "torchscript") as run:
        served = log_pyfunc(run, graph, graph + ".json", frame.head(2), register=NAME)
    assert served.registered_version == 2  # the CLI's is 1
    assert any(r.startswith("torch==") for r in pip_requirements("torchscript"))
    got = mlflow.pyfunc.load_model(served.model_uri).predict(frame)
    got.index = expected.index
    _check_equal(got, expected)
