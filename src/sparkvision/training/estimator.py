"""``ImageClassifier`` (a pyspark.ml Estimator) and ``ImageClassificationModel``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)

from sparkvision.config import PredictConfig, TrainConfig
from sparkvision.errors import DataError, InvalidParameterError
from sparkvision.training.params import ClassifierParams, ModelParams

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
HISTORY_FILE = "history.json"


def _image_shape(df, configured: list[int]) -> tuple[int, int, int]:
    if configured:
        return tuple(configured)  # type: ignore[return-value]
    needed = ("height", "width", "channels")
    if not all(c in df.columns for c in needed):
        raise InvalidParameterError(
            "imageShape", configured,
            "set imageShape=[height, width, channels], or give data with height/width/"
            "channels columns (as `sparkvision prepare` writes)",
        )
    row = df.select(*needed).first()
    if row is None:
        raise DataError("the training DataFrame is empty: give it at least one row")
    return int(row.height), int(row.width), int(row.channels)


def _check_labels(df, label_col: str, classes: list[str]) -> list[str]:
    """Validate labels with one aggregate; return the class names (default '0'..'K-1')."""
    from pyspark.sql import functions as F

    if label_col not in df.columns:
        raise InvalidParameterError(
            "labelCol", label_col, f"the DataFrame has columns {df.columns}; name the label"
        )
    row = df.agg(
        F.count(F.lit(1)).alias("n"),
        F.count(label_col).alias("labelled"),
        F.min(label_col).alias("lo"),
        F.max(label_col).alias("hi"),
    ).first()
    if row is None or row.n == 0:
        raise DataError("the training DataFrame is empty: give it at least one row")
    if row.labelled != row.n:
        raise DataError(
            f"{row.n - row.labelled} rows have a null {label_col!r}: drop or label them"
        )
    if row.lo < 0 or int(row.lo) != row.lo or int(row.hi) != row.hi:
        raise DataError(
            f"labels in {label_col!r} must be class indexes 0, 1, ... (found {row.lo}..{row.hi})"
        )
    if classes and row.hi >= len(classes):
        raise InvalidParameterError(
            "classes", classes,
            f"labels go up to {int(row.hi)} but only {len(classes)} class names were given",
        )
    return classes or [str(i) for i in range(int(row.hi) + 1)]


class ImageClassifier(Estimator, ClassifierParams, DefaultParamsWritable, DefaultParamsReadable):
    """Trains a PyTorch CNN data-parallel inside one Spark barrier stage.

    ``batchSize`` is per worker. ``validationDf`` (a DataFrame) and ``onEpochEnd`` (called
    on the driver with each epoch's metrics while training runs) are not persisted Params.
    """

    @keyword_only
    def __init__(
        self, *, model: str = "cnn", numWorkers: int = 2, epochs: int = 10,
        batchSize: int = 64, learningRate: float = 0.003, optimizer: str = "adam",
        weightDecay: float = 0.0, loss: str = "cross_entropy", lrSchedule: str = "cosine",
        augment: str = "shift", seed: int = 0, imageCol: str = "image",
        labelCol: str = "label", validationFraction: float = 0.0, checkpointDir: str = "",
        classWeights: Any = None, useGpu: str = "auto", repartition: bool = True,
        imageShape: list[int] | None = None, classes: list[str] | None = None,
        validationDf: Any = None, onEpochEnd: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__()
        self._set_classifier_defaults()
        self._validation_df = None
        self._on_epoch_end = None
        self._fault_injection: tuple[int, int] | None = None  # test hook
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> ImageClassifier:
        kwargs = dict(self._input_kwargs)
        if "validationDf" in kwargs:
            self._validation_df = kwargs.pop("validationDf")
        if "onEpochEnd" in kwargs:
            self._on_epoch_end = kwargs.pop("onEpochEnd")
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return self._set(**kwargs)

    def setValidationDf(self, df: Any) -> ImageClassifier:
        self._validation_df = df
        return self

    def setOnEpochEnd(self, callback: Callable[[dict[str, Any]], None] | None) -> ImageClassifier:
        self._on_epoch_end = callback
        return self

    # ------------------------------------------------------------------ fit
    def _fit(self, dataset) -> ImageClassificationModel:
        from sparkvision.training.launcher import layout, run_distributed

        self._validate()
        spark = dataset.sparkSession
        get = self.getOrDefault
        image_col, label_col = get(self.imageCol), get(self.labelCol)
        train_df, val_df = dataset, self._validation_df
        if val_df is None and get(self.validationFraction) > 0:
            frac = get(self.validationFraction)
            train_df, val_df = dataset.randomSplit([1 - frac, frac], seed=get(self.seed))
        shape = _image_shape(dataset, get(self.imageShape))
        classes = _check_labels(dataset, label_col, list(get(self.classes)))
        num_classes = len(classes)
        weights = self._class_weights(train_df, label_col, num_classes)
        own_dir = not get(self.checkpointDir)
        checkpoint_dir = get(self.checkpointDir) or tempfile.mkdtemp(prefix="sparkvision-ckpt-")
        config = TrainConfig(
            model=get(self.model), num_classes=num_classes, image_shape=shape,
            num_workers=get(self.numWorkers), epochs=get(self.epochs),
            batch_size=get(self.batchSize), learning_rate=get(self.learningRate),
            optimizer=get(self.optimizer), weight_decay=get(self.weightDecay),
            loss=get(self.loss), lr_schedule=get(self.lrSchedule), augment=get(self.augment),
            seed=get(self.seed), class_weights=weights, checkpoint_dir=checkpoint_dir,
            use_gpu=get(self.useGpu), fault_injection=self._fault_injection,
        )
        data = layout(train_df, val_df, image_col, label_col, config.num_workers,
                      get(self.repartition))
        log.info("training %s on %d workers for %d epochs", config.model,
                 config.num_workers, config.epochs)
        try:
            out = run_distributed(spark, data, config, self._on_epoch_end)
        finally:
            if own_dir:  # a temporary folder only serves retries within this fit
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
        out.history["checkpoint_dir"] = None if own_dir else checkpoint_dir
        model = ImageClassificationModel(
            weights=out.weights, history=out.history, model=config.model,
            imageShape=list(shape), classes=classes, imageCol=image_col,
        )
        return model

    def _class_weights(self, df, label_col: str, num_classes: int) -> tuple[float, ...] | None:
        value = self.getOrDefault(self.classWeights)
        if not value:
            return None
        if value == "balanced":
            counts = {int(r[0]): int(r[1]) for r in df.groupBy(label_col).count().collect()}
            total = sum(counts.values())
            return tuple(
                total / (num_classes * counts[c]) if counts.get(c) else 0.0
                for c in range(num_classes)
            )
        if len(value) != num_classes:
            raise InvalidParameterError(
                "classWeights", value, f"give one weight per class ({num_classes} classes)"
            )
        return tuple(float(v) for v in value)


class ImageClassificationModel(Model, ModelParams, MLWritable, MLReadable):
    """Adds ``prediction`` (index), ``predictedLabel``, ``probability`` (of the predicted
    class) and ``probabilities`` (all classes) with an Arrow UDF; the network is loaded once
    per Python worker."""

    @keyword_only
    def __init__(
        self, *, weights: bytes = b"", history: dict[str, Any] | None = None,
        model: str = "cnn", imageShape: list[int] | None = None,
        classes: list[str] | None = None, imageCol: str = "image",
        predictionCol: str = "prediction", predictedLabelCol: str = "predictedLabel",
        probabilityCol: str = "probability", probabilitiesCol: str = "probabilities",
        inferenceBatchSize: int = 1024,
    ) -> None:
        super().__init__()
        self._set_model_defaults()
        kwargs = dict(self._input_kwargs)
        self.weights: bytes = kwargs.pop("weights", b"")
        self.history: dict[str, Any] = kwargs.pop("history", None) or {}
        self._set(**{k: v for k, v in kwargs.items() if v is not None})

    @property
    def numClasses(self) -> int:
        return len(self.getOrDefault(self.classes))

    def _predict_config(self) -> tuple[PredictConfig, str]:
        get = self.getOrDefault
        config = PredictConfig(
            model=get(self.model), num_classes=self.numClasses,
            image_shape=tuple(get(self.imageShape)),  # type: ignore[arg-type]
            weights=self.weights, classes=tuple(get(self.classes)),
            image_col=get(self.imageCol), prediction_col=get(self.predictionCol),
            predicted_label_col=get(self.predictedLabelCol),
            probability_col=get(self.probabilityCol),
            probabilities_col=get(self.probabilitiesCol),
            batch_size=get(self.inferenceBatchSize),
        )
        return config, hashlib.sha1(self.weights).hexdigest() + self.uid

    def _transform(self, dataset):
        from pyspark.sql import functions as F

        from sparkvision.inference.batch import RESULT_FIELDS, make_predict_udf

        config, key = self._predict_config()
        if config.image_col not in dataset.columns:
            raise InvalidParameterError(
                "imageCol", config.image_col,
                f"the DataFrame has columns {dataset.columns}; name the image column",
            )
        # Only the image column travels to Python; the other columns stay in the JVM.
        tmp = f"_sv_pred_{self.uid}"
        out_names = (config.prediction_col, config.predicted_label_col,
                     config.probability_col, config.probabilities_col)
        with_struct = dataset.withColumn(tmp, make_predict_udf(config, key)(config.image_col))
        return with_struct.select(
            *[F.col(f"`{c}`") for c in dataset.columns],
            *[F.col(tmp)[field].alias(name) for field, name in zip(RESULT_FIELDS, out_names,
                                                                    strict=True)],
        )

    # ------------------------------------------------------------------ persistence
    def write(self) -> MLWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ModelReader(cls)


class _ModelWriter(MLWriter):
    def __init__(self, instance: ImageClassificationModel) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        DefaultParamsWriter.saveMetadata(
            self.instance, path, sc, extraMetadata={"format": "sparkvision/1"}
        )
        local = path[5:] if path.startswith("file:") else path
        os.makedirs(local, exist_ok=True)
        with open(os.path.join(local, WEIGHTS_FILE), "wb") as fh:
            fh.write(self.instance.weights)
        with open(os.path.join(local, HISTORY_FILE), "w", encoding="utf-8") as fh:
            json.dump(self.instance.history, fh, indent=2)


class _ModelReader(MLReader):
    def __init__(self, cls: type[ImageClassificationModel]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> ImageClassificationModel:
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        local = path[5:] if path.startswith("file:") else path
        weights_path = os.path.join(local, WEIGHTS_FILE)
        if not os.path.exists(weights_path):
            raise DataError(
                f"no model at {path} ({WEIGHTS_FILE} missing): give a folder written by "
                "ImageClassificationModel.save or `sparkvision train --out`"
            )
        metadata = DefaultParamsReader.loadMetadata(path, sc)
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        with open(weights_path, "rb") as fh:
            instance.weights = fh.read()
        with open(os.path.join(local, HISTORY_FILE), encoding="utf-8") as fh:
            instance.history = json.load(fh)
        return instance
