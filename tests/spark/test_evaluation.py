"""Evaluation on Spark: pyspark.ml's own evaluators and CrossValidator on our predictions,
`sparkvision evaluate` and `evaluate()` against scikit-learn on the same rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from sklearn import metrics as skm

from sparkvision import (
    DataError,
    ImageClassificationEvaluator,
    ImageClassificationModel,
    ImageClassifier,
    InvalidParameterError,
    PrepareConfig,
    evaluate,
    load_prepared,
    prepare,
)
from sparkvision.cli import main

TOL = 1e-9


def _arrays(preds):
    rows = preds.select("label", "prediction", "probability", "rawPrediction").collect()
    y = np.array([r.label for r in rows])
    yhat = np.array([r.prediction for r in rows])
    proba = np.array([r.probability.toArray() for r in rows])
    raw = np.array([r.rawPrediction.toArray() for r in rows])
    return y, yhat, proba, raw


@pytest.fixture(scope="module")
def test_preds(trained, digits):
    model = trained[0]
    _, val, test = digits
    # val + test: more rows, a few mistakes to count
    return model.transform(val.unionByName(test)).cache()


def test_pyspark_multiclass_evaluator_equals_sklearn(test_preds):
    y, yhat, proba, _ = _arrays(test_preds)
    labels = list(range(proba.shape[1]))
    eps = float(np.finfo(np.float64).eps)  # scikit-learn's clipping, given to Spark too
    spark_metrics = {
        name: MulticlassClassificationEvaluator(metricName=name, eps=eps).evaluate(test_preds)
        for name in ("accuracy", "f1", "logLoss")
    }
    assert spark_metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, yhat), abs=TOL)
    assert spark_metrics["f1"] == pytest.approx(
        skm.f1_score(y, yhat, average="weighted", labels=labels), abs=TOL)
    assert spark_metrics["logLoss"] == pytest.approx(
        skm.log_loss(y, proba, labels=labels), abs=TOL)
    assert 0.9 < spark_metrics["accuracy"] < 1.0 or spark_metrics["accuracy"] == 1.0


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_pyspark_binary_evaluator_on_two_class_faces_model(spark, tmp_path):
    out = tmp_path / "faces"
    prepare(spark, PrepareConfig(source="faces", out=str(out), seed=2, split=(0.6, 0.0, 0.4)))
    train = load_prepared(spark, str(out), "train")
    model = ImageClassifier(epochs=3, seed=1, model="simple_cnn", batchSize=16).fit(train)
    preds = model.transform(load_prepared(spark, str(out), "test")).cache()
    y, _, proba, raw = _arrays(preds)
    assert proba.shape[1] == 2 and len(set(y)) == 2
    auc_raw = BinaryClassificationEvaluator(metricName="areaUnderROC").evaluate(preds)
    assert auc_raw == pytest.approx(skm.roc_auc_score(y, raw[:, 1]), abs=TOL)
    auc_p = BinaryClassificationEvaluator(rawPredictionCol="probability").evaluate(preds)
    assert auc_p == pytest.approx(skm.roc_auc_score(y, proba[:, 1]), abs=TOL)
    ours = ImageClassificationEvaluator(metricName="rocAUC").evaluate(preds)
    both = [skm.roc_auc_score(y == k, proba[:, k]) for k in (0, 1)]
    assert ours == pytest.approx(np.mean(both), abs=TOL)


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_cross_validator_over_image_classifier(digits):
    train = digits[0]
    clf = ImageClassifier(epochs=1, numWorkers=2, seed=0, model="simple_cnn")
    grid = ParamGridBuilder().addGrid(clf.learningRate, [0.003, 0.3]).build()
    evaluator = ImageClassificationEvaluator(metricName="macroF1")
    cv = CrossValidator(estimator=clf, estimatorParamMaps=grid, evaluator=evaluator,
                        numFolds=2, seed=7)
    cv_model = cv.fit(train)
    assert len(cv_model.avgMetrics) == 2
    best = cv_model.bestModel
    assert isinstance(best, ImageClassificationModel)
    assert best.getLearningRate() == grid[int(np.argmax(cv_model.avgMetrics))][clf.learningRate]
    out = best.transform(digits[2])
    assert out.count() == digits[2].count() and "probability" in out.columns


def test_cli_evaluate_equals_sklearn(trained_dir, digits_dir, spark, capsys, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained_dir), str(digits_dir), "--split", "val", "--out",
                 str(out), "--top-k", "2", "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = ImageClassificationModel.load(str(trained_dir))
    preds = model.transform(load_prepared(spark, str(digits_dir), "val"))
    y, yhat, proba, _ = _arrays(preds)
    labels = list(range(10))
    assert got["n"] == len(y) and got["classes"] == model.getClasses()
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, yhat), abs=TOL)
    p, r, f, s = skm.precision_recall_fscore_support(y, yhat, labels=labels, zero_division=0)
    assert got["macro_precision"] == pytest.approx(p.mean(), abs=TOL)
    assert got["macro_recall"] == pytest.approx(r.mean(), abs=TOL)
    assert got["macro_f1"] == pytest.approx(f.mean(), abs=TOL)
    assert got["weighted_f1"] == pytest.approx(
        skm.f1_score(y, yhat, labels=labels, average="weighted", zero_division=0), abs=TOL)
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=labels), abs=TOL)
    # ECE over 15 equal-width bins ((m-1)/15, m/15] of the top probability, with NumPy
    conf = proba.max(axis=1)
    bin_of = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
    ece = sum(abs((yhat[bin_of == m] == y[bin_of == m]).mean() - conf[bin_of == m].mean())
              * (bin_of == m).sum() / len(y) for m in range(15) if (bin_of == m).any())
    assert got["ece"] == pytest.approx(ece, abs=TOL)
    assert [b["count"] for b in got["reliability"]] == np.bincount(bin_of, minlength=15).tolist()
    assert got["top_k_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(y, proba, k=2, labels=labels), abs=TOL)
    assert got["confusion"] == skm.confusion_matrix(y, yhat, labels=labels).tolist()
    for k, name in enumerate(got["classes"]):
        m = got["per_class"][name]
        assert (m["precision"], m["recall"], m["f1"], m["support"]) == pytest.approx(
            (p[k], r[k], f[k], s[k]), abs=TOL)
        assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y == k, proba[:, k]), abs=TOL)
        assert m["pr_auc"] == pytest.approx(
            skm.average_precision_score(y == k, proba[:, k]), abs=TOL)
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == got["accuracy"]
    png = out / "confusion_matrix.png"
    assert got["plots"] == [str(out / name) for name in (
        "confusion_matrix.png", "confusion_matrix_normalized.png", "per_class.png",
        "reliability.png", "samples.png")]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_api_and_the_cli_default_output_folder(trained, digits, trained_dir,
                                                        digits_dir, capsys):
    result = evaluate(trained[0], digits[2], k=3)
    data = result.to_dict()
    assert data["n"] == digits[2].count() and data["top_k"] == 3
    assert set(data["per_class"]) == set(trained[0].getClasses())
    # Without --out the CLI writes to MODEL_DIR/evaluation/SPLIT.
    assert main(["evaluate", str(trained_dir), str(digits_dir), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    folder = trained_dir / "evaluation" / "test"
    assert got["out"] == str(folder) and got["accuracy"] == pytest.approx(result.accuracy)
    assert (folder / "metrics.json").exists() and (folder / "confusion_matrix.png").exists()
    assert main(["evaluate", str(trained_dir), str(trained_dir.parent / "nope"),
                 "--no-plots"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_auc_with_tied_scores_matches_sklearn(spark):
    """Exact ROC/PR areas with many ties (coarse probabilities), 3 classes."""
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql.types import DoubleType, LongType, StructField, StructType

    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 3, n)
    scores = rng.integers(1, 5, (n, 3)).astype(float)  # coarse: identical rows tie
    scores[np.arange(n), y] += rng.integers(0, 3, n)
    proba = scores / scores.sum(axis=1, keepdims=True)
    yhat = proba.argmax(axis=1)
    df = spark.createDataFrame(
        [(int(a), float(b), Vectors.dense(p)) for a, b, p in zip(y, yhat, proba, strict=True)],
        StructType([StructField("label", LongType()), StructField("prediction", DoubleType()),
                    StructField("probability", VectorUDT())]))
    for k in range(3):
        assert len(np.unique(proba[:, k])) < n  # ties exist
    ours = {m: ImageClassificationEvaluator(metricName=m).evaluate(df)
            for m in ("rocAUC", "prAUC", "logLoss", "topKAccuracy", "macroRecall")}
    assert ours["rocAUC"] == pytest.approx(
        skm.roc_auc_score(y, proba, multi_class="ovr"), abs=TOL)
    assert ours["prAUC"] == pytest.approx(
        np.mean([skm.average_precision_score(y == k, proba[:, k]) for k in range(3)]), abs=TOL)
    assert ours["logLoss"] == pytest.approx(skm.log_loss(y, proba), abs=TOL)
    assert ours["topKAccuracy"] == 1.0  # k=5 >= 3 classes
    assert ours["macroRecall"] == pytest.approx(
        skm.recall_score(y, yhat, average="macro"), abs=TOL)
    assert not ImageClassificationEvaluator(metricName="logLoss").isLargerBetter()
    assert ImageClassificationEvaluator(metricName="prAUC").isLargerBetter()


def test_evaluation_bad_input(trained, digits, trained_dir, tmp_path, capsys):
    preds = trained[0].transform(digits[2])
    no_prob = preds.drop("probability")
    with pytest.raises(InvalidParameterError, match="probability"):
        ImageClassificationEvaluator(metricName="logLoss").evaluate(no_prob)
    from sparkvision.evaluation.metrics import compute_metrics

    with pytest.raises(InvalidParameterError, match="probability"):
        compute_metrics(no_prob)
    with pytest.raises(InvalidParameterError, match="metricName"):
        ImageClassificationEvaluator(metricName="auc_of_dreams")
    # CLI: unknown split, unknown model folder → exit 2, one line
    assert main(["evaluate", str(trained_dir), str(tmp_path), "--split", "holdout"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holdout" in err[0]
    with pytest.raises(InvalidParameterError, match="split"):
        load_prepared(preds.sparkSession, str(tmp_path), "holdout")


def test_old_model_format_is_refused_with_a_fix(trained, tmp_path, digits_dir, capsys):
    old = tmp_path / "old-model"
    trained[0].write().overwrite().save(str(old))
    meta_file = next((old / "metadata").glob("part-*"))
    meta = json.loads(meta_file.read_text())
    meta["format"] = "sparkvision/1"
    meta_file.write_text(json.dumps(meta))
    for crc in (old / "metadata").glob(".*.crc"):  # Hadoop's checksum of the old text
        crc.unlink()
    with pytest.raises(DataError, match="sparkvision/1.*retrain"):
        ImageClassificationModel.load(str(old))
    assert main(["evaluate", str(old), str(digits_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "retrain" in err[0]
