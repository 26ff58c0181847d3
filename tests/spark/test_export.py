"""Export (ONNX, TorchScript) and the inferenceBackend Param: the exported files and both
backends give ``transform``'s predictions on the digits test split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sparkvision import (
    DataError,
    ExportError,
    ImageClassificationModel,
    InvalidParameterError,
    MissingDependencyError,
    SparkVisionError,
)
from sparkvision.cli import export as export_command
from sparkvision.cli import main
from sparkvision.models import export as export_module
from sparkvision.models.weights import state_dict_bytes
from tests import nets

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")


def readme_snippet() -> str:
    """The first Python block of the docs page "Export and serving outside Spark"
    (docs/guides/export.md, moved there from the README)."""
    page = Path(__file__).resolve().parents[2] / "docs/guides/export.md"
    readme = page.read_text(encoding="utf-8")
    section = readme[readme.index("# Export and serving outside Spark"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


def _collect(preds) -> dict[str, np.ndarray]:
    rows = preds.orderBy("path").select(
        "path", "image", "prediction", "predictedLabel", "probability", "rawPrediction"
    ).collect()
    return {
        "images": np.stack([np.frombuffer(r.image, np.uint8) for r in rows]),
        "prediction": np.array([r.prediction for r in rows]),
        "label": np.array([r.predictedLabel for r in rows]),
        "probability": np.array([r.probability.toArray() for r in rows]),
        "raw": np.array([r.rawPrediction.toArray() for r in rows]),
    }


@pytest.fixture(scope="module")
def by_backend(trained, digits):
    """The test split's predictions with each backend, rows in path order."""
    model = trained[0]
    test = digits[2]
    out = {backend: _collect(model.copy().setInferenceBackend(backend).transform(test))
           for backend in ("torch", "onnxruntime", "auto")}
    h, w, c = model.getImageShape()
    out["images"] = out["torch"]["images"].reshape(-1, h, w, c)
    return out


def test_backends_agree(by_backend, trained):
    assert trained[0].getInferenceBackend() == "auto"  # the default
    t, o, a = by_backend["torch"], by_backend["onnxruntime"], by_backend["auto"]
    assert len(t["prediction"]) > 100
    assert np.array_equal(t["prediction"], o["prediction"])
    assert np.array_equal(t["label"], o["label"])
    assert np.abs(t["probability"] - o["probability"]).max() < 1e-5
    assert np.abs(t["raw"] - o["raw"]).max() < 1e-4
    assert np.allclose(o["probability"].sum(axis=1), 1.0, atol=1e-12)
    assert np.array_equal(a["prediction"], o["prediction"])  # auto runs onnxruntime here
    assert np.abs(a["probability"] - o["probability"]).max() < 1e-12


def test_exported_files_give_transforms_predictions(trained, by_backend, tmp_path):
    model = trained[0]
    images, ref = by_backend["images"], by_backend["torch"]
    onnx_path = model.export(str(tmp_path / "m.onnx"))  # format onnx, output probability
    ts_path = model.export(str(tmp_path / "m.pt"), format="torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.onnx", "m.onnx.json", "m.pt", "m.pt.json"]  # no temporary files left

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].type == "tensor(uint8)"
    onnx_p = session.run(["probability"], {"image": images})[0]
    ts_p = torch.jit.load(ts_path)(torch.from_numpy(images)).numpy()
    for got in (onnx_p, ts_p):
        assert got.dtype == np.float32 and got.shape == ref["probability"].shape
        assert np.array_equal(got.argmax(axis=1), ref["prediction"])
        assert np.abs(got - ref["probability"]).max() < 1e-4

    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["classes"] == model.getClasses() == [str(i) for i in range(10)]
    assert meta["input_shape"] == model.getImageShape() == [8, 8, 1]
    assert (meta["input_dtype"], meta["input_layout"], meta["input_name"]) == (
        "uint8", "NHWC", "image")
    assert (meta["output_name"], meta["format"], meta["model"]) == (
        "probability", "onnx", "cnn")
    assert meta["weights_sha1"] == hashlib.sha1(model.weights).hexdigest()
    assert meta["opset"] == 17
    ts_meta = json.loads((tmp_path / "m.pt.json").read_text())
    assert ts_meta["format"] == "torchscript" and ts_meta["classes"] == meta["classes"]

    logits_path = model.export(str(tmp_path / "logits.onnx"), output="logits")
    raw = ort.InferenceSession(logits_path).run(["logits"], {"image": images})[0]
    assert np.abs(raw - ref["raw"]).max() < 1e-4


def test_readme_snippet_serves_the_onnx_file(trained, by_backend, tmp_path, monkeypatch):
    trained[0].export(str(tmp_path / "model.onnx"))
    np.save(tmp_path / "images.npy", by_backend["images"])
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_snippet(), "README-snippet", "exec"), scope)
    ref = by_backend["torch"]
    assert scope["labels"] == list(ref["label"])
    assert np.abs(scope["probability"] - ref["probability"]).max() < 1e-4


def test_export_and_backend_errors(trained, digits, tmp_path, monkeypatch):
    model = trained[0]
    with pytest.raises(InvalidParameterError, match="use onnx or torchscript"):
        model.export(str(tmp_path / "m.pkl"), format="pickle")
    assert not list(tmp_path.iterdir())

    bad = model.copy().setInferenceBackend("nosuch")
    with pytest.raises(InvalidParameterError, match="inferenceBackend='nosuch'"):
        bad.validateParams()
    with pytest.raises(InvalidParameterError, match="auto, torch, onnxruntime"):
        bad.transform(digits[2])

    # onnxruntime missing on the driver: the error names the fix before any job runs
    monkeypatch.setattr(export_module, "missing_onnx_packages",
                        lambda runtime=True: ["onnxruntime"])
    explicit = model.copy().setInferenceBackend("onnxruntime")
    with pytest.raises(MissingDependencyError, match=r"pip install 'sparkvision\[onnx\]'"):
        explicit.transform(digits[2])
    with pytest.raises(MissingDependencyError, match="onnxruntime"):
        model.export(str(tmp_path / "m.onnx"))


