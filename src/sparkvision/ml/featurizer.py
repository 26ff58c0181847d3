"""``ImageFeaturizer``: a pyspark.ml Transformer that turns images into feature vectors with
a trained network — the classifier head's input (the penultimate features) or the output
of any named module — for MLlib's own estimators (``LogisticRegression``, ``KMeans``, …) in
a ``Pipeline``. Persistence: Params JSON + safetensors weights (no pickle), as
``ImageClassificationModel``'s."""

from __future__ import annotations

from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param.shared import HasOutputCol
from pyspark.ml.util import MLReadable, MLWritable

from sparkvision.errors import DataError
from sparkvision.ml.model import ImageClassificationModel
from sparkvision.ml.params import (
    TrainedNetworkParams,
    declare_params,
    image_and_output_columns,
    network_values,
    set_known,
)
from sparkvision.ml.persistence import FolderKind, FolderReader, FolderWriter, TrustedLoad
from sparkvision.settings import FeaturizerSettings

#: Saved-featurizer format (``metadata/part-00000`` + ``weights.safetensors``).
FEATURIZER_FORMAT = "sparkvision-featurizer/1"
#: A featurizer folder (``ml/persistence.py``) and its errors.
FEATURIZER_FOLDER = FolderKind(
    format=FEATURIZER_FORMAT,
    missing="no featurizer at {path} ({weights} missing): give a folder written by "
            "ImageFeaturizer.save",
    exists="something is already saved at {path}: use "
           "featurizer.write().overwrite().save(path) or another path",
    wrong_format="the folder {path} has format {found!r}, not a featurizer "
                 f"({FEATURIZER_FORMAT!r}): load a model folder with "
                 "ImageFeaturizer.fromModelDir(path)",
    no_weights="this featurizer has no weights to save: make it with "
               "ImageFeaturizer.fromModel(model) or fromModelDir(path)",
)


class ImageFeaturizer(Transformer, TrainedNetworkParams, HasOutputCol, TrustedLoad,
                      MLWritable, MLReadable):
    """Adds ``outputCol`` (a pyspark.ml ``DenseVector``) holding the features a trained
    network computes for each image of ``imageCol`` (raw uint8 HWC bytes or PNG/JPEG as
    ``prepare`` stores them); every other column is kept.

    ``layer=""`` takes the input of the classifier head (the penultimate features: 128
    numbers for ``cnn``); a module name from ``named_modules()`` (e.g. ``"0"`` or
    ``"0.4"``) takes that module's output, flattened per image. The network is built and
    the layer checked on the driver before any job runs; on the executors it is loaded once
    per Python worker.

    Make one from a trained model: ``ImageFeaturizer.fromModel(model)``,
    ``ImageFeaturizer.fromModelDir(path)`` or ``ImageFeaturizer(modelDir=path)``.
    """

    _tables: tuple[type, ...] = (FeaturizerSettings,)  # its Params: these rows

    @keyword_only
    def __init__(self, *, weights: bytes = b"", modelDir: str | None = None,
                 trustCode: bool = False, **params: Any) -> None:
        """Params by keyword (the rows of ``settings.FeaturizerSettings``)."""
        super().__init__()
        kwargs = dict(self._input_kwargs)
        self.weights: bytes = kwargs.pop("weights", b"")
        model_dir = kwargs.pop("modelDir", None)
        trust = bool(kwargs.pop("trustCode", False))
        self._probed: tuple[str, int] | None = None
        if model_dir is not None:
            self._take_network(ImageClassificationModel.load(model_dir, trust_code=trust))
        set_known(self, kwargs, FeaturizerSettings)

    # ------------------------------------------------------------------ construction
    @classmethod
    def fromModel(cls, model: ImageClassificationModel, layer: str = "") -> ImageFeaturizer:
        """The featurizer of a trained ``ImageClassificationModel``: its network, weights,
        image shape, classes, image column and inference batch size."""
        featurizer = cls(layer=layer)
        featurizer._take_network(model)
        return featurizer

    @classmethod
    def fromModelDir(cls, path: str, layer: str = "", trust_code: bool = False
                     ) -> ImageFeaturizer:
        """The featurizer of a model folder (``sparkvision train --out``), loaded with
        ``ImageClassificationModel.load``'s checks (weights' size and SHA-256, tensor shapes;
        a network named by an import path needs ``trust_code=True``)."""
        return cls.fromModel(ImageClassificationModel.load(path, trust_code=trust_code),
                             layer=layer)

    def _take_network(self, model: ImageClassificationModel) -> None:
        if not model.weights:
            raise DataError("the model has no weights: fit or load it before making a "
                            "featurizer of it")
        get = model.getOrDefault
        self.weights = model.weights
        self._set(**network_values(model), inferenceBatchSize=get(model.inferenceBatchSize))

    # ------------------------------------------------------------------ driver checks
    @property
    def numClasses(self) -> int:
        return len(self.getOrDefault(self.classes))

    def _feature_config(self):
        from sparkvision.inference.features import FeatureConfig

        get = self.getOrDefault
        self.checkTables()  # inferenceBatchSize
        if not self.weights:
            raise DataError("this featurizer has no weights: make it with "
                            "ImageFeaturizer.fromModel(model), fromModelDir(path) or "
                            "ImageFeaturizer.load(path)")
        return FeatureConfig(model=get(self.model), num_classes=self.numClasses,
                             image_shape=self.trainedShape(), weights=self.weights,
                             layer=get(self.layer), batch_size=get(self.inferenceBatchSize),
                             input_mean=tuple(get(self.inputMean)),
                             input_std=tuple(get(self.inputStd)))

    def featureDimension(self) -> int:
        """Length of the feature vectors at ``layer``, found on the driver by one forward
        pass of a blank image (cached); ``InvalidParameterError`` for an unknown layer."""
        return self._dimension(self._feature_config())

    def _dimension(self, config: Any) -> int:
        from sparkvision.inference.features import feature_dimension
        from sparkvision.inference.network_cache import TrainedNetwork

        key = f"{TrainedNetwork.of(config).key}:{config.layer}"
        if self._probed is None or self._probed[0] != key:
            self._probed = (key, feature_dimension(config))
        return self._probed[1]

    # ------------------------------------------------------------------ transform
    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        from sparkvision.inference.features import make_features_udf

        image_col, out = image_and_output_columns(self, dataset)
        config = self._feature_config()
        dim = self._dimension(config)  # the layer is checked here, before any job
        # Only the image column travels to Python; the vector is built in the JVM. The
        # ml_attr metadata gives MLlib the vector's size without a pass over the data.
        features = array_to_vector(make_features_udf(config)(F.col(f"`{image_col}`")))
        kept = [F.col(f"`{c}`") for c in dataset.columns if c != out]
        return dataset.select(*kept, features.alias(
            out, metadata={"ml_attr": {"num_attrs": dim}}))

    # ------------------------------------------------------------------ persistence
    def write(self) -> FolderWriter:
        return FolderWriter(self, FEATURIZER_FOLDER)

    @classmethod
    def read(cls) -> FolderReader:
        return FolderReader(cls, FEATURIZER_FOLDER)


declare_params(ImageFeaturizer, FeaturizerSettings)
