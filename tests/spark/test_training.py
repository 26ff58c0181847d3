"""Distributed training through the public API on real data (scikit-learn digits)."""

from __future__ import annotations

import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import functions as F

from sparkvision import (
    ClusterCapacityError,
    ImageClassificationModel,
    ImageClassifier,
    InvalidParameterError,
)
from tests.nets import failing_once


def _accuracy(df) -> float:
    return df.select(F.avg((F.col("label") == F.col("prediction")).cast("double"))).first()[0]


def test_two_workers_reach_95_percent_and_record_distribution(trained, digits):
    model, events = trained
    history = model.history
    assert history.world_size == 2 and history.ranks == [0, 1]
    assert history.backend == "gloo" and history.allreduce == "shm"
    epochs = history.epochs
    assert [e.epoch for e in epochs] == [1, 2, 3, 4, 5]
    assert epochs[-1].val_accuracy >= 0.95
    assert all(e.steps_per_rank[0] == e.steps_per_rank[1] > 0 for e in epochs)
    assert sum(history.train_rows_per_rank) == digits[0].count()
    # Progress reached the driver while training ran, once per epoch, in order.
    assert [e["epoch"] for e in events] == [1, 2, 3, 4, 5]
    assert events[-1]["val_accuracy"] == epochs[-1].val_accuracy
    # the callback gets each epoch's record as a plain dict, as history.json holds it
    assert [{k: v for k, v in e.items() if k != "type"} for e in events] == [
        e.to_dict() for e in epochs]
    assert _accuracy(model.transform(digits[2])) >= 0.93


def test_transform_adds_columns_and_save_load_gives_identical_predictions(
    trained, digits, tmp_path
):
    model, _ = trained
    test = digits[2]
    out = model.transform(test)
    assert set(out.columns) >= set(test.columns) | {
        "prediction", "predictedLabel", "probability", "rawPrediction", "confidence"}
    rows = out.orderBy("path").collect()
    for r in rows[:20]:
        assert isinstance(r.prediction, float)
        assert r.predictedLabel == str(int(r.prediction))
        assert len(r.probability) == 10 and abs(r.probability.toArray().sum() - 1.0) < 1e-12
        assert r.confidence == max(r.probability)
        assert int(r.rawPrediction.argmax()) == int(r.prediction) == r.probability.argmax()
    model.write().overwrite().save(str(tmp_path / "m"))
    loaded = ImageClassificationModel.load(str(tmp_path / "m"))
    assert loaded.history == model.history and loaded.history.world_size == 2
    again = loaded.transform(test).orderBy("path").collect()
    assert [r.prediction for r in again] == [r.prediction for r in rows]
    assert [r.probability for r in again] == [r.probability for r in rows]


def test_pipeline_fit_transform_save_load(digits, tmp_path):
    from pyspark.ml.feature import SQLTransformer

    train, _, test = digits
    pipeline = Pipeline(stages=[
        SQLTransformer(statement="SELECT *, label AS target FROM __THIS__"),
        ImageClassifier(epochs=4, labelCol="target", model="lenet5", seed=1,
                        optimizer="sgd", learningRate=0.05, batchSize=16),
    ])
    fitted = pipeline.fit(train)
    out = fitted.transform(test)
    assert "prediction" in out.columns and _accuracy(out) > 0.5
    fitted.write().overwrite().save(str(tmp_path / "pipe"))
    reloaded = PipelineModel.load(str(tmp_path / "pipe"))
    assert reloaded.transform(test).select("prediction").collect() == out.select(
        "prediction").collect()


def test_uneven_partitions_take_equal_steps(spark, digits):
    train = digits[0]
    n = train.count()
    cut = sorted(r.path for r in train.select("path").collect())[int(n * 0.9)]
    uneven = train.withColumn("_part", (F.col("path") >= cut).cast("int")).repartitionByRange(
        2, "_part")
    sizes = sorted(r["count"] for r in uneven.groupBy(F.spark_partition_id()).count().collect())
    assert len(sizes) == 2 and sizes[1] >= 8 * sizes[0]  # ~90/10
    model = ImageClassifier(epochs=1, numWorkers=2, repartition=False, seed=2).fit(uneven)
    rows = model.history.train_rows_per_rank
    assert sorted(rows) == sizes
    steps = model.history.epochs[0].steps_per_rank
    assert steps[0] == steps[1] == -(-max(rows) // 64)


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_failed_task_is_retried_and_resumes_from_checkpoint(spark, digits, tmp_path):
    train, val, test = digits
    # The built-in cnn, whose forward pass raises once in epoch 3 on rank 1.
    clf = ImageClassifier(model="tests.nets:fails_once", epochs=4, numWorkers=2, seed=5,
                          validationDf=val, checkpointDir=str(tmp_path / "ckpt"))
    marker = tmp_path / "fault-e3-r1"
    with failing_once(spark, epoch=3, rank=1, marker=marker):
        model = clf.fit(train)
    h = model.history
    assert h.resumed_from_epoch == 2
    assert h.attempts == 2
    assert [e.epoch for e in h.epochs] == [1, 2, 3, 4]
    assert (tmp_path / "ckpt" / "epoch-0004.safetensors").exists()
    assert marker.exists()
    assert h.epochs[-1].val_accuracy >= 0.9


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_same_seed_same_workers_same_weights(digits):
    train = digits[0]
    a = ImageClassifier(epochs=1, seed=11, model="resnet8").fit(train)
    b = ImageClassifier(epochs=1, seed=11, model="resnet8").fit(train)
    assert a.weights == b.weights
    c = ImageClassifier(epochs=1, seed=12, model="resnet8").fit(train)
    assert c.weights != a.weights


def test_mse_class_weights_and_user_network_by_import_path(digits):
    train, val, _ = digits
    clf = ImageClassifier(
        epochs=3, loss="mse",
        model="sparkvision.models.networks:simple_cnn", classWeights="balanced",
        validationDf=val, seed=4,
    )
    model = clf.fit(train)
    losses = [e.train_loss for e in model.history.epochs]
    assert losses[-1] < losses[0]
    assert model.history.epochs[-1].val_accuracy > 0.5


def test_more_workers_than_slots_fails_fast(digits):
    # Checked before the barrier stage is submitted, so it cannot wait for slots.
    with pytest.raises(ClusterCapacityError, match="numWorkers=3.*at most 2"):
        ImageClassifier(numWorkers=3, epochs=1).fit(digits[0])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"epochs": 0}, "epochs"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"loss": "hinge"}, "loss"),
        ({"model": "vgg_unknown"}, "model"),
        ({"learningRate": -1.0}, "learningRate"),
        ({"classWeights": [1.0, 2.0]}, "classWeights"),
    ],
)
def test_bad_params_raise_clear_errors(digits, kwargs, name):
    with pytest.raises(InvalidParameterError, match=name):
        ImageClassifier(**kwargs).fit(digits[0])


