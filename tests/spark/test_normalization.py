"""Input normalisation is part of the model: resolved on the driver from ``normalize``
(dataset statistics from one Spark job), stored with the model, applied identically by
training, inference, the featurizer, the explainer and the exported graph."""

from __future__ import annotations

import numpy as np
import pytest

from sparkvision import ImageClassifier
from sparkvision.cli import main
from sparkvision.errors import InvalidParameterError
from sparkvision.ml.normalization import (
    dataset_statistics,
    pixel_histograms,
    stats_of_histograms,
)
from sparkvision.models.preprocess import IMAGENET_MEAN, IMAGENET_STD


def _images(df, shape):
    rows = df.select("image").collect()
    return np.stack([np.frombuffer(r["image"], np.uint8).reshape(shape) for r in rows])


def test_histogram_statistics_equal_numpys():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 5, 4, 3), dtype=np.uint8)
    images[..., 2] = 7  # a constant channel gets the one-pixel-step floor, not 0
    mean, std = stats_of_histograms(pixel_histograms(images))
    scaled = images.reshape(-1, 3).astype(np.float64) / 255
    assert np.allclose(mean, scaled.mean(axis=0), atol=1e-6)
    assert np.allclose(std[:2], scaled.std(axis=0)[:2], atol=1e-6)
    assert std[2] == pytest.approx(1 / 255, abs=1e-6)


def test_dataset_statistics_on_spark_equal_numpys(digits):
    train = digits[0]
    images = _images(train, (8, 8, 1)).astype(np.float64) / 255
    mean, std = dataset_statistics(train.repartition(3), "image", (8, 8, 1))
    assert mean[0] == pytest.approx(images.mean(), abs=1e-6)
    assert std[0] == pytest.approx(images.std(), abs=1e-6)


def test_default_model_stores_and_applies_the_training_splits_statistics(trained, digits,
                                                                         tmp_path):
    """The shared fixture's model (normalize='auto', from scratch) carries the training
    split's statistics; saved and loaded, its featurizer and explainer carry them too,
    and its predictions equal a plain forward pass with those statistics."""
    import torch

    from sparkvision import ImageFeaturizer
    from sparkvision.ml.explainer import ImageExplainer
    from sparkvision.ml.model import ImageClassificationModel
    from sparkvision.models.preprocess import normalize
    from sparkvision.models.weights import trained_network

    model = trained[0]
    train, _, test = digits
    want = dataset_statistics(train, "image", (8, 8, 1))
    assert (tuple(model.getInputMean()), tuple(model.getInputStd())) == want
    model.write().overwrite().save(str(tmp_path / "m"))
    loaded = ImageClassificationModel.load(str(tmp_path / "m"))
    assert (tuple(loaded.getInputMean()), tuple(loaded.getInputStd())) == want
    assert tuple(ImageFeaturizer.fromModel(loaded).getInputMean()) == want[0]
    assert tuple(ImageExplainer.fromModel(loaded).getInputStd()) == want[1]

    rows = test.limit(16).collect()
    x = torch.from_numpy(np.stack([np.frombuffer(r["image"], np.uint8).reshape(8, 8, 1)
                                   for r in rows])).permute(0, 3, 1, 2)
    net = trained_network("cnn", 10, (8, 8, 1), loaded.weights)
    with torch.no_grad():
        plain = torch.softmax(net(normalize(x, *want)), 1).numpy()
        legacy = torch.softmax(net(normalize(x)), 1).numpy()
    ours = np.stack([r["probability"].toArray() for r in loaded.transform(
        test.limit(16)).select("probability").collect()])
    assert np.allclose(ours, plain, atol=1e-5)
    assert not np.allclose(ours, legacy, atol=1e-3)  # the statistics really are applied


def test_imagenet_and_none_and_given(digits):
    train, val, _ = digits
    small = train.limit(200)
    common = dict(epochs=1, numWorkers=1, seed=0, augment="none")
    m = ImageClassifier(normalize="imagenet", **common).fit(small)
    assert m.getInputMean() == pytest.approx([sum(IMAGENET_MEAN) / 3])
    assert m.getInputStd() == pytest.approx([sum(IMAGENET_STD) / 3])
    assert ImageClassifier(normalize="none", **common).fit(small).getInputMean() == []
    given = ImageClassifier(inputMean=[0.25], inputStd=[0.5], **common).fit(small)
    assert (given.getInputMean(), given.getInputStd()) == ([0.25], [0.5])


@pytest.mark.parametrize("params, param", [
    (dict(normalize="dataset", privacy="dp"), "normalize"),
    (dict(inputMean=[0.5], inputStd=[0.0]), "inputStd"),
    (dict(inputMean=[0.5, 0.5], inputStd=[0.5, 0.5]), "inputMean"),
    (dict(inputMean=[0.5]), "inputStd"),
    (dict(inputMean=[0.5], inputStd=[0.5], normalize="none"), "normalize"),
    (dict(normalize="zscore"), "normalize"),
])
def test_bad_normalisation_is_refused_before_any_job(digits, params, param):
    with pytest.raises(InvalidParameterError) as info:
        ImageClassifier(**params).fit(digits[0])
    assert info.value.name == param


def test_cli_bad_normalize_exits_2(digits_dir, tmp_path, capsys):
    assert main(["train", str(digits_dir), "--normalize", "zscore",
                 "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zscore" in err[0] and "imagenet" in err[0]
    assert not (tmp_path / "m").exists()
