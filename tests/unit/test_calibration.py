"""Temperature scaling and ECE without Spark: the fitted temperature, the exported graph's
division by it, and the reliability bins' ECE formula."""

from __future__ import annotations

import numpy as np
import pytest

from sparkvision.errors import DataError, InvalidParameterError
from sparkvision.evaluation.calibration import (
    ReliabilityBin,
    expected_calibration_error,
    fit_temperature,
)


def _overconfident(n: int = 4000, k: int = 5, true_t: float = 3.0, seed: int = 0):
    """Logits whose labels were drawn from softmax(logits / true_t): the right temperature
    is ``true_t``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, k))
    p = np.exp(logits / true_t)
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return logits, labels


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with():
    logits, labels = _overconfident()
    fit = fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(3.0, rel=0.1)
    assert fit.nll_after < fit.nll_before
    assert fit.rows == len(labels)
    # a neighbouring temperature is no better: the minimum was found
    from sparkvision.evaluation.calibration import _nll

    for t in (fit.temperature * 0.9, fit.temperature * 1.1):
        assert _nll(logits, labels, t) > fit.nll_after


def test_fit_temperature_of_calibrated_logits_stays_near_one():
    logits, labels = _overconfident(true_t=1.0, seed=1)
    assert fit_temperature(logits, labels).temperature == pytest.approx(1.0, rel=0.1)


def test_fit_temperature_refuses_no_rows_and_foreign_labels():
    with pytest.raises(DataError, match="non-empty validation split"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(DataError, match="not a class"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))


def test_ece_is_the_row_weighted_gap_between_accuracy_and_confidence():
    bins = [ReliabilityBin(0.0, 0.5, 0, None, None),
            ReliabilityBin(0.5, 0.75, 10, 0.6, 0.5),   # gap 0.1 on 10 rows
            ReliabilityBin(0.75, 1.0, 30, 0.9, 0.7)]   # gap 0.2 on 30 rows
    assert expected_calibration_error(bins) == pytest.approx((10 * 0.1 + 30 * 0.2) / 40)
    assert expected_calibration_error([ReliabilityBin(0, 1, 0, None, None)]) is None


def test_serving_module_divides_the_logits_by_the_temperature():
    import torch

    from sparkvision.models.export import ServingModule

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    images = torch.randint(0, 256, (3, 2, 2, 3), dtype=torch.uint8)
    logits = ServingModule(net, "logits")(images)
    hot = ServingModule(net, "probability", temperature=2.5)(images)
    assert torch.allclose(hot, torch.softmax(logits / 2.5, dim=1), atol=1e-6)
    assert torch.equal(hot.argmax(1), logits.argmax(1))
    # logits are the network's own whatever the temperature
    assert torch.equal(ServingModule(net, "logits", temperature=2.5)(images), logits)
    with pytest.raises(InvalidParameterError, match="temperature"):
        ServingModule(net, "probability", temperature=0.0)


def test_result_struct_softens_probabilities_and_keeps_the_prediction():
    import pyarrow as pa

    from sparkvision.inference.batch import result_struct

    logits = np.array([[4.0, 1.0, 0.0], [0.0, 0.5, 3.0]], dtype=np.float32)
    classes = pa.array(["a", "b", "c"])
    cold = result_struct(logits, classes).to_pylist()
    warm = result_struct(logits, classes, 2.0).to_pylist()
    z = logits.astype(np.float64) / 2.0
    expected = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    for c, w, e in zip(cold, warm, expected, strict=True):
        assert w["prediction"] == c["prediction"] and w["predictedLabel"] == c["predictedLabel"]
        assert w["rawPrediction"] == c["rawPrediction"]
        np.testing.assert_allclose(w["probability"], e, rtol=1e-12)
        assert w["confidence"] < c["confidence"]
