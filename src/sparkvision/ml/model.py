"""``ImageClassificationModel``: pyspark.ml's probabilistic-classifier output contract for a
trained PyTorch network, and its persistence (Params JSON + safetensors weights)."""

from __future__ import annotations

import hashlib
import json
import os
from types import SimpleNamespace
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Model
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)

from sparkvision import storage
from sparkvision.config import PredictConfig
from sparkvision.errors import (
    DataError,
    InvalidParameterError,
    ModelLoadError,
    UntrustedCodeError,
)
from sparkvision.ml.params import ImageClassifierParams, require_image_column

WEIGHTS_FILE = "weights.safetensors"
HISTORY_FILE = "history.json"
METADATA_DIR = "metadata"
#: Saved-model format. 2: rawPrediction/probability vectors, prediction double.
MODEL_FORMAT = "sparkvision/2"


class ImageClassificationModel(Model, ImageClassifierParams, MLWritable, MLReadable):
    """Adds ``rawPrediction`` (logits vector), ``probability`` (vector of every class),
    ``prediction`` (class index, double), ``predictedLabel`` (class name) and ``confidence``
    (top-class probability), as pyspark.ml's probabilistic classifiers do. An output column
    Param set to ``""`` leaves that column out. The network is loaded once per Python worker
    and only the image column travels to Python."""

    @keyword_only
    def __init__(self, *, weights: bytes = b"", history: dict[str, Any] | None = None,
                 **params: Any) -> None:
        super().__init__()
        kwargs = dict(self._input_kwargs)
        self.weights: bytes = kwargs.pop("weights", b"")
        self.history: dict[str, Any] = kwargs.pop("history", None) or {}
        self._set(**{k: v for k, v in kwargs.items() if v is not None})

    @property
    def numClasses(self) -> int:
        return len(self.getOrDefault(self.classes))

    def _predict_config(self) -> PredictConfig:
        get = self.getOrDefault
        return PredictConfig(
            model=get(self.model), num_classes=self.numClasses,
            image_shape=tuple(get(self.imageShape)),  # type: ignore[arg-type]
            weights=self.weights, classes=tuple(get(self.classes)),
            batch_size=get(self.inferenceBatchSize), backend=get(self.inferenceBackend),
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
        ``output``: ``probability`` (softmax) or ``logits``. The JSON names the classes in
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
        data = build(net, config.image_shape, output, name=config.model)
        h, w, c = config.image_shape
        sidecar = {
            "format": format,
            "file": storage.basename(path),
            "model": config.model,
            "classes": list(config.classes),
            "input_name": INPUT_NAME,
            "input_shape": [h, w, c],
            "input_dtype": "uint8",
            "input_layout": "NHWC",
            "output_name": output,  # probability | logits
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
    @classmethod
    def load(cls, path: str, trust_code: bool = False) -> ImageClassificationModel:
        """Load a model folder, checked on the driver before any job: the weights' size and
        SHA-256 against the saved metadata, the safetensors header, every tensor's shape
        against the network. A network named by an import path (``pkg.mod:fn``) runs that
        code, so it needs ``trust_code=True`` (or ``SPARKVISION_TRUST_CODE=1``)."""
        reader = cls.read()
        reader.trust_code = trust_code  # type: ignore[attr-defined]
        return reader.load(path)

    def write(self) -> MLWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ModelReader(cls)


def check_model_folder(path: str) -> str:
    """The weights file of the model folder ``path``; DataError when there is none (cheap,
    no Spark: commands call it before starting a session)."""
    weights_path = storage.join(path, WEIGHTS_FILE)
    if not storage.exists(weights_path):
        raise DataError(
            f"no model at {path} ({WEIGHTS_FILE} missing): give a folder written by "
            "ImageClassificationModel.save or `sparkvision train --out`"
        )
    return weights_path


def _metadata_json(instance: Any, extra: dict[str, Any]) -> str:
    """pyspark's ``DefaultParamsWriter`` metadata line (class, uid, Params, sparkVersion)."""
    import pyspark

    version = SimpleNamespace(version=pyspark.__version__)
    return DefaultParamsWriter._get_metadata_to_save(instance, version,  # type: ignore[arg-type]
                                                     extraMetadata=extra)


def read_model_metadata(path: str) -> dict[str, Any]:
    """The metadata line of a model folder: ``metadata/part-*`` as pyspark writes it (a
    folder saved by Spark's text writer reads the same)."""
    folder = storage.join(path, METADATA_DIR)
    parts = [n for n in storage.listdir(folder) if n.startswith("part-")]
    for name in parts:
        for line in storage.read_text(storage.join(folder, name)).splitlines():
            if line.strip():
                return DefaultParamsReader._parseMetaData(line)
    raise ModelLoadError(
        f"the model folder {path} has no {METADATA_DIR}/part-* file (its Params): copy the "
        "whole folder written by ImageClassificationModel.save or `sparkvision train --out`")


class _ModelWriter(MLWriter):
    """Writes the folder itself through :mod:`sparkvision.storage` (no Spark job, so the
    same on Spark Connect and on any filesystem): ``metadata/part-00000`` (pyspark's Params
    JSON), ``weights.safetensors``, ``history.json``; every file atomically, the metadata
    last."""

    def __init__(self, instance: ImageClassificationModel) -> None:
        super().__init__()
        self.instance = instance

    def _handleOverwrite(self, path: str) -> None:
        storage.remove(path)

    def saveImpl(self, path: str) -> None:
        if not self.shouldOverwrite and storage.exists(storage.join(path, METADATA_DIR)):
            raise DataError(
                f"a model is already saved at {path}: use model.write().overwrite().save(path) "
                "or another path")
        write_params_and_weights(self.instance, path, MODEL_FORMAT, {
            HISTORY_FILE: json.dumps(self.instance.history, indent=2)})


def write_params_and_weights(instance: Any, path: str, fmt: str,
                             extra_files: dict[str, str] | None = None) -> None:
    """A saved folder of ``instance`` (Params + ``weights`` bytes) through storage:
    ``weights.safetensors``, ``extra_files`` (name → text), then ``metadata/part-00000``
    (pyspark's Params JSON with ``format`` and the weights' size and SHA-256), each file
    atomically, the metadata last."""
    weights = instance.weights
    metadata = _metadata_json(instance, {
        "format": fmt,
        "weights": {"file": WEIGHTS_FILE, "bytes": len(weights),
                    "sha256": hashlib.sha256(weights).hexdigest()},
    })
    storage.makedirs(path)
    storage.write_bytes(storage.join(path, WEIGHTS_FILE), weights)
    for name, text in (extra_files or {}).items():
        storage.write_text(storage.join(path, name), text)
    storage.write_text(storage.join(path, METADATA_DIR, "part-00000"), metadata + "\n")
    storage.write_bytes(storage.join(path, METADATA_DIR, "_SUCCESS"), b"")


class _ModelReader(MLReader):
    def __init__(self, cls: type[ImageClassificationModel]) -> None:
        super().__init__()
        self.cls = cls
        self.trust_code = False

    def load(self, path: str) -> ImageClassificationModel:
        weights_path = check_model_folder(path)
        metadata = read_model_metadata(path)
        found = metadata.get("format")
        if found != MODEL_FORMAT:
            raise DataError(
                f"the model at {path} has format {found!r} but this sparkvision reads "
                f"{MODEL_FORMAT!r} (probability vectors, double prediction): retrain it with "
                "`sparkvision train` (or ImageClassifier.fit) and save it again"
            )
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        instance.weights = storage.read_bytes(weights_path)
        check_saved_weights(path, weights_path, instance, metadata.get("weights"),
                             self.trust_code)
        history = storage.join(path, HISTORY_FILE)
        instance.history = json.loads(storage.read_text(history)) if storage.exists(
            history) else {}
        return instance


def check_saved_weights(path: str, weights_path: str, model: Any,
                        recorded: dict[str, Any] | None, trust_code: bool) -> None:
    """Refuse damaged, tampered or mismatched weights, and untrusted code (driver side).
    ``model``: anything with ``weights``, ``numClasses`` and the ``model``/``imageShape``
    Params (a model, a featurizer)."""
    from sparkvision.models.registry import runs_user_code
    from sparkvision.models.weights import check_weights

    data = model.weights
    if recorded:
        if len(data) != recorded.get("bytes"):
            raise ModelLoadError(
                f"{weights_path} has {len(data)} bytes but the model was saved with "
                f"{recorded.get('bytes')}: the file is truncated or was replaced; copy the "
                "model folder again or re-train it")
        if hashlib.sha256(data).hexdigest() != recorded.get("sha256"):
            raise ModelLoadError(
                f"{weights_path} does not match the SHA-256 recorded when the model was saved "
                "(the file was modified): restore the original or re-train the model")
    name = model.getOrDefault(model.model)
    trusted = trust_code or os.environ.get("SPARKVISION_TRUST_CODE", "") in ("1", "true")
    if runs_user_code(name) and not trusted:
        raise UntrustedCodeError(
            f"the model at {path} uses the network {name!r}, code that loading would import "
            "and run: pass --trust-code (trust_code=True, or SPARKVISION_TRUST_CODE=1) if "
            "you trust that module")
    check_weights(data, name, model.numClasses,
                  tuple(model.getOrDefault(model.imageShape)),  # type: ignore[arg-type]
                  weights_path)
