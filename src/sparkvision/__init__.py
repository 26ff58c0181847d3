"""sparkvision: train, evaluate and serve PyTorch image classifiers on Apache Spark."""

from __future__ import annotations

from typing import Any

from sparkvision.errors import (
    ClusterCapacityError,
    CorruptRecordError,
    DataError,
    InvalidParameterError,
    SparkVisionError,
    TrainingError,
)

__version__ = "0.1.0"

__all__ = [
    "ClusterCapacityError",
    "CorruptRecordError",
    "DataError",
    "ImageClassificationModel",
    "ImageClassifier",
    "InvalidParameterError",
    "PrepareConfig",
    "SparkVisionError",
    "TrainingError",
    "get_spark",
    "load_prepared",
    "prepare",
    "read_manifest",
    "register_data_sources",
]


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import sparkvision` light (no pyspark/torch until needed).
    if name in ("ImageClassifier", "ImageClassificationModel"):
        from sparkvision.training import estimator

        return getattr(estimator, name)
    if name in ("get_spark", "register_data_sources"):
        from sparkvision import session

        return getattr(session, name)
    if name in ("prepare", "PrepareConfig", "read_manifest"):
        from sparkvision.data import prepare

        return getattr(prepare, name)
    if name == "load_prepared":
        from sparkvision.data.loading import load_prepared

        return load_prepared
    raise AttributeError(name)
