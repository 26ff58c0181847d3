"""``--mlflow``: train, evaluate and tune runs in a SQLite tracking store, read back with
``mlflow.MlflowClient``; mlflow untouched without the flag; a clear error without mlflow."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import pytest

from sparkvision.cli import main
from sparkvision.cli.mlflow_flags import evaluation_metrics

mlflow = pytest.importorskip("mlflow")

EXPERIMENT = "sparkvision-tests"


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A SQLite tracking store and an artefact folder, both in a temporary folder."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    flags = ["--mlflow", uri, "--mlflow-experiment", EXPERIMENT,
             "--mlflow-artifacts", str(root / "artifacts")]
    return {"uri": uri, "flags": flags, "root": root}


@pytest.fixture(scope="module")
def client(store):
    return mlflow.MlflowClient(tracking_uri=store["uri"])


@pytest.fixture(scope="module")
def trained_run(digits_dir, store, tmp_path_factory):
    """`sparkvision train --mlflow`: 2 epochs on 1 worker; (payload, model folder)."""
    out = tmp_path_factory.mktemp("mlflow-model") / "model"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["train", str(digits_dir), "--out", str(out), "--epochs", "2",
                     "--workers", "1", "--model", "simple_cnn", "--json", *store["flags"]])
    assert code == 0
    return json.loads(buffer.getvalue().strip().splitlines()[-1]), out


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_train_logs_params_epochs_as_they_end_and_the_model(trained_run, client, store,
                                                            digits_dir):
    payload, out = trained_run
    run = client.get_run(payload["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith(str(store["root"] / "artifacts"))
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    params = run.data.params
    assert params["model"] == "simple_cnn" and params["epochs"] == "2"
    assert params["numWorkers"] == "1" and params["world_size"] == "1"
    assert params["data"] == str(digits_dir) and params["out"] == str(out)
    assert json.loads(params["classes"]) == [str(i) for i in range(10)]
    assert float(params["learningRate"]) > 0
    assert run.data.tags["sparkvision.command"] == "train"

    history = json.loads((out / "history.json").read_text())["epochs"]
    val = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in val] == [1, 2]
    assert [m.value for m in val] == pytest.approx([e["val_accuracy"] for e in history])
    for key in ("train_loss", "train_accuracy", "val_loss", "lr", "seconds",
                "samples_per_second"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    # Logged as the epochs ended (the driver's onEpochEnd), not all at once at the end.
    gap_ms = val[1].timestamp - val[0].timestamp
    assert gap_ms >= 500 * history[1]["seconds"], (gap_ms, history[1]["seconds"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(payload["test_accuracy"])

    model_files = _artifacts(client, run.info.run_id, "model")
    assert {"model/weights.safetensors", "model/history.json", "model/metadata"} <= model_files


def test_evaluate_logs_the_metrics_of_metrics_json(trained_run, client, digits_dir, tmp_path,
                                                   store, capsys):
    _, model = trained_run
    out = tmp_path / "eval"
    assert main(["evaluate", str(model), str(digits_dir), "--split", "test", "--out", str(out),
                 "--json", *store["flags"]]) == 0
    payload = _json(capsys)
    run = client.get_run(payload["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    metrics = json.loads((out / "metrics.json").read_text())
    expected = evaluation_metrics(metrics)
    assert "class_3_f1" in expected and "macro_roc_auc" in expected and "log_loss" in expected
    assert run.data.metrics == pytest.approx(expected)
    assert run.data.params["split"] == "test" and run.data.params["top_k"] == "5"
    assert "metrics.json" in _artifacts(client, run.info.run_id)
    plots = _artifacts(client, run.info.run_id, "plots")
    assert "plots/confusion_matrix.png" in plots
    assert len(plots) == len(payload["plots"])


def test_tune_nests_one_run_per_trial_under_the_study_run(digits_dir, client, store, tmp_path,
                                                         capsys):
    out = tmp_path / "study"
    space = '{"learningRate": [0.003, 0.01]}'
    assert main(["tune", str(digits_dir), "--out", str(out), "--strategy", "grid",
                 "--space", space, "--epochs", "1", "--workers", "1", "--parallel", "2",
                 "--model", "simple_cnn", "--json", *store["flags"]]) == 0
    result = _json(capsys)
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["strategy"] == "grid"
    assert parent.data.params["metric"] == "val_accuracy"
    assert json.loads(parent.data.params["space"]) == json.loads(space)
    assert parent.data.metrics["best_value"] == pytest.approx(result["best_value"])
    assert "trials.json" in _artifacts(client, parent.info.run_id)
    assert "plots/optimization_history.png" in _artifacts(client, parent.info.run_id, "plots")

    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    trials = {t["number"]: t for t in json.loads((out / "trials.json").read_text())}
    assert sorted(float(c.data.params["learningRate"]) for c in children) == [0.003, 0.01]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["state"] == "complete"
        trial = trials[int(child.data.tags["trial"])]
        curve = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in curve] == [1]
        assert [m.value for m in curve] == pytest.approx(trial["metric_per_epoch"])


class _ImportRecorder:
    """A meta-path finder that records every attempt to import ``mlflow`` (even one
    guarded by ``try/except ImportError``) and lets it go on."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if name == "mlflow" or name.startswith("mlflow."):
            self.seen.append(name)
        return None


