"""The tables of settings and what is generated from them (no JVM)."""

from __future__ import annotations

import dataclasses

import pytest

from sparkvision import settings
from sparkvision.cli import build_parser
from sparkvision.cli.train import classifier_params
from sparkvision.config import TrainConfig
from sparkvision.errors import InvalidParameterError
from sparkvision.ml.balancer import ClassBalancer
from sparkvision.ml.classifier import ImageClassifier
from sparkvision.ml.evaluator import ImageClassificationEvaluator
from sparkvision.ml.explainer import ImageExplainer
from sparkvision.ml.featurizer import ImageFeaturizer
from sparkvision.settings import (
    BalancerSettings,
    EvaluatorSettings,
    ExplainerSettings,
    FeaturizerSettings,
    OutputSettings,
    TrainSettings,
)
from sparkvision.tuning.space import TUNABLE, parse_space

TABLES = {
    ImageClassifier: (TrainSettings, OutputSettings),
    ImageFeaturizer: (FeaturizerSettings,),
    ImageExplainer: (ExplainerSettings,),
    ClassBalancer: (BalancerSettings,),
    ImageClassificationEvaluator: (EvaluatorSettings,),
}


@pytest.mark.parametrize("cls", TABLES, ids=lambda c: c.__name__)
def test_every_row_is_a_param_with_its_default_accessors_and_a_default_that_passes(cls):
    instance = cls()
    for table in TABLES[cls]:
        for row in settings.rows(table):
            param = instance.getParam(row.param)
            assert param.doc, row.param
            assert instance.getOrDefault(param) == row.param_default, row.param
            cap = row.param[0].upper() + row.param[1:]
            assert getattr(instance, f"get{cap}")() == row.param_default
            row.check(row.default)  # a default is always valid
    # and nothing else: every Param of the class comes from a row
    names = {r.param for t in TABLES[cls] for r in settings.rows(t)}
    assert {p.name for p in instance.params} == names


def test_range_and_choice_checks_name_the_param_and_the_fix():
    with pytest.raises(InvalidParameterError, match=r"learningRate=10.*\(0, 10\)"):
        ImageClassifier(learningRate=10.0).validateParams()
    with pytest.raises(InvalidParameterError, match=r"optimizer='rmsprop'.*adam, sgd"):
        ImageClassifier(optimizer="rmsprop").validateParams()
    with pytest.raises(InvalidParameterError, match=r"validationFraction=1.0.*\[0, 1\)"):
        ImageClassifier(validationFraction=1.0).validateParams()
    with pytest.raises(InvalidParameterError, match=r"epochs=0: use 1 or more"):
        ImageClassifier(epochs=0).validateParams()
    with pytest.raises(TypeError, match="unexpected keyword argument.*learning_rate"):
        ImageClassifier(learning_rate=0.1)


def test_every_flag_row_has_a_train_flag_that_sets_its_param():
    flags = [r for r in settings.rows(TrainSettings) if r.setting.flag]
    argv = ["train", "data", "--out", "m"]
    expected = {}
    for r in flags:
        if r.param == "model":
            value: object = "lenet5"
        elif r.setting.choices:
            value = r.setting.choices[-1]
        elif r.base_type is bool:
            value = not r.default
        elif r.base_type is int:
            value = r.default + 1
        elif r.base_type is float:
            value = (r.setting.low or 0) + 0.5 if r.setting.high is None else (
                (r.setting.low or 0) + r.setting.high) / 2
        elif r.param == "classWeights":
            value = [1.0, 2.0]
        else:
            value = f"some-{r.param}"
        expected[r.param] = value
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value).lower() \
            if isinstance(value, bool) else str(value)
        argv += [r.setting.flag, text]
    args = build_parser().parse_args(argv)
    params = classifier_params(args, {"classes": ["a", "b"], "image_shape": [8, 8, 1]})
    for name, value in expected.items():
        assert params[name] == value, name


def test_train_config_carries_every_training_setting():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {r.field for r in settings.rows(TrainSettings)} <= fields


def test_tuning_space_accepts_exactly_the_tunable_rows():
    assert set(TUNABLE) == {r.param for r in settings.rows(TrainSettings) if r.setting.tunable}
    (dim,) = parse_space({"weightDecay": {"log": [1e-6, 1e-2]}})
    assert dim.name == "weightDecay"
    with pytest.raises(InvalidParameterError, match="not a tunable"):
        parse_space({"checkpointDir": ["a", "b"]})
