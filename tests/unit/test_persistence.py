"""Saved model and featurizer folders (``ml/persistence.py``), without Spark: the metadata
line is the one pyspark's ``DefaultParamsWriter`` writes, a folder round-trips through any
``storage`` filesystem, and each kind refuses the other's folder and a bad save."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import pyspark
import pytest
import torch
from pyspark.ml.util import DefaultParamsWriter

from sparkvision import storage
from sparkvision.errors import DataError
from sparkvision.ml.featurizer import ImageFeaturizer
from sparkvision.ml.model import ImageClassificationModel
from sparkvision.ml.persistence import METADATA_DIR, WEIGHTS_FILE, params_metadata
from sparkvision.models.registry import build_model
from sparkvision.models.weights import state_dict_bytes


def _model() -> ImageClassificationModel:
    torch.manual_seed(0)
    weights = state_dict_bytes(build_model("cnn", 3, (8, 8, 1)))
    model = ImageClassificationModel(weights=weights, model="cnn", imageShape=[8, 8, 1],
                                     classes=["a", "b", "c"])
    return model.setInferenceBatchSize(77)  # a set Param that has a default


def _root() -> str:
    return f"memory://sv-{uuid.uuid4().hex[:8]}/saved"


def test_the_metadata_line_is_pyspark_defaultparamswriters():
    """Same JSON as pyspark's own writer (``saveMetadata``'s line) but for the time."""
    for instance in (_model(), ImageFeaturizer.fromModel(_model(), layer="0")):
        extra = {"format": "f/1", "weights": {"bytes": 3}}
        ours = json.loads(params_metadata(instance, extra))
        theirs = json.loads(DefaultParamsWriter._get_metadata_to_save(
            instance, SimpleNamespace(version=pyspark.__version__),  # type: ignore[arg-type]
            extraMetadata=extra))
        assert abs(ours.pop("timestamp") - theirs.pop("timestamp")) < 60_000
        assert ours == theirs
    assert ours["paramMap"]["inferenceBatchSize"] == 77
    assert ours["defaultParamMap"]["inferenceBatchSize"] != 77
    assert ours["class"] == "sparkvision.ml.featurizer.ImageFeaturizer"


def test_model_and_featurizer_round_trip_on_any_filesystem():
    model = _model()
    featurizer = ImageFeaturizer.fromModel(model, layer="0")
    root = _root()
    for instance, cls, name in ((model, ImageClassificationModel, "model"),
                                (featurizer, ImageFeaturizer, "featurizer")):
        path = storage.join(root, name)
        instance.write().save(path)
        assert storage.exists(storage.join(path, METADATA_DIR, "_SUCCESS"))
        assert storage.read_bytes(storage.join(path, WEIGHTS_FILE)) == model.weights
        loaded = cls.load(path)
        assert type(loaded) is cls and loaded.uid == instance.uid
        assert loaded.weights == model.weights
        assert {p.name: v for p, v in loaded.extractParamMap().items()} == {
            p.name: v for p, v in instance.extractParamMap().items()}
        assert {p.name for p in loaded.params if loaded.isSet(p)} == {
            p.name for p in instance.params if instance.isSet(p)}
    assert ImageClassificationModel.load(storage.join(root, "model")).getInferenceBatchSize() \
        == 77
    assert ImageFeaturizer.load(storage.join(root, "featurizer")).getLayer() == "0"


def test_each_kind_refuses_the_other_and_a_bad_save():
    model = _model()
    root = _root()
    model_dir, featurizer_dir = storage.join(root, "model"), storage.join(root, "featurizer")
    model.write().save(model_dir)
    ImageFeaturizer.fromModel(model).write().save(featurizer_dir)
    with pytest.raises(DataError, match="not a featurizer .*fromModelDir"):
        ImageFeaturizer.load(model_dir)
    with pytest.raises(DataError, match="has format 'sparkvision-featurizer/1' but this"):
        ImageClassificationModel.load(featurizer_dir)
    with pytest.raises(DataError, match=f"no model at .*{WEIGHTS_FILE} missing"):
        ImageClassificationModel.load(storage.join(root, "nothing"))
    with pytest.raises(DataError, match=f"no featurizer at .*{WEIGHTS_FILE} missing"):
        ImageFeaturizer.load(storage.join(root, "nothing"))
    with pytest.raises(DataError, match="a model is already saved at"):
        model.write().save(model_dir)
    with pytest.raises(DataError, match="something is already saved at"):
        ImageFeaturizer.fromModel(model).write().save(featurizer_dir)
    with pytest.raises(DataError, match="this featurizer has no weights to save"):
        ImageFeaturizer(layer="0").write().save(storage.join(root, "empty"))
    assert not storage.exists(storage.join(root, "empty"))
    model.write().overwrite().save(model_dir)  # overwrite replaces the folder
    assert ImageClassificationModel.load(model_dir).uid == model.uid
