"""pyspark.ml Params shared by ImageClassifier and ImageClassificationModel."""

from __future__ import annotations

from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasLabelCol, HasPredictionCol, HasProbabilityCol, HasSeed

from sparkvision.errors import InvalidParameterError

OPTIMIZERS = ("adam", "sgd")
LOSSES = ("cross_entropy", "mse")
SCHEDULES = ("cosine", "constant")
AUGMENTS = ("shift", "none")
GPU_CHOICES = ("auto", "true", "false")


def _to_class_weights(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        if value != "balanced":
            raise TypeError(f"classWeights must be 'balanced' or a list of floats, got {value!r}")
        return value
    return TypeConverters.toListFloat(value)


class HasImageParams(Params):
    imageCol = Param(Params._dummy(), "imageCol", "column of raw uint8 HWC image bytes",
                     typeConverter=TypeConverters.toString)
    model = Param(Params._dummy(), "model",
                  "network: cnn, simple_cnn, lenet5, resnet8 or 'package.module:function'",
                  typeConverter=TypeConverters.toString)
    imageShape = Param(Params._dummy(), "imageShape",
                       "[height, width, channels]; empty = read from the data's columns",
                       typeConverter=TypeConverters.toListInt)
    classes = Param(Params._dummy(), "classes",
                    "class names in label-index order; empty = '0', '1', ...",
                    typeConverter=TypeConverters.toListString)


class ClassifierParams(HasImageParams, HasLabelCol, HasSeed):
    numWorkers = Param(Params._dummy(), "numWorkers", "training tasks (one barrier task each)",
                       typeConverter=TypeConverters.toInt)
    epochs = Param(Params._dummy(), "epochs", "passes over the training data",
                   typeConverter=TypeConverters.toInt)
    batchSize = Param(Params._dummy(), "batchSize", "mini-batch size per worker",
                      typeConverter=TypeConverters.toInt)
    learningRate = Param(Params._dummy(), "learningRate", "peak learning rate",
                         typeConverter=TypeConverters.toFloat)
    optimizer = Param(Params._dummy(), "optimizer", "adam or sgd (momentum 0.9)",
                      typeConverter=TypeConverters.toString)
    weightDecay = Param(Params._dummy(), "weightDecay", "L2 weight decay",
                        typeConverter=TypeConverters.toFloat)
    loss = Param(Params._dummy(), "loss", "cross_entropy or mse (softmax vs one-hot)",
                 typeConverter=TypeConverters.toString)
    lrSchedule = Param(Params._dummy(), "lrSchedule", "cosine (with warm-up) or constant",
                       typeConverter=TypeConverters.toString)
    augment = Param(Params._dummy(), "augment", "shift (random translation) or none",
                    typeConverter=TypeConverters.toString)
    validationFraction = Param(Params._dummy(), "validationFraction",
                               "fraction of the input held out for validation when no "
                               "validationDf is given", typeConverter=TypeConverters.toFloat)
    checkpointDir = Param(Params._dummy(), "checkpointDir",
                          "shared folder for per-epoch checkpoints; training resumes from "
                          "the latest one in it; empty = a fresh temporary folder",
                          typeConverter=TypeConverters.toString)
    classWeights = Param(Params._dummy(), "classWeights",
                         "per-class loss weights, or 'balanced'", typeConverter=_to_class_weights)
    useGpu = Param(Params._dummy(), "useGpu", "auto, true or false",
                   typeConverter=TypeConverters.toString)
    repartition = Param(Params._dummy(), "repartition",
                        "spread rows evenly over numWorkers (a shuffle); false keeps the "
                        "input partitions (coalesced to numWorkers)",
                        typeConverter=TypeConverters.toBoolean)

    def _set_classifier_defaults(self) -> None:
        self._setDefault(
            imageCol="image", labelCol="label", model="cnn", imageShape=[], classes=[],
            numWorkers=2, epochs=10, batchSize=64, learningRate=0.003, optimizer="adam",
            weightDecay=0.0, loss="cross_entropy", lrSchedule="cosine", augment="shift",
            validationFraction=0.0, checkpointDir="", classWeights=[], useGpu="auto",
            repartition=True, seed=0,
        )

    def _validate(self) -> None:
        """Raise InvalidParameterError for any out-of-range Param (driver side)."""
        from sparkvision.models.registry import validate_model_name

        validate_model_name(self.getOrDefault(self.model))
        positive = {
            "numWorkers": "use 1 or more", "epochs": "use 1 or more",
            "batchSize": "use 1 or more",
        }
        for name, fix in positive.items():
            value = self.getOrDefault(getattr(self, name))
            if value < 1:
                raise InvalidParameterError(name, value, fix)
        lr = self.getOrDefault(self.learningRate)
        if not 0 < lr < 10:
            raise InvalidParameterError("learningRate", lr, "use a value in (0, 10), e.g. 0.003")
        if self.getOrDefault(self.weightDecay) < 0:
            raise InvalidParameterError("weightDecay", self.getOrDefault(self.weightDecay),
                                        "use 0 or more")
        frac = self.getOrDefault(self.validationFraction)
        if not 0 <= frac < 1:
            raise InvalidParameterError("validationFraction", frac, "use a value in [0, 1)")
        for name, choices in (("optimizer", OPTIMIZERS), ("loss", LOSSES),
                              ("lrSchedule", SCHEDULES), ("augment", AUGMENTS),
                              ("useGpu", GPU_CHOICES)):
            value = self.getOrDefault(getattr(self, name))
            if value not in choices:
                raise InvalidParameterError(name, value, f"use one of {', '.join(choices)}")
        shape = self.getOrDefault(self.imageShape)
        if shape and (len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3)):
            raise InvalidParameterError("imageShape", shape, "use [height, width, 1 or 3]")


class ModelParams(HasImageParams, HasPredictionCol, HasProbabilityCol):
    predictedLabelCol = Param(Params._dummy(), "predictedLabelCol", "class-name output column",
                              typeConverter=TypeConverters.toString)
    probabilitiesCol = Param(Params._dummy(), "probabilitiesCol",
                             "output column with every class probability",
                             typeConverter=TypeConverters.toString)
    inferenceBatchSize = Param(Params._dummy(), "inferenceBatchSize",
                               "images per forward pass in transform",
                               typeConverter=TypeConverters.toInt)

    def _set_model_defaults(self) -> None:
        self._setDefault(
            imageCol="image", model="cnn", imageShape=[], classes=[],
            predictionCol="prediction", predictedLabelCol="predictedLabel",
            probabilityCol="probability", probabilitiesCol="probabilities",
            inferenceBatchSize=1024,
        )
