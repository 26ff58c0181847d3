"""The tables of settings: every Param of the Estimator and Transformers, written once.

A table is a frozen dataclass; each field is one row: its Python type, its default and a
``Setting`` (the Param's camelCase name, doc, choices or range, CLI flag and help, whether
tuning may search it). From the rows come the pyspark.ml Params with getters and setters
(``ml/params.py``), their defaults, their range and choice checks (``check``), the CLI
flags of ``train``/``tune`` (``cli/train.py``), tuning's space validation
(``tuning/space.py``) and the frozen config shipped to executors (``config.TrainConfig``
extends ``TrainSettings``). Adding a setting = one row here + the code that uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sparkvision.errors import InvalidParameterError

#: Attribution methods of ``ImageExplainer`` / ``sparkvision explain``.
METHODS = ("gradcam", "saliency", "integrated_gradients", "occlusion")
#: The class an attribution explains.
TARGETS = ("predicted", "true")
#: ``ImageClassificationEvaluator``'s metricName → (key in the computed metrics, larger is
#: better)
EVALUATOR_METRICS: dict[str, tuple[str, bool]] = {
    "accuracy": ("accuracy", True),
    "f1": ("weighted_f1", True),
    "weightedPrecision": ("weighted_precision", True),
    "weightedRecall": ("weighted_recall", True),
    "weightedF1": ("weighted_f1", True),
    "macroPrecision": ("macro_precision", True),
    "macroRecall": ("macro_recall", True),
    "macroF1": ("macro_f1", True),
    "logLoss": ("log_loss", False),
    "topKAccuracy": ("top_k_accuracy", True),
    "rocAUC": ("macro_roc_auc", True),
    "prAUC": ("macro_pr_auc", True),
    "ece": ("ece", False),
}


@dataclass(frozen=True)
class Setting:
    """What a table row says beyond its type and default."""

    param: str  # the pyspark.ml Param's name (camelCase)
    doc: str
    choices: tuple[Any, ...] = ()
    low: float | None = None  # range bounds (None: unbounded); ``*_open``: excluded
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    example: str = ""  # a good value, shown in the fix of an out-of-range value
    flag: str = ""  # CLI flag of `train`/`tune` ("" = none)
    help: str = ""  # the flag's help (default: ``doc``)
    metavar: str | None = None
    tunable: bool = False  # a tuning space may search it
    #: Param type converter for values no plain type describes (e.g. classWeights)
    converter: Callable[[Any], Any] | None = None
    #: a shared pyspark.ml Param (``pyspark.ml.param.shared``) already declares it
    shared: bool = False


def setting(default: Any, param: str, doc: str, **kw: Any) -> Any:
    """One row: a dataclass field whose metadata is its ``Setting``."""
    return field(default=default, metadata={"setting": Setting(param, doc, **kw)})


@dataclass(frozen=True)
class Row:
    """A row as read back from a table."""

    field: str  # the snake_case field of the table (and of the executor config)
    type: Any  # the field's resolved annotation
    default: Any
    setting: Setting

    @property
    def param(self) -> str:
        return self.setting.param

    @property
    def param_default(self) -> Any:
        """The default as the Param stores it (JSON-friendly lists, not tuples)."""
        return list(self.default) if isinstance(self.default, tuple) else self.default

    @property
    def base_type(self) -> type:
        """``int``, ``float``, ``str``, ``bool`` or ``tuple`` (first type of a union)."""
        tp = self.type
        args = typing.get_args(tp)
        origin = typing.get_origin(tp)
        if origin is tuple:
            return tuple
        if args and origin is not tuple:  # a union: its first member
            first = args[0]
            return typing.get_origin(first) or first
        return tp

    def check(self, value: Any) -> None:
        """``InvalidParameterError`` naming the Param when ``value`` is not a choice or is
        out of range."""
        s = self.setting
        if s.choices and value not in s.choices:
            raise InvalidParameterError(s.param, value,
                                        f"use one of {', '.join(map(str, s.choices))}")
        if s.low is None and s.high is None:
            return
        below = s.low is not None and (value <= s.low if s.low_open else value < s.low)
        above = s.high is not None and (value >= s.high if s.high_open else value > s.high)
        if below or above or value != value:  # NaN is never in range
            raise InvalidParameterError(s.param, value, self.range_fix())

    def range_fix(self) -> str:
        s = self.setting
        e = f", e.g. {s.example}" if s.example else ""
        if s.high is None:
            return (f"use a value > {s.low:g}{e}" if s.low_open else
                    f"use {s.low:g} or more{e}")
        lo = "(" if s.low_open else "["
        hi = ")" if s.high_open else "]"
        return f"use a value in {lo}{s.low:g}, {s.high:g}{hi}{e}"


@functools.cache
def rows(table: type) -> tuple[Row, ...]:
    """The rows of a settings table, in field order (base tables first)."""
    hints = typing.get_type_hints(table)
    return tuple(
        Row(f.name, hints[f.name], f.default, f.metadata["setting"])
        for f in dataclasses.fields(table) if "setting" in f.metadata
    )


def row(table: type, param: str) -> Row:
    """The row of Param ``param`` in ``table`` (KeyError when it has none)."""
    for r in rows(table):
        if r.param == param:
            return r
    raise KeyError(param)


def param_defaults(*tables: type) -> dict[str, Any]:
    """``{param: default}`` of the rows of ``tables`` (what ``_setDefault`` takes)."""
    return {r.param: r.param_default for t in tables for r in rows(t)}


def check_all(table: type, get: Callable[[str], Any]) -> None:
    """Check every row of ``table``'s value (``get(param)``) against its choices/range."""
    for r in rows(table):
        r.check(get(r.param))


