"""The MLflow pyfunc of a sparkvision model, logged as *code* ("models from code").

MLflow stores this file with the model and runs it to load the model, so it imports
nothing from sparkvision: only ``mlflow``, ``numpy``, ``pandas`` and the runtime of the
graph (``onnxruntime`` for ``model.onnx``, ``torch`` for a TorchScript ``model.pt``). No
pickle: the graph is ``model.export``'s file, its description the export's JSON.

Input: a pandas DataFrame with a column ``image`` of raw uint8 bytes in HWC order, of the
model's ``H*W*C`` length — the ``image`` column ``transform`` reads (``load_prepared``,
``prepare``'s shards). Output: one row per image with ``prediction`` (class index, float
as pyspark.ml's), ``predictedLabel``, ``confidence`` and ``probability`` (every class, in
the order of the model's classes) — the columns ``transform`` adds.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

#: ``artifacts`` keys of the logged model: the serving graph and its description.
GRAPH = "graph"
DESCRIPTION = "description"
IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("prediction", "predictedLabel", "confidence", "probability")


class ImageClassifierPyfunc(PythonModel):
    """uint8 HWC image bytes → prediction, predictedLabel, confidence, probability."""

    def load_context(self, context: Any) -> None:
        with open(context.artifacts[DESCRIPTION], encoding="utf-8") as f:
            self.description: dict[str, Any] = json.load(f)
        self.classes = [str(c) for c in self.description["classes"]]
        self.shape = tuple(int(v) for v in self.description["input_shape"])
        self.output = self.description.get("output_name", "probability")
        path = context.artifacts[GRAPH]
        if self.description.get("format", "onnx") == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1  # one per Spark task, as transform does
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(path, options,
                                                   providers=["CPUExecutionProvider"])
            name = self.description.get("input_name", "image")
            self._run = lambda batch: session.run(None, {name: batch})[0]
        else:
            import torch

            torch.set_num_threads(1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice
                module = torch.jit.load(path, map_location="cpu").eval()

            def run(batch: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return module(torch.from_numpy(batch)).numpy()

            self._run = run

    def images(self, frame: pd.DataFrame) -> np.ndarray:
        """The ``image`` column as one uint8 (N, H, W, C) array; ValueError naming the
        first row of the wrong size."""
        if IMAGE_COLUMN not in frame.columns:
            raise ValueError(f"the input needs a column {IMAGE_COLUMN!r} of raw uint8 HWC "
                             f"bytes; it has {list(frame.columns)}")
        size = int(np.prod(self.shape))
        rows = []
        for i, value in enumerate(frame[IMAGE_COLUMN]):
            data = np.frombuffer(bytes(value), dtype=np.uint8)
            if data.size != size:
                raise ValueError(
                    f"row {i}: image has {data.size} bytes but this model takes raw uint8 "
                    f"images of shape {list(self.shape)} (H, W, C) = {size} bytes")
            rows.append(data)
        if not rows:
            return np.zeros((0, *self.shape), dtype=np.uint8)
        return np.stack(rows).reshape(len(rows), *self.shape)

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        batch = self.images(model_input)
        if len(batch):
            out = np.asarray(self._run(batch), dtype=np.float64)
        else:
            out = np.zeros((0, len(self.classes)), dtype=np.float64)
        if self.output == "logits":  # a graph exported with output="logits"
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        index = out.argmax(axis=1) if len(out) else np.zeros(0, dtype=np.int64)
        return pd.DataFrame({
            "prediction": index.astype(np.float64),
            "predictedLabel": [self.classes[i] for i in index],
            "confidence": out.max(axis=1) if len(out) else np.zeros(0),
            "probability": list(out),
        })


set_model(ImageClassifierPyfunc())
