"""sparkvision: train, evaluate and serve PyTorch image classifiers on Apache Spark."""

from __future__ import annotations

from typing import Any

from sparkvision.errors import (
    ClusterCapacityError,
    CorruptRecordError,
    DataError,
    ExportError,
    InvalidParameterError,
    MissingDependencyError,
    SparkVisionError,
    TrainingCancelledError,
    TrainingError,
)

__version__ = "0.1.0"

__all__ = [
    "ClassBalancer",
    "ClusterCapacityError",
    "CorruptRecordError",
    "DataError",
    "EvaluationResult",
    "ExportError",
    "ImageClassificationEvaluator",
    "ImageClassificationModel",
    "ImageClassifier",
    "ImageExplainer",
    "ImageFeaturizer",
    "InvalidParameterError",
    "MissingDependencyError",
    "PrepareConfig",
    "SparkVisionError",
    "TrainingCancelledError",
    "TrainingError",
    "evaluate",
    "get_spark",
    "load_prepared",
    "prepare",
    "read_manifest",
    "register_data_sources",
]


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import sparkvision` light (no pyspark/torch until needed).
    lazy = {
        "ImageClassifier": "sparkvision.ml.classifier",
        "ImageClassificationModel": "sparkvision.ml.model",
        "ImageClassificationEvaluator": "sparkvision.ml.evaluator",
        "evaluate": "sparkvision.ml.evaluator",
        "ClassBalancer": "sparkvision.ml.balancer",
        "ImageFeaturizer": "sparkvision.ml.featurizer",
        "ImageExplainer": "sparkvision.ml.explainer",
        "EvaluationResult": "sparkvision.evaluation.metrics",
        "get_spark": "sparkvision.session",
        "register_data_sources": "sparkvision.session",
        "prepare": "sparkvision.data.prepare",
        "PrepareConfig": "sparkvision.data.prepare",
        "read_manifest": "sparkvision.data.manifest",
        "load_prepared": "sparkvision.data.prepared_splits",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(name)