def values(table: type, get: Callable[[str], Any]) -> Iterator[tuple[str, Any]]:
    """``(field, value)`` of each row, read with ``get(param)``; lists become tuples."""
    for r in rows(table):
        value = get(r.param)
        if isinstance(value, list):
            value = tuple(value)
        elif r.base_type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        yield r.field, value


def _class_weights(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        if value != "balanced":
            raise TypeError(f"classWeights must be 'balanced' or a list of floats, got {value!r}")
        return value
    return [float(v) for v in value]


# ---------------------------------------------------------------------------------- tables
_NETWORKS = ("cnn, simple_cnn, lenet5, resnet8, timm:NAME, torchvision:NAME, onnx:FILE or "
             "'package.module:function'")


@dataclass(frozen=True, kw_only=True)
class NetworkSettings:
    """A trained network and the column of its images: what the classifier, its model,
    the featurizer and the explainer share."""

    image_col: str = setting("image", "imageCol", "column of the images (raw uint8 HWC "
                             "bytes, or PNG/JPEG)")
    model: str = setting("cnn", "model", f"network: {_NETWORKS}", flag="--model",
                         help=f"{_NETWORKS.replace(' or ', ', ')} (default: cnn, or the "
                         "network of --init-from)", tunable=True)
    image_shape: tuple[int, ...] = setting((), "imageShape", "[height, width, channels]; "
                                           "empty = read from the data's columns")
    classes: tuple[str, ...] = setting((), "classes", "class names in label-index order; "
                                       "empty = '0', '1', ...")
    input_mean: tuple[float, ...] = setting(
        (), "inputMean", "per-channel mean the network's input is normalised with, after "
        "scaling pixels to [0, 1] (training resolves it from normalize and stores it with "
        "the model); empty = 0.5 (a fixed scaling to [-1, 1])", example="0.485,0.456,0.406")
    input_std: tuple[float, ...] = setting(
        (), "inputStd", "per-channel standard deviation of that normalisation; empty = 0.5",
        example="0.229,0.224,0.225")


@dataclass(frozen=True, kw_only=True)
class InferenceSettings:
    inference_batch_size: int = setting(1024, "inferenceBatchSize", "images per forward "
                                        "pass in transform", low=1)


@dataclass(frozen=True, kw_only=True)
class TrainSettings(NetworkSettings):
    """Every ``ImageClassifier`` training Param."""

    num_workers: int = setting(2, "numWorkers", "training tasks (one barrier task each)",
                               low=1, flag="--workers", tunable=True)
    epochs: int = setting(10, "epochs", "passes over the training data", low=1,
                          flag="--epochs", tunable=True)
    batch_size: int = setting(64, "batchSize", "mini-batch size per worker", low=1,
                              flag="--batch-size", help="per worker", tunable=True)
    learning_rate: float = setting(0.003, "learningRate", "peak learning rate", low=0,
                                   high=10, low_open=True, high_open=True, example="0.003",
                                   flag="--lr", tunable=True)
    optimizer: str = setting("adam", "optimizer", "adam or sgd (momentum 0.9)",
                             choices=("adam", "sgd"), flag="--optimizer", tunable=True)
    weight_decay: float = setting(0.0, "weightDecay", "L2 weight decay", low=0,
                                  flag="--weight-decay", tunable=True)
    gradient_clip_norm: float = setting(
        0.0, "gradientClipNorm", "clip the global L2 norm of the gradient to this before each "
        "optimizer step (under privacy='dp' each example is clipped to maxGradNorm instead); "
        "0 = no clipping", low=0, example="1.0", flag="--gradient-clip-norm", metavar="C",
        tunable=True)
    loss: str = setting("cross_entropy", "loss", "cross_entropy, mse (softmax vs one-hot) "
                        "or focal", choices=("cross_entropy", "mse", "focal"), flag="--loss",
                        tunable=True)
    focal_gamma: float = setting(2.0, "focalGamma", "focusing parameter gamma of loss=focal",
                                 low=0, flag="--focal-gamma", help="gamma of --loss focal",
                                 tunable=True)
    lr_schedule: str = setting("cosine", "lrSchedule", "cosine (with warm-up) or constant",
                               choices=("cosine", "constant"), flag="--lr-schedule",
                               tunable=True)
    augment: str = setting("shift", "augment", "shift (random translation), photo (random "
                           "resized crop and horizontal flip, for photos) or none",
                           choices=("shift", "photo", "none"), flag="--augment", tunable=True)
    normalize: str = setting(
        "auto", "normalize", "how images are normalised before the network (stored with the "
        "model as inputMean/inputStd, applied identically by training, inference and the "
        "exported graph): auto (the pretrained config's mean/std when the network starts "
        "from pretrained zoo weights, the source model's with initFrom, under privacy='dp' "
        "none, else dataset), imagenet, dataset (per-channel statistics of the training "
        "split, computed on Spark) or none (a fixed scaling to [-1, 1])",
        choices=("auto", "imagenet", "dataset", "none"), flag="--normalize",
        help="auto, imagenet, dataset (statistics of the training split) or none (fixed "
        "[-1, 1] scaling)")
    seed: int = setting(0, "seed", "random seed", flag="--seed", tunable=True, shared=True)
    label_col: str = setting("label", "labelCol", "label column name", shared=True)
    validation_fraction: float = setting(
        0.0, "validationFraction", "fraction of the input held out for validation when no "
        "validationDf is given", low=0, high=1, high_open=True, example="0.1")
    checkpoint_dir: str = setting(
        "", "checkpointDir", "shared folder for per-epoch checkpoints; training resumes from "
        "the latest one in it; empty = a fresh temporary folder", flag="--checkpoint-dir",
        help="shared folder; resumes from it")
    class_weights: tuple[float, ...] | str | None = setting(
        (), "classWeights", "per-class loss weights, or 'balanced'", flag="--class-weights",
        help="'balanced' or w0,w1,...", converter=_class_weights)
    balance: str = setting(
        "none", "balance", "class imbalance handling: none, oversample, undersample (of the "
        "training rows, by Spark) or weights (classWeights='balanced')",
        choices=("none", "oversample", "undersample", "weights"), flag="--balance",
        help="class imbalance: over/under-sample the training rows, or weights "
        "(= --class-weights balanced)", tunable=True)
    use_gpu: str = setting("auto", "useGpu", "auto, true or false",
                           choices=("auto", "true", "false"), flag="--use-gpu",
                           help="train on the executors' GPUs: auto (where Spark gives them), "
                           "true (fail without one) or false")
    stall_timeout_s: float = setting(
        600.0, "stallTimeout", "seconds a training rank may make no progress (or not start) "
        "before the driver cancels the training with an error naming the rank, its host and "
        "its last step", low=0, low_open=True, example="600", flag="--timeout", metavar="S",
        help="fail the training when a worker makes no progress (or does not start) for S "
        "seconds, naming it (default %(default)g)")
    stall_retries: int = setting(
        1, "stallRetries", "times a stalled training (see stallTimeout) is cancelled and "
        "started again, resuming from its last checkpoint, before it fails", low=0,
        flag="--stall-retries", metavar="N",
        help="after a stall (--timeout), start again from the last checkpoint up to N times "
        "before failing (default %(default)s)")
    grad_compression: str = setting(
        "none", "gradCompression", "how gradients travel between hosts: none (float32), "
        "fp16 or bf16 (halved, through DDP's compression hooks) or powersgd (low-rank, "
        "DDP's PowerSGD hook); ranks on one host average through shared memory uncompressed",
        choices=("none", "fp16", "bf16", "powersgd"), flag="--grad-compression",
        help="compress gradients between hosts (default %(default)s)", tunable=True)
    memory_budget_mb: float = setting(
        0.0, "memoryBudgetMB", "MB of images a training task keeps in memory; a larger "
        "partition is written once to the executor's local dir (spark.local.dir) and "
        "memory-mapped; 0 = auto (half the memory available on the executor's host, shared "
        "by the training tasks there)", low=0, example="2048 (0 = auto)",
        flag="--memory-budget", metavar="MB",
        help="MB of images a training task keeps in memory; more is spilled to the "
        "executor's local dir and memory-mapped (default 0: auto)")
    repartition: bool = setting(True, "repartition", "spread rows evenly over numWorkers (a "
                                "shuffle); false keeps the input partitions (coalesced to "
                                "numWorkers)")
    init_weights: str = setting(
        "", "initWeights", "a .safetensors state dict the network starts from (path or URL); "
        "empty = a fresh initialisation", flag="--init-weights", metavar="FILE.safetensors",
        help="start from this state dict (strict unless --init-strict false)")
    pretrained: str = setting(
        "", "pretrained", "pretrained weights of the network as timm or torchvision save "
        "them: a .safetensors or .pth state dict (read with weights_only, never unpickling "
        "code) or a Hugging Face hub cache folder (read offline); the classifier head is "
        "replaced for the data's classes and every other tensor must fit",
        flag="--pretrained", metavar="PATH",
        help="start from these pretrained weights (.safetensors, .pth or a Hugging Face "
        "cache folder); the head is replaced for your classes")
    init_strict: bool = setting(
        True, "initStrict", "initWeights/initFrom must fit the network exactly (every key "
        "and shape); false loads what fits and records a report of the missing, unexpected "
        "and shape-mismatched keys", flag="--init-strict",
        help="false: load the tensors that fit and print what did not")
    init_from: str = setting(
        "", "initFrom", "a model folder (sparkvision train --out) the network starts from; "
        "its classifier head is re-initialised when its classes differ from the data's",
        flag="--init-from", metavar="MODEL_DIR",
        help="start from a trained model (its head is re-initialised when its classes "
        "differ)")
    freeze: str = setting(
        "none", "freeze", "none, or backbone: only the classifier head trains (the "
        "backbone's weights and batch-norm statistics stay bit-identical)",
        choices=("none", "backbone"), flag="--freeze",
        help="backbone: train only the classifier head")
    backbone_lr_scale: float = setting(
        1.0, "backboneLrScale", "the backbone's learning rate as a multiple of learningRate "
        "(the head's); 1 = one rate for all", low=0, high=100, example="0.1",
        flag="--backbone-lr-scale", metavar="F", help="the backbone's learning rate = F × --lr")
    privacy: str = setting(
        "none", "privacy", "none, or dp: differentially private training (Opacus DP-SGD: "
        "per-example gradients clipped to maxGradNorm, Gaussian noise calibrated to spend at "
        "most targetEpsilon at targetDelta)", choices=("none", "dp"))
    target_epsilon: float = setting(8.0, "targetEpsilon", "privacy budget ε of the whole "
                                    "training", low=0, low_open=True,
                                    example="8 (smaller: more privacy, more noise)")
    target_delta: float = setting(
        1e-5, "targetDelta", "δ of the (ε, δ) guarantee; below 1 / training rows", low=0,
        high=1, low_open=True, high_open=True, example="1e-5", flag="--dp-delta",
        metavar="D", help="δ of the privacy guarantee, below 1/training rows (default "
        "%(default)g)")
    max_grad_norm: float = setting(
        1.0, "maxGradNorm", "L2 norm each example's gradient is clipped to under "
        "privacy='dp'", low=0, low_open=True, example="1.0", flag="--max-grad-norm",
        metavar="C", help="clip each example's gradient to L2 norm C under --dp-epsilon "
        "(default %(default)g)")
    calibration: str = setting(
        "none", "calibration", "none, or temperature: after training, fit one temperature T "
        "on the validation split (minimum negative log-likelihood) and store it with the "
        "model as temperature, so probabilities are softmax(logits / T); predictions do not "
        "change. Needs validation data (validationDf or validationFraction)",
        choices=("none", "temperature"), flag="--calibrate",
        help="temperature: fit one temperature on the validation split after training "
        "(calibrated probabilities, same predictions; default %(default)s)")


@dataclass(frozen=True, kw_only=True)
class OutputSettings(InferenceSettings):
    """The output columns and inference Params of ``ImageClassificationModel``."""

    prediction_col: str = setting("prediction", "predictionCol", "prediction column name",
                                  shared=True)
    raw_prediction_col: str = setting("rawPrediction", "rawPredictionCol", "raw prediction "
                                      "(a.k.a. confidence) column name", shared=True)
    probability_col: str = setting("probability", "probabilityCol", "column name for "
                                   "predicted class conditional probabilities", shared=True)
    predicted_label_col: str = setting("predictedLabel", "predictedLabelCol",
                                       "output column of the class name")
    confidence_col: str = setting("confidence", "confidenceCol", "output column of the top "
                                  "class's probability")
    inference_backend: str = setting(
        "auto", "inferenceBackend", "what runs the network in transform: torch, onnxruntime "
        "(the network exported to ONNX once per Python worker) or auto (onnxruntime where it "
        "is installed and the network exports, else torch)",
        choices=("auto", "torch", "onnxruntime"))
    temperature: float = setting(
        1.0, "temperature", "probabilities are softmax(logits / temperature) in transform, "
        "streaming and the exported graph (rawPrediction stays the network's logits; the "
        "prediction never changes); 1 = the network's own softmax; calibration='temperature' "
        "fits it on the validation split", low=0, low_open=True, example="1.5")


@dataclass(frozen=True, kw_only=True)
class FeaturizerSettings(NetworkSettings, InferenceSettings):
    """Every ``ImageFeaturizer`` Param."""

    output_col: str = setting("features", "outputCol", "output column name", shared=True)
    layer: str = setting("", "layer", "'' = the classifier head's input (penultimate "
                         "features), else the name of a module (named_modules()) whose "
                         "output is taken")


@dataclass(frozen=True, kw_only=True)
class ExplainerSettings(NetworkSettings):
    """Every ``ImageExplainer`` Param."""

    output_col: str = setting("attribution", "outputCol", "output column name", shared=True)
    label_col: str = setting("label", "labelCol", "label column name", shared=True)
    method: str = setting("gradcam", "method", f"attribution method: {', '.join(METHODS)}",
                          choices=METHODS)
    target: str = setting("predicted", "target", "class explained: predicted (the "
                          "network's) or true (labelCol)", choices=TARGETS)
    explain_batch_size: int = setting(64, "explainBatchSize", "images per Captum call",
                                      low=1)


@dataclass(frozen=True, kw_only=True)
class BalancerSettings:
    """Every ``ClassBalancer`` Param."""

    strategy: str = setting("oversample", "strategy", "oversample or undersample",
                            choices=("oversample", "undersample"))
    target_ratio: float = setting(1.0, "targetRatio", "minority/majority size ratio to "
                                  "reach, in (0, 1]", low=0, high=1, low_open=True,
                                  example="1.0 (balanced)")
    label_col: str = setting("label", "labelCol", "label column name", shared=True)
    seed: int = setting(0, "seed", "random seed", shared=True)


@dataclass(frozen=True, kw_only=True)
class EvaluatorSettings:
    """Every ``ImageClassificationEvaluator`` Param."""

    metric_name: str = setting("accuracy", "metricName",
                               "metric: " + ", ".join(EVALUATOR_METRICS),
                               choices=tuple(EVALUATOR_METRICS))
    k: int = setting(5, "k", "k of topKAccuracy", low=1)
    label_col: str = setting("label", "labelCol", "label column name", shared=True)
    prediction_col: str = setting("prediction", "predictionCol", "prediction column name",
                                  shared=True)
    probability_col: str = setting("probability", "probabilityCol", "column name for "
                                   "predicted class conditional probabilities", shared=True)
