"""Errors raised by sparkvision.

Every user-facing error says what is wrong, the offending value and how to fix it.
The CLI turns any :class:`SparkVisionError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import re


class SparkVisionError(Exception):
    """Base class of every error sparkvision raises on purpose."""


class InvalidParameterError(SparkVisionError, ValueError):
    """A parameter or option has a bad value."""

    def __init__(self, name: str, value: object, fix: str) -> None:
        self.name = name
        self.value = value
        self.fix = fix
        super().__init__(f"invalid {name}={value!r}: {fix}")


class DataError(SparkVisionError):
    """Input data is missing, unreadable or malformed."""


class CorruptRecordError(DataError):
    """A TFRecord file is corrupt or truncated at a given byte offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"corrupt TFRecord file {path} at byte offset {offset}: {reason}; "
            "re-create the file, or read with option skipCorrupt=true to skip bad records"
        )


class ModelLoadError(DataError):
    """A saved model folder is damaged or does not fit its network (truncated, tampered or
    wrong-shape weights); found on the driver before any job runs."""


class UntrustedCodeError(SparkVisionError):
    """Loading the model would import and run code named by the model folder (a network
    given as ``package.module:function``) without ``trust_code``."""


class ClusterCapacityError(SparkVisionError):
    """The cluster has fewer task slots than a barrier stage needs."""


class ClusterUnreachableError(SparkVisionError):
    """The Spark Connect server (``--remote`` / ``SPARK_REMOTE``) does not answer."""


class TrainingError(SparkVisionError):
    """Distributed training failed."""


class TrainingCancelledError(TrainingError):
    """The training's Spark job was cancelled (Ctrl-C, a job group cancelled, shutdown)."""


class ModelBuildError(SparkVisionError):
    """A network builder (``model="package.module:function"``) failed or returned something
    that is not an ``nn.Module`` — on the driver or inside a Spark task."""


class TrainingStalledError(TrainingError):
    """A training rank made no progress (or never started) for ``stallTimeout`` seconds; the
    job was cancelled."""


class ExportError(SparkVisionError):
    """A network cannot be exported to the requested format (ONNX, TorchScript)."""


class MissingDependencyError(SparkVisionError):
    """An optional package a feature needs is not installed."""


def _our_error_names() -> list[str]:
    names, todo = [], [SparkVisionError]
    while todo:
        cls = todo.pop()
        names.append(cls.__name__)
        todo.extend(cls.__subclasses__())
    return sorted(names, key=len, reverse=True)


def user_error_message(exc: BaseException) -> str | None:
    """The message of a sparkvision error in ``exc``, also when Spark wrapped it as text
    (a Python worker's traceback names the class, with or without its module). Any other
    exception, however its message reads, is not a user error: None."""
    if isinstance(exc, SparkVisionError):
        return str(exc)
    names = "|".join(_our_error_names())
    wrapped = re.compile(rf"(?:sparkvision\.errors\.|(?<![\w.]))(?:{names}): (.+?)(?:\n|$)")
    match = wrapped.search(str(exc))
    return match.group(1) if match else None
