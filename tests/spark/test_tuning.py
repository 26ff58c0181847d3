"""Hyper-parameter tuning through the public API and the CLI on real digits."""

from __future__ import annotations

import json

import pytest

from sparkvision import ImageClassificationModel, ImageClassifier, InvalidParameterError
from sparkvision.cli import main
from sparkvision.tuning.search import TuneConfig, tune
from sparkvision.tuning.space import parse_space


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _trials(out) -> list[dict]:
    return json.loads((out / "trials.json").read_text())


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_grid_runs_every_point_and_beats_or_ties_the_defaults(digits_dir, digits, tmp_path,
                                                             capsys):
    out = tmp_path / "grid"
    space = '{"learningRate": [0.003, 0.01], "batchSize": [32, 64]}'
    assert main(["tune", str(digits_dir), "--out", str(out), "--strategy", "grid",
                 "--space", space, "--epochs", "2", "--parallel", "2", "--workers", "1",
                 "--json"]) == 0
    result = _json(capsys)
    assert result["trials"]["complete"] == 4 and result["metric"] == "val_accuracy"
    trials = _trials(out)
    assert sorted((t["params"]["learningRate"], t["params"]["batchSize"]) for t in trials) == [
        (0.003, 32), (0.003, 64), (0.01, 32), (0.01, 64)]
    assert all(t["state"] == "complete" and len(t["metric_per_epoch"]) == 2
               and t["workers"] == 1 and t["seconds"] > 0 for t in trials)
    assert result["best_value"] == max(t["value"] for t in trials)
    best = ImageClassificationModel.load(result["best_model"])
    assert best.getLearningRate() == result["best_params"]["learningRate"]
    assert (out / "optimization_history.png").exists() and result["plots"]
    # The grid holds the default configuration (lr 0.003, batch 64): the best is at least it.
    train, val, _ = digits
    default = ImageClassifier(epochs=2, numWorkers=1, validationDf=val).fit(train)
    assert result["best_value"] >= default.history.epochs[-1].val_accuracy
    # Evaluate works on the best model folder.
    assert main(["evaluate", result["best_model"], str(digits_dir), "--split", "val",
                 "--no-plots", "--json"]) == 0
    assert _json(capsys)["accuracy"] == pytest.approx(result["best_value"], abs=1e-9)


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_bayes_prunes_a_terrible_learning_rate_mid_training(digits, tmp_path):
    train, val, _ = digits
    out = tmp_path / "bayes"
    space = {"learningRate": [0.003, 0.005, 2.0], "optimizer": ["sgd"]}
    result = tune(train, val, space,
                  TuneConfig(out=str(out), strategy="bayes", trials=6, seed=3),
                  params={"epochs": 4, "numWorkers": 1, "model": "simple_cnn"},
                  show_progress=False)
    trials = _trials(out)
    assert len([t for t in trials if t["state"] in ("complete", "pruned", "failed")]) == 6
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned, trials
    assert all(t["epochs_run"] < 4 and len(t["metric_per_epoch"]) == t["epochs_run"]
               for t in pruned)
    assert result.trials["pruned"] == len(pruned)
    assert result.best_params["learningRate"] < 1.0


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_random_respects_trials_and_failed_trials_do_not_stop_the_search(digits, tmp_path):
    train, val, _ = digits
    out = tmp_path / "random"
    # a network that imports and builds on the driver but fails inside the training task
    # (a name that does not import is refused with the space, before any trial)
    space = {"learningRate": {"log": [1e-3, 1e-2]},
             "model": ["simple_cnn", "tests.nets:fails_in_task"]}
    result = tune(train, val, space,
                  TuneConfig(out=str(out), strategy="random", trials=3, seed=1, pruner="none"),
                  params={"epochs": 1, "numWorkers": 1}, show_progress=False)
    trials = _trials(out)
    assert len(trials) == 3
    failed = [t for t in trials if t["state"] == "failed"]
    assert failed and all("CUDA driver not found" in t["error"] for t in failed)
    assert result.trials["complete"] + result.trials["failed"] == 3
    assert all(1e-3 <= t["params"]["learningRate"] <= 1e-2 for t in trials)
    # Reproducible for a seed: the same seed draws the same trials.
    again = tmp_path / "random-again"
    tune(train, val, space,
         TuneConfig(out=str(again), strategy="random", trials=3, seed=1, pruner="none"),
         params={"epochs": 1, "numWorkers": 1}, show_progress=False)
    assert [t["params"] for t in _trials(again)] == [t["params"] for t in trials]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--space", '{"learnRate": [0.1]}'], "learnRate"),
        (["--space", '{"learningRate": []}'], "at least one"),
        (["--space", '{"learningRate": {"log": [0.1, 0.001]}}'], "low must be below high"),
        (["--space", "{learningRate: 1"], "not JSON"),
        (["--space", '{"batchSize": [32]}', "--strategy", "annealing"], "annealing"),
        (["--space", '{"batchSize": [32]}', "--parallel", "0"], "parallel"),
        (["--space", '{"batchSize": [32]}', "--metric", "val_auc"], "val_auc"),
        (["--space", '{"learningRate": {"log": [1e-4, 0.1]}}', "--strategy", "grid"], "grid"),
        (["--space", '{"batchSize": [32, "big"]}'], "integers"),
    ],
)
def test_bad_spaces_and_options_exit_2_before_spark(argv, fragment, tmp_path, capsys):
    code = main(["tune", str(tmp_path / "no-data-needed"), "--out", str(tmp_path / "o"),
                 *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "o").exists()


def test_space_parsing_api():
    dims = {d.name: d for d in parse_space(
        '{"learningRate": {"log": [1e-4, 0.1]}, "batchSize": {"int": [16, 128], "step": 16},'
        ' "model": ["cnn", "lenet5"]}')}
    assert dims["learningRate"].kind == "log" and dims["batchSize"].step == 16
    assert dims["model"].choices == ("cnn", "lenet5")
    with pytest.raises(InvalidParameterError, match="low > 0"):
        parse_space({"learningRate": {"log": [0, 0.1]}})
    with pytest.raises(InvalidParameterError, match="not a valid model"):
        parse_space({"model": ["vgg_unknown"]})
