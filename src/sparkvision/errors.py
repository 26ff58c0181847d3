"""Errors raised by sparkvision.

Every user-facing error says what is wrong, the offending value and how to fix it.
The CLI turns any :class:`SparkVisionError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import re

# A sparkvision error as it appears in the text of a Spark task failure or analysis error.
_WRAPPED = re.compile(
    r"sparkvision\.errors\.(\w+Error): (.+?)(?:\n|$)|(\w+Error): ((?:invalid|corrupt) .+?)(?:\n|$)"
)


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


class ClusterCapacityError(SparkVisionError):
    """The cluster has fewer task slots than a barrier stage needs."""


class TrainingError(SparkVisionError):
    """Distributed training failed."""


def user_error_message(exc: BaseException) -> str | None:
    """The message of a sparkvision error in ``exc``, also when Spark wrapped it as text."""
    if isinstance(exc, SparkVisionError):
        return str(exc)
    match = _WRAPPED.search(str(exc))
    if match:
        return match.group(2) or match.group(4)
    return None
