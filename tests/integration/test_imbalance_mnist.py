"""On MNIST with a 10:1 imbalanced training split, over-sampling and class weights each
raise the minority classes' recall above no balancing (through the CLI, real data)."""

from __future__ import annotations

import json

import pytest

from sparkvision.cli import main


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_balancing_beats_none_on_minority_recall(spark, tmp_path, capsys):
    data = tmp_path / "mnist10"
    assert main(["prepare", "mnist", "--out", str(data), "--imbalance", "10", "--json"]) == 0
    prepared = _json(capsys)
    minority = prepared["imbalance"]["minority_classes"]
    assert prepared["per_class"]["train"]["0"] * 9 < prepared["per_class"]["train"]["9"]
    recall = {}
    for balance in ("none", "oversample", "weights"):
        model = tmp_path / f"model-{balance}"
        assert main(["train", str(data), "--out", str(model), "--epochs", "3",
                     "--balance", balance, "--json"]) == 0
        trained = _json(capsys)
        assert trained["balance"]["strategy"] == balance
        assert main(["evaluate", str(model), str(data), "--no-plots", "--json"]) == 0
        metrics = _json(capsys)
        recall[balance] = sum(metrics["per_class"][c]["recall"] for c in minority) / len(minority)
    assert recall["oversample"] > recall["none"]
    assert recall["weights"] > recall["none"]
