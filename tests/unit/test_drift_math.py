"""The drift numbers without Spark: reference deciles, PSI and its chi-square guard, a
window's warning, the live line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_psi_of_a_sample_against_its_reference(shift):
    from sparkvision.evaluation.drift import chi2_p_value, psi, quantile_feature

    rng = np.random.default_rng(0)
    ref = rng.normal(100, 10, 5000)
    fine = np.bincount(np.clip(np.floor(ref / 0.25), 0, 1023).astype(int), minlength=1024)
    feature = quantile_feature("pixel_mean_c0", fine)
    sample = feature.histogram(rng.normal(100 + 10 * shift, 10, 500))
    value = psi(sample, np.asarray(feature.counts))
    p = chi2_p_value(sample, np.asarray(feature.counts))
    if shift:  # one standard deviation: a shift by any rule of thumb
        assert value > 0.2 and p < 1e-6
    else:
        assert value < 0.05 and p > 0.01


def _profile(rng):
    from sparkvision.evaluation.drift import DriftProfile, FeatureProfile, quantile_feature

    def fine(name, values):
        from sparkvision.evaluation.drift import fine_bins

        return np.bincount(fine_bins(name, values), minlength=1025)

    conf = rng.uniform(0.6, 1.0, 2000)
    means = rng.normal(40, 8, 2000)
    stds = rng.normal(30, 4, 2000)
    return DriftProfile(2000, (
        FeatureProfile("class", (1000, 1000)),
        quantile_feature("confidence", fine("confidence", conf)),
        quantile_feature("pixel_mean_c0", fine("pixel_mean_c0", means)[:1024]),
        quantile_feature("pixel_std_c0", fine("pixel_std_c0", stds)[:1024])), "test")


def _batch(rng, n, mean):
    stats = np.stack([rng.normal(mean, 8, n), rng.normal(30, 4, n)], axis=1).astype(np.float32)
    return pa.table({"prediction": rng.integers(0, 2, n).astype(float),
                     "confidence": rng.uniform(0.6, 1.0, n),
                     "pixelStats": pa.array(list(stats), pa.list_(pa.float32()))})


def test_window_warns_after_the_shift_and_forgets_old_batches():
    from sparkvision.evaluation.drift import DriftProfile
    from sparkvision.streaming.drift import DriftMonitor
    from sparkvision.streaming.monitor import BatchProgress, live_line

    rng = np.random.default_rng(1)
    profile = _profile(rng)
    assert DriftProfile.from_json(profile.to_json()) == profile
    monitor = DriftMonitor(profile, threshold=0.2, window=3)
    windows = [monitor.observe(b, [_batch(rng, 100, 40 if b < 4 else 215)], "pixelStats")
               for b in range(8)]
    assert [w.warning for w in windows if w] == [False] * 4 + [True] * 4
    assert windows[7].batches == [5, 6, 7] and windows[7].rows == 300
    assert windows[4].feature == "pixel_mean_c0"
    assert monitor.observe(8, [_batch(rng, 0, 40)], "pixelStats") is None  # no rows
    b = BatchProgress(4, 100, 50, 2000.0)
    assert "DRIFT" in live_line(b, 0, "abc", windows[4].to_dict())
    assert f"drift {windows[0].score:.2f}" in live_line(b, 0, "abc", windows[0].to_dict())
    assert "drift" not in live_line(b, 0, "abc", None)


def test_bad_profile_file_is_a_data_error():
    from sparkvision.errors import DataError
    from sparkvision.evaluation.drift import DriftProfile

    with pytest.raises(DataError, match="format"):
        DriftProfile.from_json('{"format": "other/9", "rows": 1, "features": []}')
    with pytest.raises(DataError, match="cannot be read"):
        DriftProfile.from_json("{not json")
