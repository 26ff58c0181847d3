"""The documented promise: default settings on `prepare mnist` reach >= 0.97 test accuracy."""

from __future__ import annotations

import json

import pytest

from sparkvision.cli import main


@pytest.mark.slow
def test_default_training_on_mnist_reaches_97_percent(spark, tmp_path, capsys):
    data, model = tmp_path / "mnist", tmp_path / "model"
    assert main(["prepare", "mnist", "--out", str(data)]) == 0
    assert main(["train", str(data), "--out", str(model), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["epochs"] == 10
    assert result["test_accuracy"] >= 0.97, result
