"""pyspark.ml Params: one class shared by ``ImageClassifier`` and ``ImageClassificationModel``
(as pyspark.ml's own classifiers do), so ``_copyValues`` carries every Param to the model."""

from __future__ import annotations

from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasLabelCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasRawPredictionCol,
    HasSeed,
)

from sparkvision.config import CLASSIFIER_DEFAULTS, OUTPUT_DEFAULTS
from sparkvision.errors import InvalidParameterError

OPTIMIZERS = ("adam", "sgd")
LOSSES = ("cross_entropy", "mse", "focal")
SCHEDULES = ("cosine", "constant")
AUGMENTS = ("shift", "none")
GPU_CHOICES = ("auto", "true", "false")
BALANCES = ("none", "oversample", "undersample", "weights")
INFERENCE_BACKENDS = ("auto", "torch", "onnxruntime")
FREEZE_CHOICES = ("none", "backbone")
PRIVACY_CHOICES = ("none", "dp")


def _to_class_weights(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        if value != "balanced":
            raise TypeError(f"classWeights must be 'balanced' or a list of floats, got {value!r}")
        return value
    return TypeConverters.toListFloat(value)


def _param(name: str, doc: str, converter: Any) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=converter)


_S, _I, _F, _B = (TypeConverters.toString, TypeConverters.toInt, TypeConverters.toFloat,
                  TypeConverters.toBoolean)


