"""``ImageClassificationModel``: pyspark.ml's probabilistic-classifier output contract for a
trained PyTorch network, and its persistence (Params JSON + safetensors weights)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Model
from pyspark.ml.util import MLReadable, MLWritable

from sparkvision import storage
from sparkvision.config import PredictConfig
from sparkvision.errors import DataError, InvalidParameterError
from sparkvision.evaluation.drift import PROFILE_FILE, DriftProfile
from sparkvision.ml.params import ImageClassifierParams, require_image_column
from sparkvision.ml.persistence import (
    WEIGHTS_FILE,
    FolderKind,
    FolderReader,
    FolderWriter,
    TrustedLoad,
    read_model_metadata,
    weights_file,
)
from sparkvision.training.history import TrainingHistory

HISTORY_FILE = "history.json"
#: Saved-model format. 2: rawPrediction/probability vectors, prediction double.
MODEL_FORMAT = "sparkvision/2"
#: A model folder (``ml/persistence.py``) and its errors.
MODEL_FOLDER = FolderKind(
    format=MODEL_FORMAT,
    missing="no model at {path} ({weights} missing): give a folder written by "
            "ImageClassificationModel.save or `sparkvision train --out`",
    exists="a model is already saved at {path}: use model.write().overwrite().save(path) "
           "or another path",
    wrong_format="the model at {path} has format {found!r} but this sparkvision reads "
                 f"{MODEL_FORMAT!r} (probability vectors, double prediction): retrain it "
                 "with `sparkvision train` (or ImageClassifier.fit) and save it again",
)


class ImageClassificationModel(Model, ImageClassifierParams, TrustedLoad, MLWritable,
                               MLReadable):
    """Adds ``rawPrediction`` (logits vector), ``probability`` (vector of every class),
    ``prediction`` (class index, double), ``predictedLabel`` (class name) and ``confidence``
    (top-class probability), as pyspark.ml's probabilistic classifiers do. An output column
    Param set to ``""`` leaves that column out. The network is loaded once per Python worker
    and only the image column travels to Python."""

    @keyword_only
    def __init__(self, *, weights: bytes = b"", history: TrainingHistory | None = None,
                 **params: Any) -> None:
        super().__init__()
        kwargs = dict(self._input_kwargs)
        self.weights: bytes = kwargs.pop("weights", b"")
        #: the record of the fit that made this model (empty when it was not trained)
        self.history: TrainingHistory = kwargs.pop("history", None) or TrainingHistory()
        #: the validation split's reference profile for drift monitoring (None: trained
        #: without validation data, or saved before profiles)
        self.drift_profile: DriftProfile | None = None
        self._set(**{k: v for k, v in kwargs.items() if v is not None})

    @property
    def numClasses(self) -> int:
        return len(self.getOrDefault(self.classes))

    def _predict_config(self) -> PredictConfig:
        get = self.getOrDefault
        return PredictConfig(
            model=get(self.model), num_classes=self.numClasses,
            image_shape=tuple(get(self.imageShape)),
            weights=self.weights, classes=tuple(get(self.classes)),
            batch_size=get(self.inferenceBatchSize), backend=get(self.inferenceBackend),
            input_mean=tuple(get(self.inputMean)), input_std=tuple(get(self.inputStd)),
            temperature=float(get(self.temperature)),
        )

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        from sparkvision.inference.batch import make_predict_udf

        get = self.getOrDefault
        image_col = get(self.imageCol)
        require_image_column(dataset, image_col)
        self.validateInferenceParams()
        config = self._predict_config()
        if config.backend == "onnxruntime":  # fail before any job runs
            from sparkvision.models.export import require_onnx

            require_onnx("inferenceBackend='onnxruntime'")
        # Only the image column travels to Python; the other columns stay in the JVM, and
        # the vectors are built there from the UDF's arrays.
        tmp = F.col(f"`_sv_pred_{self.uid}`")
        outputs = {
            get(self.rawPredictionCol): array_to_vector(tmp["rawPrediction"]),
            get(self.probabilityCol): array_to_vector(tmp["probability"]),
            get(self.predictionCol): tmp["prediction"],
            get(self.predictedLabelCol): tmp["predictedLabel"],
            get(self.confidenceCol): tmp["confidence"],
        }
        outputs.pop("", None)
        kept = [c for c in dataset.columns if c not in outputs]
        with_struct = dataset.withColumn(f"_sv_pred_{self.uid}",
                                         make_predict_udf(config)(image_col))
        return with_struct.select(
            *[F.col(f"`{c}`") for c in kept],
            *[col.alias(name) for name, col in outputs.items()],
        )

    # ------------------------------------------------------------------ export
    def export(self, path: str, format: str = "onnx", output: str = "probability") -> str:
        """Write the network as a self-contained serving graph to ``path`` and its
        description to ``path + ".json"``; return ``path``.

        ``format``: ``onnx`` (run it with ``onnxruntime`` alone) or ``torchscript``
        (``torch.jit.load``). The graph takes uint8 (N, H, W, C) images exactly as
        ``prepare`` stores them (the scaling is inside) and returns float32 (N, K)
        ``output``: ``probability`` (softmax of the logits divided by the model's
        ``temperature``, as ``transform``'s) or ``logits``. The JSON names the classes in
        index order, the input shape, dtype, layout and names, the format, the network and
        the SHA-1 of the weights."""
        from sparkvision.models.export import (
            FORMATS,
            INPUT_NAME,
            ONNX_OPSET,
            OUTPUTS,
            onnx_bytes,
            torchscript_bytes,
        )
        from sparkvision.models.weights import trained_network

        if format not in FORMATS:
            raise InvalidParameterError("format", format, "use onnx or torchscript")
        if output not in OUTPUTS:
            raise InvalidParameterError("output", output, "use probability or logits")
        if not self.weights:
            raise DataError("this model has no weights: fit or load it before exporting")
        config = self._predict_config()
        net = trained_network(config.model, config.num_classes, config.image_shape,
                              config.weights)
        build = onnx_bytes if format == "onnx" else torchscript_bytes
        data = build(net, config.image_shape, output, name=config.model,
                     mean=config.input_mean, std=config.input_std,
                     temperature=config.temperature)
        h, w, c = config.image_shape
        sidecar: dict[str, Any] = {
            "format": format,
            "file": storage.basename(path),
            "model": config.model,
            "classes": list(config.classes),
            "input_name": INPUT_NAME,
            "input_shape": [h, w, c],
            "input_dtype": "uint8",
            "input_layout": "NHWC",
            "output_name": output,  # probability | logits
            # probability = softmax(logits / temperature); logits are the network's own
            "temperature": config.temperature,
            "output_shape": ["N", config.num_classes],
            "output_dtype": "float32",
            "weights_sha1": hashlib.sha1(self.weights).hexdigest(),
            "uid": self.uid,
        }
        if format == "onnx":
            sidecar["opset"] = ONNX_OPSET
        storage.write_bytes(path, data)
        storage.write_text(path + ".json", json.dumps(sidecar, indent=2, ensure_ascii=False)
                           + "\n")
        return path

    # ------------------------------------------------------------------ persistence
    def write(self) -> FolderWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> FolderReader:
        return _ModelReader(cls)


def check_model_folder(path: str) -> str:
    """The weights file of the model folder ``path``; DataError when there is none (cheap,
    no Spark: commands call it before starting a session)."""
    return weights_file(path, MODEL_FOLDER)


class _ModelWriter(FolderWriter):
    """The model folder (``ml/persistence.py``) with ``history.json`` (and
    ``drift_profile.json`` when the model has a reference profile)."""

    def __init__(self, instance: ImageClassificationModel) -> None:
        super().__init__(instance, MODEL_FOLDER)

    def extra_files(self) -> dict[str, str]:
        files = {HISTORY_FILE: self.instance.history.to_json()}
        if self.instance.drift_profile is not None:
            files[PROFILE_FILE] = self.instance.drift_profile.to_json()
        return files


class _ModelReader(FolderReader):
    """A model folder (``ml/persistence.py``) and its ``history.json`` (none: no history)."""

    def __init__(self, cls: type[ImageClassificationModel]) -> None:
        super().__init__(cls, MODEL_FOLDER)

    def load(self, path: str) -> ImageClassificationModel:
        instance = super().load(path)
        history = storage.join(path, HISTORY_FILE)
        instance.history = (TrainingHistory.from_json(storage.read_text(history), history)
                            if storage.exists(history) else TrainingHistory())
        profile = storage.join(path, PROFILE_FILE)
        if storage.exists(profile):
            instance.drift_profile = DriftProfile.from_json(storage.read_text(profile), profile)
        return instance


#: ``WEIGHTS_FILE`` and ``read_model_metadata`` (``ml/persistence.py``) are read from here too.
__all__ = ["HISTORY_FILE", "MODEL_FOLDER", "MODEL_FORMAT", "WEIGHTS_FILE",
           "ImageClassificationModel", "check_model_folder", "read_model_metadata"]
