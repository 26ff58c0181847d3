"""``explain``: what a trained model looks at, for a whole data set — attribution maps
(Captum) computed on Spark for up to K right and K wrong images per class and each class's
mean map, written to a folder of PNGs, ``attributions.safetensors`` and ``explain.json``.

``job.py`` is the driver side (predict, pick the rows, collect them, write), ``partitions.py``
the executor side (the ``mapInArrow`` pass), ``files.py`` the folder. The per-row maps as a
DataFrame column are ``ImageExplainer`` (``ml/explainer.py``)."""

from sparkvision.explaining.job import ExplainResult, explain

__all__ = ["ExplainResult", "explain"]