class ImageClassifierParams(
    HasLabelCol, HasSeed, HasPredictionCol, HasRawPredictionCol, HasProbabilityCol
):
    """Training Params, and the output-column Params of the model."""

    imageCol = _param("imageCol", "column of raw uint8 HWC image bytes", _S)
    model = _param("model", "network: cnn, simple_cnn, lenet5, resnet8 or "
                   "'package.module:function'", _S)
    imageShape = _param("imageShape", "[height, width, channels]; empty = read from the "
                        "data's columns", TypeConverters.toListInt)
    classes = _param("classes", "class names in label-index order; empty = '0', '1', ...",
                     TypeConverters.toListString)
    numWorkers = _param("numWorkers", "training tasks (one barrier task each)", _I)
    epochs = _param("epochs", "passes over the training data", _I)
    batchSize = _param("batchSize", "mini-batch size per worker", _I)
    learningRate = _param("learningRate", "peak learning rate", _F)
    optimizer = _param("optimizer", "adam or sgd (momentum 0.9)", _S)
    weightDecay = _param("weightDecay", "L2 weight decay", _F)
    loss = _param("loss", "cross_entropy, mse (softmax vs one-hot) or focal", _S)
    focalGamma = _param("focalGamma", "focusing parameter gamma of loss=focal (>= 0)", _F)
    lrSchedule = _param("lrSchedule", "cosine (with warm-up) or constant", _S)
    augment = _param("augment", "shift (random translation) or none", _S)
    validationFraction = _param("validationFraction", "fraction of the input held out for "
                                "validation when no validationDf is given", _F)
    checkpointDir = _param("checkpointDir", "shared folder for per-epoch checkpoints; training "
                           "resumes from the latest one in it; empty = a fresh temporary "
                           "folder", _S)
    classWeights = _param("classWeights", "per-class loss weights, or 'balanced'",
                          _to_class_weights)
    balance = _param("balance", "class imbalance handling: none, oversample, undersample "
                     "(of the training rows, by Spark) or weights (classWeights='balanced')", _S)
    useGpu = _param("useGpu", "auto, true or false", _S)
    stallTimeout = _param("stallTimeout", "seconds a training rank may make no progress (or "
                          "not start) before the driver cancels the training with an error "
                          "naming the rank, its host and its last step", _F)
    memoryBudgetMB = _param("memoryBudgetMB", "MB of images a training task keeps in "
                            "memory; a larger partition is written once to the executor's "
                            "local dir (spark.local.dir) and memory-mapped; 0 = auto (half "
                            "the memory available on the executor's host, shared by the "
                            "training tasks there)", _F)
    repartition = _param("repartition", "spread rows evenly over numWorkers (a shuffle); false "
                         "keeps the input partitions (coalesced to numWorkers)", _B)
    initWeights = _param("initWeights", "a .safetensors state dict the network starts from "
                         "(path or URL); empty = a fresh initialisation", _S)
    initStrict = _param("initStrict", "initWeights/initFrom must fit the network exactly "
                        "(every key and shape); false loads what fits and records a report "
                        "of the missing, unexpected and shape-mismatched keys", _B)
    initFrom = _param("initFrom", "a model folder (sparkvision train --out) the network "
                      "starts from; its classifier head is re-initialised when its classes "
                      "differ from the data's", _S)
    freeze = _param("freeze", "none, or backbone: only the classifier head trains (the "
                    "backbone's weights and batch-norm statistics stay bit-identical)", _S)
    backboneLrScale = _param("backboneLrScale", "the backbone's learning rate as a multiple "
                             "of learningRate (the head's); 1 = one rate for all", _F)
    privacy = _param("privacy", "none, or dp: differentially private training (Opacus "
                     "DP-SGD: per-example gradients clipped to maxGradNorm, Gaussian noise "
                     "calibrated to spend at most targetEpsilon at targetDelta)", _S)
    targetEpsilon = _param("targetEpsilon", "privacy budget ε of the whole training (> 0)", _F)
    targetDelta = _param("targetDelta", "δ of the (ε, δ) guarantee; below 1 / training rows",
                         _F)
    maxGradNorm = _param("maxGradNorm", "L2 norm each example's gradient is clipped to under "
                         "privacy='dp'", _F)
    predictedLabelCol = _param("predictedLabelCol", "output column of the class name", _S)
    confidenceCol = _param("confidenceCol", "output column of the top class's probability", _S)
    inferenceBatchSize = _param("inferenceBatchSize", "images per forward pass in transform",
                                _I)
    inferenceBackend = _param("inferenceBackend", "what runs the network in transform: "
                              "torch, onnxruntime (the network exported to ONNX once per "
                              "Python worker) or auto (onnxruntime where it is installed and "
                              "the network exports, else torch)", _S)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(**CLASSIFIER_DEFAULTS, **OUTPUT_DEFAULTS)

    def validateParams(self) -> None:
        """Raise InvalidParameterError for any out-of-range Param (driver side)."""
        from sparkvision.models.registry import validate_model_name

        get = self.getOrDefault
        validate_model_name(get(self.model))
        self.validateInferenceParams()
        for name in ("numWorkers", "epochs", "batchSize"):
            value = get(getattr(self, name))
            if value < 1:
                raise InvalidParameterError(name, value, "use 1 or more")
        lr = get(self.learningRate)
        if not 0 < lr < 10:
            raise InvalidParameterError("learningRate", lr, "use a value in (0, 10), e.g. 0.003")
        for name in ("weightDecay", "focalGamma"):
            if get(getattr(self, name)) < 0:
                raise InvalidParameterError(name, get(getattr(self, name)), "use 0 or more")
        if not get(self.memoryBudgetMB) >= 0:
            raise InvalidParameterError("memoryBudgetMB", get(self.memoryBudgetMB),
                                        "give MB >= 0 (0 = auto), e.g. 2048")
        if not get(self.stallTimeout) > 0:
            raise InvalidParameterError("stallTimeout", get(self.stallTimeout),
                                        "give seconds > 0, e.g. 600")
        frac = get(self.validationFraction)
        if not 0 <= frac < 1:
            raise InvalidParameterError("validationFraction", frac, "use a value in [0, 1)")
        for name, choices in (("optimizer", OPTIMIZERS), ("loss", LOSSES),
                              ("lrSchedule", SCHEDULES), ("augment", AUGMENTS),
                              ("useGpu", GPU_CHOICES), ("balance", BALANCES)):
            value = get(getattr(self, name))
            if value not in choices:
                raise InvalidParameterError(name, value, f"use one of {', '.join(choices)}")
        if get(self.balance) == "weights" and get(self.classWeights) not in ([], "balanced"):
            raise InvalidParameterError(
                "balance", "weights", "balance='weights' sets classWeights='balanced'; do not "
                "also give explicit classWeights"
            )
        if get(self.freeze) not in FREEZE_CHOICES:
            raise InvalidParameterError("freeze", get(self.freeze),
                                        f"use one of {', '.join(FREEZE_CHOICES)}")
        scale = get(self.backboneLrScale)
        if not 0 <= scale <= 100:
            raise InvalidParameterError("backboneLrScale", scale,
                                        "use a factor in [0, 100], e.g. 0.1")
        if get(self.privacy) not in PRIVACY_CHOICES:
            raise InvalidParameterError("privacy", get(self.privacy),
                                        f"use one of {', '.join(PRIVACY_CHOICES)}")
        if not get(self.targetEpsilon) > 0:
            raise InvalidParameterError("targetEpsilon", get(self.targetEpsilon),
                                        "give ε > 0, e.g. 8 (smaller: more privacy, more noise)")
        if not 0 < get(self.targetDelta) < 1:
            raise InvalidParameterError("targetDelta", get(self.targetDelta),
                                        "give δ in (0, 1 / training rows), e.g. 1e-5")
        if not get(self.maxGradNorm) > 0:
            raise InvalidParameterError("maxGradNorm", get(self.maxGradNorm),
                                        "give a clipping norm > 0, e.g. 1.0")
        if get(self.initWeights) and get(self.initFrom):
            raise InvalidParameterError(
                "initFrom", get(self.initFrom), "give either initWeights (a safetensors file) "
                "or initFrom (a model folder), not both")
        shape = get(self.imageShape)
        if shape and (len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3)):
            raise InvalidParameterError("imageShape", shape, "use [height, width, 1 or 3]")

    def validateInferenceParams(self) -> None:
        """Raise InvalidParameterError for a bad Param of ``transform`` (driver side)."""
        get = self.getOrDefault
        size = get(self.inferenceBatchSize)
        if size < 1:
            raise InvalidParameterError("inferenceBatchSize", size, "use 1 or more")
        backend = get(self.inferenceBackend)
        if backend not in INFERENCE_BACKENDS:
            raise InvalidParameterError(
                "inferenceBackend", backend, f"use one of {', '.join(INFERENCE_BACKENDS)}"
            )


