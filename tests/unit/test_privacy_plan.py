"""DP-SGD noise calibration and accounting (Opacus's RDP accountant, no Spark)."""

from __future__ import annotations

import pytest

from sparkvision.errors import InvalidParameterError
from sparkvision.models import build_model
from sparkvision.training.privacy import plan


@pytest.mark.parametrize("epsilon", [8.0, 3.0, 1.0])
def test_noise_is_calibrated_to_end_within_the_budget(epsilon):
    dp = plan(1437, 128, 12, 15, epsilon, 1e-5, 1.0)
    spent = [dp.epsilon_after(epoch * 12) for epoch in range(16)]
    assert spent[0] == 0.0 and spent == sorted(spent)
    assert epsilon - 0.05 < spent[-1] <= epsilon
    assert dp.sample_rate == pytest.approx(128 / 1437)


def test_less_budget_or_more_steps_means_more_noise():
    sigma = {e: plan(5000, 128, 20, 5, e, 1e-5, 1.0).noise_multiplier for e in (8, 3, 1)}
    assert sigma[8] < sigma[3] < sigma[1]
    assert plan(5000, 128, 20, 10, 3, 1e-5, 1.0).noise_multiplier > sigma[3]


def test_opacus_fixes_batch_norm_and_refuses_what_it_cannot_fix():
    net = build_model("dp:cnn", 10, (28, 28, 1))
    kinds = {type(m).__name__ for m in net.modules()}
    assert "GroupNorm" in kinds and "BatchNorm2d" not in kinds
    with pytest.raises(InvalidParameterError, match="privacy.*Opacus cannot make the "
                       "network 'tests.nets:running_scale' private.*buffers"):
        build_model("dp:tests.nets:running_scale", 3, (8, 8, 1))
