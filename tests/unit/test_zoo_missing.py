"""Without the zoo (timm, torchvision, onnx2torch not installed: the default environment),
timm:, torchvision: and onnx: networks are one error naming the install, through the API
and the CLI, before any JVM starts; `sparkvision models` lists the built-in networks."""

from __future__ import annotations

import importlib.util
import json

import pytest

from sparkvision.cli import main
from sparkvision.errors import SparkVisionError

INSTALL = "pip install 'sparkvision[zoo]'"
NAMES = ["timm:resnet18", "torchvision:mobilenet_v3_small", "onnx:{onnx}"]


@pytest.fixture(autouse=True)
def _no_zoo():
    if any(importlib.util.find_spec(p) for p in ("timm", "torchvision", "onnx2torch")):
        pytest.skip("a zoo package is installed here (tests/zoo covers it)")


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(b"\x08\x07")
    return path


def _spark_context():
    from pyspark import SparkContext

    return SparkContext._active_spark_context


@pytest.fixture
def no_new_jvm():
    """The command under test starts no Spark (in a whole-suite run another test's session
    may already be up: then it must be the same one afterwards)."""
    before = _spark_context()
    yield
    assert _spark_context() is before


@pytest.mark.parametrize("template", NAMES)
def test_zoo_names_need_the_zoo_through_the_api(template, onnx_file):
    from sparkvision.ml.classifier import ImageClassifier
    from sparkvision.models.registry import build_model

    name = template.format(onnx=onnx_file)
    with pytest.raises(SparkVisionError) as err:
        ImageClassifier(model=name, imageShape=[32, 32, 3]).validateParams()
    message = str(err.value)
    assert INSTALL in message and repr(name) in message and "\n" not in message
    with pytest.raises(SparkVisionError, match="sparkvision\\[zoo\\]"):
        build_model(name, 2, (32, 32, 3))


@pytest.mark.parametrize("template", NAMES)
def test_zoo_names_need_the_zoo_through_the_cli(template, onnx_file, tmp_path, capsys,
                                                 no_new_jvm):
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({
        "classes": ["a", "b"], "image_shape": [32, 32, 3],
        "splits": {"train": 8, "val": 0, "test": 0}}))
    name = template.format(onnx=onnx_file)
    assert main(["train", str(data), "--out", str(tmp_path / "m"), "--model", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparkvision train: error:") and INSTALL in err[0]


def test_models_lists_the_built_in_networks_and_how_to_get_the_zoo(capsys, no_new_jvm):
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == ["builtin (4):", "  cnn", "  simple_cnn", "  lenet5", "  resnet8"]
    assert len(out) == 6 and INSTALL in out[5]
    assert main(["models", "--filter", "*net*", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["models"] == {"builtin": ["lenet5", "resnet8"]} and INSTALL in payload["zoo"]
