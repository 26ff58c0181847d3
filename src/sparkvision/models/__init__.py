"""Network registry: built-in CNNs and user networks named by import path."""

from sparkvision.models.registry import MODEL_NAMES, build_model

__all__ = ["MODEL_NAMES", "build_model"]