def test_without_the_flag_mlflow_is_never_imported(digits_dir, tmp_path, monkeypatch,
                                                   capsys):
    """A whole `sparkvision train` with mlflow hidden from sys.modules: no import of it."""
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)  # put back after the test
    recorder = _ImportRecorder()
    monkeypatch.setattr(sys, "meta_path", [recorder, *sys.meta_path])
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(digits_dir), "--out", str(tmp_path / "m"), "--epochs", "1",
                 "--workers", "1", "--model", "simple_cnn", "--json"]) == 0
    assert "mlflow_run_id" not in _json(capsys)
    assert recorder.seen == [] and "mlflow" not in sys.modules
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("command", ["train", "evaluate", "tune"])
def test_missing_mlflow_is_a_one_line_error_before_spark(command, monkeypatch, tmp_path,
                                                         capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails
    argv = {
        "train": ["train", str(tmp_path / "no-data"), "--out", str(tmp_path / "m")],
        "evaluate": ["evaluate", str(tmp_path / "no-model"), str(tmp_path / "no-data")],
        "tune": ["tune", str(tmp_path / "no-data"), "--out", str(tmp_path / "s"),
                 "--space", '{"batchSize": [32]}'],
    }[command]
    code = main([*argv, "--mlflow", f"sqlite:///{tmp_path / 'x.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "pip install 'sparkvision[mlflow]'" in err[0] and "--mlflow" in err[0]
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "m").exists()


def test_a_tracking_uri_mlflow_cannot_use_exits_2(tmp_path, capsys):
    code = main(["train", str(tmp_path / "no-data"), "--out", str(tmp_path / "m"),
                 "--mlflow", "nosuchscheme://host/x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nosuchscheme://host/x" in err[0], err


def test_mlflow_run_flattens_params_skips_none_and_nests(store, client):
    from sparkvision.tracking.mlflow_run import MAX_PARAM_LENGTH, MlflowRun

    with pytest.raises(RuntimeError), MlflowRun.start(store["uri"], EXPERIMENT, "unit") as run:
        run.log_params({"shape": [28, 28, 1], "opts": {"a": 1}, "none": None,
                        "long": "x" * (MAX_PARAM_LENGTH + 10), "bad key?": 1})
        assert run.log_epoch({"epoch": 1, "train_loss": 0.5, "val_loss": None, "lr": 0.1})
        assert not run.log_epoch({"epoch": 1, "train_loss": 9.0})  # a repeat: skipped
        run.log_metrics({"class_a b_f1": 0.5, "text": "no", "flag": True})
        child = run.child("inner", {"trial": 3})
        child.end("KILLED")
        raise RuntimeError("boom")
    got = client.get_run(run.run_id)
    params = got.data.params
    assert params["shape"] == "[28,28,1]" and params["opts"] == '{"a":1}'
    assert params["none"] == "None" and params["bad key_"] == "1"
    assert len(params["long"]) == MAX_PARAM_LENGTH and params["long"].endswith("...")
    assert run.metric_history("train_loss") == [(1, 0.5)]
    assert "val_loss" not in got.data.metrics and set(got.data.metrics) == {
        "train_loss", "lr", "class_a b_f1"}
    assert got.info.status == "FAILED" and got.data.tags["error"] == "RuntimeError: boom"
    inner = client.get_run(child.run_id)
    assert inner.info.status == "KILLED" and inner.data.tags["mlflow.parentRunId"] == run.run_id
