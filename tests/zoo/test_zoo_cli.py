"""The CLI with the zoo: `sparkvision models` lists and filters zoo names without Spark,
and a bad zoo network name is one line, exit 2, before any JVM starts."""

from __future__ import annotations

import json

import pytest

from sparkvision.cli import main

pytestmark = pytest.mark.zoo


def _no_jvm() -> bool:
    from pyspark import SparkContext

    return SparkContext._active_spark_context is None


def test_models_filter_lists_matching_zoo_names(capsys):
    assert main(["models", "--filter", "*resnet18*"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "  timm:resnet18" in lines and "  torchvision:resnet18" in lines
    assert "  timm:vit_tiny_patch16_224" not in lines and "  cnn" not in lines
    assert main(["models", "--filter", "torchvision:mobilenet*", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["models"] == {"torchvision": ["torchvision:mobilenet_v2",
                                                 "torchvision:mobilenet_v3_large",
                                                 "torchvision:mobilenet_v3_small"]}
    assert payload["count"] == 3 and "zoo" not in payload
    assert _no_jvm()


def test_models_show_gives_the_pretrained_config(capsys):
    assert main(["models", "--show", "timm:resnet18", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["input_size"] == [3, 224, 224] and payload["mean"] == [0.485, 0.456, 0.406]
    assert main(["models", "--show", "timm:resnt18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "closest: timm:resnet18" in err[0], err


@pytest.fixture
def prepared(tmp_path):
    """A prepared folder's dataset.json alone: enough for train to check its flags."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps({
        "classes": ["a", "b"], "image_shape": [32, 32, 3],
        "splits": {"train": 8, "val": 0, "test": 0}}))
    return folder


@pytest.mark.parametrize("model, needle", [
    ("timm:resnt18", "closest: timm:resnet18"),
    ("torchvision:resnet181", "torchvision has no architecture 'resnet181'"),
])
def test_train_with_a_bad_zoo_name_is_one_line_before_spark(prepared, tmp_path, capsys,
                                                            model, needle):
    assert main(["train", str(prepared), "--out", str(tmp_path / "m"), "--model", model]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparkvision train: error: invalid model=")
    assert needle in err[0]
    assert _no_jvm()