class TrainedNetworkParams(Params):
    """The image column and the description of a trained network (name, input shape,
    classes): what a Transformer built from an ``ImageClassificationModel`` carries."""

    imageCol = _param("imageCol", "column of the images (raw uint8 HWC bytes, or PNG/JPEG)",
                      _S)
    model = _param("model", "network: cnn, simple_cnn, lenet5, resnet8 or "
                   "'package.module:function'", _S)
    imageShape = _param("imageShape", "[height, width, channels] the network takes",
                        TypeConverters.toListInt)
    classes = _param("classes", "class names of the network's head, in index order",
                     TypeConverters.toListString)


def require_image_column(dataset: Any, image_col: str) -> None:
    """``InvalidParameterError`` naming imageCol unless ``dataset`` has that column."""
    if image_col not in dataset.columns:
        raise InvalidParameterError(
            "imageCol", image_col,
            f"the DataFrame has columns {dataset.columns}; name the image column")


def add_param_accessors(cls: type) -> type:
    """``getX``/``setX`` for every Param ``x`` of ``cls``, as pyspark.ml Params have them."""
    for name in dir(cls):
        if not isinstance(getattr(cls, name, None), Param):
            continue
        cap = name[0].upper() + name[1:]

        def getter(self: Params, _name: str = name) -> Any:
            return self.getOrDefault(_name)

        def setter(self: Params, value: Any, _name: str = name) -> Params:
            return self._set(**{_name: value})

        getter.__doc__ = f"Gets the value of {name} or its default value."
        setter.__doc__ = f"Sets the value of :py:attr:`{name}`."
        if not hasattr(cls, f"get{cap}"):
            setattr(cls, f"get{cap}", getter)
        if not hasattr(cls, f"set{cap}"):
            setattr(cls, f"set{cap}", setter)
    return cls


add_param_accessors(ImageClassifierParams)
