"""A trained model as an MLflow model that MLflow can serve: the pyfunc flavour over the
exported serving graph (``model.export``: ONNX, or TorchScript), logged to a run and
optionally registered.

The pyfunc is logged *as code* (``pyfunc_model.py``, MLflow's "models from code"): MLflow
keeps that file, the graph and its JSON description as the model's files and pickles
nothing. ``mlflow.pyfunc.load_model(uri).predict(frame)`` and
``mlflow.pyfunc.spark_udf(spark, uri)`` then need neither sparkvision nor Spark's JVM side
of it: ``mlflow``, ``numpy``, ``pandas`` and ``onnxruntime`` (``torch`` for TorchScript).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparkvision.tracking.mlflow_run import MlflowRun, require_mlflow, store_lock

#: The model's name inside its run (``runs:/RUN_ID/sparkvision-model`` is not used in
#: MLflow 3, which gives each logged model its own ``models:/m-…`` URI).
MODEL_NAME = "sparkvision-model"
CODE_FILE = Path(__file__).with_name("pyfunc_model.py")
#: The packages the pyfunc imports, pinned to the versions installed here.
RUNTIME_PACKAGES = {"onnx": ("mlflow", "numpy", "pandas", "onnxruntime"),
                    "torchscript": ("mlflow", "numpy", "pandas", "torch")}


@dataclass(frozen=True)
class ServedModel:
    """Where the logged pyfunc is: its URI, and its registered name and version if any."""

    model_uri: str
    model_id: str | None
    registered_name: str | None = None
    registered_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model_uri": self.model_uri, "model_id": self.model_id,
                "registered_name": self.registered_name,
                "registered_version": self.registered_version}


def signature() -> Any:
    """The pyfunc's signature: a binary ``image`` column in; prediction (double),
    predictedLabel (string), confidence (double), probability (array of double) out."""
    require_mlflow()
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]),
        outputs=Schema([ColSpec("double", "prediction"), ColSpec("string", "predictedLabel"),
                        ColSpec("double", "confidence"),
                        ColSpec(Array("double"), "probability")]))


def pip_requirements(graph_format: str) -> list[str]:
    """``package==version`` of what the pyfunc imports for a graph of ``graph_format``."""
    found = []
    for name in RUNTIME_PACKAGES[graph_format]:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(name)
    return found


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` (``Model.log`` and the registry read it),
    then put back. Under the process-wide MLflow lock."""
    mlflow = require_mlflow()
    with store_lock():
        previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)  # None: unset again


def log_pyfunc(run: MlflowRun, graph: str | Path, description: str | Path,
               input_example: Any = None, register: str | None = None) -> ServedModel:
    """Log the serving graph ``graph`` (``model.export``'s file) with its JSON
    ``description`` (the export's ``.json``) as a pyfunc model of ``run``, with the
    signature and ``input_example`` (a pandas DataFrame with an ``image`` column); register
    it as a new version of ``register`` when given."""
    mlflow = require_mlflow()
    from mlflow.models import Model

    graph_format = json.loads(Path(description).read_text(encoding="utf-8"))["format"]
    with _tracking_uri(run.experiment.tracking_uri):
        # Created here, in the run's experiment (Model.log alone would put it in the active
        # experiment of MLflow's global state); Model.log then fills it.
        created = run.client.create_logged_model(
            run.experiment.experiment_id, name=MODEL_NAME, source_run_id=run.run_id,
            model_type="sparkvision")
        info = Model.log(
            None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run.run_id,
            model_id=created.model_id,
            python_model=str(CODE_FILE),
            artifacts={"graph": str(graph), "description": str(description)},
            signature=signature(), input_example=input_example,
            pip_requirements=pip_requirements(graph_format),
            registered_model_name=register,
        )
    version = info.registered_model_version
    return ServedModel(model_uri=info.model_uri, model_id=getattr(info, "model_id", None),
                       registered_name=register if version is not None else None,
                       registered_version=int(version) if version is not None else None)
