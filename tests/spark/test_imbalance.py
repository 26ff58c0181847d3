"""Class imbalance: ClassBalancer (Pipeline stage), `train --balance`, focal loss and
`prepare --imbalance`, on real digits / MNIST."""

from __future__ import annotations

import json

import pytest
from pyspark.ml import Pipeline
from pyspark.sql import functions as F

from sparkvision import (
    ClassBalancer,
    DataError,
    ImageClassifier,
    InvalidParameterError,
    PrepareConfig,
    load_prepared,
    prepare,
)
from sparkvision.cli import main


def _counts(df) -> dict[int, int]:
    return {int(r.label): int(r["count"]) for r in df.groupBy("label").count().collect()}


@pytest.fixture(scope="module")
def skewed(digits):
    """Digits train split where classes 0-4 keep about a tenth of their rows."""
    train = digits[0]
    keep = (F.col("label") >= 5) | (F.xxhash64("path") % 10 == 0)
    return train.filter(keep).cache()


def test_oversample_reaches_the_majority_and_is_deterministic(skewed):
    before = _counts(skewed)
    assert min(before.values()) * 5 < max(before.values())
    balancer = ClassBalancer(strategy="oversample", seed=3)
    after = _counts(balancer.transform(skewed))
    majority = max(before.values())
    for label, n in before.items():
        # whole replicas + a seeded Bernoulli remainder: within a few rows of the target
        assert after[label] >= n and abs(after[label] - majority) <= max(4, 0.25 * majority)
    again = balancer.transform(skewed).groupBy("path").count().collect()
    assert sorted(map(tuple, again)) == sorted(
        map(tuple, balancer.transform(skewed).groupBy("path").count().collect()))
    half = _counts(ClassBalancer(strategy="oversample", targetRatio=0.5).transform(skewed))
    assert all(half[k] >= min(before[k], 0.5 * majority) - 4 for k in before)
    assert sum(half.values()) < sum(after.values())


def test_undersample_cuts_to_the_minority_and_keeps_unlabelled_data(skewed):
    before = _counts(skewed)
    after = _counts(ClassBalancer(strategy="undersample", seed=1).transform(skewed))
    minority = min(before.values())
    assert all(after[k] <= before[k] for k in before)
    assert max(after.values()) <= 2.5 * minority  # sampleBy is a Bernoulli sample
    unlabelled = skewed.drop("label")
    assert ClassBalancer(strategy="undersample").transform(unlabelled) is unlabelled


def test_balancer_in_a_pipeline_and_bad_params(skewed, tmp_path):
    pipe = Pipeline(stages=[
        ClassBalancer(strategy="oversample", seed=2),
        ImageClassifier(epochs=1, model="simple_cnn", seed=2),
    ])
    model = pipe.fit(skewed)
    seen = model.stages[-1].history.balance.class_counts_seen
    assert max(seen.values()) - min(seen.values()) <= 0.5 * max(seen.values())
    ClassBalancer(strategy="undersample", targetRatio=0.5).write().overwrite().save(
        str(tmp_path / "b"))
    loaded = ClassBalancer.load(str(tmp_path / "b"))
    assert loaded.getStrategy() == "undersample" and loaded.getTargetRatio() == 0.5
    with pytest.raises(InvalidParameterError, match="strategy"):
        ClassBalancer(strategy="smote").transform(skewed)
    with pytest.raises(InvalidParameterError, match="targetRatio"):
        ClassBalancer(targetRatio=0.0).transform(skewed)
    with pytest.raises(DataError, match="null 'label'"):
        ClassBalancer().transform(skewed.withColumn("label", F.lit(None).cast("long")))


def test_balance_param_records_what_the_model_saw(skewed):
    before = _counts(skewed)
    over = ImageClassifier(epochs=1, balance="oversample", seed=1).fit(skewed)
    record = over.history.balance
    assert record.strategy == "oversample"
    assert record.class_counts == {str(k): v for k, v in sorted(before.items())}
    assert sum(over.history.train_rows_per_rank) == sum(record.class_counts_seen.values())
    assert min(record.class_counts_seen.values()) > min(before.values())
    weights = ImageClassifier(epochs=1, balance="weights", loss="focal", focalGamma=1.5,
                              seed=1).fit(skewed)
    w = weights.history.balance
    assert w.class_counts_seen == w.class_counts and w.loss == "focal"
    total = sum(before.values())
    assert w.class_weights == pytest.approx(
        [total / (10 * before[k]) for k in range(10)])
    assert weights.getFocalGamma() == 1.5 and weights.uid == weights.uid
    with pytest.raises(InvalidParameterError, match="balance"):
        ImageClassifier(balance="smote").fit(skewed)
    with pytest.raises(InvalidParameterError, match="focalGamma"):
        ImageClassifier(loss="focal", focalGamma=-1.0).fit(skewed)


def test_prepare_imbalance_thins_only_minority_training_images(spark, tmp_path, capsys):
    plain = prepare(spark, PrepareConfig(source="digits", out=str(tmp_path / "a"), seed=5))
    assert main(["prepare", "digits", "--out", str(tmp_path / "b"), "--seed", "5",
                 "--imbalance", "4", "--json"]) == 0
    skew = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert skew["imbalance"] == {"ratio": 4.0, "minority_classes": ["0", "1", "2", "3", "4"]}
    for c in plain.classes:
        full = plain.per_class["train"][c]
        expected = -(-full // 4) if int(c) < 5 else full
        assert skew["per_class"]["train"][c] == expected
        assert skew["per_class"]["val"][c] == plain.per_class["val"][c]
        assert skew["per_class"]["test"][c] == plain.per_class["test"][c]
    kept = load_prepared(spark, str(tmp_path / "b"), "train").select("path")
    full = load_prepared(spark, str(tmp_path / "a"), "train").select("path")
    assert kept.subtract(full).count() == 0  # a subset of the same split
    test_b = load_prepared(spark, str(tmp_path / "b"), "test").select("path")
    assert test_b.subtract(load_prepared(spark, str(tmp_path / "a"), "test")
                           .select("path")).count() == 0
    manifest = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert manifest["imbalance"]["ratio"] == 4.0