def test_a_network_onnx_cannot_export(spark, digits, tmp_path):
    """ONNX export names the network; TorchScript works; auto falls back to torch."""
    name = "tests.nets:spectral"
    net = nets.spectral(10, (8, 8, 1))
    model = ImageClassificationModel(
        weights=state_dict_bytes(net), model=name, imageShape=[8, 8, 1],
        classes=[str(i) for i in range(10)],
    )
    with pytest.raises(ExportError, match=r"network 'tests.nets:spectral'.*torchscript"):
        model.export(str(tmp_path / "s.onnx"))
    assert isinstance(ExportError("x"), SparkVisionError)
    assert not (tmp_path / "s.onnx").exists() and not (tmp_path / "s.onnx.json").exists()
    model.export(str(tmp_path / "s.pt"), format="torchscript")
    assert (tmp_path / "s.pt.json").exists()

    test = digits[2].limit(40)
    auto = _collect(model.transform(test))
    forced = _collect(model.copy().setInferenceBackend("torch").transform(test))
    assert np.array_equal(auto["prediction"], forced["prediction"])
    assert np.abs(auto["probability"] - forced["probability"]).max() < 1e-12


def test_executor_runner_choice(monkeypatch, caplog):
    """What a Python worker builds: auto falls back to torch (one warning) for a network
    torch.onnx cannot export, or when onnxruntime is missing; explicit onnxruntime
    without it names the fix."""
    from sparkvision.config import PredictConfig
    from sparkvision.inference import batch
    from sparkvision.inference.network_cache import TrainedNetwork
    from sparkvision.models import build_model

    def config(name: str, backend: str) -> PredictConfig:
        net = build_model(name, 3, (8, 8, 1))
        return PredictConfig(model=name, num_classes=3, image_shape=(8, 8, 1),
                             weights=state_dict_bytes(net), classes=("a", "b", "c"),
                             backend=backend)

    def build(config: PredictConfig) -> tuple[str, batch.Runner]:
        return batch.build_runner(config, TrainedNetwork.of(config).build())

    monkeypatch.setattr(batch, "_WARNED", [])
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    with caplog.at_level("WARNING", logger="sparkvision.inference.batch"):
        used, run = build(config("tests.nets:spectral", "auto"))
        assert used == "torch" and run(images).shape == (5, 3)
        assert build(config("tests.nets:spectral", "auto"))[0] == "torch"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "tests.nets:spectral" in warnings[0]
    assert build(config("cnn", "auto"))[0] == "onnxruntime"

    monkeypatch.setattr(export_module, "missing_onnx_packages",
                        lambda runtime=True: ["onnxruntime"])
    assert build(config("cnn", "auto"))[0] == "torch"
    with pytest.raises(MissingDependencyError, match=r"pip install 'sparkvision\[onnx\]'"):
        build(config("cnn", "onnxruntime"))


def test_cli_choices_are_the_librarys():
    assert export_command.FORMATS == export_module.FORMATS
    assert export_command.OUTPUTS == export_module.OUTPUTS


def test_cli_export(trained_dir, trained, by_backend, tmp_path, capsys):
    out = tmp_path / "cli" / "model.onnx"
    assert main(["export", str(trained_dir), "--out", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["out"] == str(out) and got["format"] == "onnx" and got["bytes"] > 1000
    assert got["input_shape"] == [8, 8, 1] and len(got["classes"]) == 10
    assert (tmp_path / "cli" / "model.onnx.json").exists()

    ts = tmp_path / "cli" / "model.pt"
    assert main(["export", str(trained_dir), "--format", "torchscript", "--output", "logits",
                 "--out", str(ts)]) == 0
    assert "exported" in capsys.readouterr().out
    raw = torch.jit.load(str(ts))(torch.from_numpy(by_backend["images"])).numpy()
    assert np.abs(raw - by_backend["torch"]["raw"]).max() < 1e-4
    assert json.loads((tmp_path / "cli" / "model.pt.json").read_text())["output_name"] == (
        "logits")


def test_cli_export_and_backend_user_errors(trained_dir, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "weights.safetensors" in err[0]
    assert main(["export", str(trained_dir), "--format", "pickle", "--out",
                 str(tmp_path / "m.pkl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pickle" in err[0] and "onnx" in err[0]
    for command in (["predict", str(trained_dir), str(tmp_path), "--out", "x.parquet"],
                    ["evaluate", str(trained_dir), str(tmp_path)]):
        assert main([*command, "--backend", "nosuch"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "nosuch" in err[0] and "onnxruntime" in err[0]
    assert not list(tmp_path.iterdir())


def test_cli_predict_with_each_backend(trained_dir, digits_dir, spark, tmp_path, capsys):
    preds = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.parquet"
        assert main(["predict", str(trained_dir), str(digits_dir), "--split", "val",
                     "--out", str(out), "--backend", backend, "--json"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] > 0.9
        preds[backend] = [r.prediction for r in
                          spark.read.parquet(str(out)).orderBy("path").collect()]
    assert preds["torch"] == preds["onnxruntime"]


def test_model_without_weights_cannot_export(tmp_path):
    with pytest.raises(DataError, match="no weights"):
        ImageClassificationModel(model="cnn", imageShape=[8, 8, 1], classes=["a", "b"]).export(
            str(tmp_path / "m.onnx"))