def test_validation_fraction_holds_out_rows(digits):
    train = digits[0]
    n = train.count()
    model = ImageClassifier(epochs=1, validationFraction=0.25, seed=9).fit(train)
    h = model.history
    assert 0.15 * n < sum(h.val_rows_per_rank) < 0.35 * n
    assert sum(h.train_rows_per_rank) + sum(h.val_rows_per_rank) == n
    assert h.epochs[0].val_accuracy is not None


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_single_worker_and_checkpoint_dir_of_another_training(digits, tmp_path):
    from sparkvision import TrainingError

    train = digits[0]
    ckpt = tmp_path / "ckpt"
    model = ImageClassifier(epochs=2, numWorkers=1, checkpointDir=str(ckpt)).fit(train)
    assert model.history.world_size == 1 and model.history.allreduce == "gloo"
    assert sorted(p.name for p in ckpt.glob("*.safetensors")) == [
        "epoch-0001.safetensors", "epoch-0002.safetensors"]
    # Same training again: everything is already done, it resumes after the last epoch.
    again = ImageClassifier(epochs=2, numWorkers=1, checkpointDir=str(ckpt)).fit(train)
    assert again.history.resumed_from_epoch == 2 and again.weights == model.weights
    # Another network must not silently load these weights.
    with pytest.raises(TrainingError, match="another training"):
        ImageClassifier(epochs=2, numWorkers=1, model="lenet5",
                        checkpointDir=str(ckpt)).fit(train)


def test_bad_labels_are_named_before_training(digits):
    from sparkvision import DataError

    train = digits[0]
    with pytest.raises(InvalidParameterError, match="labels go up to 9 but only 3"):
        ImageClassifier(classes=["a", "b", "c"]).fit(train)
    with pytest.raises(DataError, match="null 'label'"):
        ImageClassifier().fit(train.withColumn("label", F.lit(None).cast("long")))
    with pytest.raises(DataError, match="class indexes"):
        ImageClassifier().fit(train.withColumn("label", F.col("label") - 1))
    # the shape comes from every row (with the label counts), not from the first one
    taller = F.when(F.col("label") == 3, F.col("height") + 1).otherwise(F.col("height"))
    with pytest.raises(DataError, match=r"differ in size \(height 8\.\.9\)"):
        ImageClassifier().fit(train.withColumn("height", taller))


def test_on_epoch_end_returning_true_stops_every_worker_after_that_epoch(digits):
    train, val, _ = digits
    seen = []

    def stop_after_two(event):
        seen.append(event["epoch"])
        return event["epoch"] >= 2

    model = ImageClassifier(epochs=5, numWorkers=2, seed=1, validationDf=val,
                            onEpochEnd=stop_after_two).fit(train)
    assert seen == [1, 2]
    assert model.history.stopped_early == 2 and len(model.history.epochs) == 2
    assert model.transform(digits[2]).count() == digits[2].count()


def test_a_diverging_training_fails_with_the_fix(digits):
    from sparkvision import TrainingError

    with pytest.raises(TrainingError, match="diverged.*lower learningRate"):
        ImageClassifier(epochs=3, numWorkers=2, model="tests.nets:overflowing").fit(digits[0])


def test_a_cancelled_training_job_raises_training_cancelled(spark, digits):
    from sparkvision import TrainingCancelledError

    def cancel(event):
        spark.sparkContext.cancelAllJobs()  # as Ctrl-C or a cancelled job group would

    with pytest.raises(TrainingCancelledError, match="cancelled"):
        ImageClassifier(epochs=5, numWorkers=2, onEpochEnd=cancel).fit(digits[0])
