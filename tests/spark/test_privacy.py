"""Differentially private training (Opacus DP-SGD across 2 Spark workers) on real data:
the accuracy a budget buys, the privacy spent, real clipping, reproducibility, errors."""

from __future__ import annotations

import json

import pytest

from sparkvision import ImageClassifier
from sparkvision.cli import main
from sparkvision.errors import InvalidParameterError
from sparkvision.ml.evaluator import ImageClassificationEvaluator

pytestmark = pytest.mark.slow


def _accuracy(model, df) -> float:
    return ImageClassificationEvaluator(metricName="accuracy").evaluate(model.transform(df))


def test_dp_epsilon_8_on_digits_through_the_cli(digits_dir, tmp_path, capsys):
    out = tmp_path / "dp-model"
    assert main(["train", str(digits_dir), "--out", str(out), "--dp-epsilon", "8",
                 "--dp-delta", "1e-5", "--max-grad-norm", "1", "--lr", "0.01",
                 "--epochs", "15", "--workers", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["test_accuracy"] >= 0.85, result["test_accuracy"]
    assert 7.0 < result["epsilon"] <= 8.0 and result["delta"] == 1e-5
    privacy = result["privacy"]
    assert privacy["accountant"] == "rdp" and privacy["max_grad_norm"] == 1.0
    assert privacy["noise_multiplier"] > 0.5 and not privacy["stopped_at_budget"]
    # the global batch over all training rows, not one partition's
    manifest = json.loads((digits_dir / "dataset.json").read_text())
    assert privacy["sample_rate"] == pytest.approx(2 * 64 / manifest["splits"]["train"])
    saved = json.loads((out / "history.json").read_text())
    spent = [e["epsilon"] for e in saved["epochs"]]
    assert spent == sorted(spent) and len(spent) == 15 and spent[-1] == result["epsilon"]
    # the saved model is the network Opacus made private, and it loads and predicts
    meta = json.loads((out / "metadata" / "part-00000").read_text())
    assert meta["paramMap"]["model"] == "dp:cnn"
    assert main(["evaluate", str(out), str(digits_dir), "--out", str(tmp_path / "ev"),
                 "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluation["privacy"]["epsilon"] == result["epsilon"]
    # the report says what the training data is protected by, and ε per epoch
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Differential privacy" in page and f"ε = {result['epsilon']}" in page
    assert "<th>epsilon</th>" in page


def test_clipping_is_real_and_dp_runs_repeat_exactly(spark, digits):
    train, _, test = digits
    sgd = {"numWorkers": 2, "seed": 4, "epochs": 3, "optimizer": "sgd", "learningRate": 0.05,
           "augment": "none"}
    plain = ImageClassifier(**sgd).fit(train)
    # ε so large that the noise is negligible: what is left of DP is the clipping
    clipped = ImageClassifier(privacy="dp", targetEpsilon=1e5, maxGradNorm=1e-4,
                              **sgd).fit(train)
    assert clipped.history.privacy.noise_multiplier < 0.05
    assert _accuracy(plain, test) > 0.8
    assert _accuracy(clipped, test) < 0.5  # steps of at most 1e-4 × lr: barely moved
    dp = {"privacy": "dp", "targetEpsilon": 3.0, "maxGradNorm": 1.0, "numWorkers": 2,
          "seed": 9, "epochs": 1}
    first, second = ImageClassifier(**dp).fit(train), ImageClassifier(**dp).fit(train)
    assert first.weights == second.weights
    assert first.history.privacy.epsilon <= 3.0


def test_bad_privacy_inputs_are_clear_errors(spark, digits, digits_dir, tmp_path, capsys):
    train = digits[0]
    for argv, needle in (
            (["--dp-epsilon", "0"], "targetEpsilon"),
            (["--dp-epsilon", "8", "--dp-delta", "0.01"], "below 1 / training rows"),
            (["--dp-epsilon", "8", "--max-grad-norm", "-1"], "maxGradNorm")):
        assert main(["train", str(digits_dir), "--out", str(tmp_path / "m"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    with pytest.raises(InvalidParameterError, match="Opacus cannot make the network "
                       "'tests.nets:running_scale' private"):
        ImageClassifier(model="tests.nets:running_scale", privacy="dp").fit(train)
