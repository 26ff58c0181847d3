"""Session-wide data and one trained model shared by the Spark tests (trained once)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_dir(spark, tmp_path_factory):
    """scikit-learn's digits, prepared (TFRecord shards + dataset.json)."""
    from sparkvision import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("digits")
    prepare(spark, PrepareConfig(source="digits", out=str(out), seed=1))
    return out


@pytest.fixture(scope="session")
def digits(spark, digits_dir):
    """(train, val, test) DataFrames of the prepared digits, cached."""
    from sparkvision import load_prepared

    return tuple(load_prepared(spark, str(digits_dir), s).cache() for s in ("train", "val", "test"))


@pytest.fixture(scope="session")
def trained(digits):
    """A 2-worker model trained 5 epochs on digits, and the progress events it sent."""
    from sparkvision import ImageClassifier

    train, val, _ = digits
    events: list[dict] = []
    clf = ImageClassifier(epochs=5, numWorkers=2, seed=3, validationDf=val,
                          onEpochEnd=events.append)
    return clf.fit(train), events


@pytest.fixture(scope="session")
def trained_dir(trained, tmp_path_factory):
    """``trained``'s model saved as a model folder (what `sparkvision train --out` writes)."""
    out = tmp_path_factory.mktemp("model") / "digits-model"
    trained[0].write().overwrite().save(str(out))
    return out
